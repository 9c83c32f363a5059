"""The array backend (NumPy here; CuPy in test_gpu.py) against the torch reference, and the
compiler-derived backward plan against torch autograd and finite differences.

Every leaf family on explicit (a DAG with a mixture at the root), RAT and PD structures, plus
mixed-family and multi-head circuits: float64 agreement to 1e-10 on log-likelihoods, per-sample
marginals, max-product values, MPE completions, E-step statistics and parameters after EM.
"""

from __future__ import annotations

import itertools
import math
import sys
from typing import Any

import numpy as np
import pytest
import torch
from einc.backends import array_backend
from einc.backends.array_backend import (
    FORWARD_RULES,
    ArrayBackend,
    ArraySampler,
    contract,
)
from einc.backends.base import Batch, Statistics, create_backend
from einc.compiler import backward as backward_compiler
from einc.compiler.backward import derive_backward, einsum_gradient
from einc.compiler.params import init_parameters
from einc.compiler.verify import verify
from einc.ir.backward_plan import EinsumBackward, MixingBackward
from einc.errors import BackendError
from einc.ir.plan import EinsumOp, MixingOp
from oracles import (
    assert_samples_follow_the_model,
    assert_weight_counts_match_finite_differences,
    random_data,
    BERNOULLI,
    BINOMIAL3,
    CATEGORICAL3,
    FAMILY_CASES,
    INDICATOR,
    INDICATOR3,
    NORMAL,
    POISSON,
    enumerate_states,
    explicit_graph,
    hadamard_graph,
    mixed_graph,
    oracle_log_density,
    pd_graph,
    plan_of,
    rat_graph,
    tree_graph,
)

from einc.model import Model

TOL = 1e-10

ALL_FAMILIES = [BERNOULLI, CATEGORICAL3, BINOMIAL3, NORMAL, POISSON]
TREE = [-1, 0, 0, 1, 1, 2]  # a parent list: node 0 the root, 1 and 2 its children, ...

STRUCTURES = {
    # indicator leaves need K = their number of categories
    "explicit": lambda family: explicit_graph([family] * 4, k=2, inputs=2 if family == INDICATOR else 3),
    "rat": lambda family: rat_graph([family] * 6, depth=2, replicas=2, k=2),
    "pd": lambda family: pd_graph([family] * 6, 2, 3, k=2),
    # element-wise (hadamard) products: a DAG with 3-ary partitions and mixtures, an HCLT
    "hadamard": lambda family: hadamard_graph([family] * 5, k=2),
    "tree": lambda family: tree_graph([family] * 6, TREE, k=2),
    # both kinds in one circuit: einsum and hadamard ops in one plan and one layer
    "mixed": lambda family: mixed_graph([family] * 5, k=2),
}

CIRCUITS = {
    f"{structure}-{name}": (lambda s=structure, f=family: STRUCTURES[s](f))
    for structure in STRUCTURES
    for name, family in FAMILY_CASES.items()
}
CIRCUITS["explicit-mixed"] = lambda: explicit_graph(
    [BERNOULLI, CATEGORICAL3, NORMAL, POISSON], k=2, inputs=3
)
CIRCUITS["rat-mixed"] = lambda: rat_graph(ALL_FAMILIES, depth=2, replicas=2, k=3)
CIRCUITS["pd-mixed"] = lambda: pd_graph(ALL_FAMILIES + [BINOMIAL3], 2, 3, k=2)
CIRCUITS["hadamard-mixed"] = lambda: hadamard_graph(ALL_FAMILIES, k=3, heads=2)
CIRCUITS["tree-mixed"] = lambda: tree_graph(ALL_FAMILIES + [INDICATOR3], TREE, k=3)




def _batch(
    x: np.ndarray, missing: float = 0.0, seed: int = 0, labels: np.ndarray | None = None
) -> Batch:
    """A batch with a different random missing mask per sample (marginalised per sample)."""
    observed = np.random.default_rng(seed).random(x.shape) >= missing
    return Batch(np.where(observed, x, 0.0), observed, labels)


