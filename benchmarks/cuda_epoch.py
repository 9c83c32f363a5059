"""H100 measurements of the CUDA fast path (what the README's GPU table reports).

The paper's efficiency setup: 512 Gaussian noise variables, N = 2000, RAT-SPN D=4 R=10,
K ∈ {10, 20, 40}; an epoch is 20 × (E-step + online-EM M-step) with batch 100 on data resident
on the GPU, replayed as one captured CUDA graph per step; ``fuse`` adds torch.compile fusion.
``infer_device_ms`` replays the captured forward graph of a batch of 100 (no host copies);
``infer_api_ms`` is ``backend.log_likelihood`` with NumPy in and out. Peak memory is
``torch.cuda.max_memory_allocated`` above what was allocated before the backend was built.

    python benchmarks/cuda_epoch.py          # needs a CUDA device
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from oracles import NORMAL, plan_of, rat_graph  # noqa: E402

from einc.backends.base import Batch, create_backend  # noqa: E402
from einc.compiler.params import init_parameters  # noqa: E402


def bench(K, device="cuda", dtype="float32", fuse=False):
    g = rat_graph([NORMAL]*512, depth=4, replicas=10, k=K)
    plan = plan_of(g)
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    be = create_backend("torch", plan, device=device, dtype=dtype, fuse=fuse)
    P = be.put(init_parameters(plan, 0))
    x = np.random.default_rng(0).normal(size=(2000, 512)); obs = np.ones_like(x, bool)
    data = be.upload(x, obs, None)
    order = np.arange(2000)
    t0 = time.perf_counter(); P, _ = be.train_epoch(P, data, order, 100, 0.5); torch.cuda.synchronize(); first = time.perf_counter() - t0
    times = []
    for _ in range(5):
        t = time.perf_counter(); P, ll = be.train_epoch(P, data, order, 100, 0.5); torch.cuda.synchronize(); times.append(time.perf_counter() - t)
    train_peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    b = Batch(x[:100], obs[:100]); be.log_likelihood(P, b); torch.cuda.synchronize()
    ti = []
    for _ in range(50):
        t = time.perf_counter(); be.log_likelihood(P, b); torch.cuda.synchronize(); ti.append(time.perf_counter() - t)
    cap = be._captured_forward(P, 100, False); xd, od = data.values[:100].clone(), data.observed[:100].clone()
    cap.run(xd, od); torch.cuda.synchronize()
    td = []
    for _ in range(50):
        t = time.perf_counter(); cap.graph.replay(); torch.cuda.synchronize(); td.append(time.perf_counter() - t)
    print(json.dumps(dict(fuse=fuse, K=K, first_epoch_s=round(first, 2), epoch_ms=round(float(np.median(times))*1e3, 2), infer_api_ms=round(float(np.median(ti))*1e3, 3), infer_device_ms=round(float(np.median(td))*1e3, 3), train_peak_MB=round(train_peak, 1), total_peak_MB=round((torch.cuda.max_memory_allocated()-base)/2**20, 1), params=plan.num_parameters)), flush=True)
    del be, P, data, cap


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("benchmarks/cuda_epoch.py needs a CUDA device")
    print(torch.cuda.get_device_name(), torch.__version__)
    for fuse in (False, True):
        for K in (10, 20, 40):
            bench(K, fuse=fuse)
