"""Exact inference on small circuits against brute force and a naive recursive evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from einc.backends.base import Batch, create_backend
from einc.compiler.params import init_parameters

from oracles import (
    assert_samples_follow_the_model,
    BERNOULLI,
    BINOMIAL3,
    CATEGORICAL3,
    NORMAL,
    POISSON,
    enumerate_states,
    explicit_graph,
    oracle_log_density,
    pd_graph,
    plan_of,
    rat_graph,
)

DISCRETE_CIRCUITS = {
    "explicit-bernoulli": lambda: explicit_graph([BERNOULLI] * 4),
    "explicit-mixed": lambda: explicit_graph([BERNOULLI, CATEGORICAL3, BINOMIAL3, BERNOULLI], k=2, inputs=3),
    "explicit-poisson": lambda: explicit_graph([POISSON, BERNOULLI, POISSON, BERNOULLI], k=2),
    "rat-bernoulli": lambda: rat_graph([BERNOULLI] * 5, depth=2, replicas=3),
    "rat-categorical": lambda: rat_graph([CATEGORICAL3] * 4, depth=1, replicas=2),
    "rat-binomial-heads": lambda: rat_graph([BINOMIAL3] * 3, depth=1, replicas=2, heads=2),
    "pd-bernoulli": lambda: pd_graph([BERNOULLI] * 6, 2, 3),
    "pd-vertical": lambda: pd_graph([BERNOULLI] * 6, 2, 3, axes="vertical"),
}


def _setup(make, seed=0):
    graph = make()
    plan = plan_of(graph)
    params = init_parameters(plan, seed)
    backend = create_backend("torch", plan, dtype="float64")
    return graph, plan, params, backend, backend.put(params)


def _full(x):
    return Batch(x, np.ones_like(x, dtype=bool))


@pytest.mark.parametrize("name", sorted(DISCRETE_CIRCUITS))
def test_total_mass_is_one_and_matches_oracle(name):
    graph, plan, params, backend, p = _setup(DISCRETE_CIRCUITS[name])
    states = enumerate_states(graph)
    ll = backend.log_likelihood(p, _full(states))  # (N, heads)
    for head in range(graph.heads):
        assert math.isclose(np.exp(ll[:, head]).sum(), 1.0, rel_tol=0, abs_tol=1e-9)
    for row in states[:: max(1, len(states) // 25)]:
        np.testing.assert_allclose(ll[np.all(states == row, 1)][0], oracle_log_density(plan, params, row), atol=1e-10)


@pytest.mark.parametrize("name", sorted(DISCRETE_CIRCUITS))
def test_per_sample_marginals_equal_sums_of_joints(name):
    graph, plan, params, backend, p = _setup(DISCRETE_CIRCUITS[name])
    states = enumerate_states(graph)
    joint = np.exp(backend.log_likelihood(p, _full(states))[:, 0])
    rng = np.random.default_rng(1)
    queries = states[rng.choice(len(states), size=12)]
    missing = rng.random(queries.shape) < 0.5  # a different mask for every sample
    ll = backend.log_likelihood(p, Batch(np.where(missing, 0, queries), ~missing))[:, 0]
    for query, mask, value in zip(queries, missing, ll):
        consistent = np.all((states == query) | mask, axis=1)
        assert math.isclose(np.exp(value), joint[consistent].sum(), rel_tol=1e-9, abs_tol=1e-12)


def test_conditionals_equal_ratios():
    graph, plan, params, backend, p = _setup(DISCRETE_CIRCUITS["explicit-mixed"])
    states = enumerate_states(graph)
    joint = np.exp(backend.log_likelihood(p, _full(states))[:, 0])
    evidence = np.array([True, False, True, False])
    x = states[7]
    evidence_mass = joint[np.all((states == x) | ~evidence, 1)].sum()
    conditional = np.exp(backend.log_likelihood(p, _full(x[None]))[0, 0]) / evidence_mass
    ll_e = backend.log_likelihood(p, Batch(np.where(evidence, x, 0)[None], evidence[None]))[0, 0]
    ll_x = backend.log_likelihood(p, _full(x[None]))[0, 0]
    assert math.isclose(math.exp(ll_x - ll_e), conditional, rel_tol=1e-9)


def test_normal_leaves_match_oracle_and_marginalise():
    graph, plan, params, backend, p = _setup(lambda: explicit_graph([NORMAL, NORMAL, BERNOULLI, NORMAL], k=2))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4))
    x[:, 2] = rng.integers(0, 2, size=6)
    observed = rng.random(x.shape) < 0.7
    ll = backend.log_likelihood(p, Batch(np.where(observed, x, 0), observed))[:, 0]
    for row in range(len(x)):
        np.testing.assert_allclose(ll[row], oracle_log_density(plan, params, x[row], observed[row])[0], atol=1e-10)
    # a 1-D normal marginal integrates to 1 (trapezoid on a wide grid)
    grid = np.linspace(-30, 30, 20001)
    probe = np.zeros((len(grid), 4))
    probe[:, 0] = grid
    mask = np.zeros_like(probe, dtype=bool)
    mask[:, 0] = True
    density = np.exp(backend.log_likelihood(p, Batch(probe, mask))[:, 0])
    assert abs(np.trapezoid(density, grid) - 1.0) < 1e-6


@pytest.mark.parametrize("name", ["explicit-mixed", "rat-bernoulli", "pd-bernoulli"])
def test_sample_frequencies_match_probabilities(name):
    graph, plan, params, backend, p = _setup(DISCRETE_CIRCUITS[name])
    assert_samples_follow_the_model(backend, p, graph, n=40000, seed=3)


def test_conditional_samples_follow_the_conditional():
    graph, plan, params, backend, p = _setup(DISCRETE_CIRCUITS["explicit-mixed"])
    evidence = np.array([1.0, np.nan, 2.0, np.nan])
    assert_samples_follow_the_model(backend, p, graph, evidence, n=30000, seed=5)


@pytest.mark.parametrize("name", ["explicit-mixed", "rat-bernoulli", "pd-vertical", "explicit-poisson"])
def test_mpe_is_the_joint_argmax_over_states_and_latent_choices(name):
    graph, plan, params, backend, p = _setup(DISCRETE_CIRCUITS[name])
    states = enumerate_states(graph)
    # max over latent sum choices for each complete state (oracle), then over states
    best_value = max(oracle_log_density(plan, params, s, max_product=True)[0] for s in states)
    empty = Batch(np.zeros((1, graph.num_columns)), np.zeros((1, graph.num_columns), dtype=bool))
    upward = backend.log_likelihood(p, empty, max_product=True)[0, 0]
    assert math.isclose(upward, best_value, rel_tol=0, abs_tol=1e-9)
    completion = backend.backtrack(p, empty, True, "mode", np.zeros(1, dtype=int), seed=0)[0]
    assert math.isclose(oracle_log_density(plan, params, completion, max_product=True)[0], best_value, abs_tol=1e-9)
    # with evidence: the completion keeps the evidence and maximises over the rest
    given = np.zeros(graph.num_columns, dtype=bool)
    given[0] = True
    evidence = states[-1] * given
    batch = Batch(evidence[None], given[None])
    completion = backend.backtrack(p, batch, True, "mode", np.zeros(1, dtype=int), seed=0)[0]
    assert completion[0] == evidence[0]
    consistent = states[states[:, 0] == evidence[0]]
    best = max(oracle_log_density(plan, params, s, max_product=True)[0] for s in consistent)
    assert math.isclose(oracle_log_density(plan, params, completion, max_product=True)[0], best, abs_tol=1e-9)


def test_float32_agrees_with_float64():
    graph = DISCRETE_CIRCUITS["rat-bernoulli"]()
    plan = plan_of(graph)
    params = init_parameters(plan, 0)
    states = enumerate_states(graph)
    lls = []
    for dtype in ("float32", "float64"):
        backend = create_backend("torch", plan, dtype=dtype)
        lls.append(backend.log_likelihood(backend.put(params), _full(states))[:, 0])
    np.testing.assert_allclose(lls[0], lls[1], atol=1e-4)


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
def test_batch_minor_layout_gives_the_batch_major_results(dtype: str, tolerance: float) -> None:
    """The CPU's batch-minor storage (rows, K, B) computes what the batch-major one does: the same
    log-likelihoods, EM statistics and EM epochs (to rounding: 1e-5 relative in float32)."""
    from oracles import random_data

    for graph in (rat_graph([NORMAL] * 24, depth=3, replicas=3, k=5),
                  pd_graph([BERNOULLI, CATEGORICAL3] * 3, 2, 3, k=3)):
        plan = plan_of(graph)
        params = init_parameters(plan, 0)
        x = random_data(graph, 60, 1)
        observed = np.random.default_rng(2).random(x.shape) > 0.2
        batch = Batch(np.where(observed, x, 0.0), observed)
        results = []
        for batch_minor in (False, True):
            backend = create_backend("torch", plan, dtype=dtype, batch_minor=batch_minor)
            p = backend.put(params)
            stats = backend.statistics(p, batch)
            data = backend.upload(batch.values, batch.observed, None)
            p, total = backend.train_epoch(p, data, np.arange(60), 20, 0.5)
            results.append((backend.log_likelihood(p, batch), stats, backend.get(p), total))
        (ll_a, st_a, p_a, t_a), (ll_b, st_b, p_b, t_b) = results
        np.testing.assert_allclose(ll_b, ll_a, rtol=tolerance)
        assert math.isclose(st_b.log_likelihood, st_a.log_likelihood, rel_tol=tolerance)
        assert math.isclose(t_b, t_a, rel_tol=tolerance)
        for name in st_a.weights:
            np.testing.assert_allclose(st_b.weights[name].numpy(), st_a.weights[name].numpy(),
                                       rtol=10 * tolerance, atol=10 * tolerance)
        for name in p_a:
            np.testing.assert_allclose(p_b[name], p_a[name], rtol=10 * tolerance, atol=10 * tolerance)
