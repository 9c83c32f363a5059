"""The input op on torch: exponential-family leaf regions as one matmul of augmented
sufficient statistics (paper §3.3), forward and max-product, and the leaves' emission in
top-down passes (sampling, MPE, means).

    log L[l,b,k] = Σ_{s,f} F[b,l,s,f] · Θ[l,s,f,k],   F = [T(x), obs, log h(x)·obs],  Θ = [θ, −A(θ), 1]

EM statistics come from autograd: the gradient of Σ log p with respect to Θ is Σ_b p · F.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from einc.backends.input_layer import leaf_coefficients, leaf_features
from einc.backends.torch_ops import TorchOpRule
from einc.backends.torch_ops.sampler import TorchSampler
from einc.ir.families import family_rule
from einc.ir.plan import FamilyBlock, InputOp, RowIndex, Segment


@dataclass
class KeptCoefficients:
    """An input op's Θ kept across queries (``coefficients``): weak references to the φ tensors
    it came from and their versions, and each deferred reader's gathered rows of it
    (``coefficient_parts``), made at the first pass that needs them."""

    phis: list[weakref.ref]
    versions: tuple[Any, ...]
    thetas: list[torch.Tensor]
    parts: list[list[torch.Tensor]] | None = None


def coefficients(backend: Any, op: InputOp, params: dict[str, torch.Tensor], max_product: bool) -> list[torch.Tensor]:
    """Per block Θ = [θ, −A(θ), 1, (max log f)] shaped (L, S, K, f).

    In passes that differentiate nothing (queries), the op's Θ is kept with the φ tensors it
    came from and reused while they are the same objects, unmodified (their version counters:
    every in-place write bumps them): a batch of queries then pays for Θ once, where it cost
    ~10 small ops per block per batch (3-5% of an HCLT K=32 inference batch at B = 512; ~20% of
    an MNIST HCLT K=32 one, whose categorical Θ has 26 MB; issue 18, sixth round). Held: one Θ
    per input op, about the size of its φ, and only while that φ lives (weak references: when
    an EM step replaces φ, the kept Θ goes with it). Differentiated passes (the E-step,
    gradient training) compute Θ afresh and keep nothing, and so do compiled or captured passes
    (CUDA: a replayed graph must recompute Θ from φ's current contents)."""
    phis = [params[block.param] for block in op.blocks]
    # (inference tensors, made under torch.inference_mode, have no version counter to key on)
    if (torch.is_grad_enabled() or backend.fuse or backend.device.type != "cpu"
            or any(phi.is_inference() for phi in phis)):
        return [leaf_coefficients(torch, block, phi, max_product) for block, phi in zip(op.blocks, phis)]
    versions = (max_product, *(phi._version for phi in phis))
    kept = backend.query_coefficients.get(op.name)
    if kept is not None and kept.versions == versions and all(ref() is phi for ref, phi in zip(kept.phis, phis)):
        return kept.thetas
    thetas = [leaf_coefficients(torch, block, phi, max_product) for block, phi in zip(op.blocks, phis)]
    cache, name = backend.query_coefficients, op.name

    def forget(dead: weakref.ref) -> None:
        # a φ died: its Θ goes too, unless a newer one was kept since (this holds no reference
        # to the entry, so a replaced entry is freed at once, not by the cycle collector)
        current = cache.get(name)
        if current is not None and any(ref is dead for ref in current.phis):
            del cache[name]

    cache[name] = KeptCoefficients([weakref.ref(phi, forget) for phi in phis], versions, thetas)
    return thetas


def forward(backend: Any, op: InputOp, params: dict[str, torch.Tensor], values: list[torch.Tensor],
            max_product: bool, data: Any) -> torch.Tensor:
    """(L, B, K); the statistics pass hands in its Θ (``data.coefficients``) to differentiate."""
    given = data.coefficients.get(op.name) if data.coefficients else None
    coefs = given if given is not None else coefficients(backend, op, params, max_product)
    return values_of(backend, op, coefs, data.x, data.observed, max_product)


class DeferredLeaves:
    """An input op's value left unmaterialised: its rows are computed where they are read.

    A whole leaf value is the largest tensor of a pass over a deep circuit (an HCLT over 100
    binary variables at K=32, batch 512: 6.5 MB, against 0.6 MB for a typical product op) and
    each of its rows is read once, by one product, tens of ops later: written and read back
    cold, its gradient assembled from the readers' pieces into another 6.5 MB and reduced cold
    again. Here a hadamard op reading leaf rows takes their sum per output row as one small
    matmul (``products``), done just before it uses them, and the gradient goes straight to Θ's
    rows: the same sums, in cache. Batch-minor (the CPU layout), dense blocks only (``defer``),
    values read by hadamard ops only (``torch_reads.ReadPlan.deferrable``).
    """

    def __init__(self, parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        # per reading hadamard op (by id), per block: its output rows' leaf coefficients side
        # by side, (L, K, A·S·f), and their features, (L, A·S·f, B), absent parts zero
        self.parts = parts

    def products(self, reader: int) -> torch.Tensor:
        """Σ of each output row's leaf parts for the hadamard op ``reader`` (its id), stored
        (L, K, B): one matmul over the A parts' features at once per block."""
        total = None
        for coefficients, features in self.parts[reader]:
            # (L, K, A·S·f) x (L, A·S·f, B) -> (L, K, B)
            term = torch.bmm(coefficients, features)
            total = term if total is None else total + term
        assert total is not None
        return total


def defer(backend: Any, op: InputOp, params: dict[str, torch.Tensor], max_product: bool,
          data: Any) -> DeferredLeaves | LookupLeaves | None:
    """The op's value as ``DeferredLeaves`` (dense statistics) or ``LookupLeaves`` (one block of
    one-hot statistics), or None where it is computed whole: other than batch-minor,
    max-product, or one-hot blocks beside others."""
    if max_product or not backend.batch_minor:
        return None
    one_hot = [family_rule(block.family).one_hot_statistics for block in op.blocks]
    if any(one_hot) and len(op.blocks) > 1:
        return None
    given = data.coefficients.get(op.name) if data.coefficients else None
    coefs = given if given is not None else coefficients(backend, op, params, max_product)
    if any(one_hot):
        return LookupLeaves(backend, backend.reads.op_index[id(op)], op.blocks[0], coefs[0], data.x, data.observed)
    reads = backend.reads.leaf_reads[id(op)]
    batch_size = data.x.shape[0]
    # the batch transposed (C+1, B): views, gathered by column once per block below
    x_by_column, observed_by_column = data.x.t(), data.observed.t()
    parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {reader: [] for reader, _, _ in reads.readers}
    sizes = [out_rows * arity for _, out_rows, arity in reads.readers]
    for block, coef, by_reader in zip(op.blocks, coefs, coefficient_parts(backend, op, coefs, reads)):
        width, f = coef.shape[1], coef.shape[3]
        # every part's factors' columns at once (absent parts: the zero pad column), so the
        # features are computed for exactly the N·S gathered columns, batch-minor, (N·S, f, B),
        # and no (C+1)-column table is built, permuted or gathered twice (issue 18, sixth round)
        columns = feature_columns(backend, op, block, reads)
        features = leaf_features(torch, block, x_by_column.index_select(0, columns),
                                 observed_by_column.index_select(0, columns), None, axis=1)  # (N·S, f, B)
        features = features.reshape(-1, width * f, batch_size)  # (N, S·f, B)
        for (reader, out_rows, arity), c, x in zip(reads.readers, by_reader, features.split(sizes)):
            # (L·A, S·f, B) viewed (L, A·S·f, B), beside its coefficients (L, K, A·S·f)
            parts[reader].append((c, x.reshape(out_rows, arity * width * f, batch_size)))
    return DeferredLeaves(parts)


def coefficient_parts(backend: Any, op: InputOp, coefs: list[torch.Tensor], reads: Any) -> list[list[torch.Tensor]]:
    """Per block, per reader of ``reads``: its output rows' leaf coefficients side by side,
    (L, K, A·S·f), gathered once from Θ for every reader. Kept with the Θ that ``coefficients``
    keeps across queries (the same list object), so a batch of queries gathers them once."""
    kept = backend.query_coefficients.get(op.name)
    kept = kept if kept is not None and kept.thetas is coefs else None
    if kept is not None and kept.parts is not None:
        return kept.parts
    rows = backend._index(reads.rows)
    sizes = [out_rows * arity for _, out_rows, arity in reads.readers]
    blocks = []
    for coef in coefs:
        leaves, width, k, f = coef.shape[0], coef.shape[1], coef.shape[2], coef.shape[3]
        # Θ (L, S, K, f) as (L, S·f, K), gathered once for every reader: (N, S·f, K)
        by_leaf = coef.permute(0, 1, 3, 2).reshape(leaves, width * f, k).index_select(0, rows)
        # (L·A, S·f, K) viewed (L, A·S·f, K), transposed (L, K, A·S·f)
        blocks.append([c.reshape(out_rows, arity * width * f, k).transpose(1, 2)
                       for (_, out_rows, arity), c in zip(reads.readers, by_leaf.split(sizes))])
    if kept is not None:
        kept.parts = blocks
    return blocks


def feature_columns(backend: Any, op: InputOp, block: FamilyBlock, reads: Any) -> torch.Tensor:
    """(N·S,): the data column of every factor of every part in ``reads`` (``LeafReads``), the
    all-zero pad column C where the part is absent (its features are then 0, as the present
    mask made them: x = obs = 0 there and every dense family's T, log h are finite at 0).
    Made once per plan and block."""
    key = (id(op), block.param)
    cached = backend.feature_columns.get(key)
    if cached is None:
        columns = backend.columns[block.param].index_select(0, backend._index(reads.rows))  # (N, S)
        present = backend._present(reads.present)[:, None] > 0  # (N, 1)
        cached = torch.where(present, columns, backend.num_columns).reshape(-1)
        backend.feature_columns[key] = cached
    return cached


def values_of(backend: Any, op: InputOp, coefficients: list[torch.Tensor], x: torch.Tensor,
           observed: torch.Tensor, max_product: bool) -> torch.Tensor:
    total = None
    batch_size = x.shape[0]
    for block, coef in zip(op.blocks, coefficients):
        rule = family_rule(block.family)
        if rule.one_hot_statistics:
            term = _lookup(backend, block, coef, x, observed, max_product)
            total = term if total is None else total + term
            continue
        # per-column features, computed once per column (not once per leaf region); in
        # max-product, unobserved real columns (not the zero pad column C) take max log f
        missing = (backend.real_column - observed) if max_product else None
        column_features = leaf_features(torch, block, x, observed, missing)  # (B, C+1, f)
        cols = backend.columns[block.param]  # (L, S)
        rows, width = cols.shape
        f = column_features.shape[-1]
        k = coef.shape[2]
        if backend.batch_minor:
            # the features batch-minor, (C+1, f, B), then whole rows of them per leaf factor:
            # an index of L·S rows (not L·S·B entries) into (L, S·f, B)
            by_column = column_features.permute(1, 2, 0).contiguous()
            gathered = by_column.index_select(0, backend.leaf_rows[block.param]).reshape(rows, width * f, batch_size)
            # (L, K, S·f) x (L, S·f, B) -> (L, K, B), indexed as (L, B, K)
            term = torch.bmm(coef.permute(0, 2, 1, 3).reshape(rows, k, width * f), gathered).transpose(1, 2)
        else:
            # the small (L, S) index broadcast over the batch: on an H100 ~20x faster than one
            # flat gather of L·B·S rows; viewed as (L, B, S·f) without a copy
            gathered = column_features[:, cols].reshape(batch_size, rows, width * f).transpose(0, 1)
            # (L, B, S·f) x (L, S·f, K) -> (L, B, K)
            term = torch.bmm(gathered, coef.permute(0, 1, 3, 2).reshape(rows, width * f, k))
        total = term if total is None else total + term
    assert total is not None
    return total

def _lookup_inputs(backend: Any, block: FamilyBlock, x: torch.Tensor, observed: torch.Tensor,
                   max_product: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a one-hot block's lookup reads of the batch: the category of each leaf factor's
    column (L, S, B; unobserved are 0), the observed mask (L, S, B) and the dense features
    [obs, (log h(x)·obs), (missing)] (L, S, B, f')."""
    cols = backend.columns[block.param]  # (L, S)
    obs = observed.t()[cols]  # (L, S, B)
    values = x.t()[cols].long().clamp_(0, block.stat_dim - 1)  # (L, S, B); unobserved are 0
    # the remaining features [obs, (log h(x)·obs), (missing)] are a small dense contraction
    dense = [obs]
    if block.log_base:
        dense.append(rule_log_base(block, x, observed, cols))
    if max_product:
        valid = (cols < backend.num_columns).to(backend.dtype)[..., None]  # (L, S, 1)
        dense.append(valid - obs)
    return values, obs, torch.stack(dense, -1)


def _stored_lookup(coef: torch.Tensor, categories: int, values: torch.Tensor, obs: torch.Tensor,
                   features: torch.Tensor) -> torch.Tensor:
    """The lookup's value in the stored order (L, K, B) from Θ (L, S, K, f) and ``_lookup_inputs``."""
    rows, k = coef.shape[0], coef.shape[2]
    dense_features = features.permute(0, 1, 3, 2).reshape(rows, -1, features.shape[2])  # (L, S·f', B)
    dense_coef = coef[..., categories:].permute(0, 2, 1, 3).reshape(rows, k, -1)  # (L, K, S·f')
    return StoredLookup.apply(coef[..., :categories], values, obs, dense_coef, dense_features)


def _lookup(backend: Any, block: FamilyBlock, coef: torch.Tensor, x: torch.Tensor,
                  observed: torch.Tensor, max_product: bool) -> torch.Tensor:
    """The input layer for one-hot statistics: T(x)·θ is θ[x], a lookup instead of a matmul
    over (B, C, categories) one-hot features. Same numbers; autograd's scatter-add backward
    still yields Σ p·T(x) as the gradient of the θ part of Θ."""
    categories = block.stat_dim
    values, obs, features = _lookup_inputs(backend, block, x, observed, max_product)
    if backend.batch_minor:
        # the value in the stored order, (L, K, B): the batch-minor reads and products then take
        # contiguous rows (an (L, B, K) result would be read through strided, transposed views)
        return _stored_lookup(coef, categories, values, obs, features).transpose(1, 2)
    theta = coef[..., :categories]  # (L, S, K, n)
    # (L, S, K, n) gathered at x along n -> (L, S, K, B)
    picked = torch.gather(theta, 3, values[:, :, None, :].expand(-1, -1, theta.shape[2], -1))
    looked_up = ObservedSum.apply(picked, obs)
    # (L, S, B, f') x (L, S, K, f') -> (L, B, K)
    return looked_up + torch.einsum("lsbf,lskf->lbk", features, coef[..., categories:])


class LookupLeaves:
    """A one-hot (categorical) input value left unmaterialised: the rows a hadamard op reads are
    looked up where it reads them (``stored``), from Θ's rows split once at the value's cut
    points (``torch_reads.ReadPlan.cuts``: one backward node assembles Θ's gradient from the
    pieces'). The whole value is the largest tensor of an MNIST HCLT's pass (784 rows: 51 MB at
    K=32, batch 512) and is read by every level of the tree, so computed whole it is held to the
    end of the pass; looked up per read, only each reader's rows exist, and only while it adds
    them. A row read by several ops is looked up once per read."""

    def __init__(self, backend: Any, value: int, block: FamilyBlock, coef: torch.Tensor, x: torch.Tensor,
                 observed: torch.Tensor) -> None:
        self.backend = backend
        self.value = value
        self.categories = block.stat_dim
        self.coef = coef  # (L, S, K, f)
        self.values, self.obs, self.features = _lookup_inputs(backend, block, x, observed, False)
        sizes = backend.reads.sizes.get(value)
        self.chunks = None if sizes is None else coef.split(sizes, 0)

    def stored(self, segment: Segment) -> torch.Tensor:
        """The segment's rows of the value in the stored order, (n, K, B)."""
        if isinstance(segment, RowIndex):
            rows = self.backend._index(segment.rows)
            coef = self.coef.index_select(0, rows)
            values, obs, features = (t.index_select(0, rows) for t in (self.values, self.obs, self.features))
        else:
            start, stop = segment.start, segment.stop
            if self.chunks is None:
                coef = self.coef[start:stop]
            else:
                first, last = self.backend.reads.chunk_span(segment)
                coef = self.chunks[first] if last == first + 1 else torch.cat(self.chunks[first:last], 0)
            values, obs, features = self.values[start:stop], self.obs[start:stop], self.features[start:stop]
        return _stored_lookup(coef, self.categories, values, obs, features)


class StoredLookup(torch.autograd.Function):
    """The categorical input value in the stored (batch-minor) order, (L, K, B):
    Σ_s θ[l,s,k,x[l,s,b]] · obs[l,s,b] + Σ_f Θ_dense[l,k,f] · F_dense[l,f,b], in one (L, S, K, B)
    buffer: the gather's own output, masked and summed in place and the dense matmul added
    into it (``baddbmm_``). Autograd's ops would hold the gathered values, their masked copy, the
    matmul and the sum at once: four values of the input op's size (51 MB each for an MNIST HCLT
    K=32 at batch 512, the peak of its E-step's forward). The backward keeps the indices and the
    dense features, not the gathered values, and scatters the gradient into θ as the gather's
    backward does, without a masked copy of it."""

    @staticmethod
    def forward(ctx: Any, theta: torch.Tensor, values: torch.Tensor, obs: torch.Tensor, dense_coef: torch.Tensor,
                dense_features: torch.Tensor) -> torch.Tensor:
        rows, width, k = theta.shape[0], theta.shape[1], theta.shape[2]
        # (L, S, K, n) gathered at x along n -> (L, S, K, B)
        picked = torch.gather(theta, 3, values[:, :, None, :].expand(-1, -1, k, -1))
        picked.mul_(obs[:, :, None, :])  # (L, S, K, B) x (L, S, 1, B)
        # one factor per leaf (an HCLT's pixels): the buffer is the sum
        total = picked.view(rows, k, -1) if width == 1 else picked.sum(1)  # (L, K, B)
        total.baddbmm_(dense_coef, dense_features)  # (L, K, S·f') x (L, S·f', B) -> (L, K, B)
        # the backward's index: x where observed, else the extra category n (dropped there)
        categories = theta.shape[3]
        ctx.save_for_backward(torch.where(obs > 0, values, categories), dense_coef, dense_features)
        ctx.theta_shape = theta.shape
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, None, None, Any, Any]:
        index, dense_coef, dense_features = ctx.saved_tensors
        rows, width, k, categories = ctx.theta_shape
        grad_theta = grad_coef = grad_features = None
        if ctx.needs_input_grad[0]:
            # grad[l,k,b] added into θ's entry at x[l,s,b] for every s; unobserved entries into
            # the extra category n, so that the gradient is scattered as it is, an expanded view
            # (L, S, K, B) with no copy and no masked product of the value's size
            shape = (rows, width, k, grad.shape[2])
            grad_theta = grad.new_zeros((rows, width, k, categories + 1)).scatter_add_(
                3, index[:, :, None, :].expand(shape), grad[:, None, :, :].expand(shape))[..., :categories]
        if ctx.needs_input_grad[3]:
            grad_coef = torch.bmm(grad, dense_features.transpose(1, 2))  # (L, K, B) x (L, B, S·f')
        if ctx.needs_input_grad[4]:
            grad_features = torch.bmm(dense_coef.transpose(1, 2), grad)  # (L, S·f', K) x (L, K, B)
        return grad_theta, None, None, grad_coef, grad_features


class ObservedSum(torch.autograd.Function):
    """Σ_s picked[l,s,k,b] · obs[l,s,b], as (L, B, K), differentiated in ``picked`` only: its
    backward keeps the mask (L, S, B), not ``picked`` (L, S, K, B), which autograd's einsum saves
    (28 of the 188 MB an MNIST HCLT K=32 E-step saved at batch 512)."""

    @staticmethod
    def forward(ctx: Any, picked: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(obs)
        return torch.einsum("lskb,lsb->lbk", picked, obs)  # (L, S, K, B) x (L, S, B) -> (L, B, K)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, None]:
        (obs,) = ctx.saved_tensors
        # (L, B, K) x (L, S, B) -> (L, S, K, B)
        return torch.einsum("lbk,lsb->lskb", grad, obs), None


def backtrack(backend: Any, op: InputOp, params: dict[str, torch.Tensor], values: list[torch.Tensor],
              choice: list[torch.Tensor], chosen: torch.Tensor, sampler: Any, mpe: bool,
              data: Any, output: Any) -> None:
    """Reached leaf regions emit a sample, mode or mean for their unobserved columns."""
    emit_leaves(backend, op, params, chosen, data.observed, output.completed, output.leaf_value, sampler)


def emit_leaves(backend: Any, op: InputOp, params: Params, chosen: torch.Tensor, observed: torch.Tensor,
                 completed: torch.Tensor, leaf_value: str, sampler: TorchSampler) -> None:
    reached = chosen >= 0  # (L, B)
    k = chosen.clamp(min=0)
    for block in op.blocks:
        rule = family_rule(block.family)
        cols = backend.columns[block.param]  # (L, S)
        phi = params[block.param]  # (L, S, K, t)
        L, S, _, t = phi.shape
        index = k[:, None, :, None].expand(L, S, k.shape[1], t)  # (L, S, B, t)
        selected = torch.gather(phi, 2, index)  # (L, S, B, t)
        if leaf_value == "sample":
            draw = rule.sample(sampler, selected, block.family)
        elif leaf_value == "mean":
            draw = rule.mean(torch, selected, block.family)
        else:
            draw = rule.mode(torch, selected, block.family)
        draw = draw.to(backend.dtype)  # (L, S, B)
        write = reached[:, None, :] & (cols < backend.num_columns)[..., None]
        write = write & (observed.t()[cols] == 0)
        rows, positions, samples = torch.nonzero(write, as_tuple=True)
        completed[samples, cols[rows, positions]] = draw[rows, positions, samples]


def rule_log_base(block: FamilyBlock, x: torch.Tensor, observed: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """log h(x)·obs gathered to (L, S, B)."""
    log_base = family_rule(block.family).log_base_measure(torch, x, block.family) * observed
    return log_base.t()[cols]


RULE = TorchOpRule(forward=forward, backtrack=backtrack, defer=defer)
