"""Parameters of a plan: their initial values and what makes a value valid, per parameter kind.

Sum weights (every kind but ``leaf``) are non-negative and normalised over the axes their
``ParamSpec.normalised_over`` names (the op kind decides them at lowering); leaf parameters are
valid when their family's projection leaves them unchanged; free parameters (neural leaves'
network weights) are any finite numbers, initialised uniformly in ±``init_bound``. ``init_parameters`` draws values that satisfy these rules and ``parameter_problems``
checks them (what ``einc.load`` and ``Model.set_parameters`` run), so both read one table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from einc.ir.families import family_rule
from einc.ir.plan import ParamSpec, Plan

# Stored weights are float32 sums of up to K² terms: allow rounding, not a different distribution.
_SUM_TOLERANCE = 1e-3
_LEAF_RELATIVE_TOLERANCE = 1e-3


def init_parameters(plan: Plan, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic initial parameters (float64 NumPy arrays) for every parameter of ``plan``."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for spec in plan.params:
        if spec.free:
            # network weights and biases: uniform ±init_bound (lowering sets torch.nn.Linear's)
            params[spec.name] = rng.uniform(-spec.init_bound, spec.init_bound, size=spec.shape)
        elif spec.kind != "leaf":
            # random positive sum weights, normalised over their axes (einsum: the (i, j) child
            # pairs; mixing: the partitions; hadamard: the child entries j)
            raw = rng.uniform(0.01, 1.0, size=spec.shape)
            params[spec.name] = raw / raw.sum(axis=spec.normalised_over, keepdims=True)
        else:
            assert spec.family is not None and spec.domain is not None
            rule = family_rule(spec.family)
            phi = rule.init(rng, spec.shape[:3], spec.family, spec.domain)
            params[spec.name] = np.asarray(rule.project(np, phi, spec.family), dtype=np.float64)
    return params


def parameter_problems(plan: Plan, params: Mapping[str, Any]) -> list[str]:
    """Every reason ``params`` are not valid parameters of ``plan`` (empty when they are).

    Each message starts with the parameter's name: present, the plan's shape, numbers, finite,
    and allowed by its kind (normalised non-negative weights; leaf values inside the family).
    """
    problems: list[str] = []
    for spec in plan.params:
        if spec.name not in params:
            problems.append(f"'{spec.name}' is missing")
            continue
        problem = _problem(spec, params[spec.name])
        if problem:
            problems.append(f"'{spec.name}' {problem}")
    return problems


def _problem(spec: ParamSpec, value: Any) -> str | None:
    array = np.asarray(value) if not hasattr(value, "detach") else value.detach().cpu().numpy()
    if array.dtype.kind not in "biuf":
        return f"has dtype {array.dtype}; expected floating-point numbers"
    if tuple(array.shape) != spec.shape:
        return f"has shape {tuple(array.shape)}; expected {spec.shape}"
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        return f"holds a non-finite value ({_first(array, ~np.isfinite(array))})"
    if spec.normalised_over:
        if np.any(array < 0):
            return f"holds a negative weight ({_first(array, array < 0)}); weights are probabilities"
        sums = array.sum(axis=spec.normalised_over)
        off = np.abs(sums - 1.0) > _SUM_TOLERANCE
        if np.any(off):
            where = tuple(int(i) for i in np.argwhere(off)[0])
            return f"is not normalised: weights sum to {sums[where]:.6g} at {where}; expected 1"
        return None
    if spec.free:
        return None  # any finite real number is a network weight
    if spec.kind != "leaf" or spec.family is None:
        return f"is of kind '{spec.kind}', for which einc has no validity rule"
    projected = np.asarray(family_rule(spec.family).project(np, array, spec.family), dtype=np.float64)
    outside = ~np.isclose(projected, array, rtol=_LEAF_RELATIVE_TOLERANCE, atol=1e-9)
    if np.any(outside):
        return f"holds a value outside the {spec.family} family's range ({_first(array, outside)})"
    return None


def _first(array: np.ndarray, bad: np.ndarray) -> str:
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{array[where]:g} at {where}"
