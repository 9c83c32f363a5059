"""EM epochs and inference on a CUDA GPU, per K, einsum kernel and backend (issue 14's table).

The paper's efficiency setup (§4.1): 512 Gaussian noise variables, N = 2000, RAT-SPN D=4 R=10,
K ∈ {10, 20, 40}. An epoch is 20 × (E-step + online-EM M-step) with batch 100 on data resident on
the GPU (``backend.train_epoch``, what ``Model.fit`` runs). Variants (``--variants``):

- ``graph``:   torch, each EM step one captured CUDA graph, fused by ``torch.compile`` (the
               default on CUDA);
- ``eager``:   torch, kernel by kernel (no graph capture, no ``torch.compile``);
- ``cupy``:    the array backend on CuPy (compiler-derived backward plan, no autograd);
- ``cupy-graph``: the same with each EM step replayed as one captured CUDA graph
               (backends/cupy_graph.py; ``capture_error`` says why it fell back, if it did).

``--precision tf32`` runs the torch variants with TF32 matmuls (backends/precision.py); every
record names its precision.

Each runs with every einsum kernel in ``--kernels`` (``matmul``: batched matmuls over the K² pair
products; ``fused``: the Triton kernels of backends/fused_einsum.py; ``auto``: the plan's rule).
The CuPy backend always runs ``matmul``. Reported per configuration (one JSON line each, on stdout
and appended to ``--out``):
``epoch_s`` (median of ``--epochs`` after a warm-up epoch, whose time is ``first_epoch_s`` and
holds compilation and capture), ``infer_s`` (one batch of 100 through ``log_likelihood``, NumPy in
and out, median of 30), ``peak_mb`` (``torch.cuda.max_memory_allocated`` above the memory in use
before the backend was built; for CuPy the memory pool's high-water mark), the GPU's name, the
date and the command.

    python benchmarks/cuda_epoch.py --K 10 20 40 --kernels matmul fused --variants graph
    python benchmarks/cuda_epoch.py --K 10 40 --kernels auto --variants eager cupy cupy-graph --out r.jsonl
    python benchmarks/cuda_epoch.py --K 40 --kernels matmul --precision tf32
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import emit  # noqa: E402
from speed import BATCH, NUM_SAMPLES, NUM_VARIABLES, circuit_text  # noqa: E402

import einc  # noqa: E402
from einc.backends.base import Batch  # noqa: E402
from einc.compiler.pipeline import CompileOptions  # noqa: E402

VARIANTS = {
    "graph": ("torch", {"fuse": True, "capture": True}),
    "eager": ("torch", {"fuse": False, "capture": False}),
    "cupy": ("cupy", {}),
    "cupy-graph": ("cupy", {"capture": True}),
}


def measure(k: int, kernel: str, variant: str, epochs: int, device: str = "cuda",
            precision: str = "fp32") -> dict[str, Any]:
    backend_name, options = VARIANTS[variant]
    precision = precision if backend_name == "torch" else "fp32"  # TF32 is a torch mode
    on_gpu = device.startswith("cuda")
    if not on_gpu:  # a smoke run of this script on the CPU: no graphs, no GPU memory figures
        options = {"fuse": False, "capture": False}
        synchronize, before = (lambda: None), 0
    elif backend_name == "cupy":
        import cupy

        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()
        synchronize = cupy.cuda.Device().synchronize
        before = pool.used_bytes()
    else:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        synchronize = torch.cuda.synchronize
        before = torch.cuda.memory_allocated()
    model = einc.compile(circuit_text(k, 4, 10), backend=backend_name, device=device, dtype="float32",
                         options=CompileOptions(einsum_kernel=kernel), precision=precision, **options)
    backend = model.backend
    x = np.random.default_rng(0).normal(size=(NUM_SAMPLES, NUM_VARIABLES))
    observed = np.ones_like(x, dtype=bool)
    data = backend.upload(x, observed, None)
    order = np.random.default_rng(1).permutation(NUM_SAMPLES)
    started = time.perf_counter()
    model.params, _ = backend.train_epoch(model.params, data, order, BATCH, 0.5)
    synchronize()
    first = time.perf_counter() - started
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.params, _ = backend.train_epoch(model.params, data, order, BATCH, 0.5)
        synchronize()
        times.append(time.perf_counter() - started)
    batch = Batch(x[:BATCH], observed[:BATCH])
    backend.log_likelihood(model.params, batch)
    inference = []
    for _ in range(30):
        started = time.perf_counter()
        backend.log_likelihood(model.params, batch)
        synchronize()
        inference.append(time.perf_counter() - started)
    if not on_gpu:
        peak = 0
    elif backend_name == "cupy":
        peak = pool.total_bytes() - before
    else:
        peak = torch.cuda.max_memory_allocated() - before
    kernels = sorted({getattr(op, "kernel", "") for op in model.plan.ops} - {""})
    return {
        "setup": "rat",  # the paper's efficiency setup (512 Gaussian variables, D=4, R=10)
        "backend": backend_name,
        "variant": variant,
        "device": device,
        "gpu": torch.cuda.get_device_name() if on_gpu else "none",
        "K": k,
        "kernel": kernel,
        "precision": precision,
        "capture_error": getattr(backend, "capture_error", None),
        "plan_kernels": kernels,
        "epoch_s": round(statistics.median(times), 6),
        "epoch_s_min": round(min(times), 6),
        "epoch_s_max": round(max(times), 6),
        "first_epoch_s": round(first, 3),
        "infer_s": round(statistics.median(inference), 7),
        "peak_mb": round(peak / 2**20, 1),
        "parameters": model.num_parameters,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
    }


def profile(k: int, kernel: str, out: Path | None, precision: str = "fp32") -> None:
    """Where a compiled (not captured) EM epoch spends GPU time: the top kernels by CUDA time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = einc.compile(circuit_text(k, 4, 10), device="cuda", options=CompileOptions(einsum_kernel=kernel),
                         fuse=True, capture=False, precision=precision)
    backend = model.backend
    x = np.random.default_rng(0).normal(size=(NUM_SAMPLES, NUM_VARIABLES))
    data = backend.upload(x, np.ones_like(x, dtype=bool), None)
    order = np.arange(NUM_SAMPLES)
    for _ in range(2):
        model.params, _ = backend.train_epoch(model.params, data, order, BATCH, 0.5)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        model.params, _ = backend.train_epoch(model.params, data, order, BATCH, 0.5)
        torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in events)
    print(f"# K={k} kernel={kernel}: {total / 1e3:.2f} ms of kernel time per epoch")
    top = []
    for event in events[:15]:
        share = event.device_time_total / total if total else 0.0
        print(f"{event.device_time_total / 1e3:9.3f} ms {share:6.1%} {event.count:6d}x  {event.key[:90]}")
        top.append({"kernel": event.key[:120], "ms": round(event.device_time_total / 1e3, 4), "count": event.count})
    record = {"benchmark": "cuda_epoch_profile", "gpu": torch.cuda.get_device_name(), "K": k, "kernel": kernel,
              "precision": precision,
              "kernel_ms_per_epoch": round(total / 1e3, 3), "top": top}
    emit(record, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--K", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--kernels", nargs="+", default=["matmul", "fused"], choices=["auto", "matmul", "fused"])
    parser.add_argument("--variants", nargs="+", default=["graph"], choices=sorted(VARIANTS))
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per configuration")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu runs a smoke test of this script")
    parser.add_argument("--precision", choices=["fp32", "tf32"], default="fp32",
                        help="float32 matmuls of the torch variants: IEEE (default) or TF32")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: the top kernels of one compiled (uncaptured) epoch per K and kernel")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("benchmarks/cuda_epoch.py needs a CUDA device")
    if args.profile:
        for k in args.K:
            for kernel in args.kernels:
                profile(k, kernel, args.out, args.precision)
        return
    for variant in args.variants:
        for k in args.K:
            for kernel in (["matmul"] if variant == "cupy" else args.kernels):
                try:
                    record = measure(k, kernel, variant, args.epochs, args.device, args.precision)
                except Exception as error:  # one failing configuration must not lose the others
                    record = {"variant": variant, "K": k, "kernel": kernel, "precision": args.precision,
                              "error": f"{type(error).__name__}: {error}"}
                emit(record, args.out)


if __name__ == "__main__":
    main()
