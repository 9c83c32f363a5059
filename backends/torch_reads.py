"""How the torch executor reads operands without copying whole values (issue 18).

The previous executor built every fragmented operand by concatenating the *whole* source values
and gathering from that: in an HCLT of depth 48 each of the 48 ops copied the 784-row input value
(51 MB at K=32, batch 512) and its backward filled and added a gradient of that size, so a pass
cost O(depth × size): `aten::cat` was 42-72% of an epoch. Here every read touches only its rows:

- ``ReadPlan`` (once per plan): every value read in contiguous runs by several consumers is cut
  at all their run boundaries. ``PassValues`` splits such a value into those chunks once, when it
  is produced (``torch.split``: views, and a single backward node that assembles the value's
  gradient from its chunks' gradients in one allocation, instead of one zero-filled full-size
  gradient per consumer that a slice's backward makes). A run is one chunk (a view) or the
  concatenation of the few consecutive chunks it spans; a gathered segment (a shared region of
  a DAG) is one ``index_select`` of exactly its rows.
- ``ProductTerm``: a hadamard op's product Σ_parts log C is accumulated segment by segment,
  each segment as a view: added as it is where its rows are the output rows in order
  (``identity``), as a strided sum over a fixed arity where each output row owns ``arity``
  consecutive rows (``blocks``), and by ``index_add`` of its rows only otherwise — never a copy of
  all parts into one tensor followed by ``index_add`` into fresh zeros.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from einc.ir.plan import HadamardOp, InputOp, Plan, RowRange, Segment


@dataclass(frozen=True)
class ProductTerm:
    """One segment of a hadamard op's parts and how its rows add into the product's rows."""

    segment: Segment
    kind: str  # "identity", "blocks" or "scatter"
    owner: tuple[int, ...]  # the output row of each of the segment's rows
    arity: int = 1  # blocks: rows per output row


class ReadPlan:
    """Cut points of every value read in runs by more than one consumer, and product layouts."""

    def __init__(self, plan: Plan) -> None:
        cuts: dict[int, set[int]] = {}
        for op in plan.ops:
            for operand in op.operands():
                for segment in operand.segments:
                    if isinstance(segment, RowRange):
                        rows = plan.ops[segment.value].rows
                        cuts.setdefault(segment.value, {0, rows}).update((segment.start, segment.stop))
        self.op_index: dict[int, int] = {id(op): index for index, op in enumerate(plan.ops)}
        # per op, the values it is the last reader of: a pass that keeps only the root lets them go
        # after it (the values of a deep circuit are otherwise all held to the end of the pass,
        # next to what autograd saves: an MNIST HCLT K=32 holds 85 MB of values at batch 512)
        last: dict[int, int] = {}
        for index, op in enumerate(plan.ops):
            for operand in op.operands():
                for segment in operand.segments:
                    last[segment.value] = index
        released: dict[int, list[int]] = {}
        for value, index in last.items():
            if value != plan.root[0]:
                released.setdefault(index, []).append(value)
        self.released_after: dict[int, tuple[int, ...]] = {index: tuple(values) for index, values in released.items()}
        # only values with a proper sub-run are split; a whole-value read is the value itself
        self.cuts: dict[int, list[int]] = {value: sorted(points) for value, points in cuts.items() if len(points) > 2}
        self.sizes: dict[int, list[int]] = {
            value: [b - a for a, b in zip(points, points[1:])] for value, points in self.cuts.items()
        }
        self.products: dict[int, tuple[ProductTerm, ...]] = {
            id(op): product_terms(op) for op in plan.ops if isinstance(op, HadamardOp)
        }
        # per hadamard op, the leaf parts it reads from each input op's value, laid out by
        # output row (LeafParts): where that value is deferred, the parts are one matmul
        inputs = {index for index, op in enumerate(plan.ops) if isinstance(op, InputOp)}
        self.leaf_parts: dict[int, dict[int, LeafParts]] = {
            id(op): leaf_parts(op, self.products[id(op)], inputs) for op in plan.ops if isinstance(op, HadamardOp)
        }
        # input values worth deferring: read by hadamard ops only (as LeafParts, one matmul per
        # reader, nothing recomputed). Where einsum or mixing ops read leaf rows, a deferred
        # value is computed piece by piece per read, shared rows (a Poon-Domingos DAG) once per
        # reader: PD MNIST epochs 5%, RAT K=10 3% slower than the value computed whole.
        readers: dict[int, set[type]] = {}
        for op in plan.ops:
            for operand in op.operands():
                for segment in operand.segments:
                    readers.setdefault(segment.value, set()).add(type(op))
        self.deferrable: set[int] = {
            value for value in inputs if readers.get(value) == {HadamardOp} and value != plan.root[0]
        }
        # per deferrable value, every reader's LeafParts one after another (op order): the
        # rows of all of them are gathered once per pass, each reader's a view of that gather
        self.leaf_reads: dict[int, LeafReads] = {}  # by id() of the input op
        for value in self.deferrable:
            layouts = [(id(op), op.rows, self.leaf_parts[id(op)][value]) for op in plan.ops
                       if isinstance(op, HadamardOp) and value in self.leaf_parts[id(op)]]
            self.leaf_reads[id(plan.ops[value])] = LeafReads(
                tuple(row for _, _, layout in layouts for row in layout.rows),
                tuple(flag for _, _, layout in layouts for flag in layout.present),
                tuple((reader, rows, layout.arity) for reader, rows, layout in layouts),
            )

    def chunk_span(self, segment: RowRange) -> tuple[int, int]:
        """[first, last) chunks of the segment's value that make up its rows."""
        points = self.cuts[segment.value]
        return bisect_left(points, segment.start), bisect_left(points, segment.stop)


