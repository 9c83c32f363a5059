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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .region_graph import Domain, LeafFamily, RegionGraph, RegionId


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

    def describe(self) -> str:
        if len(self.segments) > 3:
            sources = ",".join(f"v{v}" for v in sorted({s.value for s in self.segments}))
            return f"gather {len(self)} rows of {sources} ({len(self.segments)} runs)"
        parts = []
        for s in self.segments:
            if isinstance(s, RowRange):
                parts.append(f"v{s.value}[{s.start}:{s.stop}]")
            else:
                parts.append(f"v{s.value}[gather {len(s.rows)}]")
        return " + ".join(parts)


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    kind: str  # "einsum" | "mixing" | "leaf"
    family: LeafFamily | None = None
    domain: Domain | None = None

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
class InputOp:
    name: str
    regions: tuple[RegionId, ...]  # output rows
    k: int
    blocks: tuple[FamilyBlock, ...]
    # (batch, L, S, f) x (L, S, f, K) -> (L, batch, K)
    equation: str = "blsf,lsfk->lbk"

    @property
    def rows(self) -> int:
        return len(self.regions)


@dataclass(frozen=True)
class EinsumOp:
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

    @property
    def rows(self) -> int:
        return len(self.partitions)


@dataclass(frozen=True)
class MixingOp:
    name: str
    regions: tuple[RegionId, ...]  # output rows
    input: Operand  # rows m*C + c: the c-th partition of region m
    components: int  # C
    k: int
    param: str  # weights (M, C, K), normalised over C
    # (M, C, batch, K) x (M, C, K) -> (M, batch, K)
    equation: str = "mcbk,mck->mbk"

    @property
    def rows(self) -> int:
        return len(self.regions)


Op = Union[InputOp, EinsumOp, MixingOp]


@dataclass(frozen=True)
class Plan:
    graph: RegionGraph
    ops: tuple[Op, ...]
    params: tuple[ParamSpec, ...]
    root: tuple[int, int]  # (value, row) of the root region
    replicas: int  # the paper's R: leaf regions packed so that one replica has disjoint scopes
    region_rows: tuple[tuple[RegionId, int, int], ...]  # where every region's vector lives

    @property
    def heads(self) -> int:
        return self.graph.heads

    @property
    def num_parameters(self) -> int:
        """Free parameters: weights plus leaf parameters of real (not padding) factors."""
        padded = 0
        for op in self.ops:
            if isinstance(op, InputOp):
                for block in op.blocks:
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
        if isinstance(op, InputOp):
            feats = sum(b.width * b.features for b in op.blocks)
            params = sum(self.param(b.param).size for b in op.blocks)
            return op.rows * feats * op.k, params, op.rows * op.k
        if isinstance(op, EinsumOp):
            flops = op.rows * (op.k_left * op.k_right * op.k_out + op.k_left * op.k_right)
            return flops, self.param(op.param).size, op.rows * op.k_out
        return op.rows * op.components * op.k, self.param(op.param).size, op.rows * op.k

    def table(self, batch: int = 100, itemsize: int = 4) -> str:
        """The plan as a text table: op, equation, shapes, FLOPs, bytes, operand reads."""
        header = ("#", "op", "equation", "kernel", "out (rows,B,K)", "weights", "MFLOP/batch", "out KB", "reads")
        rows: list[tuple[str, ...]] = []
        total_flops = 0
        for index, op in enumerate(self.ops):
            madds, _, out_floats = self.op_cost(op)
            total_flops += 2 * madds * batch
            if isinstance(op, InputOp):
                kind = "input"
                weights = " ".join(f"{b.family}{self.param(b.param).shape}" for b in op.blocks)
                reads = "data"
                kernel = "matmul"
                k = op.k
            elif isinstance(op, EinsumOp):
                kind = "einsum"
                weights = str(self.param(op.param).shape)
                reads = f"L={op.left.describe()} R={op.right.describe()}"
                kernel = op.kernel
                k = op.k_out
            else:
                kind = "mixing"
                weights = str(self.param(op.param).shape)
                reads = op.input.describe()
                kernel = "matmul"
                k = op.k
            rows.append(
                (
                    str(index),
                    kind,
                    op.equation,
                    kernel,
                    f"({op.rows},{batch},{k})",
                    weights,
                    f"{2 * madds * batch / 1e6:.3f}",
                    f"{out_floats * batch * itemsize / 1024:.1f}",
                    reads,
                )
            )
        return format_table(header, rows) + (
            f"\nroot: v{self.root[0]}[{self.root[1]}]  heads: {self.heads}  replicas: {self.replicas}  "
            f"parameters: {self.num_parameters}  MFLOP/batch({batch}): {total_flops / 1e6:.3f}"
        )


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Left-aligned text columns under a header and a rule (the plans' printed form)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
