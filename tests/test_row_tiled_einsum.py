"""``RowTiledLogEinsumExp`` (backends/torch_ops/einsum.py), the CPU einsum layer with its own
backward, against autograd through the composition it replaces (shift, clamped exp, untiled
contraction, log of the mass): values and every gradient in float64, on operands with −inf
entries, values far below the clamp, slices with no mass at all, one or two source values, rows
no operand reads, either backward strategy and tiles of one row."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from einc.backends.base import shifted_exp
from einc.backends.torch_ops import einsum, log_of_mass, log_sum_exp_shift


def reference(weights: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The layer by autograd's ops, stored (L, k, B) from (L, i, B), (L, j, B), (L, k, i, j)."""
    left_max, left_empty = log_sum_exp_shift(left, 1)
    right_max, right_empty = log_sum_exp_shift(right, 1)
    left_exp, right_exp = shifted_exp(torch, left, left_max), shifted_exp(torch, right, right_max)
    # (L, i, 1, B) x (L, 1, j, B) -> (L, i·j, B); (L, k, i·j) x (L, i·j, B) -> (L, k, B)
    rows, k_left, batch = left.shape
    pairs = (left_exp[:, :, None, :] * right_exp[:, None, :, :]).reshape(rows, -1, batch)
    mixed = torch.bmm(weights.reshape(rows, weights.shape[1], -1), pairs)
    empty = left_empty | right_empty
    if bool(empty.any()):
        return (torch.log(mixed.masked_fill(empty, 1.0)) + left_max + right_max).masked_fill(empty, -math.inf)
    return torch.log(mixed) + left_max + right_max


def operands(seed: int, rows: int, k: int, batch: int, spare_rows: int, k_out: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (rows, k_out, k, k) and one source value (2·rows + spare, k, B) whose entries are
    ordinary, −inf, far below the others (so the shifted exp is clamped), and whole slices −inf."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand((rows, k if k_out is None else k_out, k, k), generator=generator, dtype=torch.float64) + 0.05
    weights /= weights.sum((2, 3), keepdim=True)
    source = torch.randn((2 * rows + spare_rows, k, batch), generator=generator, dtype=torch.float64) * 3
    kind = torch.randint(0, 12, source.shape, generator=generator)
    source[kind == 0] = -math.inf
    source[kind == 1] -= 200.0  # e^-200 below its slice's maximum: clamped at SHIFTED_LOG_FLOOR
    # a few (row, b) slices with no mass on one side
    slices = torch.randint(0, 5, (source.shape[0], 1, batch), generator=generator) == 0
    source.masked_fill_(slices.expand_as(source), -math.inf)
    return weights, source


def gradients(value: torch.Tensor, inputs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """The gradients for a random output gradient g, nonzero at −inf outputs too (which pass
    none on: their value is a constant −inf)."""
    g = torch.randn(value.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=value.dtype)
    return list(torch.autograd.grad(value, inputs, grad_outputs=g))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 5), k=st.integers(1, 6), k_out=st.integers(1, 7),
       batch=st.integers(1, 9), spare_rows=st.integers(0, 3), one_source=st.booleans(),
       strategy=st.sampled_from(["matmul", "pairs"]), one_row_tiles=st.booleans())
def test_the_tiled_layer_equals_autograd_through_its_ops(seed: int, rows: int, k: int, k_out: int, batch: int,
                                                          spare_rows: int, one_source: bool, strategy: str,
                                                          one_row_tiles: bool) -> None:
    weights, source = operands(seed, rows, k, batch, spare_rows, k_out)
    left_rows, right_rows = slice(spare_rows, spare_rows + rows), slice(spare_rows + rows, spare_rows + 2 * rows)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(einsum, "_MATMUL_GRADIENTS_BELOW", 2**60 if strategy == "matmul" else 0)
        if one_row_tiles:
            patch.setattr(einsum, "_TILE_BYTES", 1)
            patch.setattr(einsum, "_UNTILED_TILES", 0)
        w_ref, s_ref = weights.clone().requires_grad_(True), source.clone().requires_grad_(True)
        expected = reference(w_ref, s_ref[left_rows], s_ref[right_rows])
        expected_grads = gradients(expected, [w_ref, s_ref], seed)

        w, s = weights.clone().requires_grad_(True), source.clone().requires_grad_(True)
        if one_source:
            got = einsum.RowTiledLogEinsumExp.apply(w, s, left_rows, None, right_rows)
            got_grads = gradients(got, [w, s], seed)
        else:  # the right operand a separate value of just its rows
            right = source[right_rows].clone().requires_grad_(True)
            got = einsum.RowTiledLogEinsumExp.apply(w, s, left_rows, right, slice(0, rows))
            grad_w, grad_s, grad_right = gradients(got, [w, s, right], seed)
            grad_s = grad_s.clone()
            grad_s[right_rows] += grad_right
            got_grads = [grad_w, grad_s]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(["weights", "source"], got_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
        # exactly 0 where autograd's is: −inf and clamped entries, and rows no operand reads
        # (not e^-80 · ∂exp, below any tolerance)
        assert torch.equal(a[b == 0], b[b == 0]), name


def test_an_operand_that_needs_no_gradient_gets_none() -> None:
    weights, source = operands(3, 2, 3, 4, 0)
    w = weights.clone().requires_grad_(True)
    value = einsum.RowTiledLogEinsumExp.apply(w, source, slice(0, 2), None, slice(2, 4))
    (grad_w,) = torch.autograd.grad(value, [w], grad_outputs=torch.ones_like(value))
    assert torch.isfinite(grad_w).all()


RAT = "var x[8] : binary\nleaf x ~ bernoulli\nsums 3\ninputs 3\nstructure random_binary_trees(depth = 2, replicas = 2, seed = 1)\n"


def test_a_batch_of_no_rows_has_no_counts_and_leaves_the_weights() -> None:
    import einc
    from einc.backends.base import Batch

    model = einc.compile(RAT, dtype="float64", seed=1)
    batch = Batch(np.zeros((0, 8)), np.ones((0, 8), dtype=bool))
    assert model.backend.log_likelihood(model.params, batch).shape == (0, 1)
    stats = model.backend.statistics(model.params, batch)
    assert all(float(np.asarray(counts).sum()) == 0.0 for counts in stats.weights.values())
    updated = model.backend.em_update(model.params, stats, 0.5)
    for name, value in model.params.items():
        np.testing.assert_allclose(np.asarray(updated[name]), np.asarray(value), rtol=1e-12)


def test_weights_stored_in_another_order_give_the_same_statistics() -> None:
    """Einsum weights whose strides are not the contiguous ones (params loaded Fortran-order):
    the gradient the layer writes is its own contiguous tensor, not one shaped like theirs."""
    import einc
    from einc.backends.base import Batch

    model = einc.compile(RAT, dtype="float64", seed=1)
    x = (np.random.default_rng(0).random((10, 8)) > 0.5).astype(np.float64)
    batch = Batch(x, np.ones_like(x, dtype=bool))
    reordered = {name: value.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0) if value.ndim == 4 else value
                 for name, value in model.params.items()}
    assert any(not value.is_contiguous() for value in reordered.values())
    expected = model.backend.statistics(model.params, batch)
    got = model.backend.statistics(reordered, batch)
    for name in expected.weights:
        np.testing.assert_allclose(np.asarray(got.weights[name]), np.asarray(expected.weights[name]), rtol=1e-12)
