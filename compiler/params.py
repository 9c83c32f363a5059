"""Initial parameters for a plan: a dictionary of float64 NumPy arrays, deterministic per seed."""

from __future__ import annotations

import numpy as np

from einc.ir.families import family_rule
from einc.ir.plan import Plan


def init_parameters(plan: Plan, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for spec in plan.params:
        if spec.kind != "leaf":
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