def _backends(
    plan: Any,
    reference: str = "torch",
    other: str = "numpy",
    device: str = "cpu",
    dtype: str = "float64",
) -> tuple[Any, Any]:
    # torch on CUDA unfused here (one compile per circuit would dominate the run); the fused,
    # graph-captured path has its own tests in tests/test_gpu.py
    options = {"fuse": False} if other == "torch" else {}
    return create_backend(reference, plan, dtype="float64"), create_backend(
        other, plan, device=device, dtype=dtype, **options
    )


def _host(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.float64).numpy()
    if isinstance(array, np.ndarray):
        return array.astype(np.float64)
    return np.asarray(array.get(), dtype=np.float64)  # cupy


def assert_statistics_close(
    a: Statistics, b: Statistics, atol: float = TOL, rtol: float = 0.0
) -> None:
    assert a.count == b.count
    assert math.isclose(a.log_likelihood, b.log_likelihood, rel_tol=max(rtol, 1e-12), abs_tol=atol)
    assert set(a.weights) == set(b.weights) and set(a.leaf) == set(b.leaf)
    for name in a.weights:
        np.testing.assert_allclose(
            _host(b.weights[name]), _host(a.weights[name]), rtol=rtol, atol=atol, err_msg=name
        )
    for name in a.leaf:
        for part in range(2):
            np.testing.assert_allclose(
                _host(b.leaf[name][part]),
                _host(a.leaf[name][part]),
                rtol=rtol,
                atol=atol,
                err_msg=f"{name}[{part}]",
            )


def assert_params_close(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float = TOL
) -> None:
    assert set(a) == set(b)
    for name, expected in a.items():
        np.testing.assert_allclose(b[name], expected, rtol=0, atol=atol, err_msg=name)


# ---------------------------------------------------------------- checks shared with test_gpu.py
def check_queries(make: Any, other: str, device: str = "cpu") -> None:
    """Log-likelihood, per-sample marginals and max-product values agree with torch (float64)."""
    graph = make()
    assert verify(graph) == []  # every circuit tested here is a valid one
    plan = plan_of(graph)
    params = init_parameters(plan, 1)
    reference, backend = _backends(plan, other=other, device=device)
    pr, pb = reference.put(params), backend.put(params)
    x = random_data(graph, 64, 0)
    for batch in (_batch(x), _batch(x, missing=0.3, seed=1)):
        for max_product in (False, True):
            expected = reference.log_likelihood(pr, batch, max_product)
            got = backend.log_likelihood(pb, batch, max_product)
            assert got.shape == expected.shape == (64, plan.heads)
            np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


def check_statistics(make: Any, other: str, device: str = "cpu", labels: bool = False) -> None:
    """The derived backward (counts n = W·∂J/∂W, Σ p·T, Σ p) equals torch autograd."""
    graph = make()
    plan = plan_of(graph)
    params = init_parameters(plan, 2)
    reference, backend = _backends(plan, other=other, device=device)
    x = random_data(graph, 48, 3)
    label_array = np.random.default_rng(0).integers(0, plan.heads, len(x)) if labels else None
    for missing in (0.0, 0.3):
        batch = _batch(x, missing, seed=4, labels=label_array)
        assert_statistics_close(
            reference.statistics(reference.put(params), batch),
            backend.statistics(backend.put(params), batch),
        )


