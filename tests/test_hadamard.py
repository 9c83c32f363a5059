"""Element-wise (hadamard / CP) product layers, proved by brute force on small circuits.

Oracles: enumeration of every joint state (total mass 1, marginals = sums of joints, conditionals =
ratios), the naive recursive evaluator of ``oracles.py``, an HCLT written out as its latent
variable model (a sum over every hidden state), χ² of sampling frequencies, the max-product arg-max
over states and latent choices, finite differences of the E-step counts, and full-batch EM.
Torch/NumPy float64 agreement of every query, statistic, EM step and MPE on hadamard circuits is in
``test_array_backend.py`` (the "hadamard" and "tree" structures).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from einc.backends.base import Batch, create_backend
from einc.backends.em import em_update
from einc.compiler.params import init_parameters
from einc.compiler.verify import verify
from einc.ir.plan import HadamardOp, InputOp

from oracles import (
    BACKENDS,
    BERNOULLI,
    BINOMIAL3,
    CATEGORICAL3,
    INDICATOR,
    INDICATOR3,
    assert_samples_follow_the_model,
    assert_weight_counts_match_finite_differences,
    enumerate_states,
    hadamard_graph,
    mixed_graph,
    oracle_log_density,
    plan_of,
    random_data,
    tree_graph,
)

TREE = [-1, 0, 0, 1, 1, 2]  # x0 the root; x1, x2 its children; x3, x4 under x1; x5 under x2
CIRCUITS = {
    "dag": lambda: hadamard_graph([BERNOULLI, CATEGORICAL3, BERNOULLI, BINOMIAL3, BERNOULLI], k=3, heads=2),
    "hclt": lambda: tree_graph([BERNOULLI] * 6, TREE, k=2),
    "hclt-mixed": lambda: tree_graph([CATEGORICAL3, BERNOULLI, BINOMIAL3, BERNOULLI, CATEGORICAL3, BERNOULLI], TREE, k=3),
    # both product kinds in one circuit (``product R = hadamard``): einsum and hadamard ops in one plan
    "kinds-mixed": lambda: mixed_graph([BERNOULLI, CATEGORICAL3, BERNOULLI, BINOMIAL3, BERNOULLI], k=3, heads=2),
}


def _full(states: np.ndarray) -> Batch:
    return Batch(states, np.ones_like(states, dtype=bool))


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_mass_marginals_and_conditionals_by_enumeration(name: str, backend_name: str) -> None:
    graph = CIRCUITS[name]()
    assert verify(graph) == []
    plan = plan_of(graph)
    params = init_parameters(plan, 7)
    backend = create_backend(backend_name, plan, dtype="float64")
    p = backend.put(params)
    states = enumerate_states(graph)
    joint = backend.log_likelihood(p, _full(states))  # (N, heads)
    for head in range(graph.heads):
        assert math.isclose(np.exp(joint[:, head]).sum(), 1.0, abs_tol=1e-12)
    for row in range(0, len(states), 7):  # the naive recursive evaluator agrees state by state
        np.testing.assert_allclose(joint[row], oracle_log_density(plan, params, states[row]), atol=1e-12)
    # marginals: each sample hides its own random subset; the circuit's marginal is the sum of
    # the joint over every completion of the hidden entries
    rng = np.random.default_rng(0)
    probs = np.exp(joint[:, 0])
    for _ in range(12):
        x = states[rng.integers(len(states))]
        hidden = rng.random(graph.num_columns) < 0.5
        batch = Batch(np.where(hidden, 0.0, x)[None], ~hidden[None])
        marginal = np.exp(backend.log_likelihood(p, batch)[0, 0])
        consistent = np.all((states == x) | hidden, 1)
        assert math.isclose(marginal, probs[consistent].sum(), rel_tol=1e-10, abs_tol=1e-14)
    # conditionals: p(x_A | x_B) = p(x_A, x_B) / p(x_B), with one column hidden in the numerator
    x = states[5]
    given = np.arange(graph.num_columns) % 2 == 0
    numerator = backend.log_likelihood(p, _full(x[None]))[0, 0]
    denominator = backend.log_likelihood(p, Batch(np.where(given, x, 0.0)[None], given[None]))[0, 0]
    consistent = np.all((states == x) | ~given, 1)
    assert math.isclose(np.exp(numerator - denominator), probs[np.all(states == x, 1)][0] / probs[consistent].sum(), rel_tol=1e-10)


def _hclt_brute_force(plan, params, parents: list[int], x: np.ndarray) -> float:
    """log p(x) of an HCLT written as its latent variable model, summed over every hidden state:
    p(x) = Σ_z p(z_r) Π_{v inner, v ≠ r} p(z_v | z_pa(v)) Π_{v inner} p(x_v | z_v)
           Π_{c tree leaf} p(x_c | z_pa(c)),   with Bernoulli leaves."""
    graph = plan.graph
    count = len(parents)
    children = {v: [c for c in range(count) if parents[c] == v] for v in range(count)}
    inner = [v for v in range(count) if children[v]]
    input_op = next(op for op in plan.ops if isinstance(op, InputOp))
    (block,) = input_op.blocks
    leaf_p = {region[0][0]: params[block.param][row, 0, :, 0] for row, region in enumerate(input_op.regions)
              if len(region[0]) == 1}  # p(x_v = 1 | state k), (K,)
    transition = {}
    for op in plan.ops:
        if isinstance(op, HadamardOp):
            for row, index in enumerate(op.partitions):
                region = graph.partitions[index].region
                node = next(v for v in inner if tuple(sorted(_subtree(v, children))) == region[0])
                transition[node] = params[op.param][row]  # (K_out, K): rows are parent states
    k = graph.sums
    root = parents.index(-1)
    total = 0.0
    for assignment in itertools.product(range(k), repeat=len(inner)):
        z = dict(zip(inner, assignment))
        p = transition[root][0, z[root]]
        for v in inner:
            if v != root:
                p *= transition[v][z[parents[v]], z[v]]
        for v in range(count):
            state = z[v] if v in z else z[parents[v]]
            q = leaf_p[v][state]
            p *= q if x[v] == 1 else 1 - q
        total += p
    return math.log(total)


def _subtree(v: int, children: dict[int, list[int]]) -> list[int]:
    out = [v]
    for c in children[v]:
        out += _subtree(c, children)
    return out


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_hclt_k2_equals_brute_force_over_observed_and_hidden_variables(backend_name: str) -> None:
    graph = tree_graph([BERNOULLI] * 6, TREE, k=2)
    plan = plan_of(graph)
    params = init_parameters(plan, 3)
    backend = create_backend(backend_name, plan, dtype="float64")
    states = enumerate_states(graph)
    got = backend.log_likelihood(backend.put(params), _full(states))[:, 0]
    expected = np.array([_hclt_brute_force(plan, params, TREE, x) for x in states])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert math.isclose(np.exp(expected).sum(), 1.0, abs_tol=1e-12)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_hclt_with_k1_is_the_fully_factorised_model(backend_name: str) -> None:
    """With one hidden state every sum weight is 1: p(x) = Π_v Bernoulli(x_v; p_v); one
    full-batch EM step (α = 0) makes p_v the empirical mean of column v."""
    graph = tree_graph([BERNOULLI] * 6, TREE, k=1)
    plan = plan_of(graph)
    backend = create_backend(backend_name, plan, dtype="float64")
    params = backend.put(init_parameters(plan, 1))
    x = random_data(graph, 200, 4)
    x[:, 2] = x[:, 1]  # dependent columns: the factorised model cannot see it
    input_op = plan.ops[0]
    (block,) = input_op.blocks
    means = backend.get(params)[block.param][:, 0, 0, 0]  # per leaf region (one variable each)
    columns = [region[0][0] for region in input_op.regions]
    expected = (x[:, columns] * np.log(means) + (1 - x[:, columns]) * np.log1p(-means)).sum(1)
    np.testing.assert_allclose(backend.log_likelihood(params, _full(x))[:, 0], expected, atol=1e-12)
    params = backend.em_update(params, backend.statistics(params, _full(x)), 1.0)
    fitted = backend.get(params)[block.param][:, 0, 0, 0]
    np.testing.assert_allclose(fitted, x[:, columns].mean(0), atol=1e-12)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_sample_frequencies_match_probabilities(name: str, backend_name: str) -> None:
    graph = CIRCUITS[name]()
    plan = plan_of(graph)
    backend = create_backend(backend_name, plan, dtype="float64")
    assert_samples_follow_the_model(backend, backend.put(init_parameters(plan, 0)), graph, n=30000, seed=11)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_conditional_samples_follow_the_conditional(backend_name: str) -> None:
    graph = CIRCUITS["hclt"]()
    plan = plan_of(graph)
    backend = create_backend(backend_name, plan, dtype="float64")
    evidence = np.array([np.nan, 1.0, np.nan, 0.0, np.nan, np.nan])
    assert_samples_follow_the_model(backend, backend.put(init_parameters(plan, 2)), graph, evidence,
                                    n=30000, seed=5)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_mpe_is_the_joint_argmax_over_states_and_latent_choices(name: str, backend_name: str) -> None:
    graph = CIRCUITS[name]()
    plan = plan_of(graph)
    params = init_parameters(plan, 4)
    backend = create_backend(backend_name, plan, dtype="float64")
    p = backend.put(params)
    states = enumerate_states(graph)
    rng = np.random.default_rng(1)
    for _ in range(4):
        given = rng.random(graph.num_columns) < 0.4
        x = states[rng.integers(len(states))]
        consistent = states[np.all((states == x) | ~given, 1)]
        best = max(oracle_log_density(plan, params, s, max_product=True)[0] for s in consistent)
        batch = Batch(np.where(given, x, 0.0)[None], given[None])
        assert math.isclose(backend.log_likelihood(p, batch, max_product=True)[0, 0], best, abs_tol=1e-10)
        completion = backend.backtrack(p, batch, True, "mode", np.zeros(1, dtype=int), seed=0)[0]
        np.testing.assert_array_equal(completion[given], x[given])
        assert math.isclose(oracle_log_density(plan, params, completion, max_product=True)[0], best, abs_tol=1e-10)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_weight_counts_equal_finite_differences(backend_name: str) -> None:
    graph = CIRCUITS["dag"]()
    plan = plan_of(graph)
    backend = create_backend(backend_name, plan, dtype="float64")
    params = backend.put(init_parameters(plan, 2))
    x = random_data(graph, 40, 1)
    observed = np.random.default_rng(2).random(x.shape) > 0.25
    batch = Batch(np.where(observed, x, 0.0), observed)
    assert_weight_counts_match_finite_differences(backend, plan, params, batch, rtol=1e-6)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_full_batch_em_never_decreases_the_likelihood(name: str, backend_name: str) -> None:
    graph = CIRCUITS[name]()
    plan = plan_of(graph)
    backend = create_backend(backend_name, plan, dtype="float64")
    params = backend.put(init_parameters(plan, 5))
    x = random_data(graph, 300, 6)
    observed = np.ones_like(x, dtype=bool)
    observed[::5, 2] = False  # missing values: EM stays monotone
    batch = Batch(np.where(observed, x, 0.0), observed)
    history = []
    for _ in range(12):
        stats = backend.statistics(params, batch)
        history.append(stats.log_likelihood)
        params = backend.em_update(params, stats, 1.0)
    assert all(b >= a - 1e-9 * abs(a) for a, b in itertools.pairwise(history)), history
    assert history[-1] > history[0]


def test_pseudocount_is_laplace_smoothing_of_weights_and_leaf_counts() -> None:
    """The M-step with α pseudo-observations per distribution, spread over its outcomes (the
    Juice.jl/PyJuice convention): w = (n + α/m)/(Σn + α) over a weight vector's m entries, for
    every op kind; Bernoulli φ = (Σp·x + α/2)/(Σp + α); categorical φ_c = (Σp·[x=c] + α/n)/(Σp + α);
    indicators stay."""
    graph = tree_graph([BERNOULLI, CATEGORICAL3, INDICATOR3, BERNOULLI, BERNOULLI, BERNOULLI], TREE, k=3)
    plan = plan_of(graph)
    params = init_parameters(plan, 0)
    rng = np.random.default_rng(0)
    counts = {s.name: rng.random(s.shape) * (rng.random(s.shape) > 0.3) for s in plan.params if s.kind != "leaf"}
    leaf = {}
    for s in plan.params:
        if s.kind == "leaf":
            sum_p = rng.random(s.shape[:3]) * 5
            fraction = rng.dirichlet(np.ones(s.shape[3]), size=s.shape[:3]) if s.shape[3] > 1 else rng.random((*s.shape[:3], 1))
            leaf[s.name] = (fraction * sum_p[..., None], sum_p)
    alpha = 0.7
    new = em_update(np, plan, params, counts, leaf, 1.0, alpha)
    for spec in plan.params:
        if spec.kind != "leaf":
            entries = math.prod(spec.shape[axis] for axis in spec.normalised_over)
            total = counts[spec.name].sum(axis=spec.normalised_over, keepdims=True) + alpha
            np.testing.assert_allclose(new[spec.name], (counts[spec.name] + alpha / entries) / total)
            continue
        sum_pt, sum_p = leaf[spec.name]
        if spec.family.name == "indicator":
            np.testing.assert_array_equal(new[spec.name], params[spec.name])
        elif spec.family.name == "bernoulli":
            expected = np.clip((sum_pt + alpha / 2) / (sum_p[..., None] + alpha), 1e-6, 1 - 1e-6)
            np.testing.assert_allclose(new[spec.name], expected)
        else:
            n = spec.shape[3]
            np.testing.assert_allclose(new[spec.name], (sum_pt + alpha / n) / (sum_p[..., None] + alpha))


def test_zero_probability_samples_get_no_counts() -> None:
    """Indicator leaves can give a sample probability 0; it has no posterior, so no E-step counts."""
    graph = tree_graph([INDICATOR] * 6, TREE, k=2)  # every inner product forces equal states
    plan = plan_of(graph)
    states = enumerate_states(graph)
    for name in BACKENDS:
        backend = create_backend(name, plan, dtype="float64")
        p = backend.put(init_parameters(plan, 0))
        ll = backend.log_likelihood(p, _full(states))[:, 0]
        possible = ll > -1e29
        assert 0 < possible.sum() < len(states)
        assert math.isclose(np.exp(ll[possible]).sum(), 1.0, abs_tol=1e-12)
        both = backend.statistics(p, _full(states))
        only = backend.statistics(p, _full(states[possible]))
        for weight in both.weights:
            np.testing.assert_allclose(np.asarray(both.weights[weight]), np.asarray(only.weights[weight]), atol=1e-12)


def test_adam_trains_hadamard_weights_and_leaves_indicators_alone() -> None:
    import einc

    source = (
        "var x[5] : binary\nvar c : categorical(3)\nleaf x[0], x[2] ~ indicator\nleaf x[1], x[3:5] ~ bernoulli\n"
        "leaf c ~ categorical\nproduct hadamard\nsums 2\nstructure tree(parents = [-1, 0, 0, 2, 2, 0])\n"
    )
    rng = np.random.default_rng(0)
    bits = (rng.random((400, 5)) < 0.3).astype(float)
    bits[:, 1] = bits[:, 0]
    data = np.concatenate([bits, rng.integers(0, 3, (400, 1))], 1)
    model = einc.compile(source, dtype="float64", seed=0)
    before = model.parameters()
    start = model.log_likelihood(data).mean()
    model.fit(data, method="adam", learning_rate=0.05, epochs=6, batch_size=50)
    assert model.log_likelihood(data).mean() > start + 0.5
    after = model.parameters()
    for spec in model.plan.params:
        if spec.kind == "hadamard":
            np.testing.assert_allclose(after[spec.name].sum(axis=2), 1.0, atol=1e-12)
        elif spec.family is not None and spec.family.name == "indicator":
            np.testing.assert_array_equal(after[spec.name], before[spec.name])
