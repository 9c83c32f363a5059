"""The einsum layer's contraction ``lbi,lbj,lkij->lbk`` as Triton kernels that never materialise
the ``(L, B, K²)`` outer products (the ``fused`` kernel of an einsum op; see compiler/kernels.py).

The log-einsum-exp shift and the exp/log around the contraction stay in torch, where
``torch.compile`` fuses them; they move ``(L, B, K)`` tensors. What these kernels save is the
contraction's ``K²``-wide intermediates: the batched-matmul route writes and re-reads
``(L, B, K·K)`` in the forward pass and again in the backward pass, and its matmuls have a narrow
``K``-wide side that leaves the GPU idle. Here each program keeps a tile of pair products
``x[b,p]·y[b,q]`` in registers and feeds it straight to a ``tl.dot`` against the matching
weights. fp32 stays fp32: every dot asks for IEEE precision (no TF32).

Four contractions share two kernels (with the weights read through strides, so no transposed
copies are made):

- forward       ``S[l,b,k]  = Σ_ij  L[l,b,i] R[l,b,j] W[l,k,i,j]``   (pair kernel: c=k, p=i, q=j)
- left adjoint  ``∂L[l,b,i] = Σ_kj  G[l,b,k] R[l,b,j] W[l,k,i,j]``   (pair kernel: c=i, p=k, q=j)
- right adjoint ``∂R[l,b,j] = Σ_ki  G[l,b,k] L[l,b,i] W[l,k,i,j]``   (pair kernel: c=j, p=k, q=i)
- weights       ``∂W[l,k,i,j] = Σ_b G[l,b,k] L[l,b,i] R[l,b,j]``     (weight kernel)

``einsum_layer`` is a ``torch.library`` custom op with its backward registered, so autograd,
``torch.compile`` (which treats it as one opaque node) and CUDA-graph capture all see one op.
On the CPU the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1``), which is
how the test suite checks them against the reference contraction.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import triton
import triton.language as tl

# Tile shapes tried per problem size, as (BLOCK_B, BLOCK_PQ, BLOCK_C, num_warps); the fastest is
# picked by timing on the first call with a new size (on CUDA; the interpreter takes the first).
# tl.dot needs every tile side ≥ 16; the pair axis (p, q) is flattened, so only the output axis c
# (K entries) is padded up to a tile.
_PAIR_TILES = ((32, 32, 16, 4), (64, 32, 16, 4), (32, 64, 16, 4), (64, 64, 32, 4), (32, 32, 64, 4), (64, 32, 64, 8))
_WEIGHT_TILES = ((32, 64, 16, 4), (16, 128, 16, 4), (32, 128, 32, 4), (32, 64, 64, 8))
_best_tiles: dict[tuple, tuple[int, int, int, int]] = {}


# Launches with fewer multiply-adds than this take the first tile shape untimed: timing them
# would cost more than any choice could save.
_TUNE_FROM_WORK = 2**24


def _launch(kernel: Any, tiles: tuple[tuple[int, int, int, int], ...], key: tuple,
            grid: Any, work: int, precision: str, *args: Any) -> None:
    """Launch ``kernel`` with the fastest of ``tiles`` for this ``key`` (timed once per key on
    CUDA, for launches of at least _TUNE_FROM_WORK multiply-adds)."""
    device = next(a for a in args if isinstance(a, torch.Tensor)).device
    best = _best_tiles.get(key)
    if best is None:
        if device.type != "cuda" or work < _TUNE_FROM_WORK:
            best = tiles[0]
        else:
            def run(tile: tuple[int, int, int, int]) -> None:
                block_b, block_pq, block_c, warps = tile
                kernel[grid(block_b, block_pq, block_c)](
                    *args, PRECISION=precision, BLOCK_B=block_b, BLOCK_PQ=block_pq, BLOCK_C=block_c, num_warps=warps)

            timings = {tile: triton.testing.do_bench(functools.partial(run, tile), warmup=5, rep=20)
                       for tile in tiles}
            best = min(timings, key=timings.__getitem__)
        _best_tiles[key] = best
    block_b, block_pq, block_c, warps = best
    kernel[grid(block_b, block_pq, block_c)](
        *args, PRECISION=precision, BLOCK_B=block_b, BLOCK_PQ=block_pq, BLOCK_C=block_c, num_warps=warps)


@triton.jit
def _pair_kernel(
    x_ptr, y_ptr, w_ptr, out_ptr,
    B, PQ: tl.constexpr, Q: tl.constexpr, C: tl.constexpr,
    stride_xl, stride_xb, stride_yl, stride_yb,
    stride_wl, stride_wc, stride_wp, stride_wq,
    stride_ol, stride_ob,
    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_PQ: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[l,b,c] = Σ_{p,q} x[l,b,p] y[l,b,q] w[l,c,p,q] with PQ = P·Q pairs; unit last strides."""
    row = tl.program_id(0)
    b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    b_ok = b < B
    c_ok = c < C
    x_row = x_ptr + row * stride_xl + b[:, None] * stride_xb
    y_row = y_ptr + row * stride_yl + b[:, None] * stride_yb
    w_row = w_ptr + row * stride_wl + c[None, :] * stride_wc
    acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=out_ptr.dtype.element_ty)
    for start in range(0, PQ, BLOCK_PQ):
        pq = start + tl.arange(0, BLOCK_PQ)
        pq_ok = pq < PQ
        p = pq // Q
        q = pq - p * Q
        ok = b_ok[:, None] & pq_ok[None, :]
        # (B_tile, PQ_tile) pair products, formed in registers
        pairs = tl.load(x_row + p[None, :], mask=ok, other=0.0) * tl.load(y_row + q[None, :], mask=ok, other=0.0)
        # (PQ_tile, C_tile) weights
        w = tl.load(w_row + p[:, None] * stride_wp + q[:, None] * stride_wq,
                    mask=pq_ok[:, None] & c_ok[None, :], other=0.0)
        # (B_tile, PQ_tile) x (PQ_tile, C_tile) -> (B_tile, C_tile)
        acc += tl.dot(pairs, w, input_precision=PRECISION, out_dtype=acc.dtype)
    tl.store(out_ptr + row * stride_ol + b[:, None] * stride_ob + c[None, :], acc,
             mask=b_ok[:, None] & c_ok[None, :])


