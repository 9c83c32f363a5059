"""The torch backend's linear-domain inference (backends/torch_linear.py) equals its log domain.

Float64 to 1e-12 (relative on log p) on small circuits of every op kind and family, with missing
values (marginals) and several heads; a deep HCLT (400 binary variables, depth ~100) in float32
to 1e-5 against the float32 log domain; probability-0 rows (−inf/LOG_ZERO as the log domain
gives them); and the queries the linear domain must leave to the log domain (clamped latents,
max-product, vae leaves) still answer as before.
"""

from __future__ import annotations

import numpy as np
import pytest

import einc
from einc.backends import torch_linear
from einc.backends.base import Batch, create_backend
from einc.compiler.params import init_parameters

from oracles import (
    BERNOULLI,
    BINOMIAL3,
    CATEGORICAL3,
    FAMILY_CASES,
    INDICATOR,
    INDICATOR3,
    NORMAL,
    POISSON,
    VAE_CASES,
    enumerate_states,
    explicit_graph,
    hadamard_graph,
    plan_of,
    random_data,
    rat_graph,
    tree_graph,
)


def _backends(plan, dtype: str):
    return (create_backend("torch", plan, dtype=dtype, domain="log"),
            create_backend("torch", plan, dtype=dtype, domain="linear"))


