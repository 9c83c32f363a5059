"""Which kernel computes each einsum op: decided once, at compile time, for the target device.

An einsum op ``lbi,lbj,lkij->lbk`` has two implementations:

- ``matmul``: the op's opt-einsum path as batched matmuls over the ``(L, B, K·K)`` pair products.
  Every backend has it; it is the reference.
- ``fused``: Triton kernels that keep the pair products in registers (``backends/fused_einsum.py``),
  for torch on CUDA. It moves no ``K²``-wide intermediates through memory and feeds the GPU
  wider tiles than the matmuls' narrow ``K`` side, so it wins once ``K_left·K_right`` is large.

A backend that cannot run the fused kernel (NumPy, torch on the CPU) runs ``matmul``: both compute
the same contraction, and the choice only moves time.
"""

from __future__ import annotations

EINSUM_KERNELS = ("auto", "matmul", "fused")

# Targets with a fused einsum kernel, and the smallest K_left·K_right from which it is chosen.
# Measured on an NVIDIA H200 (benchmarks/README.md, "fused einsum kernel"): see there for the
# per-K epoch times of both kernels that set this threshold.
FUSED_MIN_PAIRS = {"cuda": 256}


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
