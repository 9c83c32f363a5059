"""The einsum (outer product) op on the array backend (NumPy, CuPy): the log-einsum-exp layer
(paper eq. 4) and its max-product variant, the backward step the compiler derived for it
(``ir.backward_plan.EinsumBackward``) and top-down backtracking.

    S[l,b,k] = log Σ_ij W[l,k,i,j] exp(N[l,b,i] − a) exp(N'[l,b,j] − a') + a + a'

Backward, with G = ∂J/∂S · exp(a + a' − S): ∂J/∂N = exp(N − a) · Σ_kj G W exp(N' − a'),
likewise for N', and n = W · Σ_b G exp(N − a) exp(N' − a').
"""

from __future__ import annotations

from typing import Any

import numpy as np

from einc.backends.array_ops.contract import contract, finite_max, no_mass
from einc.backends.array_ops.walk import Sweep, Walk
from einc.backends.base import Params, shifted_exp
from einc.ir.backward_plan import EinsumBackward
from einc.ir.plan import EinsumOp

# Elements of the (L, batch, K, i, j) scores a max-product einsum or an einsum backtrack
# materialises at once; the batch is processed in chunks of this size (not per sample).
_CHUNK_ELEMENTS = 2**22


def forward(
    backend: Any, op: EinsumOp, params: Params, values: list[Any], data: Any, max_product: bool
) -> tuple[Any, tuple[Any, ...]]:
    xp = backend.xp
    left = backend._read(op.left, values)  # (L, B, i)
    right = backend._read(op.right, values)  # (L, B, j)
    weights = params[op.param]  # (L, k, i, j)
    if max_product:
        return max_einsum(xp, left, right, weights), ()
    left_max = finite_max(xp, left, -1)  # a  (L, B, 1)
    right_max = finite_max(xp, right, -1)  # a' (L, B, 1)
    left_exp = shifted_exp(xp, left, left_max)  # ≤ 1
    right_exp = shifted_exp(xp, right, right_max)
    # log-einsum-exp (eq. 4): (L, B, i) x (L, B, j) x (L, k, i, j) -> (L, B, k)
    mixed = contract(xp, op.equation, op.path, left_exp, right_exp, weights)
    shift = left_max + right_max
    with np.errstate(divide="ignore"):
        value = xp.log(mixed) + shift
    empty = no_mass(xp, left, -1) | no_mass(xp, right, -1)  # (L, B, 1)
    return xp.where(empty, -np.inf, value).astype(backend.dtype, copy=False), (left_exp, right_exp, shift)


def backward(backend: Any, step: EinsumBackward, params: Params, sweep: Sweep) -> None:
    xp = backend.xp
    left_exp, right_exp, shift = sweep.forward.saved[step.op]  # (L,B,i), (L,B,j), (L,B,1)
    w = params[step.param]  # (L, k, i, j)
    g = backend._scaled_adjoint(
        backend._adjoint(step.op, sweep.forward, sweep.adjoints),
        sweep.forward.values[step.op],
        shift,
    )
    # (L, B, k) x (L, B, j) x (L, k, i, j) -> (L, B, i)
    left = (
        contract(xp, step.left_adjoint.equation, step.left_adjoint.path, g, right_exp, w)
        * left_exp
    )
    # (L, B, k) x (L, B, i) x (L, k, i, j) -> (L, B, j)
    right = (
        contract(xp, step.right_adjoint.equation, step.right_adjoint.path, g, left_exp, w)
        * right_exp
    )
    # (L, B, k) x (L, B, i) x (L, B, j) -> (L, k, i, j)
    grad_w = contract(
        xp, step.weight_gradient.equation, step.weight_gradient.path, g, left_exp, right_exp
    )
    sweep.weights[step.param] = w * grad_w
    backend._accumulate(step.left, left, sweep.forward, sweep.adjoints)
    backend._accumulate(step.right, right, sweep.forward, sweep.adjoints)


def backtrack(backend: Any, op: EinsumOp, params: Params, chosen: Any, walk: Walk) -> None:
    xp = backend.xp
    reached = chosen >= 0  # (L, B)
    k = xp.maximum(chosen, 0)
    left = backend._read(op.left, walk.values)  # (L, B, i)
    right = backend._read(op.right, walk.values)  # (L, B, j)
    log_w = xp.log(params[op.param])  # (L, k, i, j)
    rows_index = xp.arange(op.rows)[:, None]
    best_parts = []
    # chunk over the batch so the (L, b, i, j) logits stay small
    step = max(1, _CHUNK_ELEMENTS // max(1, op.rows * op.k_left * op.k_right))
    for start in range(0, walk.data.size, step):
        stop = start + step
        picked = log_w[rows_index, k[:, start:stop]]  # (L, b, i, j)
        logits = picked + left[:, start:stop, :, None] + right[:, start:stop, None, :]
        flat = logits.reshape(op.rows, logits.shape[1], -1)
        if not walk.mpe:
            flat = flat + walk.sampler.gumbel(flat)
        best_parts.append(xp.argmax(flat, axis=-1))  # (L, b)
    best = best_parts[0] if len(best_parts) == 1 else xp.concatenate(best_parts, 1)
    i = xp.where(reached, best // op.k_right, -1)
    j = xp.where(reached, best % op.k_right, -1)
    backend._write(op.left, i, walk.choice)
    backend._write(op.right, j, walk.choice)


def max_einsum(xp: Any, left: Any, right: Any, weights: Any) -> Any:
    """Max-product einsum: max_ij log W[l,k,i,j] + N[l,b,i] + N'[l,b,j] -> (L, B, k).

    No BLAS helps in the (max, +) semiring, so this is L·B·K³ additions: the K² outer sum
    N_i + N'_j is formed first, so that only one full-size addition (into a reused buffer, no
    page faults per chunk) and one contiguous max remain per chunk of the batch.
    """
    log_w = xp.log(weights)[:, None]  # (L, 1, k, i, j)
    rows, k_out, k_left, k_right = weights.shape
    out = []
    buffer = None
    # chunk over the batch so the (L, b, k, i, j) scores stay small
    step = max(1, _CHUNK_ELEMENTS // max(1, weights.size))
    for start in range(0, left.shape[1], step):
        pair = (
            left[:, start : start + step, :, None] + right[:, start : start + step, None, :]
        )  # (L, b, i, j)
        shape = (rows, pair.shape[1], k_out, k_left, k_right)
        if buffer is None or buffer.shape != shape:
            buffer = xp.empty(shape, dtype=pair.dtype)
        xp.add(log_w, pair[:, :, None], out=buffer)  # (L, 1, k, i, j) + (L, b, 1, i, j)
        out.append(xp.max(buffer.reshape(rows, pair.shape[1], k_out, k_left * k_right), axis=-1))
    return out[0] if len(out) == 1 else xp.concatenate(out, 1)
