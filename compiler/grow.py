"""The growing operator of LVD with progressive growing (Liu et al. 2023, Algorithm 1), on einc's
vectorised circuits.

Algorithm 1 duplicates the units whose flow over the samples of the clusters chosen to grow
reaches a threshold, and rebuilds every sum over the original *and* the copied children ("the
edges between original and copied sub-circuits"); the copies of the chosen heads are the new
clusters' heads. In einc a region's units are one K-vector, so growing a region appends copies of
some of its units to its vector: its K grows (a region's own K: ``sums R = K`` / ``inputs R = K``,
``RegionGraph.region_sizes``), and the grown circuit is an ordinary circuit that verify, the
printers and every backend accept.

What is copied (``select_units``), from flows summed over the growing samples, as fractions of
their number:

- the chosen ``roots`` units (the heads of the clusters to split, or the states of a latent whose
  clusters are split) always;
- below them, every unit whose flow reaches ``threshold`` — for outer products per region;
- for element-wise (hadamard) products, product unit j of a partition is the product of unit j
  of every part, so the parts' copies must line up: a part grows exactly the product units of its
  partition whose flow reaches the threshold (in a tree, where each region is a part of one
  partition, unit j of every part carries exactly product j's flow, so this *is* the per-unit
  rule); a part of a hadamard partition that is also a part of another partition is refused.
  Each partition follows its own kind, so a circuit that mixes kinds (HCLT patches under an
  outer-product circuit) grows its hadamard partitions this way and its outer ones per region;
- the partitions of a mixed region grow the units their region grows (mixing is element-wise).

How the grown circuit is parameterised (``grow_parameters``): a copy starts as its original (the
same leaf parameters and weights), and every sum spreads each old weight over the original child
and its copy as (1 − share, share) — a copied sum the other way round, (share, 1 − share). As a
copy computes the same function as its original, every original unit, and every copy, computes
exactly what its original did: the grown circuit has the same distribution per (old) head, and
the copied heads the distributions of the heads they copy (tested by enumeration). ``share`` <
1/2 breaks the symmetry: the copies' flow comes mostly from the copied heads, so training on the
new clusters pulls them apart. Sums that do not grow (e.g. a circuit p(z) above a latent whose
states grow) get the same split edges to the copies.

Algorithm 1's sparse circuit is a sub-circuit of the result. An outer-product (einsum) layer is
dense: it also has the product units pairing an original with a copy, which Algorithm 1 leaves
out; they get weight w · share · (1 − share) and are learnt like every other edge. Element-wise
products have no such pairs: there the result is Algorithm 1's circuit exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from einc.ir.diagnostics import EincError
from einc.ir.plan import EinsumOp, HadamardOp, InputOp, MixingOp, Plan
from einc.ir.products import PRODUCT_KINDS
from einc.ir.region_graph import RegionGraph, RegionId, region_sort_key

DEFAULT_SHARE = 0.1  # weight a sum gives the other copy of each child: < 1/2 breaks the symmetry

# Parameters keyed by what they belong to, not by the plan's op rows (which move when K changes):
# ("leaf", region, block key) -> (S, K, t) of the region's real factors; ("partition", index) ->
# the partition's sum weights (K_out, ...); ("mixing", region) -> (C, K).
ItemKey = tuple


def item_parameters(plan: Plan, params: Mapping[str, np.ndarray]) -> dict[ItemKey, np.ndarray]:
    """The plan's parameters per leaf region, partition and mixed region (float64 copies)."""
    out: dict[ItemKey, np.ndarray] = {}
    for op in plan.ops:
        if isinstance(op, InputOp):
            for block in op.blocks:
                table = np.asarray(params[block.param], dtype=np.float64)  # (L, S, K, t)
                for row, region in enumerate(op.regions):
                    factors = sum(column >= 0 for column in block.columns[row])  # padding is at the end
                    if factors:
                        out[("leaf", region, _block_key(block))] = table[row, :factors].copy()
        elif isinstance(op, (EinsumOp, HadamardOp)):
            weights = np.asarray(params[op.param], dtype=np.float64)
            for row, partition in enumerate(op.partitions):
                out[("partition", partition)] = weights[row].copy()
        elif isinstance(op, MixingOp):
            weights = np.asarray(params[op.param], dtype=np.float64)
            for row, region in enumerate(op.regions):
                out[("mixing", region)] = weights[row].copy()
        else:
            raise EincError(f"growing handles sum weights and exponential-family leaves; the circuit has a "
                            f"{op.kind} op ('{op.name}')")
    return out


