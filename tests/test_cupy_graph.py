"""The captured CuPy EM step's logic (backends/cupy_graph.py), on the CPU with NumPy.

``ReplayGraphs`` stands in for CuPy's graphs: a launch re-runs the step function and drops what
it returns, so only the step's writes into its static buffers (index, parameters, total) carry
over between launches, as with a real CUDA graph. What this cannot check — that every kernel
of the step can be captured (no host transfer inside it) and that the graph's memory is its
own — is checked on a GPU by tests/test_gpu.py::test_cupy_captured_epochs_equal_uncaptured.
"""

from __future__ import annotations

import numpy as np
import pytest

from einc.backends.array_backend import ArrayBackend
from einc.backends.base import create_backend
from einc.backends.cupy_graph import ReplayGraphs
from einc.compiler.params import init_parameters
from einc.errors import BackendError
from oracles import BERNOULLI, NORMAL, explicit_graph, plan_of, random_data
from test_array_backend import CIRCUITS


def _pair(graph, graphs=None):
    """(uncaptured, captured-with-replay) numpy backends of one plan, float64, and the parameters."""
    plan = plan_of(graph)
    plain = create_backend("numpy", plan, dtype="float64")
    captured = create_backend("numpy", plan, dtype="float64")
    captured.capture, captured.graphs = True, graphs or ReplayGraphs()
    return plain, captured, init_parameters(plan, 0)


def _upload(backend, graph, rows=250, seed=0, latents=None):
    x = random_data(graph, rows, seed)
    observed = np.random.default_rng(seed).random(x.shape) < 0.8
    return backend.upload(np.where(observed, x, 0), observed, None, latents)


@pytest.mark.parametrize("name", ["rat-mixed", "tree-mixed", "hadamard-mixed", "pd-mixed"])
def test_replayed_epochs_equal_uncaptured_ones(name: str) -> None:
    graph = CIRCUITS[name]()
    plain, captured, params = _pair(graph)
    order = np.random.default_rng(1).permutation(250)  # 3 full batches of 64 and one of 58
    p, q = plain.put(params), captured.put(params)
    a, b = _upload(plain, graph), _upload(captured, graph)
    buffers = None
    for _ in range(3):
        p, total_p = plain.train_epoch(p, a, order, 64, 0.3, 0.01)
        q, total_q = captured.train_epoch(q, b, order, 64, 0.3, 0.01)
        # a graph writes fixed memory: every epoch returns the same (static) arrays
        buffers = buffers or {key: id(value) for key, value in q.items()}
        assert {key: id(value) for key, value in q.items()} == buffers
        assert total_q == pytest.approx(total_p, rel=1e-13)
        for key, value in plain.get(p).items():
            np.testing.assert_allclose(captured.get(q)[key], value, rtol=1e-12, atol=1e-15, err_msg=key)
    assert captured.capture_error is None
    assert captured.graphs.captures == 1 and captured.graphs.launches == 9  # one graph, 3 launches per epoch


def test_an_epoch_starts_from_the_parameters_it_is_given() -> None:
    """Parameters set between epochs (not the static arrays of the last one) are loaded into
    the graph's buffers; a new batch size or step size captures a new graph."""
    graph = CIRCUITS["rat-mixed"]()
    plain, captured, params = _pair(graph)
    other = init_parameters(plain.plan, 7)
    order = np.arange(200)
    a, b = _upload(plain, graph), _upload(captured, graph)
    captured.train_epoch(captured.put(params), b, order, 50, 0.5)
    for batch_size, step_size in ((50, 0.5), (64, 0.5), (64, 0.2)):
        p, total_p = plain.train_epoch(plain.put(other), a, order, batch_size, step_size)
        q, total_q = captured.train_epoch(captured.put(other), b, order, batch_size, step_size)
        assert total_q == pytest.approx(total_p, rel=1e-13)
        for key, value in plain.get(p).items():
            np.testing.assert_allclose(captured.get(q)[key], value, rtol=1e-12, atol=1e-15)
    assert captured.graphs.captures == 3


def test_clamped_latents_and_heads_replay_too() -> None:
    from dataclasses import replace

    from einc.ir.region_graph import Latent

    graph = replace(explicit_graph([BERNOULLI] * 4, k=3), latents=(Latent("a", ((2, 3), 0)),))
    plain, captured, params = _pair(graph)
    z = np.random.default_rng(4).integers(-1, 3, (130, 1))
    a, b = _upload(plain, graph, 130, latents=z), _upload(captured, graph, 130, latents=z)
    order = np.arange(130)
    p, total_p = plain.train_epoch(plain.put(params), a, order, 32, 0.4)
    q, total_q = captured.train_epoch(captured.put(params), b, order, 32, 0.4)
    assert total_q == pytest.approx(total_p, rel=1e-13)
    for key, value in plain.get(p).items():
        np.testing.assert_allclose(captured.get(q)[key], value, rtol=1e-12, atol=1e-15)


class _FailingGraphs(ReplayGraphs):
    def capture(self, function, pool):
        raise RuntimeError("cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing")


def test_a_failed_capture_falls_back_once_with_a_warning() -> None:
    graph = explicit_graph([NORMAL] * 4, k=2)
    plain, captured, params = _pair(graph, _FailingGraphs())
    a, b = _upload(plain, graph, 100), _upload(captured, graph, 100)
    order = np.arange(100)
    with pytest.warns(UserWarning, match="capturing the CuPy EM step failed .*StreamCaptureUnsupported"):
        q, total_q = captured.train_epoch(captured.put(params), b, order, 25, 0.5)
    assert "StreamCaptureUnsupported" in captured.capture_error
    p, total_p = plain.train_epoch(plain.put(params), a, order, 25, 0.5)
    assert total_q == pytest.approx(total_p, rel=1e-13)
    captured.train_epoch(q, b, order, 25, 0.5)  # no second attempt, no second warning
    assert captured.graphs.launches == 0


def test_fewer_rows_than_a_batch_run_uncaptured() -> None:
    graph = explicit_graph([BERNOULLI] * 4, k=2)
    plain, captured, params = _pair(graph)
    b = _upload(captured, graph, 30)
    captured.train_epoch(captured.put(params), b, np.arange(30), 64, 0.5)
    assert captured.graphs.captures == 0


def test_capture_needs_cupy() -> None:
    plan = plan_of(explicit_graph([BERNOULLI] * 4, k=2))
    with pytest.raises(BackendError, match="capture=True records CUDA graphs: it needs the cupy backend"):
        ArrayBackend(plan, xp=np, capture=True)
    with pytest.raises(TypeError):
        create_backend("numpy", plan, capture=True)  # the numpy backend takes no such option
