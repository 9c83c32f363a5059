"""The hadamard (element-wise / CP) product op on torch: forward, max-product and backtracking.

    log P[l,b,j] = Σ_{r: owner[r] = l} C[r,b,j]         element-wise product of the parts, in logs
    S[l,b,k]     = log Σ_j W[l,k,j] exp(P[l,b,j])      a K_out × K_in sum, shifted by max_j P

EM statistics come from autograd like every other torch op: n = W · ∂ Σ log p / ∂W.
"""

from __future__ import annotations

from typing import Any

import torch

from einc.backends.torch_ops import TorchOpRule, log_of_mass, log_sum_exp_shift
from einc.backends.torch_ops.input import DeferredLeaves
from einc.ir.plan import HadamardOp

# Elements of the (L, b, K_out, K_in) max-product scores materialised at once (batch chunks).
_CHUNK_ELEMENTS = 2**24


def stored_log_product(backend: Any, op: HadamardOp, values: list[torch.Tensor]) -> torch.Tensor:
    """log P (see ``owned_log_product``)."""
    return owned_log_product(backend, op, values)[0]


def owned_log_product(backend: Any, op: HadamardOp, values: list[torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """log P and whether it is the op's own fresh tensor (not a value's storage), which the
    op may then overwrite: each row's parts added up (a product of densities is a sum of logs), in the
    backend's stored order: (L, j, B) batch-minor, (L, B, j) otherwise.

    Segment by segment (backends/torch_reads.py): a segment whose rows are the output rows in
    order is added as it is, one whose output rows own ``arity`` consecutive rows each is a
    strided sum, any other is an ``index_add`` of its rows; into the op's own running sum (never
    into a value's storage, which autograd and later readers need intact), and no segment is
    copied into a concatenation of all parts first.
    """
    # ``owned``: total is a fresh tensor of this op (not a view of a value), so later segments
    # add into it in place (no saved tensor of autograd is one of these sums)
    total, owned = None, False
    # parts from deferred leaf values (input.DeferredLeaves): all of them one matmul per value,
    # laid out by output row, so these rows are neither materialised nor scattered
    deferred = set()
    for value in backend.reads.leaf_parts[id(op)]:
        leaves = values[value]
        if not isinstance(leaves, DeferredLeaves):
            continue
        deferred.add(value)
        part = leaves.products(id(op))  # (L, j, B): deferral is batch-minor only
        total = part if total is None else total.add_(part)
        owned = True
    for term in backend.reads.products[id(op)]:
        if term.segment.value in deferred:
            continue
        if backend.batch_minor:  # (n, j, B): the stored memory, from the stored chunks
            pieces = backend._stored_pieces(term.segment, values)
            piece = pieces[0] if len(pieces) == 1 else torch.cat(pieces, 0)
        else:
            piece = backend._segment(term.segment, values)  # (n, B, j)
        if term.kind == "scatter":
            owner = backend._index(term.owner)
            if total is None:
                total = piece.new_zeros((op.rows, piece.shape[1], piece.shape[2]))
            elif not owned:
                total = total.clone()
            total = _scatter_add(backend, total, owner, piece)
            owned = True
            continue
        if term.kind == "identity":
            part = piece
        else:  # blocks: (L·a, ·, ·) viewed (L, a, ·, ·) and summed over the a parts of each row
            part = piece.reshape(op.rows, term.arity, piece.shape[1], piece.shape[2]).sum(1)
        if total is None:
            total, owned = part, term.kind != "identity"
        elif owned:
            total.add_(part)
        else:
            total, owned = total + part, True
    assert total is not None
    return total, owned


def _scatter_add(backend: Any, total: torch.Tensor, owner: torch.Tensor, piece: torch.Tensor) -> torch.Tensor:
    """``total.index_add_(0, owner, piece)`` as a scatter-add over ``owner`` expanded to the
    piece's shape (a view: no copy), the same kernel index_add runs on the CPU. Autograd's
    index_add saves ``piece`` for its backward, a view of a producer's value, keeping every value
    read this way alive until the backward (83 of the 188 MB an MNIST HCLT K=32 E-step saved at
    batch 512); scatter_add saves only the index, and its backward gathers the same rows.
    The expanded index is made once per index and shape (``backend.scatter_index``): with an
    index expanded afresh the scatter-add itself took 17 against 13 µs (8 rows into 5, K=32,
    B=512) and 42 against 30 µs (17 into 9) on a 2-core Xeon, 1 thread, for reasons inside
    torch's kernel not traced further; ~5% of an HCLT K=32 inference batch (issue 18, sixth
    round)."""
    if backend.fuse:  # traced by torch.compile: the view is made in the graph, once anyway
        return total.scatter_add_(0, owner[:, None, None].expand(piece.shape), piece)
    key = (id(owner), piece.shape)  # owner: one of backend._index's tensors, kept for its life
    index = backend.scatter_index.get(key)
    if index is None:
        index = backend.scatter_index[key] = owner[:, None, None].expand(piece.shape)
    return total.scatter_add_(0, index, piece)


def log_product(backend: Any, op: HadamardOp, values: list[torch.Tensor]) -> torch.Tensor:
    """log P (L, B, K_in), indexed like every value."""
    product = stored_log_product(backend, op, values)
    return product.transpose(1, 2) if backend.batch_minor else product


def forward(backend: Any, op: HadamardOp, params: dict[str, torch.Tensor],
            values: list[torch.Tensor], max_product: bool, data: Any = None) -> torch.Tensor:
    weights = params[op.param]  # (L, k, j)
    if max_product:
        return _max_sum(log_product(backend, op, values), weights)
    product, owned = owned_log_product(backend, op, values)  # (L, j, B) batch-minor, else (L, B, j)
    if backend.batch_minor and product.device.type == "cpu":
        # the log-sum-exp over j shifted by the (detached) maximum, each step in place where
        # its input is this op's own: fewer fresh (cold) buffers in a pass that is bound by
        # memory traffic, not arithmetic. A CUDA pass keeps the sync-free path below.
        top = product.detach().amax(1, keepdim=True)  # (L, 1, B)
        query = not torch.is_grad_enabled()
        if query:
            # rows of no mass (all −inf: clamped latents) need no check (a pass and a host
            # sync per op): shifted by the lowest finite float they stay −inf through exp (0),
            # the matmul, log and the shift; finite maxima are unchanged. Only where nothing is
            # differentiated: log's backward at 0 would put NaN into the gradients.
            top.clamp_(min=torch.finfo(top.dtype).min)
        if query or not bool(torch.isneginf(top).any()):  # rows of no mass with grad: below
            shifted = (product.sub_(top) if owned else product - top).exp_()
            mixed = torch.bmm(weights, shifted)  # (L, k, j) x (L, j, B) -> (L, k, B)
            # log's backward needs its input: in place only where nothing is differentiated
            logged = mixed.log_() if query else torch.log(mixed)
            return logged.add_(top).transpose(1, 2)
    if backend.batch_minor:
        # the shift of the log-sum-exp over j; rows that are all −inf (no mass) stay −inf
        top, empty = log_sum_exp_shift(product, 1)  # (L, 1, B)
        # (L, k, j) x (L, j, B) -> (L, k, B), indexed (L, B, k)
        mixed = torch.bmm(weights, (product - top).exp_())  # exp in place on the fresh difference
        return log_of_mass(mixed, top, empty).transpose(1, 2)
    top, empty = log_sum_exp_shift(product, -1)  # (L, B, 1)
    # (L, B, j) x (L, j, k) -> (L, B, k)
    mixed = torch.bmm((product - top).exp_(), weights.transpose(1, 2))
    return log_of_mass(mixed, top, empty)


def _max_sum(product: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """max_j log W[l,k,j] + P[l,b,j] -> (L, B, k), in batch chunks of bounded size."""
    log_w = torch.log(weights)[:, None]  # (L, 1, k, j)
    rows, k_out, k_in = weights.shape
    step = max(1, _CHUNK_ELEMENTS // max(1, rows * k_out * k_in))
    out = []
    for start in range(0, product.shape[1], step):
        part = product[:, start : start + step, None, :]  # (L, b, 1, j)
        out.append((log_w + part).amax(-1))  # (L, b, k)
    return out[0] if len(out) == 1 else torch.cat(out, 1)


def backtrack(backend: Any, op: HadamardOp, params: dict[str, torch.Tensor], values: list[torch.Tensor],
              choice: list[torch.Tensor], chosen: torch.Tensor, sampler: Any, mpe: bool,
              data: Any = None, output: Any = None) -> None:
    """Pick the entry j of the element-wise product for each reached row, by arg-max (MPE) or
    Gumbel-max (sampling) of log W[l,k,j] + log P[l,b,j]; every part of the row selects j."""
    reached = chosen >= 0  # (L, B)
    k = chosen.clamp(min=0)
    product = log_product(backend, op, values)  # (L, B, j)
    rows, batch, k_in = product.shape
    log_w = torch.log(params[op.param])  # (L, k, j)
    # (L, k, j) at each sample's chosen k -> (L, B, j)
    picked = torch.gather(log_w, 1, k[:, :, None].expand(rows, batch, k_in))
    logits = picked + product
    if not mpe:
        logits = logits + sampler.gumbel(logits)
    best = torch.where(reached, logits.argmax(-1), torch.full_like(k, -1))  # (L, B)
    backend._write(op.parts, best[backend._index(op.owner)], choice)  # (R, B)


RULE = TorchOpRule(forward=forward, backtrack=backtrack)
