"""The sixth round of issue 18's inference work (backends/torch_ops/input.py, hadamard.py):
deferred dense leaves computed from the gathered columns of exactly the parts their readers
read (``feature_columns``, ``leaf_features`` with f before the batch), Θ kept across queries while φ is unchanged
(``coefficients``), the query log-sum-exp without a check for rows of no mass, and the
hadamard scatter indices kept per shape. Each query these serve equals the materialised,
checked definition in float64 (1e-12): log-likelihoods with unobserved entries and wholly
unobserved rows (marginals), and the EM statistics."""

from __future__ import annotations

import gc
import pickle
import weakref

import numpy as np
import pytest
import torch

import einc
from einc.backends.base import Batch
from einc.backends.torch_ops import hadamard
from einc.backends.torch_reads import PassValues
from einc.ir.plan import HadamardOp

from oracles import random_data
from test_executor import CIRCUITS

_FACTORS = ("region all = {x[0], x[1], x[2], x[3], x[4], x[5]}\nregion a = {x[0], x[1], x[2], x[3]}\n"
            "all -> a * {x[4], x[5]}\na -> {x[0], x[1]} * {x[2], x[3]}\n")

LEAVES = {
    # dense statistics, deferred through feature_columns / leaf_features(axis=1)
    "bernoulli_hclt": CIRCUITS["hclt"],
    "binomial_pd": CIRCUITS["pd_hadamard"],  # log h(x) column, shared regions
    "bernoulli_factors": "var x[6] : binary\nleaf x ~ bernoulli\nsums 2\ninputs 2\nproduct hadamard\n" + _FACTORS,
    "normal_factors": "var x[6] : real\nleaf x ~ normal\nsums 3\ninputs 3\nproduct hadamard\n" + _FACTORS,
    "tiny_hadamard": CIRCUITS["tiny_hadamard"],
    # one-hot statistics (input.LookupLeaves), categorical over 2, 3 and 256 values
    **{f"categorical{c}_hclt": CIRCUITS["hclt"].replace("binary", f"categorical({c})").replace("bernoulli", "categorical")
       for c in (2, 3, 256)},
}


def _batch(model: einc.Model, n: int = 17) -> Batch:
    """Random rows with unobserved entries, one row wholly unobserved (its marginal is 1). The
    unobserved entries keep their values (the passes mask them, not the caller), so that a
    feature left unmasked shows."""
    x = random_data(model.graph, n, 3)
    observed = np.ones_like(x, dtype=bool)
    observed[::3, 0] = False
    observed[1::4, -1] = False
    observed[2::5, 1:3] = False
    observed[5] = False
    return Batch(x, observed)


def _materialised(name: str) -> einc.Model:
    """The same model with nothing deferred: every input value computed whole (values_of)."""
    model = einc.compile(LEAVES[name], dtype="float64", seed=4)
    model.backend.reads.deferrable = set()
    return model


