"""The einsum plan: backend-independent data that backends interpret.

Every op produces one *value*: a tensor of log-densities laid out ``(rows, batch, K)`` (region- or
partition-major, so a run of rows is one contiguous block). ``ops[i]`` produces value ``i``.
Operands read rows of earlier values; lowering orders rows so that most operands are a single
contiguous ``RowRange`` (a view, no copy) and only shared regions of DAGs need a gather.

Ops (paper §3.3–3.4, appendix B):
- ``InputOp``:  log L[l,b,k] = Σ_{s,f} F[b,l,s,f] · Θ[l,s,f,k]  — a factorised exponential-family
  leaf region is a matmul of augmented sufficient statistics F = [T(x), 1, log h(x)] (zero where a
  variable is unobserved, so marginalisation is free and per sample) with Θ = [θ, −A(θ), 1].
- ``EinsumOp``: S[l,b,k] = log Σ_ij W[l,k,i,j] exp(N[l,b,i]) exp(N'[l,b,j])  (log-einsum-exp, eq. 4).
- ``MixingOp``: S[m,b,k] = log Σ_c V[m,c,k] exp(S_c[m,b,k])  for regions with C > 1 partitions.
- ``HadamardOp``: S[l,b,k] = log Σ_j W[l,k,j] exp(Σ_{c ∈ parts(l)} C_c[b,j])  — an element-wise
  (CP) product of any number of equally sized part vectors, then a K_out × K_in sum.
- ``VaeOp``: log L[l,b,k] ≈ log p_k(x_l), K VAE experts per leaf region (SPVAE, ``ir.neural``),
  an importance-weighted estimate (``exact = False``) that only the torch backend runs.

Each op class is the IR half of its *op kind*: its fields, the operands it reads, its cost
(multiply-adds, weights, output floats: the plan table's FLOPs and bytes) and its row of the
plan table. The other halves are keyed by the op's type: the reverse-mode rule in
``compiler.backward.BACKWARD_RULES`` and each backend's execution rules (forward and max-product,
top-down sampling/MPE, backward). The M-step of an op's sum weights is data: its ``ParamSpec``
says over which axes they are normalised. ``tests/test_op_kinds.py`` fails when a kind lacks an
entry anywhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Union

from .region_graph import Domain, LeafFamily, RegionGraph, RegionId

if TYPE_CHECKING:  # backward_plan imports this module
    from .backward_plan import BackwardPlan


@dataclass(frozen=True)
class RowRange:
    value: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class RowIndex:
    value: int
    rows: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.rows)


Segment = Union[RowRange, RowIndex]


@dataclass(frozen=True)
class Operand:
    """Rows read from earlier values, concatenated in order."""

    segments: tuple[Segment, ...]

    def __len__(self) -> int:
        return sum(len(s) for s in self.segments)

    @property
    def is_view(self) -> bool:
        """True when the operand is one contiguous slice of one value (no copy needed)."""
        return len(self.segments) == 1 and isinstance(self.segments[0], RowRange)

    def split(self, stacked: Any) -> Iterator[tuple[Segment, Any]]:
        """Each segment with its rows of ``stacked`` (the operand's rows in order, axis 0): how a
        result about the operand goes back to the values it read."""
        offset = 0
        for segment in self.segments:
            yield segment, stacked[offset : offset + len(segment)]
            offset += len(segment)

    def describe(self) -> str:
        if len(self.segments) > 3:
            sources = ",".join(f"v{v}" for v in sorted({s.value for s in self.segments}))
            return f"gather {len(self)} rows of {sources} ({len(self.segments)} runs)"
        return " + ".join(self.segment_texts())

    def segment_texts(self, marker: str = "", gathered: str = "gather") -> list[str]:
        """Each segment as text, ``v3[0:8]`` for a slice and ``v3[gather 5]`` for picked rows;
        ``marker`` goes before the value (``∂v3``) and ``gathered`` names what picked rows do."""
        return [f"{marker}v{s.value}[{s.start}:{s.stop}]" if isinstance(s, RowRange)
                else f"{marker}v{s.value}[{gathered} {len(s)}]" for s in self.segments]


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    kind: str  # the op kind that owns it ("einsum", "mixing", "hadamard", ...) or "leaf"
    family: LeafFamily | None = None
    domain: Domain | None = None
    # sum weights: the axes they sum to 1 over (what init, the M-step and softmax normalise)
    normalised_over: tuple[int, ...] = ()
    # free parameters: unconstrained real tensors (a neural leaf's network weights), drawn
    # uniformly from ±init_bound, valid when finite, trained by gradient only (no M-step)
    free: bool = False
    init_bound: float = 0.0

    @property
    def size(self) -> int:
        total = 1
        for n in self.shape:
            total *= n
        return total


@dataclass(frozen=True)
class FamilyBlock:
    """All leaf variables of one (family, domain) inside an input layer.

    ``columns[l][s]`` is the data column of the s-th univariate factor of leaf region l
    (a ``real(d)`` variable contributes d factors), -1 where region l has fewer factors (padding).
    The parameter ``param`` has shape ``(L, S, K, t)`` in expectation form.
    """

    family: LeafFamily
    domain: Domain
    param: str
    columns: tuple[tuple[int, ...], ...]
    stat_dim: int
    log_base: bool = True  # whether F carries log h(x)·obs (a family with log h = 0 has none)

    @property
    def width(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    @property
    def features(self) -> int:
        """f in a sum-product pass: T(x) (stat_dim entries), obs and, where nonzero, log h(x)."""
        return self.stat_dim + 1 + int(self.log_base)


@dataclass(frozen=True)
class OpCost:
    """Per sample: multiply-adds and output floats; and the op's parameter count."""

    madds: int
    params: int
    out_floats: int


class PlanOp(ABC):
    """What every plan op kind tells the plan (and its printed table) about itself."""

    kind: ClassVar[str]  # the name in the plan table and in ParamSpec.kind
    # False: the op's values are stochastic estimates (neural leaves), not exact log-densities
    exact: ClassVar[bool] = True
    # the backends that can run the op kind (None: every backend)
    backends: ClassVar[frozenset[str] | None] = None
    name: str
    equation: str

    # Each kind names its fields once: which holds the output rows ("regions" or "partitions"),
    # which the K of each output row, and which the operands it reads, in order.
    row_field: ClassVar[str]
    size_field: ClassVar[str] = "k"
    operand_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(getattr(cls, "row_field", None), str):
            raise TypeError(f"plan op kind {cls.__name__} must name its row_field")

    @property
    def rows(self) -> int:
        """Output rows (regions or partitions)."""
        return len(getattr(self, self.row_field))

    @property
    def vector_size(self) -> int:
        """K of each output row's vector."""
        return getattr(self, self.size_field)

    def operands(self) -> tuple["Operand", ...]:
        """The rows of earlier values this op reads (what backward passes add adjoints into)."""
        return tuple(getattr(self, field) for field in self.operand_fields)

    @abstractmethod
    def cost(self, plan: "Plan") -> OpCost: ...

    @abstractmethod
    def describe(self, plan: "Plan") -> tuple[str, str]:
        """(weights, reads) columns of the plan table."""

    @property
    def kernel_name(self) -> str:
        """The implementation the plan asks for ('-': the op kind has one; compiler/kernels.py)."""
        return "-"

    def backend_problem(self, backend: str) -> str | None:
        """Why ``backend`` cannot run this op (None: it can)."""
        if self.backends is None or backend in self.backends:
            return None
        which = " or ".join(sorted(self.backends))
        return (f"the circuit's {self.kind} op '{self.name}' needs the {which} backend, not '{backend}' "
                f"({self.backend_reason}); use backend='{sorted(self.backends)[0]}' "
                f"(--backend {sorted(self.backends)[0]} on the command line)")

    backend_reason: ClassVar[str] = ""


@dataclass(frozen=True)
class InputOp(PlanOp):
    name: str
    regions: tuple[RegionId, ...]  # output rows
    k: int
    blocks: tuple[FamilyBlock, ...]
    # (batch, L, S, f) x (L, S, f, K) -> (L, batch, K)
    equation: str = "blsf,lsfk->lbk"
    kind: ClassVar[str] = "input"
    row_field: ClassVar[str] = "regions"

    def cost(self, plan: Plan) -> OpCost:
        feats = sum(b.width * b.features for b in self.blocks)
        params = sum(plan.param(b.param).size for b in self.blocks)
        return OpCost(self.rows * feats * self.k, params, self.rows * self.k)

    def describe(self, plan: Plan) -> tuple[str, str]:
        weights = " ".join(f"{b.family}{plan.param(b.param).shape}" for b in self.blocks)
        return weights, "data"


@dataclass(frozen=True)
class EinsumOp(PlanOp):
    name: str
    partitions: tuple[int, ...]  # output rows: indices into RegionGraph.partitions
    left: Operand
    right: Operand
    k_out: int
    k_left: int
    k_right: int
    param: str  # weights (L, k_out, k_left, k_right), normalised over the last two axes
    path: tuple[tuple[int, ...], ...]  # opt-einsum contraction path for `equation`
    # (L, batch, i) x (L, batch, j) x (L, k, i, j) -> (L, batch, k)
    equation: str = "lbi,lbj,lkij->lbk"
    kernel: str = "matmul"  # "matmul" (the path as batched matmuls) or "fused" (compiler/kernels.py)
    kind: ClassVar[str] = "einsum"
    row_field: ClassVar[str] = "partitions"
    size_field: ClassVar[str] = "k_out"
    operand_fields: ClassVar[tuple[str, ...]] = ("left", "right")

    def cost(self, plan: Plan) -> OpCost:
        flops = self.rows * (self.k_left * self.k_right * self.k_out + self.k_left * self.k_right)
        return OpCost(flops, plan.param(self.param).size, self.rows * self.k_out)

    def describe(self, plan: Plan) -> tuple[str, str]:
        return str(plan.param(self.param).shape), f"L={self.left.describe()} R={self.right.describe()}"

    @property
    def kernel_name(self) -> str:
        return self.kernel


@dataclass(frozen=True)
class MixingOp(PlanOp):
    name: str
    regions: tuple[RegionId, ...]  # output rows
    input: Operand  # rows m*C + c: the c-th partition of region m
    components: int  # C
    k: int
    param: str  # weights (M, C, K), normalised over C
    # (M, C, batch, K) x (M, C, K) -> (M, batch, K)
    equation: str = "mcbk,mck->mbk"
    kind: ClassVar[str] = "mixing"
    row_field: ClassVar[str] = "regions"
    operand_fields: ClassVar[tuple[str, ...]] = ("input",)

    def cost(self, plan: Plan) -> OpCost:
        return OpCost(self.rows * self.components * self.k, plan.param(self.param).size, self.rows * self.k)

    def describe(self, plan: Plan) -> tuple[str, str]:
        return str(plan.param(self.param).shape), self.input.describe()


@dataclass(frozen=True)
class HadamardOp(PlanOp):
    """Element-wise (CP) products of n ≥ 2 equally sized part vectors, then a K_out × K_in sum.

    ``parts`` reads every part of every output row in one operand; ``owner[r]`` is the output row
    whose product part row r is a factor of. Rows are grouped by the value they come from, not by
    owner, so that most reads are contiguous views; partitions of any arity share one op.

        log P[l,b,j] = Σ_{r: owner[r] = l} C[r,b,j]                      (the product, in logs)
        S[l,b,k]     = log Σ_j W[l,k,j] exp(P[l,b,j])                   (log-sum-exp, stabilised)
    """

    name: str
    partitions: tuple[int, ...]  # output rows: indices into RegionGraph.partitions
    parts: Operand  # (R, batch, K_in): every part row of every output row
    owner: tuple[int, ...]  # len R: the output row each part row belongs to
    k_out: int
    k_in: int
    param: str  # weights (L, k_out, k_in), normalised over k_in
    # (L, batch, j) x (L, k, j) -> (L, batch, k)
    equation: str = "lbj,lkj->lbk"
    kind: ClassVar[str] = "hadamard"
    row_field: ClassVar[str] = "partitions"
    size_field: ClassVar[str] = "k_out"
    operand_fields: ClassVar[tuple[str, ...]] = ("parts",)

    @property
    def arities(self) -> tuple[int, ...]:
        """Number of parts of each output row."""
        counts = [0] * self.rows
        for row in self.owner:
            counts[row] += 1
        return tuple(counts)

    def cost(self, plan: Plan) -> OpCost:
        # the product is one addition of log-values per part entry; the sum a K_out x K_in matvec
        madds = len(self.owner) * self.k_in + self.rows * self.k_out * self.k_in
        return OpCost(madds, plan.param(self.param).size, self.rows * self.k_out)

    def describe(self, plan: Plan) -> tuple[str, str]:
        low, high = min(self.arities), max(self.arities)
        arity = str(low) if low == high else f"{low}-{high}"
        reads = f"{len(self.owner)} parts, {arity} per row: {self.parts.describe()}"
        return str(plan.param(self.param).shape), reads


@dataclass(frozen=True)
class VaeOp(PlanOp):
    """``k`` VAE experts per leaf region (SPVAE, ``ir.neural``), all of one op run as one batched
    ensemble: every MLP layer is one batched matmul over the L·K experts.

        log L[l,b,k] ≈ log 1/S Σ_s p_k(x_l, z_s) / q_k(z_s | x_l),  z_s ~ q_k(z | x_l)

    (the S-sample IWAE estimate of log p_k(x_l), S chosen per query), with x_l the region's data
    columns ``columns[l]``; unobserved columns drop out of p_k(x_l | z), and a region with no
    observed column is exactly 0 (its marginal is 1). ``encoder``/``decoder`` name each layer's
    weight (L, K, in, out) and bias (L, K, out) parameters, in order.
    """

    name: str
    regions: tuple[RegionId, ...]  # output rows
    k: int
    columns: tuple[tuple[int, ...], ...]  # (L, D): the data columns of each region
    family: LeafFamily  # the vae family: latent size, hidden sizes, decoder
    domain: Domain  # every column's domain (a real(d) variable's columns are real(1))
    encoder: tuple[tuple[str, str], ...]  # (weight, bias) per layer
    decoder: tuple[tuple[str, str], ...]
    # (batch, L, D) -> (L, batch, K): an IWAE estimate per region and expert
    equation: str = "bld->lbk"
    kind: ClassVar[str] = "vae"
    exact: ClassVar[bool] = False
    backends: ClassVar[frozenset[str] | None] = frozenset({"torch"})
    backend_reason: ClassVar[str] = "vae leaves are neural networks, run and trained with torch autograd"
    row_field: ClassVar[str] = "regions"

    @property
    def width(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    def cost(self, plan: Plan) -> OpCost:
        # per data sample, at the training IWAE k: the encoder once, the decoder and the
        # decoder family's log-density once per IWAE sample
        from .neural import DEFAULT_TRAINING_SAMPLES

        experts = self.rows * self.k
        encoder = sum(plan.param(weight).shape[-2] * plan.param(weight).shape[-1] for weight, _ in self.encoder)
        decoder = sum(plan.param(weight).shape[-2] * plan.param(weight).shape[-1] for weight, _ in self.decoder)
        madds = experts * (encoder + DEFAULT_TRAINING_SAMPLES * (decoder + plan.param(self.decoder[-1][0]).shape[-1]))
        params = sum(plan.param(name).size for layer in (*self.encoder, *self.decoder) for name in layer)
        return OpCost(madds, params, self.rows * self.k)

    def pass_floats(self, batch: int, samples: int, chunked: bool) -> int:
        """Floats the networks hold in one pass over ``batch`` rows (``VaeSpec.pass_floats``)."""
        from .neural import VaeSpec

        return VaeSpec.of(self.family).pass_floats(self.rows * self.k, self.width, self.domain, batch,
                                                    samples, chunked)

    def describe(self, plan: Plan) -> tuple[str, str]:
        def sizes(layers: tuple[tuple[str, str], ...]) -> str:
            shapes = [plan.param(weight).shape for weight, _ in layers]
            return "-".join(str(n) for n in [shapes[0][-2], *(shape[-1] for shape in shapes)])

        spec = dict(self.family.args)
        weights = (f"{self.rows}x{self.k} VAEs enc {sizes(self.encoder)} dec {sizes(self.decoder)} "
                   f"{spec['decoder']}")
        return weights, f"data ({self.width} columns per region)"


Op = Union[InputOp, EinsumOp, MixingOp, HadamardOp, VaeOp]


@dataclass(frozen=True)
class LatentSlot:
    """Where a latent variable lives in the plan: row ``row`` of value ``value``, whose K =
    ``states`` entries are the region's densities p(x_R | Z = k).

    Backends clamp Z by adding a log-mask to that row — 0 on the kept states, −inf on the others
    — after the op computes it; a latent summed out gets no mask. The mask is data, like the
    zero features of a missing variable: the plan, its backward and every op rule are unchanged
    (the adjoint of an added mask is the identity).
    """

    name: str
    region: RegionId
    value: int
    row: int
    states: int


@dataclass(frozen=True)
class LatentGroup:
    """The latents whose rows lie in one value: masked together, after that value's op."""

    value: int
    rows: tuple[int, ...]
    latents: tuple[int, ...]  # their indices in ``Plan.latents`` (columns of ``latents=z``)
    states: int  # K of the value's rows


@dataclass(frozen=True)
class Plan:
    graph: RegionGraph
    ops: tuple[Op, ...]
    params: tuple[ParamSpec, ...]
    root: tuple[int, int]  # (value, row) of the root region
    replicas: int  # the paper's R: leaf regions packed so that one replica has disjoint scopes
    region_rows: tuple[tuple[RegionId, int, int], ...]  # where every region's vector lives
    latents: tuple[LatentSlot, ...] = ()  # in declaration order
    # the reverse-mode steps of EM without autograd (compiler/backward.py, derived by lowering);
    # None where an op kind has none (neural leaves). Not part of the plan's identity.
    backward: BackwardPlan | None = field(default=None, compare=False, repr=False)

    @property
    def latent_groups(self) -> tuple[LatentGroup, ...]:
        """The latents grouped by the value holding their rows, in value order."""
        by_value: dict[int, list[int]] = {}
        for index, slot in enumerate(self.latents):
            by_value.setdefault(slot.value, []).append(index)
        return tuple(
            LatentGroup(value, tuple(self.latents[i].row for i in members), tuple(members),
                        self.ops[value].vector_size)
            for value, members in sorted(by_value.items())
        )

    @property
    def heads(self) -> int:
        return self.graph.heads

    @property
    def exact(self) -> bool:
        """True when every value is an exact log-density (no neural leaf estimates)."""
        return all(op.exact for op in self.ops)

    def neural_floats(self, batch: int, samples: int, chunked: bool) -> int:
        """Floats the vae leaves' networks hold in one pass over ``batch`` rows with ``samples``
        IWAE samples (0 for exact circuits): the memory checks add them to the values'."""
        return sum(op.pass_floats(batch, samples, chunked) for op in self.ops if isinstance(op, VaeOp))

    @property
    def trained_by_em(self) -> bool:
        """True when EM can train every parameter (sum weights and exponential-family leaves);
        free parameters (neural networks) need gradient training."""
        return not any(spec.free for spec in self.params)

    @property
    def num_parameters(self) -> int:
        """Free parameters: weights plus leaf parameters of real (not padding) factors; fixed
        leaves (indicators) have none."""
        from .families import family_rule

        padded = 0
        for op in self.ops:
            if isinstance(op, InputOp):
                for block in op.blocks:
                    if family_rule(block.family).fixed:
                        padded += self.param(block.param).size
                        continue
                    pads = sum(column < 0 for row in block.columns for column in row)
                    padded += pads * op.k * block.stat_dim
        return sum(p.size for p in self.params) - padded

    def param(self, name: str) -> ParamSpec:
        for spec in self.params:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def op_cost(self, op: Op) -> tuple[int, int, int]:
        """(multiply-adds per sample, parameter count, output floats per sample) of one op."""
        cost = op.cost(self)
        return cost.madds, cost.params, cost.out_floats

    def table(self, batch: int = 100, itemsize: int = 4) -> str:
        """The plan as a text table: op, equation, shapes, FLOPs, bytes, operand reads."""
        header = ("#", "op", "equation", "kernel", "out (rows,B,K)", "weights", "MFLOP/batch", "out KB", "reads")
        rows: list[tuple[str, ...]] = []
        total_flops = 0
        for index, op in enumerate(self.ops):
            madds, _, out_floats = self.op_cost(op)
            total_flops += 2 * madds * batch
            weights, reads = op.describe(self)
            rows.append(
                (
                    str(index),
                    op.kind,
                    op.equation,
                    op.kernel_name,
                    f"({op.rows},{batch},{op.vector_size})",
                    weights,
                    f"{2 * madds * batch / 1e6:.3f}",
                    f"{out_floats * batch * itemsize / 1024:.1f}",
                    reads,
                )
            )
        latents = "".join(
            f"\nlatent {slot.name}: v{slot.value}[{slot.row}], {slot.states} states" for slot in self.latents
        )
        return format_table(header, rows) + (
            f"\nroot: v{self.root[0]}[{self.root[1]}]  heads: {self.heads}  replicas: {self.replicas}  "
            f"parameters: {self.num_parameters}  MFLOP/batch({batch}): {total_flops / 1e6:.3f}"
        ) + latents


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Left-aligned text columns under a header and a rule (the plans' printed form)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
