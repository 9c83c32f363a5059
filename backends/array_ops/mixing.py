"""The mixing op on the array backend (NumPy, CuPy): regions with C > 1 partitions mix them
(paper eq. 5), max-product, the backward step the compiler derived for it
(``ir.backward_plan.MixingBackward``) and top-down backtracking.

    S[m,b,k] = log Σ_c V[m,c,k] exp(S_c[m,b,k] − top) + top,   top = max_c S_c[m,b,k]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from einc.backends.array_ops.contract import contract, finite_max, no_mass
from einc.backends.array_ops.walk import Sweep, Walk
from einc.backends.base import Params, shifted_exp
from einc.ir.backward_plan import MixingBackward
from einc.ir.plan import MixingOp


def forward(
    backend: Any, op: MixingOp, params: Params, values: list[Any], data: Any, max_product: bool
) -> tuple[Any, tuple[Any, ...]]:
    xp = backend.xp
    rows = backend._read(op.input, values)
    stacked = rows.reshape(op.rows, op.components, rows.shape[1], rows.shape[2])  # (M, C, B, K)
    weights = params[op.param]  # (M, C, K)
    if max_product:
        return xp.max(xp.log(weights)[:, :, None, :] + stacked, axis=1), ()
    top = finite_max(xp, stacked, 1)  # (M, 1, B, K)
    stacked_exp = shifted_exp(xp, stacked, top)
    # (M, C, B, K) x (M, C, K) -> (M, B, K)
    mixed = contract(xp, op.equation, ((0, 1),), stacked_exp, weights)
    with np.errstate(divide="ignore"):
        value = xp.log(mixed) + top[:, 0]
    value = xp.where(no_mass(xp, stacked, 1)[:, 0], -np.inf, value).astype(backend.dtype, copy=False)
    return value, (stacked_exp, top[:, 0])


def backward(backend: Any, step: MixingBackward, params: Params, sweep: Sweep) -> None:
    xp = backend.xp
    stacked_exp, top = sweep.forward.saved[step.op]  # (M, C, B, K), (M, B, K)
    v = params[step.param]  # (M, C, K)
    g = backend._scaled_adjoint(
        backend._adjoint(step.op, sweep.forward, sweep.adjoints), sweep.forward.values[step.op], top
    )
    # (M, B, K) x (M, C, K) -> (M, C, B, K)
    grad_in = (
        contract(xp, step.input_adjoint.equation, step.input_adjoint.path, g, v) * stacked_exp
    )
    # (M, B, K) x (M, C, B, K) -> (M, C, K)
    grad_v = contract(
        xp, step.weight_gradient.equation, step.weight_gradient.path, g, stacked_exp
    )
    sweep.weights[step.param] = v * grad_v
    m, c, b, k = grad_in.shape
    backend._accumulate(step.input, grad_in.reshape(m * c, b, k), sweep.forward, sweep.adjoints)


def backtrack(backend: Any, op: MixingOp, params: Params, chosen: Any, walk: Walk) -> None:
    xp = backend.xp
    reached = chosen >= 0  # (M, B)
    k = xp.maximum(chosen, 0)
    rows = backend._read(op.input, walk.values)
    m, c, batch = op.rows, op.components, walk.data.size
    stacked = rows.reshape(m, c, batch, -1)  # (M, C, B, K)
    log_w = xp.log(params[op.param])  # (M, C, K)
    m_index = xp.arange(m)[:, None, None]
    c_index = xp.arange(c)[None, :, None]
    picked_w = log_w[m_index, c_index, k[:, None, :]]  # (M, C, B)
    picked_v = stacked[
        m_index, c_index, xp.arange(batch)[None, None, :], k[:, None, :]
    ]  # (M, C, B)
    logits = picked_w + picked_v
    if not walk.mpe:
        logits = logits + walk.sampler.gumbel(logits)
    component = xp.argmax(logits, axis=1)  # (M, B)
    child = xp.where(c_index == component[:, None, :], k[:, None, :], -1)  # (M, C, B)
    child = xp.where(reached[:, None, :], child, -1)
    backend._write(op.input, child.reshape(m * c, batch), walk.choice)
