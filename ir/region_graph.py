"""The region graph IR: variables with domains and leaf families, regions (scopes) and partitions.

A region is identified by ``RegionId = (scope, copy)``: its sorted tuple of variable indices plus a
copy number. Explicit graphs always use copy 0 (regions are identified by their scope); generators
that need several independent regions over one scope (the replicas of RAT-SPNs, as in the EiNet
and RAT-SPN code) number them. Ids are derived from the source, so dumps are byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Union

from .diagnostics import Span

Scope = tuple[int, ...]
RegionId = tuple[Scope, int]


@dataclass(frozen=True)
class Domain:
    """What values one variable takes: ``binary``, ``categorical(n)``, ``count`` or ``real(d)``."""

    kind: str  # "binary" | "categorical" | "count" | "real"
    size: int = 1  # number of categories (binary: 2); vector length for real

    @property
    def columns(self) -> int:
        """Data columns this variable occupies (a real(d) variable is d columns)."""
        return self.size if self.kind == "real" else 1

    def __str__(self) -> str:
        if self.kind == "categorical" or (self.kind == "real" and self.size != 1):
            return f"{self.kind}({self.size})"
        return self.kind


# An argument of a leaf family: a number (``binomial(n=255)``), a list of whole numbers (a neural
# family's ``hidden = [32, 32]``) or another family (a VAE's resolved ``decoder``).
FamilyArgument = Union[float, tuple[int, ...], "LeafFamily"]


@dataclass(frozen=True)
class LeafFamily:
    """A leaf family with its normalised arguments, e.g. ``binomial(n=255)``."""

    name: str
    args: tuple[tuple[str, FamilyArgument], ...] = ()

    def arg(self, key: str) -> Any:
        return dict(self.args)[key]

    def __str__(self) -> str:
        if not self.args:
            return self.name
        inner = ", ".join(f"{k}={_fmt_argument(v)}" for k, v in self.args)
        return f"{self.name}({inner})"


def _fmt_argument(value: FamilyArgument) -> str:
    if isinstance(value, LeafFamily):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return _fmt_number(value)


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


@dataclass(frozen=True)
class Variable:
    index: int
    name: str  # "A", "x[3]", "img[2, 5]"
    domain: Domain
    family: LeafFamily
    column: int  # first data column; the variable occupies domain.columns columns
    span: Span | None = None
    family_span: Span | None = None  # the `leaf` statement that gave the family


@dataclass(frozen=True)
class Region:
    scope: Scope
    copy: int = 0
    name: str | None = None
    span: Span | None = None

    @property
    def id(self) -> RegionId:
        return (self.scope, self.copy)


@dataclass(frozen=True)
class Partition:
    """``region -> parts[0] * parts[1] * ...``: a product over the parts, a child of the region's sum.

    ``product`` is the partition's own product kind (a key of ``ir.products.PRODUCT_KINDS``) where
    it differs from the circuit's (``product R = hadamard``, or a generator's choice: HCLT patches
    under an outer-product circuit); None takes the circuit's ``RegionGraph.product``.
    """

    region: RegionId
    parts: tuple[RegionId, ...]
    span: Span | None = None
    product: str | None = None


@dataclass(frozen=True)
class Latent:
    """``latent NAME = SCOPE``: the K-state latent variable Z of one region R.

    R's K densities are p(x_R | Z = k); summing Z out gives back p(x) only when every induced
    tree of the circuit passes through R (``compiler.verify`` checks it). Clamping Z = k keeps
    entry k of R's vector and drops the others: a log-mask on R's row of the plan.
    """

    name: str  # "z1", or "patches[1, 2]" for a generated latent
    region: RegionId
    span: Span | None = None


def region_sort_key(region_id: RegionId) -> tuple:
    scope, copy = region_id
    return (-len(scope), scope, copy)


@dataclass(frozen=True)
class RegionGraph:
    """An unverified or verified region graph. Regions and partitions are in canonical order."""

    name: str
    variables: tuple[Variable, ...]
    regions: tuple[Region, ...]
    partitions: tuple[Partition, ...]
    sums: int  # K of internal regions
    inputs: int  # K of leaf regions
    heads: int = 1  # outputs of the root
    generator: str | None = None  # "random_binary_trees(...)" etc., for summaries
    # how partitions combine their parts, a key of ir.products.PRODUCT_KINDS: the default of every
    # partition that does not name its own (Partition.product; ``product_of``)
    product: str = "outer"
    latents: tuple[Latent, ...] = ()  # in declaration order (the columns of `latents=z`)
    # regions whose K is their own (`sums R = K`, `inputs R = K`: a grown circuit), sorted
    region_sizes: tuple[tuple[RegionId, int], ...] = ()
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    @cached_property
    def region_by_id(self) -> dict[RegionId, Region]:
        return {r.id: r for r in self.regions}

    @cached_property
    def partitions_of(self) -> dict[RegionId, tuple[int, ...]]:
        """Indices of the partitions of each region (empty for leaf regions)."""
        out: dict[RegionId, list[int]] = {r.id: [] for r in self.regions}
        for index, partition in enumerate(self.partitions):
            out.setdefault(partition.region, []).append(index)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def parents_of(self) -> dict[RegionId, tuple[int, ...]]:
        """Indices of the partitions that have a region as one of their parts."""
        out: dict[RegionId, list[int]] = {r.id: [] for r in self.regions}
        for index, partition in enumerate(self.partitions):
            for part in partition.parts:
                out.setdefault(part, []).append(index)
        return {k: tuple(v) for k, v in out.items()}

    def product_of(self, partition: Partition) -> str:
        """The product kind of ``partition``: its own, else the circuit's."""
        return partition.product or self.product

    @cached_property
    def product_kinds(self) -> tuple[str, ...]:
        """The product kinds the partitions use, sorted (one for an unmixed circuit; the
        circuit's kind when it has no partitions)."""
        return tuple(sorted({self.product_of(p) for p in self.partitions} or {self.product}))

    @property
    def num_variables(self) -> int:
        return len(self.variables)

    @property
    def num_columns(self) -> int:
        return sum(v.domain.columns for v in self.variables)

    @cached_property
    def full_scope(self) -> Scope:
        # cached: ``size`` compares with the root once per partition, and building this tuple
        # each time made a 16,384-partition file quadratic (34 s CPU, most of it here)
        return tuple(range(len(self.variables)))

    @cached_property
    def root(self) -> RegionId:
        return (self.full_scope, 0)

    def is_leaf(self, region_id: RegionId) -> bool:
        return not self.partitions_of.get(region_id)

    @cached_property
    def _own_sizes(self) -> dict[RegionId, int]:
        return dict(self.region_sizes)

    def size(self, region_id: RegionId) -> int:
        """K of a region's vector: ``heads`` at the root, the region's own K where one is given
        (``region_sizes``), else ``inputs`` for leaf regions and ``sums`` for internal ones."""
        if region_id == self.root:
            return self.heads
        own = self._own_sizes.get(region_id)
        if own is not None:
            return own
        return self.inputs if self.is_leaf(region_id) else self.sums

    @property
    def leaf_regions(self) -> tuple[RegionId, ...]:
        return tuple(r.id for r in self.regions if self.is_leaf(r.id))

    @property
    def internal_regions(self) -> tuple[RegionId, ...]:
        return tuple(r.id for r in self.regions if not self.is_leaf(r.id))

    def scope_names(self, scope: Scope) -> str:
        return "{" + ", ".join(self.variables[i].name for i in scope) + "}"

    def region_label(self, region_id: RegionId) -> str:
        region = self.region_by_id.get(region_id)
        label = region.name if region is not None and region.name else self.scope_names(region_id[0])
        return label if region_id[1] == 0 else f"{label}#{region_id[1]}"
