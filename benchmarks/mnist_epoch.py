"""One epoch of online EM on full MNIST with the paper's demo circuit, and its test bits per dimension.

Circuit: ``examples/mnist_categorical.pc`` (Poon–Domingos, Δ=7, both axes, categorical(256)
pixel leaves) with K = ``--K`` sums and leaves. Training: one epoch of online EM over the 60,000
training images (batch 100, step size ``--step-size``) on data resident on the device, after a
warm-up on the first 1,000 images that holds compilation and CUDA-graph capture (its time is
``warmup_s``). Reported per K (one JSON line, on stdout and appended to ``--out``): ``epoch_s``,
the mean test log-likelihood over the 10,000 test images and ``test_bpd`` = −LL / (784 ln 2).

    python benchmarks/mnist_epoch.py --K 10 32 --device cuda     # MNIST: --data, or `einc data fetch mnist`
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
from pathlib import Path

import numpy as np

import einc
from einc.compiler.pipeline import CompileOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import MNIST_HELP, emit, mnist_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run(data: Path, k: int, device: str, step_size: float, kernel: str, limit: int | None) -> dict:
    import torch

    arrays = np.load(data)
    train, test = arrays["x_train"][:limit].astype(np.float64), arrays["x_test"][:limit].astype(np.float64)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    model = einc.compile(ROOT / "examples" / "mnist_categorical.pc", device=device,
                         options=CompileOptions(sums=k, einsum_kernel=kernel))
    backend = model.backend
    values, observed = np.nan_to_num(train), ~np.isnan(train)
    resident = backend.upload(values, observed, None)
    started = time.perf_counter()
    model.params, _ = backend.train_epoch(model.params, resident, np.arange(min(1000, len(train))), 100, step_size)
    synchronize()
    warmup = time.perf_counter() - started
    order = np.random.default_rng(0).permutation(len(train))
    started = time.perf_counter()
    model.params, total = backend.train_epoch(model.params, resident, order, 100, step_size)
    synchronize()
    epoch = time.perf_counter() - started
    test_ll = float(np.mean(model.log_likelihood(test, batch_size=1000)))
    return {
        "benchmark": "mnist_epoch",
        "setup": "mnist_pd",
        "circuit": "examples/mnist_categorical.pc",
        "backend": "torch",
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "K": k,
        "kernel": kernel,
        "plan_kernels": sorted({getattr(op, "kernel", "") for op in model.plan.ops} - {""}),
        "parameters": model.num_parameters,
        "warmup_s": round(warmup, 3),
        "epoch_s": round(epoch, 4),
        "train_ll_epoch": total / len(train),
        "test_ll": test_ll,
        "test_bpd": -test_ll / (784 * math.log(2)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help=MNIST_HELP)
    parser.add_argument("--K", type=int, nargs="+", default=[10, 32])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--step-size", type=float, default=0.2)
    parser.add_argument("--limit", type=int, help="use only the first LIMIT training and test images (smoke runs)")
    parser.add_argument("--kernel", default="auto", choices=["auto", "matmul", "fused"])
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    args = parser.parse_args()
    args.data = mnist_path(args.data)
    for k in args.K:
        try:
            record = run(args.data, k, args.device, args.step_size, args.kernel, args.limit)
        except Exception as error:  # one failing K must not lose the others
            record = {"benchmark": "mnist_epoch", "K": k, "error": f"{type(error).__name__}: {error}"}
        emit(record, args.out)


if __name__ == "__main__":
    main()