def _no_log_fallback(backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the linear backend fail if any sample were recomputed in the log domain."""
    def refuse(*args, **kwargs):
        raise AssertionError("a sample fell back to the log domain")
    monkeypatch.setattr(backend, "forward", refuse)


@pytest.mark.parametrize("graph", [
    explicit_graph([BERNOULLI, CATEGORICAL3, BINOMIAL3, NORMAL], k=3, heads=2),  # einsum, mixing (a DAG)
    rat_graph([FAMILY_CASES[name] for name in sorted(FAMILY_CASES)], 2, 2, k=3),  # einsum, every family
    hadamard_graph([BERNOULLI, INDICATOR3, NORMAL, POISSON, CATEGORICAL3], k=3, heads=2),  # hadamard, mixing
    tree_graph([BERNOULLI, CATEGORICAL3, BINOMIAL3, BERNOULLI, NORMAL, BERNOULLI], [-1, 0, 0, 1, 1, 2], k=4),
    # leaves read by hadamard ops only are deferred (one matmul per reader, then exp): of
    # probabilities (finitely many outcomes), and of densities (shifted by their maximum)
    tree_graph([BERNOULLI, BINOMIAL3, BERNOULLI, BINOMIAL3, BERNOULLI, BERNOULLI], [-1, 0, 0, 1, 1, 1], k=4),
    tree_graph([BERNOULLI, NORMAL, POISSON, BINOMIAL3, NORMAL, BERNOULLI], [-1, 0, 0, 1, 1, 2], k=4, heads=2),
], ids=["einsum-mixing", "rat-every-family", "hadamard-mixing-heads", "tree", "tree-deferred-probabilities",
        "tree-deferred-densities"])
def test_linear_equals_log_in_float64_with_missing_values(graph, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plan_of(graph)
    log, linear = _backends(plan, "float64")
    assert torch_linear.applies(linear, False, None) and not torch_linear.applies(log, False, None)
    _no_log_fallback(linear, monkeypatch)
    for seed in range(3):
        params = log.put(init_parameters(plan, seed))
        x = random_data(plan.graph, 64, seed)
        observed = np.random.default_rng(seed + 10).random(x.shape) >= 0.3  # marginals
        for batch in (Batch(x, np.ones_like(x, dtype=bool)), Batch(np.where(observed, x, 0.0), observed)):
            expected = log.log_likelihood(params, batch)
            got = linear.log_likelihood(params, batch)
            assert np.all(np.isfinite(expected))
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def _hclt_source(variables: int, k: int, seed: int) -> str:
    """An HCLT over ``variables`` binary variables on a random deep tree (each node's parent one
    of the previous few nodes: depth about variables / 4)."""
    rng = np.random.default_rng(seed)
    parents = [-1] + [int(rng.integers(max(0, v - 6), v)) for v in range(1, variables)]
    return (f"var x[{variables}] : binary\nleaf x ~ bernoulli\nproduct hadamard\nsums {k}\ninputs {k}\n"
            f"structure tree(parents = [{', '.join(map(str, parents))}])\n")


def test_a_deep_hclt_in_float32_equals_the_float32_log_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    source = _hclt_source(400, 8, 0)
    model = einc.compile(source, dtype="float32", seed=3, domain="linear")
    reference = einc.compile(source, dtype="float32", seed=3, domain="log")
    exact = einc.compile(source, dtype="float64", seed=3, domain="log")
    linear, log = model.backend, reference.backend
    assert torch_linear.applies(linear, False, None)
    rng = np.random.default_rng(1)
    # data that follows a chain of the tree, so the circuit's values are far from uniform
    x = (rng.random((256, 400)) < rng.random(400)).astype(float)
    observed = rng.random(x.shape) >= 0.2
    params = linear.put(model.backend.get(model.params))
    params64 = exact.backend.put(model.backend.get(model.params))
    _no_log_fallback(linear, monkeypatch)
    for batch in (Batch(x, np.ones_like(x, dtype=bool)), Batch(np.where(observed, x, 0.0), observed)):
        expected = log.log_likelihood(params, batch)
        got = linear.log_likelihood(params, batch)
        assert expected.min() < -150  # far below float32's smallest normal as a probability
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=0)
        # and both within float32 rounding of the float64 answer
        np.testing.assert_allclose(got, exact.backend.log_likelihood(params64, batch), rtol=1e-5, atol=0)


def test_probability_zero_rows_come_out_as_in_the_log_domain() -> None:
    """Indicator leaves force equal states along the tree: most assignments have probability 0."""
    graph = tree_graph([INDICATOR] * 6, [-1, 0, 0, 1, 1, 2], k=2)
    plan = plan_of(graph)
    states = enumerate_states(graph)
    for dtype in ("float64", "float32"):
        log, linear = _backends(plan, dtype)
        params = log.put(init_parameters(plan, 0))
        batch = Batch(states, np.ones_like(states, dtype=bool))
        expected = log.log_likelihood(params, batch)
        got = linear.log_likelihood(params, batch)
        possible = expected[:, 0] > -1e29
        assert 0 < possible.sum() < len(states)
        assert not np.isnan(got).any()
        np.testing.assert_array_equal(got[~possible], expected[~possible])  # exactly, not NaN
        np.testing.assert_allclose(got[possible], expected[possible], rtol=1e-12 if dtype == "float64" else 1e-6)
        assert np.isclose(np.exp(got[possible]).sum(), 1.0, rtol=1e-5)


def test_what_the_linear_domain_does_not_cover_runs_in_the_log_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Max-product, clamped latents and vae leaves take the log domain (equal answers), and a
    linear pass that is never entered there (the spy counts none)."""
    calls = []
    original = torch_linear.linear_root
    monkeypatch.setattr(torch_linear, "linear_root", lambda *a, **k: calls.append(1) or original(*a, **k))
    plan = plan_of(hadamard_graph([BERNOULLI, INDICATOR3, NORMAL, POISSON, CATEGORICAL3], k=3))
    log, linear = _backends(plan, "float64")
    params = log.put(init_parameters(plan, 0))
    x = random_data(plan.graph, 16, 0)
    batch = Batch(x, np.ones_like(x, dtype=bool))
    np.testing.assert_array_equal(linear.log_likelihood(params, batch, max_product=True),
                                  log.log_likelihood(params, batch, max_product=True))
    assert not calls
    linear.log_likelihood(params, batch)
    assert calls  # the spy sees the linear pass where it applies
    vae = plan_of(hadamard_graph([VAE_CASES[name] for name in sorted(VAE_CASES)][:5] if len(VAE_CASES) >= 5 else
                                 [VAE_CASES[sorted(VAE_CASES)[0]]] * 5, k=3))
    vae_backend = create_backend("torch", vae, dtype="float64", domain="linear")
    assert not torch_linear.applies(vae_backend, False, None)


def test_latents_clamped_run_in_the_log_domain_summed_out_in_the_linear() -> None:
    from dataclasses import replace

    from einc.ir.region_graph import Latent

    graph = tree_graph([BERNOULLI, CATEGORICAL3, BERNOULLI, BERNOULLI], [-1, 0, 0, 1], k=2)
    graph = replace(graph, latents=(Latent("z0", ((1, 3), 0)), Latent("z1", ((2,), 0))))
    plan = plan_of(graph)
    log, linear = _backends(plan, "float64")
    params = log.put(init_parameters(plan, 0))
    x = random_data(plan.graph, 12, 0)
    states = np.tile([[1, 0]], (12, 1))
    clamped = Batch(x, np.ones_like(x, dtype=bool), None, states)
    masks = linear._latent_masks(linear._latents(clamped))
    assert masks is not None and not torch_linear.applies(linear, False, masks)
    np.testing.assert_array_equal(linear.log_likelihood(params, clamped), log.log_likelihood(params, clamped))
    summed = Batch(x, np.ones_like(x, dtype=bool))  # no latents given: summed out, linear
    assert torch_linear.applies(linear, False, None)
    np.testing.assert_allclose(linear.log_likelihood(params, summed), log.log_likelihood(params, summed), rtol=1e-12)


def test_an_unknown_domain_is_a_backend_error() -> None:
    from einc.errors import BackendError

    plan = plan_of(explicit_graph([BERNOULLI, CATEGORICAL3, BINOMIAL3, NORMAL], k=2))
    with pytest.raises(BackendError, match="unknown domain 'exp'"):
        create_backend("torch", plan, dtype="float64", domain="exp")


def test_samples_whose_values_near_underflow_are_recomputed_in_the_log_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    """A star tree whose root multiplies six leaves of probability 1e-6: its maximum over K is
    about 1e-36 (2^-120) in float32, normal but below the 2^-64 threshold: those samples (and only
    those) come from the log domain."""
    graph = tree_graph([BERNOULLI] * 6, [-1, 0, 0, 0, 0, 0], k=2)
    plan = plan_of(graph)
    log, linear = _backends(plan, "float32")
    values = init_parameters(plan, 0)
    for spec in plan.params:
        if spec.kind == "leaf":
            values[spec.name] = np.full(spec.shape, 1e-6)
    params = log.put(values)
    x = np.ones((8, 6))
    x[4:] = 0.0  # probability ≈ 1 each: these stay linear
    batch = Batch(x, np.ones_like(x, dtype=bool))
    recomputed = []
    original = linear.forward
    monkeypatch.setattr(linear, "forward", lambda params, x, *a, **k: recomputed.append(len(x)) or original(params, x, *a, **k))
    got = linear.log_likelihood(params, batch)
    assert recomputed == [4]
    # log p ≈ −6e-6 for the probable rows: float32 rounds it to ~1e-11, relative 3e-6
    np.testing.assert_allclose(got, log.log_likelihood(params, batch), rtol=1e-5, atol=1e-9)
    assert got[:4].max() < -80