@triton.jit
def _weight_kernel(
    g_ptr, x_ptr, y_ptr, out_ptr,
    B, PQ: tl.constexpr, Q: tl.constexpr, C: tl.constexpr,
    stride_gl, stride_gb, stride_xl, stride_xb, stride_yl, stride_yb,
    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_PQ: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[l,c,p,q] = Σ_b g[l,b,c] x[l,b,p] y[l,b,q]; out is contiguous (L, C, P, Q)."""
    row = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pq = tl.program_id(2) * BLOCK_PQ + tl.arange(0, BLOCK_PQ)
    c_ok = c < C
    pq_ok = pq < PQ
    p = pq // Q
    q = pq - p * Q
    acc = tl.zeros((BLOCK_C, BLOCK_PQ), dtype=out_ptr.dtype.element_ty)
    # a while loop: the batch size is a run-time value (Triton's interpreter cannot range over one)
    start = 0
    while start < B:
        b = start + tl.arange(0, BLOCK_B)
        b_ok = b < B
        # (C_tile, B_tile) adjoints
        g = tl.load(g_ptr + row * stride_gl + b[None, :] * stride_gb + c[:, None],
                    mask=c_ok[:, None] & b_ok[None, :], other=0.0)
        ok = b_ok[:, None] & pq_ok[None, :]
        # (B_tile, PQ_tile) pair products
        pairs = (tl.load(x_ptr + row * stride_xl + b[:, None] * stride_xb + p[None, :], mask=ok, other=0.0)
                 * tl.load(y_ptr + row * stride_yl + b[:, None] * stride_yb + q[None, :], mask=ok, other=0.0))
        # (C_tile, B_tile) x (B_tile, PQ_tile) -> (C_tile, PQ_tile)
        acc += tl.dot(g, pairs, input_precision=PRECISION, out_dtype=acc.dtype)
        start += BLOCK_B
    tl.store(out_ptr + row * C * PQ + c[:, None] * PQ + pq[None, :], acc,
             mask=c_ok[:, None] & pq_ok[None, :])


def _pair_contraction(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                      w_strides: tuple[int, int, int, int], c_size: int, precision: str) -> torch.Tensor:
    """out[l,b,c] = Σ_{p,q} x[l,b,p] y[l,b,q] w(l,c,p,q), w read through ``w_strides`` (l, c, p, q)."""
    rows, batch, p_size = x.shape
    q_size = y.shape[2]
    out = torch.empty((rows, batch, c_size), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out

    def grid(block_b: int, block_pq: int, block_c: int) -> tuple[int, int, int]:
        return (rows, triton.cdiv(batch, block_b), triton.cdiv(c_size, block_c))

    key = ("pair", batch, p_size, q_size, c_size, x.dtype, x.device.type, precision)
    _launch(
        _pair_kernel, _PAIR_TILES, key, grid, rows * batch * p_size * q_size * c_size, precision,
        x, y, w, out,
        batch, p_size * q_size, q_size, c_size,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1),
        *w_strides,
        out.stride(0), out.stride(1),
    )
    return out


def _unit_last(tensor: torch.Tensor) -> torch.Tensor:
    """The kernels index the last axis densely: copy only if it is strided."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _forward(left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor, precision: str) -> torch.Tensor:
    left, right, weights = _unit_last(left), _unit_last(right), weights.contiguous()
    s_l, s_k, s_i, s_j = weights.stride()
    # (L, B, i) x (L, B, j) x (L, k, i, j) -> (L, B, k)
    return _pair_contraction(left, right, weights, (s_l, s_k, s_i, s_j), weights.shape[1], precision)


def _backward(grad: torch.Tensor, left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor,
              precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad, left, right = _unit_last(grad), _unit_last(left), _unit_last(right)
    weights = weights.contiguous()
    rows, k_out, k_left, k_right = weights.shape
    s_l, s_k, s_i, s_j = weights.stride()
    # (L, B, k) x (L, B, j) x (L, k, i, j) -> (L, B, i)
    d_left = _pair_contraction(grad, right, weights, (s_l, s_i, s_k, s_j), k_left, precision)
    # (L, B, k) x (L, B, i) x (L, k, i, j) -> (L, B, j)
    d_right = _pair_contraction(grad, left, weights, (s_l, s_j, s_k, s_i), k_right, precision)
    # (L, B, k) x (L, B, i) x (L, B, j) -> (L, k, i, j)
    d_weights = torch.empty_like(weights)
    batch = grad.shape[1]
    if d_weights.numel():
        def grid(block_b: int, block_pq: int, block_c: int) -> tuple[int, int, int]:
            return (rows, triton.cdiv(k_out, block_c), triton.cdiv(k_left * k_right, block_pq))

        key = ("weight", batch, k_left, k_right, k_out, grad.dtype, grad.device.type, precision)
        _launch(
            _weight_kernel, _WEIGHT_TILES, key, grid, d_weights.numel() * batch, precision,
            grad, left, right, d_weights,
            batch, k_left * k_right, k_right, k_out,
            grad.stride(0), grad.stride(1), left.stride(0), left.stride(1), right.stride(0), right.stride(1),
        )
    return d_left, d_right, d_weights


# The custom ops are registered when this module is imported, which the torch backend does only
# for a plan with fused einsum ops on a device Triton runs on.
@torch.library.custom_op("einc::einsum_layer", mutates_args=())
def _einsum_layer_op(left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor, precision: str) -> torch.Tensor:
    return _forward(left, right, weights, precision)


@_einsum_layer_op.register_fake
def _einsum_layer_shape(left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor, precision: str) -> torch.Tensor:
    return left.new_empty((left.shape[0], left.shape[1], weights.shape[1]))


@torch.library.custom_op("einc::einsum_layer_backward", mutates_args=())
def _einsum_layer_backward_op(grad: torch.Tensor, left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor,
                              precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad, left, right, weights, precision)


@_einsum_layer_backward_op.register_fake
def _einsum_layer_backward_shape(grad: torch.Tensor, left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor,
                                 precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(left), torch.empty_like(right), torch.empty_like(weights)


def _save_operands(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    left, right, weights, precision = inputs
    ctx.save_for_backward(left, right, weights)
    ctx.precision = precision


def _einsum_layer_gradients(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    left, right, weights = ctx.saved_tensors
    return (*_einsum_layer_backward_op(grad, left, right, weights, ctx.precision), None)


_einsum_layer_op.register_autograd(_einsum_layer_gradients, setup_context=_save_operands)


def einsum_layer(left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor,
                 precision: str = "ieee") -> torch.Tensor:
    """``lbi,lbj,lkij->lbk`` without the K² intermediates: (L, B, i), (L, B, j), (L, k, i, j) -> (L, B, k).

    Differentiable in all three operands. Float32 or float64, on CUDA or under
    ``TRITON_INTERPRET=1`` on the CPU. ``precision`` is Triton's ``input_precision`` of the
    float32 dots: ``ieee`` (the default: true fp32) or, for measurements only, ``tf32x3``.
    """
    return _einsum_layer_op(left, right, weights, precision)