class PassValues(list):
    """The values of one upward pass, in op order, with each cut value's chunks (views).

    Batch-minor values are indexed (rows, B, K) but stored (rows, K, B): they are split in the
    stored order and each chunk handed out as a transposed view, so that the gradients the
    split's backward assembles arrive in the stored order too (a contiguous copy, not a
    transposing one) and the producer's backward receives its own layout.
    """

    def __init__(self, reads: ReadPlan, batch_minor: bool = False) -> None:
        super().__init__()
        self.reads = reads
        self.batch_minor = batch_minor
        self.chunks: list[Any] = []
        # batch-minor: the same chunks in the stored order, (n, K, B), which reads that join
        # several chunks concatenate (then transposed once, not once per chunk each way)
        self.stored_chunks: list[Any] = []

    def release(self, index: int) -> None:
        """Let value ``index`` and its chunks go (what autograd saved of them stays)."""
        self[index] = None
        self.chunks[index] = None
        self.stored_chunks[index] = None

    def append(self, value: Any) -> None:
        sizes = self.reads.sizes.get(len(self))
        super().append(value)
        if sizes is None or not hasattr(value, "split"):  # not cut, or deferred (not a tensor)
            self.chunks.append(None)
            self.stored_chunks.append(None)
        elif self.batch_minor:
            stored = value.transpose(1, 2).split(sizes, 0)
            self.stored_chunks.append(stored)
            self.chunks.append([chunk.transpose(1, 2) for chunk in stored])
        else:
            self.chunks.append(value.split(sizes, 0))
            self.stored_chunks.append(None)


@dataclass(frozen=True)
class LeafParts:
    """The rows of one leaf value that a hadamard op multiplies in, by output row: ``rows``
    (L·A,) holds output row l's parts at [l·A, (l+1)·A), padded with row 0 where ``present``
    (L·A,) is 0; A is the most parts any output row takes from this value."""

    rows: tuple[int, ...]
    present: tuple[float, ...]
    arity: int


@dataclass(frozen=True)
class LeafReads:
    """All hadamard readers' ``LeafParts`` of one leaf value, concatenated in op order: ``rows``
    and ``present`` as there, ``readers`` (id(op), output rows L, arity A) for each, owning the
    next L·A entries."""

    rows: tuple[int, ...]
    present: tuple[float, ...]
    readers: tuple[tuple[int, int, int], ...]


def leaf_parts(op: HadamardOp, terms: tuple[ProductTerm, ...], inputs: set[int]) -> dict[int, LeafParts]:
    """Per input-op value the op reads: its parts laid out by output row (``LeafParts``)."""
    by_value: dict[int, list[list[int]]] = {}
    for term in terms:
        if term.segment.value not in inputs:
            continue
        rows = by_value.setdefault(term.segment.value, [[] for _ in range(op.rows)])
        segment = term.segment
        source = range(segment.start, segment.stop) if isinstance(segment, RowRange) else segment.rows
        for row, owner in zip(source, term.owner):
            rows[owner].append(row)
    layouts = {}
    for value, rows in by_value.items():
        arity = max(len(parts) for parts in rows)
        layouts[value] = LeafParts(
            tuple(parts[a] if a < len(parts) else 0 for parts in rows for a in range(arity)),
            tuple(1.0 if a < len(parts) else 0.0 for parts in rows for a in range(arity)),
            arity,
        )
    return layouts


def product_terms(op: HadamardOp) -> tuple[ProductTerm, ...]:
    """How each segment of the op's parts adds into its product rows."""
    terms = []
    offset = 0
    for segment in op.parts.segments:
        owner = op.owner[offset : offset + len(segment)]
        offset += len(segment)
        count = len(owner)
        if owner == tuple(range(op.rows)):
            terms.append(ProductTerm(segment, "identity", owner))
            continue
        arity = count // op.rows if count % op.rows == 0 else 0
        if arity > 1 and owner == tuple(row // arity for row in range(count)):
            terms.append(ProductTerm(segment, "blocks", owner, arity))
            continue
        terms.append(ProductTerm(segment, "scatter", owner))
    return tuple(terms)

