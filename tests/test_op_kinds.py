"""Every plan op kind and leaf family has its rules everywhere (plan/ir, compiler, every backend).

An op kind is its IR class (fields, operands, cost and plan-table row: ``ir.plan.PlanOp``), its
reverse-mode rule (``compiler.backward.BACKWARD_RULES``), the array backend's forward/max-product,
backward and backtrack rules, and the torch backend's rule (``OP_RULES``, one module per kind).
These tests fail when a kind lacks an entry in any of them, then run plans that contain
every kind and family through every CPU backend: forward, max-product, statistics, EM,
sampling and MPE.
"""

from __future__ import annotations

import inspect
from typing import get_args

import numpy as np
import pytest

from einc.backends import array_backend, torch_backend
from einc.backends.base import BACKENDS, Batch, create_backend
from einc.compiler import backward as backward_compiler
from einc.compiler.params import init_parameters
from einc.ir.backward_plan import BackwardStep
from einc.ir.families import FAMILIES
from einc.errors import BackendError
from einc.ir.neural import DECODERS
from einc.ir.plan import InputOp, Op, PlanOp, VaeOp
from einc.ir.products import PRODUCT_KINDS
from einc.compiler.lower import PRODUCT_LOWERINGS

from oracles import (
    VAE_CASES,
    BERNOULLI,
    BINOMIAL3,
    CATEGORICAL3,
    FAMILY_CASES,
    INDICATOR3,
    NORMAL,
    POISSON,
    explicit_graph,
    hadamard_graph,
    plan_of,
    random_data,
    rat_graph,
)

OP_TYPES = set(get_args(Op))


def _plans():
    """Plans that together hold every op kind, every leaf family and every vae decoder."""
    return [
        plan_of(explicit_graph([BERNOULLI, CATEGORICAL3, BINOMIAL3, NORMAL], k=2)),
        plan_of(rat_graph([FAMILY_CASES[name] for name in sorted(FAMILIES)], 2, 2, k=2)),
        plan_of(hadamard_graph([BERNOULLI, INDICATOR3, NORMAL, POISSON, CATEGORICAL3], k=3, heads=2)),
        # vae leaves beside exponential-family ones, every decoder, in one circuit
        plan_of(hadamard_graph([VAE_CASES[name] for name in sorted(VAE_CASES)], k=3)),
    ]


def _runs_on(plan, name: str) -> bool:
    return all(op.backend_problem(name) is None for op in plan.ops)


def test_every_op_kind_has_its_ir_rules() -> None:
    """Each op class implements the PlanOp protocol (abstract methods left open fail here)."""
    for op_type in OP_TYPES:
        assert issubclass(op_type, PlanOp), op_type
        assert not inspect.isabstract(op_type), f"{op_type.__name__} leaves PlanOp methods open"
        assert isinstance(op_type.kind, str) and op_type.kind
    assert len({op_type.kind for op_type in OP_TYPES}) == len(OP_TYPES)


def test_every_op_kind_has_rules_in_every_backend_table() -> None:
    assert set(backward_compiler.BACKWARD_RULES) == OP_TYPES, "compiler reverse-mode rules"
    assert set(array_backend.FORWARD_RULES) == OP_TYPES, "array forward (and max-product) rules"
    assert set(array_backend.BACKTRACK_RULES) == OP_TYPES, "array sampling/MPE rules"
    assert set(array_backend.BACKWARD_RULES) == set(get_args(BackwardStep)), (
        "array backward executors"
    )
    assert set(torch_backend.OP_RULES) == OP_TYPES, "torch rules (OP_RULES)"
    # every product kind of the language lowers to a plan op kind that has all of the above
    assert set(PRODUCT_LOWERINGS) == set(PRODUCT_KINDS)
    assert {lowering.op_kind for lowering in PRODUCT_LOWERINGS.values()} <= {t.kind for t in OP_TYPES}
    assert set(FAMILY_CASES) == set(FAMILIES), "a leaf family this test does not exercise"


@pytest.mark.parametrize("name", sorted(n for n in BACKENDS if n != "cupy"))  # cupy: test_gpu.py
def test_every_op_kind_and_family_runs_on_every_backend(name: str) -> None:
    plans = _plans()
    assert {type(op) for plan in plans for op in plan.ops} == OP_TYPES
    covered = {block.family.name for plan in plans for op in plan.ops if isinstance(op, InputOp) for block in op.blocks}
    assert covered == set(FAMILIES)
    decoders = {op.family.arg("decoder").name for plan in plans for op in plan.ops if isinstance(op, VaeOp)}
    assert decoders == set(DECODERS)
    for plan in plans:
        if not _runs_on(plan, name):
            with pytest.raises(BackendError, match="needs the torch backend"):
                create_backend(name, plan, dtype="float64")
            continue
        backend = create_backend(name, plan, dtype="float64")
        params = backend.put(init_parameters(plan, 0))
        x = random_data(plan.graph, 8, 0)
        observed = np.random.default_rng(1).random(x.shape) >= 0.3
        batch = Batch(np.where(observed, x, 0.0), observed)
        assert np.isfinite(backend.log_likelihood(params, batch)).all()
        assert np.isfinite(backend.log_likelihood(params, batch, max_product=True)).all()
        for mpe, leaf_value in ((False, "sample"), (False, "mean"), (True, "mode")):
            out = backend.backtrack(params, batch, mpe, leaf_value, np.zeros(8, dtype=int), 0)
            assert np.isfinite(out).all(), (name, leaf_value)
            assert np.all(out[observed] == x[observed])
        if not plan.trained_by_em:  # network weights: gradient training only (test_vae.py)
            with pytest.raises(BackendError, match="method='adam'"):
                backend.statistics(params, batch)
            continue
        stats = backend.statistics(params, batch)
        assert {s.name for s in plan.params if s.normalised_over} == set(stats.weights)
        assert {s.name for s in plan.params if s.kind == "leaf"} == set(stats.leaf)
        updated = backend.get(backend.em_update(params, stats, 0.5, pseudocount=0.1))
        assert all(np.isfinite(v).all() for v in updated.values())
        for spec in plan.params:
            if spec.kind != "leaf":  # the M-step keeps every kind's weights normalised
                np.testing.assert_allclose(updated[spec.name].sum(axis=spec.normalised_over), 1.0)


def test_a_kind_without_a_torch_rule_is_a_backend_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from einc.errors import BackendError
    from einc.ir.plan import HadamardOp

    plan = _plans()[2]
    backend = create_backend("torch", plan, dtype="float64")
    params = backend.put(init_parameters(plan, 0))
    x = random_data(plan.graph, 4, 0)
    monkeypatch.delitem(torch_backend.OP_RULES, HadamardOp)
    with pytest.raises(BackendError, match="no rule for plan op HadamardOp"):
        backend.log_likelihood(params, Batch(x, np.ones_like(x, dtype=bool)))
    monkeypatch.undo()
    monkeypatch.delitem(array_backend.FORWARD_RULES, HadamardOp)
    numpy_backend = create_backend("numpy", plan, dtype="float64")
    with pytest.raises(BackendError, match="no forward rule for HadamardOp"):
        numpy_backend.log_likelihood(numpy_backend.put(init_parameters(plan, 0)), Batch(x, np.ones_like(x, dtype=bool)))