def check_mpe(make: Any, other: str, device: str = "cpu") -> None:
    """MPE completions (and their max-product values) agree; so do leaf means on MPE routes."""
    graph = make()
    plan = plan_of(graph)
    params = init_parameters(plan, 3)
    reference, backend = _backends(plan, other=other, device=device)
    pr, pb = reference.put(params), backend.put(params)
    x = random_data(graph, 32, 5)
    batch = _batch(x, missing=0.5, seed=6)
    heads = np.arange(len(x)) % plan.heads
    completions = {}
    for leaf_value in ("mode", "mean"):
        expected = reference.backtrack(pr, batch, True, leaf_value, heads, seed=0)
        got = backend.backtrack(pb, batch, True, leaf_value, heads, seed=0)
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
        np.testing.assert_array_equal(got[batch.observed], x[batch.observed])
        completions[leaf_value] = got
    # the value of the MPE completion (means are off the support of discrete families)
    completed = Batch(completions["mode"], np.ones_like(batch.observed))
    value = backend.log_likelihood(pb, completed, True)
    np.testing.assert_allclose(
        value, reference.log_likelihood(pr, completed, True), rtol=0, atol=TOL
    )
    # exact MPE: the completion attains the max-product value of the evidence at its head
    rows = np.arange(len(x))
    np.testing.assert_allclose(
        value[rows, heads], backend.log_likelihood(pb, batch, True)[rows, heads], rtol=0, atol=1e-9
    )


def check_em(make: Any, other: str, device: str = "cpu") -> None:
    """Parameters after stochastic (per mini-batch, λ=0.5) and full-batch (λ=1) EM agree."""
    graph = make()
    plan = plan_of(graph)
    init = init_parameters(plan, 4)
    x = random_data(graph, 90, 7)
    results = []
    for backend in _backends(plan, other=other, device=device):
        params = backend.put(init)
        for _ in range(2):  # stochastic EM: an M-step after every mini-batch
            for start in range(0, len(x), 30):
                batch = _batch(x[start : start + 30], missing=0.2, seed=start)
                params = backend.em_update(params, backend.statistics(params, batch), 0.5)
        history = []
        for _ in range(3):  # full-batch EM: statistics summed over the epoch, one M-step
            total = None
            for start in range(0, len(x), 30):
                stats = backend.statistics(
                    params, _batch(x[start : start + 30], missing=0.2, seed=start)
                )
                total = stats if total is None else total + stats
            assert total is not None
            history.append(total.log_likelihood)
            params = backend.em_update(params, total, 1.0)
        assert all(b >= a - 1e-8 * abs(a) for a, b in itertools.pairwise(history)), history
        results.append((backend.get(params), history))
    (expected, expected_history), (got, got_history) = results
    assert_params_close(expected, got)
    np.testing.assert_allclose(got_history, expected_history, rtol=1e-12, atol=TOL)


def check_resident_epochs(make: Any, other: str, device: str = "cpu") -> None:
    """``train_epoch`` on uploaded data (with heads) gives torch's parameters and Σ log p, and
    equals the host loop of statistics + M-step per batch in the same order."""
    graph = make()
    plan = plan_of(graph)
    init = init_parameters(plan, 5)
    x = random_data(graph, 70, 8)
    batch = _batch(x, missing=0.2, seed=9, labels=np.arange(len(x)) % plan.heads)
    orders = [np.random.default_rng(seed).permutation(len(x)) for seed in range(2)]
    results = []
    for backend in _backends(plan, other=other, device=device):
        params = backend.put(init)
        data = backend.upload(batch.values, batch.observed, batch.labels)
        totals = []
        for order in orders:
            params, total = backend.train_epoch(params, data, order, 32, 0.5)
            totals.append(total)
        results.append((backend.get(params), totals))
    (expected, expected_totals), (got, got_totals) = results
    assert_params_close(expected, got)
    np.testing.assert_allclose(got_totals, expected_totals, rtol=1e-12)
    backend = _backends(plan, other=other, device=device)[1]
    params = backend.put(init)
    for order in orders:
        for start in range(0, len(x), 32):
            index = order[start : start + 32]
            part = Batch(batch.values[index], batch.observed[index], batch.labels[index])
            params = backend.em_update(params, backend.statistics(params, part), 0.5)
    assert_params_close(expected, backend.get(params))


# ---------------------------------------------------------------- torch == numpy
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_queries_agree_with_torch(name: str) -> None:
    check_queries(CIRCUITS[name], "numpy")


@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_derived_backward_equals_torch_autograd(name: str) -> None:
    check_statistics(CIRCUITS[name], "numpy")


