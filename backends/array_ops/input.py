"""The input op on the array backend (NumPy, CuPy): exponential-family leaf regions as one
contraction of augmented sufficient statistics (paper §3.3), its backward step (the leaf
statistics Σ_b p · F, ``ir.backward_plan.InputBackward``) and the leaves' emission in
top-down passes (sampling, MPE, means).

    log L[l,b,k] = Σ_{s,f} F[b,l,s,f] · Θ[l,s,f,k],   F = [T(x), obs, log h(x)·obs],  Θ = [θ, −A(θ), 1]
"""

from __future__ import annotations

from typing import Any

from einc.backends.array_ops.contract import contract
from einc.backends.array_ops.walk import Sweep, Walk
from einc.backends.base import Params
from einc.ir.backward_plan import InputBackward
from einc.ir.families import family_rule
from einc.ir.plan import InputOp


def forward(
    backend: Any, op: InputOp, params: Params, values: list[Any], data: Any, max_product: bool
) -> tuple[Any, tuple[Any, ...]]:
    total = None
    features = backend.leaf_features(op, data, max_product)
    for feats, coef in zip(features, backend.leaf_coefficients(op, params, max_product)):
        # (B, L, S, f) x (L, S, f, K) -> (L, B, K)
        term = contract(backend.xp, op.equation, ((0, 1),), feats, coef)
        total = term if total is None else total + term
    assert total is not None, "an input op has at least one block"
    return total, tuple(features)


def backward(backend: Any, step: InputBackward, params: Params, sweep: Sweep) -> None:
    # ∂J/∂ log L = p_L per sample (L, B, K)
    g = backend._adjoint(step.op, sweep.forward, sweep.adjoints)
    for gradient, features in zip(step.leaves, sweep.forward.saved[step.op]):
        c = gradient.coefficients
        # (L, B, K) x (B, L, S, f) -> (L, S, f, K): Σ_b p · [T(x), obs, log h]
        grad = contract(backend.xp, c.equation, c.path, g, features).transpose(
            0, 1, 3, 2
        )  # (L, S, K, f)
        sweep.leaf[gradient.param] = (grad[..., : gradient.stat_dim], grad[..., gradient.stat_dim])


def backtrack(backend: Any, op: InputOp, params: Params, chosen: Any, walk: Walk) -> None:
    xp = backend.xp
    reached = chosen >= 0  # (L, B)
    k = xp.maximum(chosen, 0)
    for block in op.blocks:
        rule = family_rule(block.family)
        cols = backend.columns[block.param]  # (L, S)
        phi = params[block.param]  # (L, S, K, t)
        rows, width = phi.shape[0], phi.shape[1]
        # the chosen component's parameters per sample: (L, S, B, t)
        selected = phi[
            xp.arange(rows)[:, None, None], xp.arange(width)[None, :, None], k[:, None, :]
        ]
        if walk.leaf_value == "sample":
            draw = rule.sample(walk.sampler, selected, block.family)
        elif walk.leaf_value == "mean":
            draw = rule.mean(xp, selected, block.family)
        else:
            draw = rule.mode(xp, selected, block.family)
        draw = draw.astype(backend.dtype, copy=False)  # (L, S, B)
        write = reached[:, None, :] & (backend.valid[block.param] > 0)[..., None]
        write = write & (walk.data.observed[:, cols].transpose(1, 2, 0) == 0)  # (L, S, B)
        region, position, sample = xp.nonzero(write)
        walk.completed[sample, cols[region, position]] = draw[region, position, sample]