def _reference_ll(model: einc.Model, batch: Batch) -> np.ndarray:
    """Log-likelihoods by the materialised pass with grad enabled: the hadamard ops then take
    the checked log-sum-exp (rows of no mass by log_of_mass), Θ is computed afresh."""
    backend = model.backend
    x, observed = backend._batch(batch)
    root = backend._root(backend.forward(model.params, x, observed, defer=False))
    return root.detach().numpy()


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_query_log_likelihoods_equal_the_materialised_pass(name: str) -> None:
    model = einc.compile(LEAVES[name], dtype="float64", seed=4)
    assert model.backend.reads.deferrable  # the leaves these circuits' queries read are deferred
    batch = _batch(model)
    expected = _reference_ll(_materialised(name), batch)
    got = model.backend.log_likelihood(model.params, batch)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[5], 0.0, atol=1e-12)  # a wholly unobserved row: marginal 1
    again = model.backend.log_likelihood(model.params, batch)  # Θ reused: the same numbers
    np.testing.assert_array_equal(again, got)
    # another batch size between (kept scatter indices are per shape)
    few = Batch(batch.values[6:11], batch.observed[6:11])
    np.testing.assert_allclose(model.backend.log_likelihood(model.params, few), expected[6:11], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(model.backend.log_likelihood(model.params, batch), got)


@pytest.mark.parametrize("name", ["bernoulli_hclt", "normal_factors", "categorical3_hclt"])
def test_em_statistics_equal_the_materialised_pass(name: str) -> None:
    """The E-step's root-only pass defers its leaves too (differentiated through Θ's gather)."""
    model, reference = einc.compile(LEAVES[name], dtype="float64", seed=4), _materialised(name)
    batch = _batch(model)
    got, expected = model.backend.statistics(model.params, batch), reference.backend.statistics(reference.params, batch)
    assert got.log_likelihood == pytest.approx(expected.log_likelihood, rel=1e-12, abs=1e-12)
    for key, value in expected.weights.items():
        torch.testing.assert_close(got.weights[key], value, rtol=1e-12, atol=1e-12)
    for key, (sum_pt, sum_p) in expected.leaf.items():
        torch.testing.assert_close(got.leaf[key][0], sum_pt, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got.leaf[key][1], sum_p, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["bernoulli_hclt", "categorical3_hclt"])
def test_kept_coefficients_follow_changed_parameters(name: str) -> None:
    """Θ kept by a query is not reused once φ is written in place or replaced."""
    model = einc.compile(LEAVES[name], dtype="float64", seed=4)
    other = einc.compile(LEAVES[name], dtype="float64", seed=9)  # other valid parameters
    backend, batch = model.backend, _batch(model)
    params = dict(model.params)
    first = backend.log_likelihood(params, batch)
    leaf = next(spec.name for spec in model.plan.params if spec.name in backend.columns)
    params[leaf].copy_(other.params[leaf])  # in place: the same tensor, a new version
    check = _materialised(name)
    check.params[leaf].copy_(other.params[leaf])
    expected = _reference_ll(check, batch)
    got = backend.log_likelihood(params, batch)
    assert not np.allclose(got, first)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    # replaced by another tensor (a new params dict, as an EM step makes): recomputed
    fresh = {**params, leaf: other.params[leaf].clone()}
    np.testing.assert_allclose(backend.log_likelihood(fresh, batch), expected, rtol=1e-12, atol=1e-12)
    restored = {**params, leaf: einc.compile(LEAVES[name], dtype="float64", seed=4).params[leaf]}
    np.testing.assert_allclose(backend.log_likelihood(restored, batch), first, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["tiny_hadamard", "bernoulli_hclt"])
def test_unchecked_query_log_sum_exp_keeps_rows_of_no_mass(name: str) -> None:
    """Without grad the hadamard op shifts by the clamped maximum instead of checking for rows
    of no mass: those stay exactly −inf, every other entry equals the checked path's."""
    model = einc.compile(LEAVES[name], dtype="float64", seed=4)
    backend, plan = model.backend, model.plan
    generator = torch.Generator().manual_seed(0)
    sources = [torch.randn((op.rows, 6, op.vector_size), generator=generator, dtype=torch.float64) for op in plan.ops]
    for source in sources:
        source[:, 2] = float("-inf")  # sample 2 has no mass anywhere
        source[0, 4] = float("-inf")  # sample 4 none in each value's first row
    values = PassValues(backend.reads, backend.batch_minor)
    for source in sources:
        values.append(source.transpose(1, 2).contiguous().transpose(1, 2))
    checked_any = False
    for op in plan.ops:
        if not isinstance(op, HadamardOp):
            continue
        expected = hadamard.forward(backend, op, model.params, values, False)  # grad enabled: checked
        with torch.no_grad():
            got = hadamard.forward(backend, op, model.params, values, False)
        assert torch.isneginf(got[:, 2]).all()
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        checked_any = True
    assert checked_any


def test_kept_coefficients_go_with_their_parameters() -> None:
    """A kept Θ holds its φ weakly: when φ is let go (an EM step replaced it), so is Θ."""
    model = einc.compile(LEAVES["categorical3_hclt"], dtype="float64", seed=4)
    backend, batch = model.backend, _batch(model)
    params = {name: value.clone() for name, value in model.params.items()}
    expected = backend.log_likelihood(params, batch)
    assert len(backend.query_coefficients) == 1
    theta = weakref.ref(next(iter(backend.query_coefficients.values())).thetas[0])
    del params
    assert backend.query_coefficients == {}
    assert theta() is None
    # replaced by a query with other parameters while the first still live: freed at once too
    # (no reference cycle keeps it for the collector, which is held off here)
    first = {name: value.clone() for name, value in model.params.items()}
    backend.log_likelihood(first, batch)
    theta = weakref.ref(next(iter(backend.query_coefficients.values())).thetas[0])
    gc.disable()
    try:
        np.testing.assert_array_equal(backend.log_likelihood(model.params, batch), expected)
        assert theta() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_uploaded_batch_equals_torch_conversion(dtype: str) -> None:
    """The CPU batch upload (NumPy casts into padded arrays) equals torch's own conversion."""
    model = einc.compile(LEAVES["normal_factors"], dtype=dtype, seed=4)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(9, 6)) / 3.0 * 10.0 ** rng.integers(-40, 40, size=(9, 6))
    observed = rng.random((9, 6)) > 0.3
    x, obs = model.backend._batch(Batch(values, observed))
    torch_dtype = getattr(torch, dtype)
    assert x.dtype == obs.dtype == torch_dtype and x.shape == obs.shape == (9, 7)
    assert torch.equal(x[:, :6], torch.as_tensor(values, dtype=torch_dtype))
    assert torch.equal(obs[:, :6], torch.as_tensor(observed, dtype=torch_dtype))
    assert not x[:, 6].any() and not obs[:, 6].any()


def test_a_queried_backend_pickles() -> None:
    """The kept Θ (weak references, which pickle not) is left out of a pickled backend, so one
    that answered queries pickles as before (that the copy computes the same: test_executor.py)."""
    model = einc.compile(LEAVES["bernoulli_hclt"], dtype="float64", seed=4)
    model.backend.log_likelihood(model.params, _batch(model))
    assert model.backend.query_coefficients
    copy = pickle.loads(pickle.dumps(model.backend))
    assert copy.query_coefficients == {} and model.backend.query_coefficients