@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_mpe_agrees_with_torch(name: str) -> None:
    check_mpe(CIRCUITS[name], "numpy")


@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_em_agrees_with_torch(name: str) -> None:
    check_em(CIRCUITS[name], "numpy")


@pytest.mark.parametrize("name", ["explicit-mixed", "rat-mixed", "pd-mixed"])
def test_resident_epochs_agree_with_torch(name: str) -> None:
    check_resident_epochs(CIRCUITS[name], "numpy")


def test_resident_epochs_with_heads_agree_with_torch() -> None:
    check_resident_epochs(lambda: rat_graph([BERNOULLI] * 4, depth=1, replicas=2, heads=3), "numpy")


def test_multi_head_statistics_with_labels_agree() -> None:
    check_queries(lambda: rat_graph([BINOMIAL3] * 4, depth=1, replicas=2, heads=3), "numpy")
    check_statistics(
        lambda: rat_graph([BINOMIAL3] * 4, depth=1, replicas=2, heads=3), "numpy", labels=True
    )
    check_mpe(lambda: rat_graph([BINOMIAL3] * 4, depth=1, replicas=2, heads=3), "numpy")


def test_fit_through_the_model_api_agrees() -> None:
    """Model.fit (both update modes) on numpy follows torch step for step."""
    graph = CIRCUITS["rat-mixed"]()
    plan = plan_of(graph)
    x = random_data(graph, 120, 8)
    x[::5, 1] = np.nan  # missing values in training data
    for update, step_size in (("batch", 0.5), ("epoch", 1.0)):
        models = [
            Model(plan, "", "<test>", name, "cpu", "float64", init_parameters(plan, 5))
            for name in ("torch", "numpy")
        ]
        histories = [
            m.fit(x, epochs=2, batch_size=40, update=update, step_size=step_size, seed=1)
            for m in models
        ]
        assert_params_close(models[0].parameters(), models[1].parameters())
        for a, b in zip(*histories):
            assert math.isclose(a.train_ll, b.train_ll, rel_tol=0, abs_tol=TOL)


# ---------------------------------------------------------------- the backward plan itself
def test_weight_counts_equal_finite_differences() -> None:
    graph = CIRCUITS["explicit-mixed"]()
    plan = plan_of(graph)
    backend = create_backend("numpy", plan, dtype="float64")
    params = backend.put(init_parameters(plan, 2))
    batch = _batch(random_data(graph, 40, 1), missing=0.25, seed=2)
    assert_weight_counts_match_finite_differences(backend, plan, params, batch, rtol=1e-6)


def test_leaf_statistics_equal_finite_differences_of_coefficients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """∂J/∂Θ[l,s,k,f] by the backward plan equals a central difference of J in that coefficient."""
    graph = explicit_graph([NORMAL, POISSON, NORMAL, CATEGORICAL3], k=2)
    plan = plan_of(graph)
    backend = create_backend("numpy", plan, dtype="float64")
    params = backend.put(init_parameters(plan, 3))
    batch = _batch(random_data(graph, 30, 2), missing=0.2, seed=3)
    stats = backend.statistics(params, batch)
    input_op = plan.ops[0]
    original = ArrayBackend.leaf_coefficients

    def total(block: int, index: tuple[int, int, int, int], delta: float) -> float:
        def perturbed(self: ArrayBackend, op: Any, p: Any, max_product: bool) -> list[Any]:
            coefficients = [c.copy() for c in original(self, op, p, max_product)]
            row, position, k, feature = index
            coefficients[block][row, position, feature, k] += delta  # laid out (L, S, f, K)
            return coefficients

        monkeypatch.setattr(ArrayBackend, "leaf_coefficients", perturbed)
        try:
            return float(backend.log_likelihood(params, batch)[:, 0].sum())
        finally:
            monkeypatch.setattr(ArrayBackend, "leaf_coefficients", original)

    rng = np.random.default_rng(1)
    for number, block in enumerate(input_op.blocks):
        sum_pt, sum_p = stats.leaf[block.param]
        for _ in range(3):
            row = int(rng.integers(len(block.columns)))
            position = int(rng.integers(block.width))
            k = int(rng.integers(graph.inputs))
            for feature in range(block.stat_dim + 1):
                eps = 1e-6
                derivative = (
                    total(number, (row, position, k, feature), eps)
                    - total(number, (row, position, k, feature), -eps)
                ) / (2 * eps)
                expected = (
                    sum_pt[row, position, k, feature]
                    if feature < block.stat_dim
                    else sum_p[row, position, k]
                )
                assert np.isclose(derivative, expected, rtol=1e-6, atol=1e-7), (
                    block.param,
                    feature,
                )


