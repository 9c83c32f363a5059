"""Which kernel computes each einsum op: decided once, at compile time, for the target device.

An einsum op ``lbi,lbj,lkij->lbk`` has two implementations:

- ``matmul``: the op's opt-einsum path as batched matmuls over the ``(L, B, K·K)`` pair products.
  Every backend has it; it is the reference.
- ``fused``: Triton kernels that keep the pair products in registers (``backends/fused_einsum.py``),
  for torch on CUDA; no ``K²``-wide intermediates go through memory.

A backend that cannot run the fused kernel (NumPy, torch on the CPU) runs ``matmul``: both compute
the same contraction, and the choice only moves time.

``auto`` picks, per op, the kernel measured fastest for the target. On an NVIDIA H200 (2026-11-30,
benchmarks/README.md "GPU", float32 IEEE) the fused kernel lost at every K of the paper's setup:
one einsum layer (L=80, B=100) forward + backward took 0.19 / 0.31 / 0.42 ms with ``matmul`` and
0.49 / 0.46 / 1.67 ms fused at K = 10 / 20 / 40, and a captured EM epoch 4.6 / 7.1 / 17.4 ms
against 8.9 / 23.2 / 76.8 ms (cuBLAS's fp32 GEMMs beat Triton's FMA dots, which fp32 without
TF32 must use). So no target picks ``fused`` by itself today; it runs where a plan asks for it.
"""

from __future__ import annotations

EINSUM_KERNELS = ("auto", "matmul", "fused")

# Targets on which ``auto`` picks the fused kernel, and the smallest K_left·K_right from which it
# does: none, by the measurements above. A faster fused kernel enters here with its crossover.
FUSED_MIN_PAIRS: dict[str, int] = {}


def einsum_kernel(choice: str, target: str, k_left: int, k_right: int) -> str:
    """The kernel of one einsum op: ``choice`` unless it is ``auto``, else by the target's rule."""
    if choice not in EINSUM_KERNELS:
        raise ValueError(f"unknown einsum kernel '{choice}'; expected one of {', '.join(EINSUM_KERNELS)}")
    if choice != "auto":
        return choice
    threshold = FUSED_MIN_PAIRS.get(target.split(":", 1)[0])
    if threshold is not None and k_left * k_right >= threshold:
        return "fused"
    return "matmul"
