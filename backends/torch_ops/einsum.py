"""The einsum (outer product) op on torch: log-einsum-exp layers (paper eq. 4), forward and
max-product, their contraction kernels, and the top-down choice of a pair (i, j).

    S[l,b,k] = log Σ_ij W[l,k,i,j] exp(N[l,b,i]) exp(N'[l,b,j])

``contractions(backend)`` picks the kernels by name (compiler/kernels.py): "matmul", the plan's
opt-einsum path as batched matmuls; "fused", the Triton kernels where they run. EM statistics
come from autograd: n = W · ∂ Σ log p / ∂W.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from einc.backends.base import SHIFTED_LOG_FLOOR, shifted_exp
from einc.backends.torch_ops import TorchOpRule, log_of_mass, log_sum_exp_shift
from einc.errors import BackendError
from einc.ir.plan import EinsumOp, Plan, RowIndex


def contractions(plan: Plan, device: torch.device, batch_minor: bool) -> dict[str, Any]:
    """The contraction of each einsum kernel name, in the backend's layout."""
    fused = any(isinstance(op, EinsumOp) and op.kernel == "fused" for op in plan.ops)
    matmul = _einsum_layer_batch_minor if batch_minor else _einsum_layer
    return {
        "matmul": matmul,
        "fused": _fused_einsum_layer(batch_minor) if fused and _fused_kernels_run_on(device) else matmul,
    }


def forward(backend: Any, op: EinsumOp, params: dict[str, torch.Tensor], values: list[torch.Tensor],
            max_product: bool, data: Any = None) -> torch.Tensor:
    if not max_product and _runs_row_tiled(backend, op, data):
        return _row_tiled_log_einsum_exp(backend, op, values, params[op.param])
    left = backend._read(op.left, values)  # (L, B, i)
    right = backend._read(op.right, values)  # (L, B, j)
    weights = params[op.param]  # (L, k, i, j)
    if max_product:
        return _max_einsum(left, right, weights)
    return log_einsum_exp(backend, op, left, right, weights)


