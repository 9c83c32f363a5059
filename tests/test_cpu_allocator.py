"""The CPU backends' malloc settings (backends/base.keep_freed_memory): repeated steps of the same
shapes reuse freed memory instead of page-faulting fresh pages in."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings are glibc malloc's")

# the K=10 RAT-SPN of benchmarks/peers.py: its per-step temporaries (MBs each) sit above glibc's
# default mmap threshold
PROBE = r"""
import json, resource, sys
import numpy as np
import einc
backend_name = sys.argv[1]
model = einc.compile('''
var x[512] : real
leaf x ~ normal
sums 10
inputs 10
structure random_binary_trees(depth = 4, replicas = 10, seed = 0)
''', backend=backend_name)
x = np.random.default_rng(0).normal(size=(1000, 512))
data = model.backend.upload(x, np.ones_like(x, dtype=bool), None)
order = np.arange(len(x))
def epoch():  # 10 EM steps of 100 rows
    model.params, _ = model.backend.train_epoch(model.params, data, order, 100, 0.05)
epoch()  # warm-up: the heap grows to its working size
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
epoch()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(backend: str, allocator: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "EINC_CPU_ALLOCATOR"}
    if allocator is not None:
        env["EINC_CPU_ALLOCATOR"] = allocator
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PROBE, backend], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["faults"]


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_repeated_steps_reuse_freed_memory(backend):
    # the epoch's 10 EM steps allocate temporaries of about 36,000 pages in all (what the system's
    # settings fault in at worst; glibc's adaptive mmap threshold makes that vary between runs,
    # 0-36,000 measured, so it is only reported); reused, at most a few hundred are faulted in
    tuned = _faults(backend, None)
    assert tuned < 5000, (tuned, _faults(backend, "system"))


def test_the_environment_leaves_malloc_alone():
    code = ("import einc; from einc.backends.base import keep_freed_memory; print(keep_freed_memory())")
    env = dict(os.environ, EINC_CPU_ALLOCATOR="system")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
    env.pop("EINC_CPU_ALLOCATOR")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "True"
