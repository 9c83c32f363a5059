"""EM derived from autograd: statistics equal finite differences; full-batch EM is monotone;
components with no posterior mass keep their parameters (no NaN)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from einc.backends.base import Batch, create_backend
from einc.compiler.params import init_parameters

from oracles import (
    BERNOULLI,
    BINOMIAL3,
    CATEGORICAL3,
    NORMAL,
    POISSON,
    assert_weight_counts_match_finite_differences,
    explicit_graph,
    plan_of,
    random_data,
    rat_graph,
)




CIRCUITS = {
    "mixed": lambda: explicit_graph([BERNOULLI, CATEGORICAL3, BINOMIAL3, POISSON], k=2, inputs=3),
    "normal": lambda: explicit_graph([NORMAL, NORMAL, BERNOULLI, NORMAL], k=2),
    "rat": lambda: rat_graph([BERNOULLI] * 6, depth=2, replicas=3),
}


@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_full_batch_em_never_decreases_training_likelihood(name):
    graph = CIRCUITS[name]()
    plan = plan_of(graph)
    backend = create_backend("torch", plan, dtype="float64")
    params = backend.put(init_parameters(plan, 1))
    x = random_data(graph, 300, 0)
    observed = np.ones_like(x, dtype=bool)
    observed[::7, 1] = False  # some missing values: EM must still be monotone
    batch = Batch(np.where(observed, x, 0), observed)
    previous = -np.inf
    for _ in range(15):
        stats = backend.statistics(params, batch)
        assert stats.log_likelihood >= previous - 1e-8 * abs(previous if np.isfinite(previous) else 1)
        previous = stats.log_likelihood
        params = backend.em_update(params, stats, 1.0)
    assert np.isfinite(previous)


def test_weight_statistics_equal_finite_differences():
    graph = CIRCUITS["mixed"]()
    plan = plan_of(graph)
    backend = create_backend("torch", plan, dtype="float64")
    params = backend.put(init_parameters(plan, 2))
    x = random_data(graph, 40, 1)
    batch = Batch(x, np.ones_like(x, dtype=bool))
    assert_weight_counts_match_finite_differences(backend, plan, params, batch, rtol=1e-5)


def test_leaf_statistics_are_posterior_weighted_sufficient_statistics():
    """Σ p·T(x) by autograd equals Σ_b ∂ log p/∂ log L[l,k] · T(x) computed by finite differences."""
    graph = explicit_graph([NORMAL, NORMAL, NORMAL, NORMAL], k=2)
    plan = plan_of(graph)
    backend = create_backend("torch", plan, dtype="float64")
    params = backend.put(init_parameters(plan, 3))
    x = random_data(graph, 25, 2)
    batch = Batch(x, np.ones_like(x, dtype=bool))
    stats = backend.statistics(params, batch)
    (block,) = plan.ops[0].blocks
    sum_pt, sum_p = stats.leaf[block.param]
    # perturb the natural parameter θ1 (coefficient of x) of one component: d Σ log p / d θ1 = Σ p x
    xt, obs = backend._batch(batch)
    coefs = backend._leaf_coefficients(plan.ops[0], params, False)
    row, position, k = 1, 0, 1
    eps = 1e-6
    def total(delta, feature):
        c = coefs[0].clone()
        c[row, position, k, feature] += delta
        values = backend.forward(params, xt, obs, coefficients={plan.ops[0].name: [c]})
        return float(values[plan.root[0]][plan.root[1]][:, 0].sum())
    for feature, expected in ((0, sum_pt[row, position, k, 0]), (1, sum_pt[row, position, k, 1]), (2, sum_p[row, position, k])):
        derivative = (total(eps, feature) - total(-eps, feature)) / (2 * eps)
        assert np.isclose(derivative, float(expected), rtol=1e-5, atol=1e-8)


def test_components_without_posterior_mass_keep_parameters_in_float32():
    graph = rat_graph([BERNOULLI] * 6, depth=2, replicas=3, k=4)
    plan = plan_of(graph)
    backend = create_backend("torch", plan, dtype="float32")
    init = init_parameters(plan, 0)
    # make one leaf component nearly impossible for the data so it gets (numerically) zero mass
    leaf = next(spec.name for spec in plan.params if spec.kind == "leaf")
    init[leaf][0, :, 0, 0] = 1e-6
    params = backend.put(init)
    x = np.ones((64, 6))
    for _ in range(20):
        stats = backend.statistics(params, Batch(x, np.ones_like(x, dtype=bool)))
        params = backend.em_update(params, stats, 0.5)
    for name, value in params.items():
        assert torch.isfinite(value).all(), name
    weights = [v for k, v in params.items() if "weights" in k]
    for w in weights:
        assert (w > 0).all()
    assert np.isfinite(backend.log_likelihood(params, Batch(x, np.ones_like(x, dtype=bool)))).all()


def test_stochastic_em_improves_likelihood():
    graph = rat_graph([BERNOULLI] * 6, depth=2, replicas=3, k=3)
    plan = plan_of(graph)
    backend = create_backend("torch", plan, dtype="float32")
    params = backend.put(init_parameters(plan, 0))
    rng = np.random.default_rng(0)
    x = (rng.random((500, 6)) < np.array([0.1, 0.9, 0.2, 0.8, 0.5, 0.3])).astype(float)
    x[:, 1] = x[:, 0]  # a dependency the model should pick up
    batch = Batch(x, np.ones_like(x, dtype=bool))
    before = backend.log_likelihood(params, batch).mean()
    for start in range(0, 500, 50):
        part = Batch(x[start : start + 50], np.ones((len(x[start : start + 50]), 6), dtype=bool))
        params = backend.em_update(params, backend.statistics(params, part), 0.5)
    assert backend.log_likelihood(params, batch).mean() > before + 0.5


def test_adam_gradient_training_improves_likelihood_and_keeps_parameters_valid():
    import einc

    source = """
