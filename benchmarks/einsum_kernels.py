"""The einsum layer alone on a GPU: the matmul kernel against the fused (Triton) kernel.

One einsum op ``lbi,lbj,lkij->lbk`` of L rows, batch B and K = K_out = K_left = K_right (the
paper's setup has L = 80, 40, 20, 10 at depth 4), timed with ``triton.testing.do_bench`` (median,
CUDA events) for the forward contraction and for forward + backward (all three gradients);
``fused-tf32x3`` is the fused kernel with Triton's 3xTF32 dots (not IEEE fp32: for comparison).
FLOP/s count 2·L·B·K³ multiply-adds per contraction (forward 1, forward + backward 4), with no
credit for padding. One JSON line per (K, kernel) on stdout and appended to ``--out``.

    python benchmarks/einsum_kernels.py --K 10 20 40 --rows 80 --batch 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import emit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--K", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--rows", type=int, default=80)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/einsum_kernels.py needs a CUDA device")
    import triton

    from einc.backends.fused_einsum import einsum_layer
    from einc.backends.torch_ops.einsum import _einsum_layer

    kernels = {
        "matmul": lambda left, right, weights: _einsum_layer(left, right, weights, ((0, 1), (0, 1))),
        "fused": einsum_layer,
        # not fp32: three TF32 products per fp32 product on the tensor cores (a measurement of
        # what tensor cores would buy; einc itself runs IEEE fp32)
        "fused-tf32x3": lambda left, right, weights: einsum_layer(left, right, weights, "tf32x3"),
    }
    for k in args.K:
        shapes = [(args.rows, args.batch, k), (args.rows, args.batch, k), (args.rows, k, k, k)]
        inputs = [torch.rand(shape, device="cuda").requires_grad_(True) for shape in shapes]
        upstream = torch.rand(args.rows, args.batch, k, device="cuda")
        reference = torch.einsum("lbi,lbj,lkij->lbk", *(t.double() for t in inputs))
        flop = 2 * args.rows * args.batch * k**3
        for name, kernel in kernels.items():
            with torch.no_grad():
                error = float((kernel(*inputs).double() - reference).norm() / reference.norm())
                forward_ms = triton.testing.do_bench(lambda: kernel(*inputs), return_mode="median")

            def forward_backward() -> None:
                torch.autograd.grad(kernel(*inputs), inputs, upstream)

            both_ms = triton.testing.do_bench(forward_backward, return_mode="median")
            record = {
                "benchmark": "einsum_kernels", "gpu": torch.cuda.get_device_name(), "kernel": name, "K": k,
                "rows": args.rows, "batch": args.batch, "forward_ms": round(forward_ms, 4),
                "forward_backward_ms": round(both_ms, 4), "relative_error_vs_float64": error,
                "forward_tflops": round(flop / forward_ms / 1e9, 2),
                "forward_backward_tflops": round(4 * flop / both_ms / 1e9, 2),
            }
            emit(record, args.out)


if __name__ == "__main__":
    main()