@pytest.mark.parametrize("equation", ["lbi,lbj,lkij->lbk", "mcbk,mck->mbk", "blsf,lsfk->lbk"])
def test_einsum_gradient_rule_equals_autograd(equation: str) -> None:
    """For every plan equation and operand, the derived gradient einsum is torch's gradient."""
    rng = np.random.default_rng(0)
    inputs, output = equation.split("->")
    letters = sorted(set(inputs.replace(",", "")))
    sizes = {c: int(rng.integers(2, 5)) for c in letters}
    operands = [
        torch.tensor(rng.random([sizes[c] for c in t]), requires_grad=True)
        for t in inputs.split(",")
    ]
    adjoint = torch.tensor(rng.random([sizes[c] for c in output]))
    (torch.einsum(equation, *operands) * adjoint).sum().backward()
    for index, operand in enumerate(operands):
        gradient_equation = einsum_gradient(equation, index)
        others = [adjoint.numpy()] + [
            o.detach().numpy() for i, o in enumerate(operands) if i != index
        ]
        c = backward_compiler.contraction(gradient_equation, sizes)
        got = contract(np, gradient_equation, c.path, *others)
        np.testing.assert_allclose(got, operand.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "equation, shapes",
    [
        ("lbi,lbj,lkij->lbk", [(3, 5, 2), (3, 5, 4), (3, 6, 2, 4)]),
        ("lbk,lbi,lbj->lkij", [(3, 5, 6), (3, 5, 2), (3, 5, 4)]),
        ("blsf,lsfk->lbk", [(5, 3, 2, 4), (3, 2, 4, 6)]),
        ("mbk,mck->mcbk", [(2, 5, 3), (2, 4, 3)]),
        ("mbk,mcbk->mck", [(2, 5, 3), (2, 4, 5, 3)]),
        ("ab,bc,cd->ad", [(2, 3), (3, 4), (4, 5)]),
        ("abc,cd->a", [(2, 3, 4), (4, 5)]),
    ],
)
def test_path_executor_equals_numpy_einsum(equation: str, shapes: list[tuple[int, ...]]) -> None:
    import opt_einsum

    rng = np.random.default_rng(0)
    operands = [rng.random(shape) for shape in shapes]
    expected = np.einsum(equation, *operands)
    for optimize in ("optimal", "greedy", "branch-2"):
        path, _ = opt_einsum.contract_path(equation, *operands, optimize=optimize)
        np.testing.assert_allclose(
            contract(np, equation, tuple(tuple(p) for p in path), *operands), expected, rtol=1e-12
        )


def test_backward_stays_stable_where_unshifted_exponentials_underflow() -> None:
    """float32, log p ≈ −1e4 per sample: exp(log value) is 0 in float32 (and float64), yet the
    shifted backward gives finite counts that match a float64 torch reference."""
    graph = rat_graph([NORMAL] * 6, depth=2, replicas=2, k=3)
    plan = plan_of(graph)
    params = init_parameters(plan, 0)
    x = 40.0 + random_data(graph, 32, 0)  # far from every mean: normal variances are clipped at 10
    batch = _batch(x)
    reference = create_backend("torch", plan, dtype="float64")
    backend = create_backend("numpy", plan, dtype="float32")
    expected = reference.statistics(reference.put(params), batch)
    got = backend.statistics(backend.put(params), batch)
    assert expected.log_likelihood < -1e3 * len(x) / 10
    for name, counts in got.weights.items():
        assert np.isfinite(counts).all(), name
        np.testing.assert_allclose(
            counts, _host(expected.weights[name]), rtol=2e-3, atol=2e-3 * len(x)
        )
    for name, (sum_pt, sum_p) in got.leaf.items():
        assert np.isfinite(sum_pt).all() and np.isfinite(sum_p).all()
        np.testing.assert_allclose(
            sum_p, _host(expected.leaf[name][1]), rtol=2e-3, atol=2e-3 * len(x)
        )