def assemble_parameters(plan: Plan, items: Mapping[ItemKey, np.ndarray],
                        base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The plan's parameter dictionary with every item written into its row; ``base`` (e.g.
    ``init_parameters(plan)``) supplies the padding entries, which no item covers."""
    out = {name: np.array(value, dtype=np.float64) for name, value in base.items()}
    for op in plan.ops:
        if isinstance(op, InputOp):
            for block in op.blocks:
                for row, region in enumerate(op.regions):
                    item = items.get(("leaf", region, _block_key(block)))
                    if item is not None:
                        out[block.param][row, : len(item)] = item
        elif isinstance(op, (EinsumOp, HadamardOp)):
            for row, partition in enumerate(op.partitions):
                out[op.param][row] = items[("partition", partition)]
        elif isinstance(op, MixingOp):
            for row, region in enumerate(op.regions):
                out[op.param][row] = items[("mixing", region)]
    return out


def _block_key(block) -> tuple[str, str]:
    return (str(block.family), str(block.domain))


@dataclass(frozen=True)
class Growth:
    """Which units of which regions are copied: ``copies[R]`` the sorted old indices of region R's
    units whose copies are appended to its vector (in that order)."""

    copies: dict[RegionId, tuple[int, ...]]

    def origin(self, graph: RegionGraph, region: RegionId) -> tuple[np.ndarray, np.ndarray]:
        """(origin, is_copy) of every unit of the grown region: the old unit it starts as."""
        k = graph.size(region)
        copied = self.copies.get(region, ())
        origin = np.concatenate([np.arange(k), np.asarray(copied, dtype=np.int64)]).astype(np.int64)
        is_copy = np.concatenate([np.zeros(k, bool), np.ones(len(copied), bool)])
        return origin, is_copy

    @property
    def units(self) -> int:
        return sum(len(c) for c in self.copies.values())


def select_units(graph: RegionGraph, flows, roots: Mapping[RegionId, Sequence[int]],
                 threshold: float) -> Growth:
    """Algorithm 1, lines 3–4: the units to copy, from ``flows`` (``einc.flows.Flows`` of the
    samples of the clusters to grow) — the ``roots`` units, and below them every unit whose flow
    per sample reaches ``threshold`` (see the module docstring for element-wise products and
    mixed regions)."""
    if not 0 <= threshold <= 1:
        raise EincError(f"the growing threshold is a fraction of the samples' flow, in [0, 1]; found {threshold!r}")
    if any(copy for _scope, copy in (r.id for r in graph.regions)):
        raise EincError("growing needs regions identified by their scopes; this circuit has generated copies of "
                        "one scope (random_binary_trees replicas)")
    samples = max(flows.samples, 1)
    copies: dict[RegionId, set[int]] = {}
    for region, units in roots.items():
        k = graph.size(region)
        bad = [u for u in units if not 0 <= int(u) < k]
        if bad:
            raise EincError(f"region {graph.region_label(region)} has {k} units; cannot grow unit {bad[0]}")
        copies[region] = {int(u) for u in units}
    # the partitions whose parts' units line up (hadamard), each by its own kind: a circuit may mix
    # them (HCLT patches under an outer-product circuit)
    aligned = [i for i, p in enumerate(graph.partitions) if PRODUCT_KINDS[graph.product_of(p)].elementwise]
    aligned_part_of = {part: i for i in aligned for part in graph.partitions[i].parts}
    shared = [graph.region_label(r) for r in sorted(aligned_part_of, key=region_sort_key)
              if len(graph.parents_of[r]) > 1]
    if shared:
        raise EincError(f"growing an element-wise (hadamard) partition needs each of its parts to be a part of one "
                        f"partition (a tree); {shared[0]} is a part of several")
    # top-down: a region's units are decided before its parts (parents come first in this order)
    order = sorted((r.id for r in graph.regions), key=region_sort_key)
    below = _descendants(graph, list(roots))
    for region in order:
        if region not in below or region in roots:
            continue
        if region in aligned_part_of:
            # a part of one element-wise partition: grow the product units of that partition that
            # reach the threshold
            products = flows.products(aligned_part_of[region]) / samples
            chosen = set(np.flatnonzero(products >= threshold).tolist())
        else:
            chosen = set(np.flatnonzero(flows.region(region) / samples >= threshold).tolist())
        if chosen:
            copies[region] = chosen
    growth = Growth({r: tuple(sorted(units)) for r, units in copies.items() if units})
    for partition in (graph.partitions[i] for i in aligned):
        grown = {growth.copies.get(part, ()) for part in partition.parts}
        if len(grown) > 1:
            raise EincError(f"growing an element-wise (hadamard) partition needs its parts to copy the same "
                            f"units; the chosen units of {', '.join(graph.region_label(p) for p in partition.parts)} "
                            f"differ (grow the partition's region instead of one of its parts)")
    return growth


def _descendants(graph: RegionGraph, roots: list[RegionId]) -> set[RegionId]:
    seen: set[RegionId] = set()
    stack = list(roots)
    while stack:
        region = stack.pop()
        if region in seen:
            continue
        seen.add(region)
        for p in graph.partitions_of.get(region, ()):
            stack.extend(graph.partitions[p].parts)
    return seen


def grow_graph(graph: RegionGraph, growth: Growth) -> RegionGraph:
    """The region graph with every grown region's K raised by its number of copies."""
    sizes = dict(graph.region_sizes)
    heads = graph.heads
    for region, copied in growth.copies.items():
        if region == graph.root:
            heads += len(copied)
        else:
            sizes[region] = graph.size(region) + len(copied)
    return replace(graph, heads=heads, region_sizes=tuple(sorted(sizes.items(), key=lambda i: region_sort_key(i[0]))),
                   _cache={})


