"""The fused einsum kernel (Triton; backends/fused_einsum.py) against the reference contraction.

On a machine without CUDA the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set
by tests/conftest.py before anything imports Triton), on CUDA as compiled kernels; the tests are
the same. Float32 must agree with a float64 reference to 1e-5 relative, float64 to rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from einc.backends.base import Batch, create_backend  # noqa: E402
from einc.compiler.kernels import einsum_kernel  # noqa: E402
from einc.compiler.layering import layer  # noqa: E402
from einc.compiler.lower import lower  # noqa: E402
from einc.compiler.params import init_parameters  # noqa: E402
from einc.ir.plan import EinsumOp  # noqa: E402
from oracles import (  # noqa: E402
    BERNOULLI,
    CATEGORICAL3,
    NORMAL,
    explicit_graph,
    pd_graph,
    random_data,
    rat_graph,
)
from einc.backends.fused_einsum import einsum_layer  # noqa: E402

DEVICES = ["cuda"] if torch.cuda.is_available() else ["cpu"]


def _reference(left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # (L, B, i) x (L, B, j) x (L, k, i, j) -> (L, B, k)
    return torch.einsum("lbi,lbj,lkij->lbk", left, right, weights)


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    got, expected = got.detach().double().cpu(), expected.detach().double().cpu()
    return float((got - expected).norm() / expected.norm())


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=6, deadline=None)
@given(
    rows=st.integers(1, 3),
    batch=st.integers(1, 40),
    k_out=st.integers(1, 20),
    k_left=st.integers(1, 9),
    k_right=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_forward_and_gradients_match_the_reference_in_float32(
    device: str, rows: int, batch: int, k_out: int, k_left: int, k_right: int, seed: int
) -> None:
    """Any shapes (K not a tile multiple, batches not a tile multiple, k_out ≠ k_left ≠ k_right):
    value and all three gradients within 1e-5 relative of a float64 reference."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(rows, batch, k_left), (rows, batch, k_right), (rows, k_out, k_left, k_right)]
    inputs64 = [torch.rand(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    inputs32 = [t.to(device, torch.float32).requires_grad_(True) for t in inputs64]
    inputs64 = [t.requires_grad_(True) for t in inputs64]
    out = einsum_layer(*inputs32)
    expected = _reference(*inputs64)
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert _relative_error(out, expected) < 1e-5
    upstream = torch.rand(expected.shape, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad(out, inputs32, upstream.to(device, torch.float32))
    expected_grads = torch.autograd.grad(expected, inputs64, upstream)
    for got, want in zip(grads, expected_grads):
        assert _relative_error(got, want) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_float64_agrees_to_rounding_and_finite_differences(device: str) -> None:
    generator = torch.Generator().manual_seed(0)

    def inputs(rows: int, batch: int, k_out: int, k_left: int, k_right: int) -> tuple[torch.Tensor, ...]:
        shapes = [(rows, batch, k_left), (rows, batch, k_right), (rows, k_out, k_left, k_right)]
        return tuple(torch.rand(s, generator=generator, dtype=torch.float64).to(device).requires_grad_(True)
                     for s in shapes)

    large = inputs(2, 19, 17, 5, 7)
    assert _relative_error(einsum_layer(*large), _reference(*large)) < 1e-13
    assert torch.autograd.gradcheck(einsum_layer, inputs(1, 2, 3, 2, 2))


def test_kernel_choice_follows_the_target_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` follows compiler/kernels.py's measured crossovers; an explicit choice is kept."""
    from einc.compiler import kernels

    assert einsum_kernel("auto", "cuda", 40, 40) == "matmul"  # measured: no target gains from fused
    assert einsum_kernel("fused", "cpu", 2, 2) == "fused"
    assert einsum_kernel("matmul", "cuda", 64, 64) == "matmul"
    monkeypatch.setitem(kernels.FUSED_MIN_PAIRS, "cuda", 256)
    assert einsum_kernel("auto", "cuda:1", 16, 16) == "fused"
    assert einsum_kernel("auto", "cuda", 10, 10) == "matmul"
    assert einsum_kernel("auto", "cpu", 40, 40) == "matmul"
    with pytest.raises(ValueError, match="unknown einsum kernel"):
        einsum_kernel("tiled", "cuda", 40, 40)


CIRCUITS = {
    # k_out ≠ k_left ≠ k_right (inputs ≠ sums, and the root's heads)
    "explicit": lambda: explicit_graph([BERNOULLI, CATEGORICAL3, NORMAL, BERNOULLI], k=3, inputs=5, heads=2),
    "rat": lambda: rat_graph([NORMAL] * 8, depth=2, replicas=3, k=4),
    # a DAG: operands gathered from several values
    "pd": lambda: pd_graph([BERNOULLI] * 4, 2, 2, k=3),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_backend_with_fused_plan_equals_matmul_plan_in_float64(device: str, name: str) -> None:
    """The whole torch backend on a plan whose einsum ops are all fused: likelihoods, marginals,
    EM statistics and a resident EM epoch equal the matmul plan's (float64, 1e-10)."""
    graph = CIRCUITS[name]()
    layered = layer(graph)
    plans = {kernel: lower(layered, kernel=kernel) for kernel in ("matmul", "fused")}
    assert all(op.kernel == "fused" for op in plans["fused"].ops if isinstance(op, EinsumOp))
    params = init_parameters(plans["matmul"], 1)
    x = random_data(graph, 30, 2)
    observed = np.random.default_rng(3).random(x.shape) >= 0.25
    batch = Batch(np.where(observed, x, 0.0), observed, np.arange(len(x)) % graph.heads)
    results = {}
    for kernel, plan in plans.items():
        backend = create_backend("torch", plan, device=device, dtype="float64", fuse=False)
        p = backend.put(params)
        ll = backend.log_likelihood(p, batch)
        stats = backend.statistics(p, batch)
        data = backend.upload(batch.values, batch.observed, batch.labels)
        p, total = backend.train_epoch(p, data, np.random.default_rng(4).permutation(len(x)), 16, 0.5)
        results[kernel] = (ll, stats, backend.get(p), total)
    (ll_m, stats_m, params_m, total_m), (ll_f, stats_f, params_f, total_f) = results["matmul"], results["fused"]
    np.testing.assert_allclose(ll_f, ll_m, rtol=1e-10)
    assert math.isclose(stats_f.log_likelihood, stats_m.log_likelihood, rel_tol=1e-10)
    for key in stats_m.weights:
        np.testing.assert_allclose(_host(stats_f.weights[key]), _host(stats_m.weights[key]), rtol=1e-9, atol=1e-12)
    for key in stats_m.leaf:
        for part in range(2):
            np.testing.assert_allclose(_host(stats_f.leaf[key][part]), _host(stats_m.leaf[key][part]), rtol=1e-9, atol=1e-12)
    for key in params_m:
        np.testing.assert_allclose(params_f[key], params_m[key], rtol=1e-9, atol=1e-12)
    assert math.isclose(total_f, total_m, rel_tol=1e-10)


def _host(value: torch.Tensor) -> np.ndarray:
    return value.detach().to("cpu", torch.float64).numpy()