def test_flow_conservation_root_counts_sum_to_batch_size() -> None:
    """Every sample sends a posterior flow of 1 through the root sum: its counts sum to B."""
    graph = CIRCUITS["pd-mixed"]()
    plan = plan_of(graph)
    backend = create_backend("numpy", plan, dtype="float64")
    stats = backend.statistics(
        backend.put(init_parameters(plan, 0)), _batch(random_data(graph, 50, 1), 0.3, 2)
    )
    root_op = plan.ops[plan.root[0]]
    assert math.isclose(float(stats.weights[root_op.param].sum()), 50.0, rel_tol=1e-12)
    for spec in plan.params:  # every leaf row gets at most one unit of flow per sample
        if spec.kind == "leaf":
            sum_p = stats.leaf[spec.name][1]
            assert (sum_p >= -1e-12).all() and (sum_p.sum(-1) <= 50.0 + 1e-9).all()


def test_backward_plan_table_lists_every_contraction() -> None:
    plan = plan_of(CIRCUITS["pd-bernoulli"]())
    backward = derive_backward(plan)
    text = backward.table()
    lines = text.splitlines()
    expected_rows = sum(len(backward.contractions(step)) for step in backward.steps)
    assert len(lines) == expected_rows + 3  # header, rule, footer
    assert "lbk,lbj,lkij->lbi" in text and "lbk,lbi,lbj->lkij" in text and "mbk,mck->mcbk" in text
    assert "lbk,blsf->lsfk" in text and "scatter-add" in text and "exp(−(S−a−a'))" in text
    assert [step.op for step in backward.steps] == list(range(len(plan.ops) - 1, -1, -1))
    assert derive_backward(plan) == backward  # a pure function of the plan: same data every time


# ---------------------------------------------------------------- sampling
SAMPLED = {
    "explicit-mixed": lambda: explicit_graph(
        [BERNOULLI, CATEGORICAL3, BINOMIAL3, BERNOULLI], k=2, inputs=3
    ),
    "rat-bernoulli": lambda: rat_graph([BERNOULLI] * 5, depth=2, replicas=3),
    "pd-bernoulli": lambda: pd_graph([BERNOULLI] * 6, 2, 3),
}


@pytest.mark.parametrize("name", sorted(SAMPLED))
def test_sample_frequencies_match_probabilities(name: str) -> None:
    graph = SAMPLED[name]()
    plan = plan_of(graph)
    backend = create_backend("numpy", plan, dtype="float64")
    assert_samples_follow_the_model(backend, backend.put(init_parameters(plan, 0)), graph, n=40000, seed=3)


def test_conditional_samples_follow_the_conditional() -> None:
    graph = SAMPLED["explicit-mixed"]()
    plan = plan_of(graph)
    backend = create_backend("numpy", plan, dtype="float64")
    evidence = np.array([1.0, np.nan, 2.0, np.nan])
    assert_samples_follow_the_model(backend, backend.put(init_parameters(plan, 0)), graph, evidence, n=30000, seed=5)