def grow_parameters(graph: RegionGraph, items: Mapping[ItemKey, np.ndarray], growth: Growth,
                    share: float = DEFAULT_SHARE) -> dict[ItemKey, np.ndarray]:
    """Algorithm 1, lines 5–15, on the item parameters of ``graph`` (the old graph): copies start
    as their originals, every sum splits each old weight over a child and its copy as
    (1 − share, share), a copied sum as (share, 1 − share). Function-preserving (module docstring)."""
    if not 0 < share < 1:
        raise EincError(f"share must be in (0, 1) (the weight a sum gives the other copy of a child); found {share!r}")
    origins = {r.id: growth.origin(graph, r.id) for r in graph.regions}
    out: dict[ItemKey, np.ndarray] = {}
    for key, value in items.items():
        kind = key[0]
        if kind == "leaf":
            origin, _ = origins[key[1]]
            out[key] = value[:, origin]  # (S, K', t): copies start as their originals
        elif kind == "mixing":
            origin, _ = origins[key[1]]
            out[key] = value[:, origin]  # (C, K'): mixing is element-wise in K
        else:
            partition = graph.partitions[key[1]]
            out_origin, out_copy = origins[partition.region]
            weights = value[out_origin]  # (K'_out, ...) rows of the originals
            elementwise = PRODUCT_KINDS[graph.product_of(partition)].elementwise
            for axis, part in enumerate(partition.parts[:1] if elementwise else partition.parts, start=1):
                # element-wise products: every part has the same units, so the first part's routing
                # is the product unit's routing; outer products: one weight axis per part
                origin, is_copy = origins[part]
                weights = np.take(weights, origin, axis=axis)
                has_copy = np.zeros(graph.size(part), bool)
                has_copy[list(growth.copies.get(part, ()))] = True
                doubled = has_copy[origin]  # this child unit exists twice
                same_side = is_copy[None, :] == out_copy[:, None]  # (K'_out, K'_child)
                route = np.where(doubled[None, :], np.where(same_side, 1 - share, share), 1.0)
                shape = [1] * weights.ndim
                shape[0], shape[axis] = route.shape
                weights = weights * route.reshape(shape)
            out[key] = weights
    return out
