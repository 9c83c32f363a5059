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

# a RAT-SPN whose per-step temporaries (a few MB each) sit above glibc's default mmap threshold
PROBE = r"""
import json, resource, sys
import numpy as np
import einc
from einc.backends.base import Batch
backend_name = sys.argv[1]
model = einc.compile('''
var x[256] : real
leaf x ~ normal
sums 8
inputs 8
structure random_binary_trees(depth = 3, replicas = 6, seed = 0)
''', backend=backend_name)
x = np.random.default_rng(0).normal(size=(500, 256))
batch = Batch(x, np.ones_like(x, dtype=bool))
for _ in range(3):
    model.backend.statistics(model.params, batch)  # warm-up: the heap grows to its working size
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    model.backend.statistics(model.params, batch)
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
    tuned, system = _faults(backend, None), _faults(backend, "system")
    # with the system's settings every step maps and faults its large temporaries in again
    assert system > 5000, system
    assert tuned < system / 5, (tuned, system)


def test_the_environment_leaves_malloc_alone():
    code = ("import einc; from einc.backends.base import keep_freed_memory; print(keep_freed_memory())")
    env = dict(os.environ, EINC_CPU_ALLOCATOR="system")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
    env.pop("EINC_CPU_ALLOCATOR")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "True"
