"""The hadamard (element-wise / CP) product op on the array backend (NumPy, CuPy).

    log P[l,b,j] = Σ_{r: owner[r] = l} C[r,b,j]         element-wise product of the parts, in logs
    S[l,b,k]     = log Σ_j W[l,k,j] exp(P[l,b,j] − top) + top,   top = max_j P[l,b,j]

Forward (and max-product), the backward step the compiler derived for it
(``ir.backward_plan.HadamardBackward``) and top-down backtracking; ``array_backend`` keys its rule
tables by ``HadamardOp`` / ``HadamardBackward`` to these functions. Backward, with the adjoint
G = ∂J/∂S · exp(top − S) (= ∂J/∂S / Σ_j W exp(P − top)):

    ∂J/∂P[l,b,j] = exp(P − top)[l,b,j] · Σ_k G[l,b,k] W[l,k,j]     -> every part r of row l
    ∂J/∂W[l,k,j] = Σ_b G[l,b,k] exp(P − top)[l,b,j],               n = W · ∂J/∂W
"""

from __future__ import annotations

from typing import Any

import numpy as np

from einc.backends.array_ops.contract import contract, finite_max
from einc.backends.array_ops.walk import Sweep, Walk
from einc.backends.base import Params
from einc.ir.backward_plan import HadamardBackward
from einc.ir.plan import HadamardOp

# Elements of the (L, b, K_out, K_in) max-product scores materialised at once (batch chunks).
_CHUNK_ELEMENTS = 2**22


def _slots(backend: Any, op: HadamardOp) -> Any:
    """(A, L) device index: the a-th part row of each output row, or R (a zero row) past its arity.

    Derived once per op from ``owner`` and cached on the backend with its other index arrays.
    """
    key = ("hadamard-slots", op.owner)
    cached = backend.row_index.get(key)
    if cached is None:
        arity = max(op.arities)
        slots = np.full((arity, op.rows), len(op.owner), dtype=np.int64)
        filled = [0] * op.rows
        for row, owner in enumerate(op.owner):
            slots[filled[owner], owner] = row
            filled[owner] += 1
        cached = (backend.xp.asarray(slots), True)
        backend.row_index[key] = cached
    return cached[0]


def _owner(backend: Any, owner: tuple[int, ...]) -> Any:
    """``owner`` (R,) as a device index array, cached on the backend."""
    key = ("hadamard-owner", owner)
    cached = backend.row_index.get(key)
    if cached is None:
        cached = (backend.xp.asarray(np.asarray(owner, dtype=np.int64)), False)
        backend.row_index[key] = cached
    return cached[0]


def log_product(backend: Any, op: HadamardOp, values: list[Any]) -> Any:
    """log P (L, B, K_in): the parts of each row added up, one gather per part position."""
    xp = backend.xp
    parts = backend._read(op.parts, values)  # (R, B, j)
    padded = xp.concatenate([parts, xp.zeros_like(parts[:1])], 0)  # row R: log 1, for padding
    slots = _slots(backend, op)  # (A, L)
    product = padded[slots[0]]
    for position in range(1, slots.shape[0]):
        product = product + padded[slots[position]]  # (L, B, j)
    return product


def forward(backend: Any, op: HadamardOp, params: dict[str, Any], values: list[Any], data: Any,
            max_product: bool) -> tuple[Any, tuple[Any, ...]]:
    xp = backend.xp
    product = log_product(backend, op, values)  # (L, B, j)
    weights = params[op.param]  # (L, k, j)
    if max_product:
        return _max_sum(xp, product, weights), ()
    top = finite_max(xp, product, -1)  # (L, B, 1)
    product_exp = xp.exp(product - top)  # ≤ 1
    # (L, B, j) x (L, k, j) -> (L, B, k)
    mixed = contract(xp, op.equation, ((0, 1),), product_exp, weights)
    with np.errstate(divide="ignore"):
        value = xp.log(mixed) + top
    return value, (product_exp, top)


def _max_sum(xp: Any, product: Any, weights: Any) -> Any:
    """max_j log W[l,k,j] + P[l,b,j] -> (L, B, k), in batch chunks of bounded size."""
    log_w = xp.log(weights)[:, None]  # (L, 1, k, j)
    step = max(1, _CHUNK_ELEMENTS // max(1, weights.size))
    out = []
    for start in range(0, product.shape[1], step):
        # (L, 1, k, j) + (L, b, 1, j) -> (L, b, k, j), max over j
        out.append(xp.max(log_w + product[:, start : start + step, None, :], axis=-1))
    return out[0] if len(out) == 1 else xp.concatenate(out, 1)


def backward(backend: Any, step: HadamardBackward, params: Params, sweep: Sweep) -> None:
    xp = backend.xp
    product_exp, top = sweep.forward.saved[step.op]  # (L, B, j), (L, B, 1)
    w = params[step.param]  # (L, k, j)
    g = backend._scaled_adjoint(
        backend._adjoint(step.op, sweep.forward, sweep.adjoints), sweep.forward.values[step.op], top
    )  # (L, B, k)
    c = step.product_adjoint
    # (L, B, k) x (L, k, j) -> (L, B, j)
    product_adjoint = contract(xp, c.equation, c.path, g, w) * product_exp
    c = step.weight_gradient
    # (L, B, k) x (L, B, j) -> (L, k, j)
    sweep.weights[step.param] = w * contract(xp, c.equation, c.path, g, product_exp)
    # a product of parts is a sum of their logs: each part row gets its row's adjoint (R, B, j)
    backend._accumulate(step.parts, product_adjoint[_owner(backend, step.owner)], sweep.forward,
                        sweep.adjoints)


def backtrack(backend: Any, op: HadamardOp, params: Params, chosen: Any, walk: Walk) -> None:
    """Pick the entry j of each reached row's element-wise product by arg-max (MPE) or
    Gumbel-max (sampling) of log W[l,k,j] + log P[l,b,j]; every part of the row selects j."""
    xp = backend.xp
    reached = chosen >= 0  # (L, B)
    k = xp.maximum(chosen, 0)
    product = log_product(backend, op, walk.values)  # (L, B, j)
    log_w = xp.log(params[op.param])  # (L, k, j)
    picked = log_w[xp.arange(op.rows)[:, None], k]  # (L, B, j)
    logits = picked + product
    if not walk.mpe:
        logits = logits + walk.sampler.gumbel(logits)
    best = xp.where(reached, xp.argmax(logits, axis=-1), -1)  # (L, B)
    backend._write(op.parts, best[_owner(backend, op.owner)], walk.choice)  # (R, B)
