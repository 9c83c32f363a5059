"""Denormals are flushed while a CPU backend computes, and the caller's setting comes back
(backends/denormals.py): inside every entry point, after it returns or raises; results unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from einc.backends.base import Batch, create_backend
from einc.backends.denormals import flush_denormals, flushing
from einc.compiler.params import init_parameters

from oracles import BERNOULLI, NORMAL, explicit_graph, plan_of, random_data

pytestmark = pytest.mark.skipif(not torch.set_flush_denormal(False), reason="the CPU has no FTZ/DAZ switch")


def _setup(backend_name: str, dtype: str = "float64"):
    graph = explicit_graph([NORMAL, BERNOULLI, NORMAL, BERNOULLI], k=2)
    plan = plan_of(graph)
    backend = create_backend(backend_name, plan, dtype=dtype)
    params = backend.put(init_parameters(plan, 3))
    x = random_data(graph, 64, 0)
    observed = np.ones_like(x, dtype=bool)
    observed[::5, 0] = False
    return backend, params, Batch(np.where(observed, x, 0), observed)


def _spy(backend, seen: list[bool]) -> None:
    """Record the thread's flush setting whenever the backend's upward pass runs."""
    forward = backend.forward

    def spying(*args, **kwargs):
        seen.append(flushing())
        return forward(*args, **kwargs)

    backend.forward = spying


@pytest.mark.parametrize("name", ["torch", "numpy"])
def test_entry_points_flush_inside_and_restore_the_callers_setting(name):
    backend, params, batch = _setup(name)
    seen: list[bool] = []
    _spy(backend, seen)
    assert not flushing()
    backend.log_likelihood(params, batch)
    stats = backend.statistics(params, batch)
    backend.em_update(params, stats, 0.5)
    backend.backtrack(params, batch, True, "mode", np.zeros(len(batch.values), dtype=np.int64), 0)
    assert seen and all(seen), seen  # every pass ran flushed
    assert not flushing()  # and the caller's (off) setting is back
    with flush_denormals():  # a caller that flushes itself keeps flushing after the call
        backend.log_likelihood(params, batch)
        assert flushing()
    assert not flushing()


def test_setting_restored_when_the_call_raises():
    backend, params, batch = _setup("torch")
    with pytest.raises(Exception):
        backend.log_likelihood({}, batch)  # no parameters: the pass fails inside the scope
    assert not flushing()


@pytest.mark.parametrize("name", ["torch", "numpy"])
def test_results_equal_a_run_without_flushing(name):
    flushed_backend, params, batch = _setup(name)
    plain, _, _ = _setup(name)
    plain.flush_denormals = False
    seen: list[bool] = []
    _spy(plain, seen)
    a, b = flushed_backend.log_likelihood(params, batch), plain.log_likelihood(params, batch)
    assert seen and not any(seen)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
    sa, sb = flushed_backend.statistics(params, batch), plain.statistics(params, batch)
    for key in sa.weights:
        np.testing.assert_allclose(np.asarray(sa.weights[key]), np.asarray(sb.weights[key]), rtol=1e-12, atol=1e-300)


def test_denormal_arithmetic_is_flushed_inside_only():
    tiny = torch.full((4,), 1e-30, dtype=torch.float32)
    assert (tiny * 1e-10).abs().max().item() > 0  # a denormal, unflushed
    with flush_denormals():
        assert (tiny * 1e-10).abs().max().item() == 0
        assert (np.full(4, 1e-30, np.float32) * np.float32(1e-10)).max() == 0  # NumPy's loops too
    assert (tiny * 1e-10).abs().max().item() > 0


def test_model_fit_and_resident_epochs_flush():
    """What `einc train` runs (Model.fit -> the backend's resident-data epoch) is flushed too."""
    import einc

    model = einc.compile("var x[4] : binary\nleaf x ~ bernoulli\nsums 2\ninputs 2\n"
                         "structure random_binary_trees(depth = 1, replicas = 2, seed = 0)\n", dtype="float64")
    seen: list[bool] = []
    _spy(model.backend, seen)
    x = np.random.default_rng(0).integers(0, 2, (40, 4)).astype(float)
    model.fit(x, epochs=2, batch_size=16)
    assert seen and all(seen)
    assert not flushing()