var x[6] : binary
var y : real
leaf x ~ bernoulli
leaf y ~ normal
sums 3
structure random_binary_trees(depth = 2, replicas = 3, seed = 0)
"""
    rng = np.random.default_rng(0)
    bits = (rng.random((400, 6)) < np.array([0.1, 0.9, 0.2, 0.8, 0.5, 0.3])).astype(float)
    bits[:, 1] = bits[:, 0]
    data = np.concatenate([bits, rng.normal(2.0, 0.5, (400, 1)) + bits[:, :1]], 1)
    model = einc.compile(source, dtype="float64", seed=0)
    before = model.log_likelihood(data).mean()
    history = model.fit(data, method="adam", learning_rate=0.05, epochs=8, batch_size=50)
    after = model.log_likelihood(data).mean()
    assert after > before + 1.0
    assert history[-1].train_ll == pytest.approx(after)
    for name, value in model.parameters().items():
        assert np.isfinite(value).all(), name
        if "weights" in name:
            axes = (2, 3) if value.ndim == 4 else (1,)
            np.testing.assert_allclose(value.sum(axis=axes), 1.0, atol=1e-9)


@pytest.mark.parametrize("backend_name", ["torch", "numpy"])
@pytest.mark.parametrize("text", [
    "var x[3] : categorical(5)\nleaf x ~ categorical\nsums 3\ninputs 4\nproduct hadamard\n"
    "region all = {x[0], x[1], x[2]}\nall -> x[0] * x[1] * x[2]\n",
    "var x[6] : real\nleaf x ~ normal\nsums 2\ninputs 3\nstructure random_binary_trees(depth = 2, replicas = 2)\n",
    "var x[6] : categorical(4)\nleaf x ~ binomial(3)\nsums 2\ninputs 3\n"
    "structure random_binary_trees(depth = 2, replicas = 2)\n",
])
def test_leaf_m_step_in_row_blocks_equals_the_whole_update(text: str, backend_name: str, monkeypatch) -> None:
    """em_update updates large leaf layers in blocks of rows (backends/em.py, _BLOCK_ENTRIES): the
    same parameters as one update of the whole layer, with a pseudocount and rows of no mass."""
    import einc
    from einc.backends import em
    from oracles import random_data

    model = einc.compile(text, dtype="float64", seed=3, backend=backend_name)
    backend = model.backend
    x = random_data(model.graph, 9, 2)
    stats = backend.statistics(model.params, Batch(x, np.ones_like(x, dtype=bool)))
    leaf_name = next(spec.name for spec in model.plan.params if spec.kind == "leaf")
    sum_pt, sum_p = stats.leaf[leaf_name]
    sum_p[0] = 0.0  # a leaf row no sample reached keeps its parameters
    sum_pt[0] = 0.0
    whole = backend.em_update(model.params, stats, 0.3, pseudocount=0.0)
    whole_smoothed = backend.em_update(model.params, stats, 0.3, pseudocount=0.01)
    monkeypatch.setattr(em, "_BLOCK_ENTRIES", 7)  # a few rows per block, blocks not dividing L
    blocked = backend.em_update(model.params, stats, 0.3, pseudocount=0.0)
    blocked_smoothed = backend.em_update(model.params, stats, 0.3, pseudocount=0.01)
    leaf_rows = model.params[leaf_name].shape[0]
    assert leaf_rows > 1
    for a, b in ((whole, blocked), (whole_smoothed, blocked_smoothed)):
        for name in a:
            np.testing.assert_allclose(np.asarray(b[name]), np.asarray(a[name]), rtol=1e-15, atol=0)


@pytest.mark.parametrize("xp_name", ["torch", "numpy"])
@pytest.mark.parametrize("shape, axes", [((7, 3, 4, 5), (2, 3)), ((9, 4, 6), (2,)), ((5, 6), (1,))])
@pytest.mark.parametrize("gradients", [False, True])
def test_sum_weight_m_step_in_row_blocks_equals_the_whole_update(xp_name: str, shape, axes, gradients: bool,
                                                                 monkeypatch) -> None:
    """_normalise updates CPU sum weights in cache-sized blocks of rows, checking the mass on the
    host: the update of the whole array in one fresh block without that check (as on CUDA) to rounding, with
    a pseudocount, rows of no mass and the statistics left untouched; given the gradients
    ∂/∂w instead of the counts n = w · ∂, it makes the counts itself."""
    from einc.backends import em

    rng = np.random.default_rng(0)
    old = rng.random(shape)
    old /= old.sum(axis=axes, keepdims=True)
    counts = rng.gamma(0.5, size=shape)
    counts[1] = 0.0  # a row no sample reached keeps its weights
    statistics = counts / old if gradients else counts
    xp = torch if xp_name == "torch" else np
    as_array = (lambda a: torch.as_tensor(a.copy())) if xp is torch else (lambda a: a.copy())
    statistics_before = statistics.copy()
    for pseudocount in (0.0, 0.01):
        whole = em._normalise_block(xp, as_array(counts), axes, as_array(old), 0.3,
                                    pseudocount / np.prod([shape[a] for a in axes]))
        monkeypatch.setattr(em, "_CACHE_BLOCK_ENTRIES", 2 * int(np.prod(shape[1:])))  # 2 rows a block
        given = as_array(statistics)
        blocked = em._normalise(xp, given, axes, as_array(old), 0.3, pseudocount, gradients)
        monkeypatch.undo()
        np.testing.assert_allclose(np.asarray(blocked), np.asarray(whole), rtol=1e-14, atol=0)
        np.testing.assert_array_equal(np.asarray(given), statistics_before)
        if not pseudocount:  # (with one, every row has mass)
            np.testing.assert_allclose(np.asarray(blocked)[1], old[1], rtol=1e-14, atol=0)
        np.testing.assert_allclose(np.asarray(blocked).sum(axis=axes), 1.0, rtol=1e-14)
        # the path of device memory (one block of fresh arrays) makes the counts from gradients too
        monkeypatch.setattr(em, "_in_host_memory", lambda array: False)
        fresh = em._normalise(xp, as_array(statistics), axes, as_array(old), 0.3, pseudocount, gradients)
        monkeypatch.undo()
        np.testing.assert_allclose(np.asarray(fresh), np.asarray(whole), rtol=1e-14, atol=0)


def test_counts_are_made_in_place_only_on_a_gradient_nothing_else_shares() -> None:
    """torch_backend._counts multiplies W into the gradient in place on the CPU, but not where
    autograd handed one buffer to two weights (the second product would multiply twice) and not
    in a traced pass."""
    from einc.backends.torch_backend import _counts

    w1, w2 = torch.full((2, 3), 2.0), torch.full((2, 3), 3.0)
    shared = torch.ones(2, 3)
    assert torch.equal(_counts(w1, shared, (shared, shared), False), w1)
    assert torch.equal(_counts(w2, shared, (shared, shared), False), w2)
    assert torch.equal(shared, torch.ones(2, 3))  # neither product was written into the shared buffer
    own, other = torch.ones(2, 3), torch.ones(2, 3)
    counts = _counts(w1, own, (own, other), False)
    assert counts is own and torch.equal(own, w1)  # in place: no fresh buffer
    fresh = torch.ones(2, 3)
    assert _counts(w1, fresh, (fresh,), True) is not fresh and torch.equal(fresh, torch.ones(2, 3))
