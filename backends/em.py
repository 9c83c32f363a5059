"""The EM M-step as one pure function of parameters and expected statistics (paper eqs. 7–9).

Written against an array namespace ``xp`` so that every backend runs the same update.
A weight vector or leaf component that received no posterior mass keeps its parameters: the
mini-batch estimate is undefined there, and replacing it by 0/0 is how NaNs enter other libraries.
"""

from __future__ import annotations

from typing import Any

from einc.ir.families import family_rule
from einc.ir.plan import Plan

# Posterior mass below this is "no mass" (float32 sums of exact zeros stay exactly zero).
NO_MASS = 1e-30
# Sum weights are kept strictly positive so the log-einsum-exp trick stays finite (paper §3.2).
MIN_WEIGHT = 1e-12


def _normalise(xp: Any, counts: Any, axes: tuple[int, ...], old: Any, step_size: float) -> Any:
    """w_batch = n / Σn over ``axes``; w ← (1−λ) w + λ w_batch; kept ≥ MIN_WEIGHT and normalised."""
    total = counts.sum(axis=axes, keepdims=True)
    has_mass = total > NO_MASS
    estimate = xp.where(has_mass, counts / xp.where(has_mass, total, 1.0), old)
    new = xp.clip(old + step_size * (estimate - old), MIN_WEIGHT, None)
    return new / new.sum(axis=axes, keepdims=True)


def em_update(xp: Any, plan: Plan, params: dict[str, Any], weight_counts: dict[str, Any],
              leaf_stats: dict[str, tuple[Any, Any]], step_size: float) -> dict[str, Any]:
    """Return new parameters: w ← (1−λ) w + λ w_batch,  φ ← (1−λ) φ + λ φ_batch."""
    new = dict(params)
    for spec in plan.params:
        if spec.kind == "einsum":
            # weights (L, K, i, j) normalised over (i, j)
            new[spec.name] = _normalise(xp, weight_counts[spec.name], (2, 3), params[spec.name], step_size)
        elif spec.kind == "mixing":
            # weights (M, C, K) normalised over C
            new[spec.name] = _normalise(xp, weight_counts[spec.name], (1,), params[spec.name], step_size)
        else:
            assert spec.family is not None
            rule = family_rule(spec.family)
            sum_pt, sum_p = leaf_stats[spec.name]  # (L, S, K, t), (L, S, K)
            old = params[spec.name]
            has_mass = (sum_p > NO_MASS)[..., None]
            estimate = xp.where(has_mass, sum_pt / xp.where(has_mass, sum_p[..., None], 1.0), old)
            estimate = rule.project(xp, estimate, spec.family)
            new[spec.name] = rule.project(xp, old + step_size * (estimate - old), spec.family)
    return new