def backtrack(backend: Any, op: EinsumOp, params: dict[str, torch.Tensor], values: list[torch.Tensor],
              choice: list[torch.Tensor], chosen: torch.Tensor, sampler: Any, mpe: bool,
              data: Any = None, output: Any = None) -> None:
    """Each reached row picks the pair (i, j) by arg-max (MPE) or Gumbel-max (sampling) of
    log W[l,k,i,j] + N[l,b,i] + N'[l,b,j] at its chosen k."""
    reached = chosen >= 0
    k = chosen.clamp(min=0)
    batch_size = chosen.shape[1]
    left = backend._read(op.left, values)  # (L, B, i)
    right = backend._read(op.right, values)  # (L, B, j)
    log_w = torch.log(params[op.param])  # (L, k, i, j)
    rows_index = torch.arange(op.rows, device=chosen.device)[:, None]
    picked = log_w[rows_index, k]  # (L, B, i, j)
    logits = picked + left[..., :, None] + right[..., None, :]
    flat = logits.reshape(op.rows, batch_size, -1)
    if not mpe:
        flat = flat + sampler.gumbel(flat)
    best = flat.argmax(-1)  # (L, B)
    i = torch.where(reached, best // op.k_right, torch.full_like(best, -1))
    j = torch.where(reached, best % op.k_right, torch.full_like(best, -1))
    backend._write(op.left, i, choice)
    backend._write(op.right, j, choice)


def log_einsum_exp(backend: Any, op: EinsumOp, left: torch.Tensor, right: torch.Tensor,
                    weights: torch.Tensor) -> torch.Tensor:
    """log Σ_ij W[l,k,i,j] exp(N[l,b,i]) exp(N'[l,b,j]) (eq. 4), shifted by the operands' maxima.

    Batch-minor, the shift, exp and log run on the stored (L, K, B) memory (contiguous along
    the batch) and the contraction takes and returns that layout; the result is indexed
    (L, B, k) like every value.
    """
    contraction = backend.contractions[op.kernel]
    k_axis = 1 if backend.batch_minor else 2
    if backend.batch_minor:
        left, right = left.transpose(1, 2), right.transpose(1, 2)  # (L, i, B), (L, j, B)
    left_max, left_empty = log_sum_exp_shift(left, k_axis)
    right_max, right_empty = log_sum_exp_shift(right, k_axis)
    # (L, B, i) x (L, B, j) x (L, k, i, j) -> (L, B, k), or batch-minor (L, ·, B) throughout
    mixed = contraction(shifted_exp(torch, left, left_max), shifted_exp(torch, right, right_max), weights, op.path)
    value = log_of_mass(mixed, left_max + right_max, left_empty | right_empty)
    return value.transpose(1, 2) if backend.batch_minor else value


def _einsum_layer(left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor,
                  path: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """``lbi,lbj,lkij->lbk`` along the plan's opt-einsum path, each pairwise step one bmm.

    Written out (instead of ``opt_einsum.contract``) so each step is a batched matmul on views,
    with no permute copies of the (L, B, ·) operands.
    """
    rows, batch, k_left = left.shape
    k_out, k_right = weights.shape[1], weights.shape[3]
    first = tuple(sorted(path[0]))
    if first == (0, 1):
        # (L, B, i) x (L, B, j) -> (L, B, i·j); then (L, B, i·j) x (L, i·j, k) -> (L, B, k)
        outer = (left[..., :, None] * right[..., None, :]).reshape(rows, batch, k_left * k_right)
        return torch.bmm(outer, weights.reshape(rows, k_out, k_left * k_right).transpose(1, 2))
    if first == (0, 2):
        # (L, B, i) x (L, i, k·j) -> (L, B, k, j); then (L·B, k, j) x (L·B, j, 1) -> (L, B, k)
        w = weights.permute(0, 2, 1, 3).reshape(rows, k_left, k_out * k_right)
        partial = torch.bmm(left, w).reshape(rows * batch, k_out, k_right)
        return torch.bmm(partial, right.reshape(rows * batch, k_right, 1)).reshape(rows, batch, k_out)
    # (L, B, j) x (L, j, k·i) -> (L, B, k, i); then (L·B, k, i) x (L·B, i, 1) -> (L, B, k)
    w = weights.permute(0, 3, 1, 2).reshape(rows, k_right, k_out * k_left)
    partial = torch.bmm(right, w).reshape(rows * batch, k_out, k_left)
    return torch.bmm(partial, left.reshape(rows * batch, k_left, 1)).reshape(rows, batch, k_out)


def _einsum_layer_batch_minor(left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor,
                              path: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """``lib,ljb,lkij->lkb``: the einsum layer batch-minor, the batch the matmuls' wide side."""
    rows, k_left, batch = left.shape
    k_out, k_right = weights.shape[1], weights.shape[3]
    first = tuple(sorted(path[0]))
    if first == (0, 1):
        # (L, i, B) x (L, j, B) -> (L, i·j, B); then (L, k, i·j) x (L, i·j, B) -> (L, k, B)
        pairs = (left[:, :, None, :] * right[:, None, :, :]).reshape(rows, k_left * k_right, batch)
        return torch.bmm(weights.reshape(rows, k_out, k_left * k_right), pairs)
    if first == (0, 2):
        # (L, k·j, i) x (L, i, B) -> (L, k, j, B); then Σ_j with (L, j, B) -> (L, k, B)
        w = weights.permute(0, 1, 3, 2).reshape(rows, k_out * k_right, k_left)
        partial = torch.bmm(w, left).reshape(rows, k_out, k_right, batch)
        return (partial * right[:, None, :, :]).sum(2)
    # (L, k·i, j) x (L, j, B) -> (L, k, i, B); then Σ_i with (L, i, B) -> (L, k, B)
    w = weights.reshape(rows, k_out * k_left, k_right)
    partial = torch.bmm(w, right).reshape(rows, k_out, k_left, batch)
    return (partial * left[:, None, :, :]).sum(2)


# The bytes of (i·j, B) pair products one row tile of RowTiledLogEinsumExp makes: about a core's L2
# cache, so that each tile is written and read back there, not through memory. A layer whose
# pairs take at most _UNTILED_TILES tiles runs as one (fewer, larger ops pay more there).
_TILE_BYTES = 1 << 20
_UNTILED_TILES = 4
# RowTiledLogEinsumExp's backward by matmuls (``_matmul_gradients``) below this many weights per row
# (k·i·j), through the batch-major pair products above (``_pair_gradients``): on a 2-core Xeon
# (AVX-512), 1 thread, B=100, L=80, forward and backward in ms, matmul against pairs: K=10 2.4
# against 4.0, K=16 6.0/7.5, K=20 10.8/10.7, K=26 21.8/20.3, K=32 34.9/29.2, K=40 60.7/51.0
# (autograd's untiled: 2.8 at K=10, 8.8 at 16, 24 at 20, 119 at 40).
_MATMUL_GRADIENTS_BELOW = 22**3


def _runs_row_tiled(backend: Any, op: EinsumOp, data: Any) -> bool:
    """Whether the layer runs as ``RowTiledLogEinsumExp``: on the CPU, batch-minor, the plan's
    path multiplying pairs first, matmul kernels, not traced, and differentiated or, for the
    batch of ``data`` (``PassData``), too large to run untiled in the cache."""
    if not (backend.batch_minor and backend.device.type == "cpu" and not torch.compiler.is_compiling()
            and backend.contractions[op.kernel] is _einsum_layer_batch_minor
            and tuple(sorted(op.path[0])) == (0, 1)):
        return False
    if torch.is_grad_enabled():
        return True
    if data is None:
        return False
    pair_bytes = op.k_left * op.k_right * data.x.shape[0] * backend.dtype.itemsize
    return len(_row_tiles(op.rows, pair_bytes)) > 1


def _row_tiled_log_einsum_exp(backend: Any, op: EinsumOp, values: list[torch.Tensor],
                              weights: torch.Tensor) -> torch.Tensor:
    """The layer by ``RowTiledLogEinsumExp`` on its operands' stored rows, (L, B, k) as a view."""
    left_source, left_rows = _stored_rows(backend, op.left, values)
    right_source, right_rows = _stored_rows(backend, op.right, values)
    # rows of one value (disjoint, as decomposability has them): one gradient tensor for both
    same = (left_source is not None and right_source is not None
            and op.left.segments[0].value == op.right.segments[0].value and _disjoint(left_rows, right_rows))
    if left_source is None:
        left_source, left_rows = backend._read(op.left, values).transpose(1, 2), slice(0, op.rows)
    if right_source is None:
        right_source, right_rows = backend._read(op.right, values).transpose(1, 2), slice(0, op.rows)
    # (L', i, B)[rows], (L'', j, B)[rows], (L, k, i, j) -> (L, k, B), indexed (L, B, k)
    value = RowTiledLogEinsumExp.apply(weights, left_source, left_rows, None if same else right_source, right_rows)
    return value.transpose(1, 2)


def _stored_rows(backend: Any, operand: Any, values: list[torch.Tensor]) -> tuple[torch.Tensor | None, slice]:
    """(the whole value stored (L', K, B), its rows) where ``operand`` is one run of rows of one
    computed value, so that the layer's backward writes that value's gradient whole (no split
    or slice of it, whose backward copies each piece into a fresh zero-filled tensor); else
    (None, ·)."""
    if len(operand.segments) != 1 or isinstance(operand.segments[0], RowIndex):
        return None, slice(0, 0)
    segment = operand.segments[0]
    value = values[segment.value]
    if not isinstance(value, torch.Tensor):  # deferred (input.LookupLeaves): rows made at the read
        return None, slice(0, 0)
    return value.transpose(1, 2), slice(segment.start, segment.stop)


def _disjoint(first: slice, second: slice) -> bool:
    return first.stop <= second.start or second.stop <= first.start


class RowTiledLogEinsumExp(torch.autograd.Function):
    """A whole CPU einsum layer, ``log Σ_ij W[l,k,i,j] exp(N[l,b,i]) exp(N'[l,b,j])`` on the
    stored (L, K, B) values, in tiles of rows: each tile's (i·j, B) pair products are made,
    used and dropped while they are in the cache, and the backward makes what it needs again
    tile by tile instead of keeping the whole (L, i·j, B) tensor.

    Autograd's untiled path writes the pairs, reads them in the forward bmm and again for ∂W,
    writes ∂pairs, and reads both once more for ∂left and ∂right: on a RAT K=40 layer (L=80,
    B=100, 51 MB of pairs) some 400 MB through memory, where the arithmetic is 3 GFLOP. Tiled, on
    a 2-core Xeon (AVX-512), 1 thread: forward and backward 49 against 119 ms (L=80), 25
    against 52 ms (L=40). Small layers are one tile, and gain from the matmul backward.

    The shift, exp and log around the contraction are part of the function too, so that the
    backward is two elementwise passes (∂mixed = g / mixed; ∂N = ∂exp(N) · exp(N)) instead of
    autograd's one or two per forward op (log, add, exp, clamp, sub). Both operands may be rows
    of one value (``right_source`` None): their gradients are then written into one tensor of
    that value's shape, which is the gradient autograd hands on unchanged."""

    @staticmethod
    def forward(ctx: Any, weights: torch.Tensor, left_source: torch.Tensor, left_rows: slice,
                right_source: torch.Tensor | None, right_rows: slice) -> torch.Tensor:
        left = left_source[left_rows]  # (L, i, B)
        right = (left_source if right_source is None else right_source)[right_rows]  # (L, j, B)
        left_shift, left_empty = log_sum_exp_shift(left, 1)  # (L, 1, B)
        right_shift, right_empty = log_sum_exp_shift(right, 1)
        left_exp = _shifted_exp_in_place(left, left_shift)
        right_exp = _shifted_exp_in_place(right, right_shift)
        rows, k_out = left.shape[0], weights.shape[1]
        mixed = left.new_empty((rows, k_out, left.shape[2]))  # (L, k, B)
        _tiled_pairs_forward(left_exp, right_exp, weights, mixed)
        empty = left_empty | right_empty  # (L, 1, B): slices without mass (see log_of_mass)
        any_empty = bool(empty.any())
        if any_empty:
            mixed.masked_fill_(empty, 1.0)
        value = torch.log(mixed).add_(left_shift + right_shift)
        if any_empty:
            value.masked_fill_(empty, float("-inf"))
        ctx.save_for_backward(weights, left_exp, right_exp, mixed, empty if any_empty else None)
        ctx.shapes = (left_source.shape, None if right_source is None else right_source.shape)
        ctx.rows = (left_rows, right_rows)
        return value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weights, left_exp, right_exp, mixed, empty = ctx.saved_tensors
        need_weights, need_left, _, need_right, _ = ctx.needs_input_grad
        left_rows, right_rows = ctx.rows
        left_shape, right_shape = ctx.shapes
        # (L, k, B): ∂ log(mixed), stored like mixed whatever the layout of grad
        grad_mixed = torch.div(grad, mixed, out=torch.empty_like(mixed))
        if empty is not None:
            grad_mixed.masked_fill_(empty, 0.0)
        # contiguous whatever the weights' strides (params loaded in another order): tiles view it
        grad_weights = weights.new_empty(weights.shape) if need_weights else None
        one_source = right_shape is None
        grad_left_source = _rows_gradient(left_shape, left_rows, right_rows if one_source else None,
                                          left_exp) if need_left else None
        if one_source:
            grad_right_source = grad_left_source
        else:
            grad_right_source = _rows_gradient(right_shape, right_rows, None, right_exp) if need_right else None
        grad_left = None if grad_left_source is None else grad_left_source[left_rows]
        grad_right = None if grad_right_source is None else grad_right_source[right_rows]
        _tiled_pairs_backward(grad_mixed, left_exp, right_exp, weights, grad_left, grad_right, grad_weights)
        # ∂N = ∂exp(N − shift) · exp(N − shift), and 0 where the shifted value was clamped
        for grad_rows, exp in ((grad_left, left_exp), (grad_right, right_exp)):
            if grad_rows is not None:
                _times_exp_unless_clamped(grad_rows, exp)
        if one_source:
            return grad_weights, grad_left_source, None, None, None
        return grad_weights, grad_left_source, None, grad_right_source, None


def _shifted_exp_in_place(values: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``shifted_exp`` in one fresh tensor (sub, then clamp and exp in place on it)."""
    return torch.sub(values, shift).clamp_(min=SHIFTED_LOG_FLOOR).exp_()


def _rows_gradient(shape: torch.Size, rows: slice, other_rows: slice | None, like: torch.Tensor) -> torch.Tensor:
    """A gradient of a source value's ``shape``, zero outside ``rows`` (and ``other_rows``), which
    the backward fills."""
    grad = like.new_empty(shape)
    covered = sorted([rows] + ([other_rows] if other_rows is not None else []), key=lambda r: r.start)
    start = 0
    for part in covered:  # zero the rows no operand reads
        if part.start > start:
            grad[start : part.start].zero_()
        start = max(start, part.stop)
    if start < shape[0]:
        grad[start:].zero_()
    return grad


def _times_exp_unless_clamped(grad: torch.Tensor, exp: torch.Tensor) -> None:
    """grad · exp in place, and 0 where exp is the floor's (its clamp passed no gradient there)."""
    grad.mul_(exp)
    if exp.numel() and float(exp.amin()) <= _CLAMPED_EXP:
        grad.masked_fill_(exp <= _CLAMPED_EXP, 0.0)


# exp(SHIFTED_LOG_FLOOR) with room for a few ulps of any exp implementation: an entry at most
# this is one the clamp held (one within 1e-6 of the floor above it passes e^-80 · ∂ at most)
_CLAMPED_EXP = math.exp(SHIFTED_LOG_FLOOR) * (1 + 1e-6)


def _tiled_pairs_forward(left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> None:
    """``lib,ljb,lkij->lkb`` into ``out`` tile by tile."""
    rows, k_left, batch = left.shape
    k_out, k_right = weights.shape[1], weights.shape[3]
    for tile in _row_tiles(rows, k_left * k_right * batch * left.element_size()):
        # (n, i, 1, B) x (n, 1, j, B) -> (n, i·j, B); (n, k, i·j) x (n, i·j, B) -> (n, k, B)
        n = out[tile].shape[0]  # (not -1: a batch of no rows has tiles of no elements)
        pairs = (left[tile, :, None, :] * right[tile, None, :, :]).reshape(n, k_left * k_right, batch)
        torch.bmm(weights[tile].reshape(n, k_out, k_left * k_right), pairs, out=out[tile])


def _tiled_pairs_backward(grad: torch.Tensor, left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor,
                          grad_left: Any, grad_right: Any, grad_weights: Any) -> None:
    """The gradients of ``_tiled_pairs_forward`` for the output's gradient ``grad`` (L, k, B),
    written into those of the arguments not None, tile by tile."""
    rows, k_left, batch = left.shape
    gradients = _matmul_gradients if weights[0].numel() < _MATMUL_GRADIENTS_BELOW else _pair_gradients
    for tile in _row_tiles(rows, k_left * weights.shape[3] * batch * left.element_size()):
        gradients(grad[tile], left[tile], right[tile], weights[tile],
                  *(g if g is None else g[tile] for g in (grad_left, grad_right, grad_weights)))


def _pair_gradients(grad: torch.Tensor, left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor,
                    grad_left: Any, grad_right: Any, grad_weights: Any) -> None:
    """One tile's gradients through its pair products (made again) and their gradient, both
    batch-major, (B, i, j) per row: each is then one matmul with a wide inner side or none, and
    ∂left, ∂right are batched matrix-vector products, not a product and a sum over (i, j, B).
    On a 2-core Xeon, 1 thread, K=40, B=100, 80 one-row tiles: 27 against 33 ms stored (i, j, B)."""
    n, k_out, k_left, k_right = weights.shape
    batch = left.shape[2]
    left_by_batch = left.transpose(1, 2).contiguous()  # (n, B, i)
    right_by_batch = right.transpose(1, 2).contiguous()  # (n, B, j)
    if grad_weights is not None:
        # (n, B, i, 1) x (n, B, 1, j) -> (n, B, i·j); (n, k, B) x (n, B, i·j) -> (n, k, i·j)
        pairs = (left_by_batch[:, :, :, None] * right_by_batch[:, :, None, :]).reshape(n, batch, k_left * k_right)
        torch.bmm(grad, pairs, out=grad_weights.view(n, k_out, k_left * k_right))
    if grad_left is not None or grad_right is not None:
        # ∂pairs: (n, B, k) x (n, k, i·j) -> (n, B, i·j), viewed (n·B, i, j)
        grad_pairs = torch.bmm(grad.transpose(1, 2), weights.reshape(n, k_out, k_left * k_right))
        grad_pairs = grad_pairs.view(n * batch, k_left, k_right)
        if grad_left is not None:  # (n·B, i, j) x (n·B, j, 1) -> (n·B, i), stored (n, i, B)
            by_batch = torch.bmm(grad_pairs, right_by_batch.view(n * batch, k_right, 1))
            grad_left.copy_(by_batch.view(n, batch, k_left).transpose(1, 2))
        if grad_right is not None:  # (n·B, 1, i) x (n·B, i, j) -> (n·B, j), stored (n, j, B)
            by_batch = torch.bmm(left_by_batch.view(n * batch, 1, k_left), grad_pairs)
            grad_right.copy_(by_batch.view(n, batch, k_right).transpose(1, 2))


def _matmul_gradients(grad: torch.Tensor, left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor,
                      grad_left: Any, grad_right: Any, grad_weights: Any) -> None:
    """One tile's gradients as matmuls over the (k·i, B) and (k·j, B) products of the output's
    gradient with each operand: no ∂pairs, whose matmul has the narrow k as inner side."""
    n, k_out, k_left, k_right = weights.shape
    batch = left.shape[2]
    if grad_weights is not None or grad_right is not None:
        # (n, k, 1, B) x (n, 1, i, B) -> (n, k·i, B)
        grad_by_left = (grad[:, :, None, :] * left[:, None, :, :]).reshape(n, k_out * k_left, batch)
        if grad_weights is not None:  # (n, k·i, B) x (n, B, j) -> (n, k·i, j): ∂W[n,k,i,j]
            torch.bmm(grad_by_left, right.transpose(1, 2), out=grad_weights.view(n, k_out * k_left, k_right))
        if grad_right is not None:  # (n, j, k·i) x (n, k·i, B) -> (n, j, B)
            torch.bmm(weights.reshape(n, k_out * k_left, k_right).transpose(1, 2), grad_by_left, out=grad_right)
    if grad_left is not None:
        # (n, k, 1, B) x (n, 1, j, B) -> (n, k·j, B); (n, i, k·j) x (n, k·j, B) -> (n, i, B)
        grad_by_right = (grad[:, :, None, :] * right[:, None, :, :]).reshape(n, k_out * k_right, batch)
        torch.bmm(weights.transpose(1, 2).reshape(n, k_left, k_out * k_right), grad_by_right, out=grad_left)


def _row_tiles(rows: int, bytes_per_row: int) -> list[slice]:
    """Slices of rows whose pair products take about _TILE_BYTES each; one slice for a layer
    of at most _UNTILED_TILES tiles."""
    if rows * bytes_per_row <= _UNTILED_TILES * _TILE_BYTES:
        return [slice(0, rows)]
    step = max(1, _TILE_BYTES // max(1, bytes_per_row))
    return [slice(start, min(rows, start + step)) for start in range(0, rows, step)]


def _fused_kernels_run_on(device: torch.device) -> bool:
    """Triton runs its kernels on CUDA, and on the CPU only under its interpreter (the tests)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def _fused_einsum_layer(batch_minor: bool) -> Any:
    """``lbi,lbj,lkij->lbk`` by the fused Triton kernels (no K² intermediates; the path is unused),
    taking and returning the backend's layout (batch-minor: ``lib,ljb,lkij->lkb``)."""
    try:
        from einc.backends.fused_einsum import einsum_layer  # imports Triton: only when asked for
    except ImportError as error:
        raise BackendError(
            f"the plan asks for the fused einsum kernel, which needs Triton ({error}); install it with "
            "`pip install triton`, or compile with CompileOptions(einsum_kernel='matmul')"
        ) from None

    def contraction(left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor,
                    path: tuple[tuple[int, ...], ...]) -> torch.Tensor:
        if batch_minor:
            # (L, i, B) x (L, j, B) x (L, k, i, j) -> (L, k, B), through the kernels' (L, B, ·)
            return einsum_layer(left.transpose(1, 2), right.transpose(1, 2), weights).transpose(1, 2)
        # (L, B, i) x (L, B, j) x (L, k, i, j) -> (L, B, k)
        return einsum_layer(left, right, weights)

    return contraction


def _max_einsum(left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Max-product einsum: max_ij log W[l,k,i,j] + N[l,b,i] + N'[l,b,j] -> (L, B, k)."""
    log_w = torch.log(weights)  # (L, k, i, j)
    out = []
    # chunk over the batch so the (L, b, k, i, j) tensor stays small
    step = max(1, int(2**24 // max(1, weights.numel())))
    for start in range(0, left.shape[1], step):
        l_part = left[:, start : start + step]
        r_part = right[:, start : start + step]
        scores = log_w[:, None] + l_part[:, :, None, :, None] + r_part[:, :, None, None, :]
        out.append(scores.amax(dim=(-1, -2)))
    return torch.cat(out, 1)


RULE = TorchOpRule(forward=forward, backtrack=backtrack)