def test_mpe_is_the_joint_argmax_over_states_and_latent_choices() -> None:
    graph = SAMPLED["explicit-mixed"]()
    plan = plan_of(graph)
    params = init_parameters(plan, 0)
    backend = create_backend("numpy", plan, dtype="float64")
    p = backend.put(params)
    states = enumerate_states(graph)
    best = max(oracle_log_density(plan, params, s, max_product=True)[0] for s in states)
    empty = Batch(np.zeros((1, graph.num_columns)), np.zeros((1, graph.num_columns), dtype=bool))
    assert math.isclose(
        backend.log_likelihood(p, empty, max_product=True)[0, 0], best, abs_tol=1e-9
    )
    completion = backend.backtrack(p, empty, True, "mode", np.zeros(1, dtype=int), seed=0)[0]
    assert math.isclose(
        oracle_log_density(plan, params, completion, max_product=True)[0], best, abs_tol=1e-9
    )


def test_sampler_draws_follow_their_distributions() -> None:
    sampler = ArraySampler(np, 0)
    n = 200000
    like = np.zeros(n)
    assert (
        abs(sampler.standard_normal(like).mean()) < 0.02
        and abs(sampler.standard_normal(like).var() - 1) < 0.02
    )
    assert abs(sampler.poisson(np.full(n, 3.0)).mean() - 3.0) < 0.03
    assert abs(sampler.binomial(5.0, np.full(n, 0.3)).mean() - 1.5) < 0.02
    probs = np.tile([0.2, 0.5, 0.3], (n, 1))
    frequencies = np.bincount(sampler.categorical(probs).astype(int), minlength=3) / n
    np.testing.assert_allclose(frequencies, [0.2, 0.5, 0.3], atol=0.01)
    gumbel = sampler.gumbel(like)
    assert abs(gumbel.mean() - 0.5772) < 0.02 and np.isfinite(gumbel).all()


# ---------------------------------------------------------------- rule tables and registry
# (every op kind and family has a rule in every backend: tests/test_op_kinds.py)
def test_a_missing_rule_is_an_error_not_a_silent_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plan_of(CIRCUITS["explicit-bernoulli"]())
    backend = create_backend("numpy", plan, dtype="float64")
    params = backend.put(init_parameters(plan, 0))
    batch = _batch(random_data(plan.graph, 4, 0))
    monkeypatch.delitem(FORWARD_RULES, MixingOp)
    with pytest.raises(BackendError, match="no forward rule for MixingOp"):
        backend.log_likelihood(params, batch)
    monkeypatch.undo()
    monkeypatch.delitem(array_backend.BACKWARD_RULES, EinsumBackward)
    with pytest.raises(BackendError, match="no backward rule for EinsumBackward"):
        backend.statistics(params, batch)
    monkeypatch.undo()
    monkeypatch.delitem(backward_compiler.BACKWARD_RULES, EinsumOp)
    with pytest.raises(Exception, match="no backward rule for plan op EinsumOp"):
        derive_backward(plan)
    assert any(isinstance(step, MixingBackward) for step in backend.backward.steps)


def test_missing_cupy_is_a_backend_error_naming_the_available_backends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = plan_of(CIRCUITS["explicit-bernoulli"]())
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now raises ImportError
    with pytest.raises(BackendError) as error:
        create_backend("cupy", plan, device="cuda")
    message = str(error.value)
    assert "cupy" in message and "numpy, torch" in message and "pip install cupy" in message
    with pytest.raises(BackendError, match="use backend 'cupy'"):
        create_backend("numpy", plan, device="cuda")
    with pytest.raises(BackendError, match="cupy, numpy, torch"):
        create_backend("jax", plan)
    with pytest.raises(BackendError, match="float32 or float64"):
        create_backend("numpy", plan, dtype="float16")


def test_float32_agrees_with_float64() -> None:
    graph = CIRCUITS["rat-mixed"]()
    plan = plan_of(graph)
    params = init_parameters(plan, 0)
    batch = _batch(random_data(graph, 64, 0), missing=0.3, seed=1)
    lls = []
    for dtype in ("float32", "float64"):
        backend = create_backend("numpy", plan, dtype=dtype)
        lls.append(backend.log_likelihood(backend.put(params), batch)[:, 0])
    np.testing.assert_allclose(lls[0], lls[1], rtol=1e-5, atol=1e-3)
