"""The parsed program: the abstract syntax of a ``.pc`` file, one frozen dataclass per construct.

This IR is what the text *says*, nothing resolved yet: names are still names, scopes are still
lists of variable references, numbers keep their source text. ``compiler.build`` resolves it into a
``RegionGraph``. Every node carries the ``Span`` of its source text so that each later diagnostic
points at the line and column the user wrote.

    >>> from einc.grammar.parser import parse
    >>> program = parse("var A, B : binary\\nleaf A, B ~ bernoulli\\n{A, B} -> A * B\\n", "ab.pc")
    >>> [type(s).__name__ for s in program.statements]
    ['VarStatement', 'LeafStatement', 'PartitionStatement']
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .diagnostics import Span


@dataclass(frozen=True)
class Name:
    """An identifier as written: a variable, array, region, family, domain or argument name."""

    text: str
    span: Span


@dataclass(frozen=True)
class Number:
    """A numeric literal; ``value`` is an ``int`` when the text is an integer literal."""

    value: int | float
    text: str
    span: Span

    @property
    def is_integer(self) -> bool:
        return isinstance(self.value, int)


@dataclass(frozen=True)
class ListValue:
    """``[7, 4]`` — a bracketed list of values (e.g. several Poon–Domingos deltas)."""

    items: tuple[Value, ...]
    span: Span


Value = Number | Name | ListValue


@dataclass(frozen=True)
class Argument:
    """One argument of a call: ``depth = 3`` (``keyword`` set) or a positional ``256``."""

    keyword: Name | None
    value: Value
    span: Span


@dataclass(frozen=True)
class Call:
    """``name`` or ``name(arguments)``: a domain, a leaf family or a structure generator."""

    name: Name
    arguments: tuple[Argument, ...]
    span: Span
    has_parentheses: bool = False


@dataclass(frozen=True)
class Index:
    """One position inside ``x[...]``: an integer ``3`` or a slice ``0:8`` (either end optional)."""

    start: Number | None
    stop: Number | None
    is_slice: bool
    span: Span


@dataclass(frozen=True)
class VariableRef:
    """``A``, ``x`` (a whole array), ``x[3]``, ``x[0:8]`` or ``img[0:7, 0:7]``.

    ``indices`` is ``None`` when no brackets were written. A bare name may also name a region; the
    build pass decides which.
    """

    name: Name
    indices: tuple[Index, ...] | None
    span: Span


@dataclass(frozen=True)
class ScopeExpr:
    """``{A, x[0:4]}`` — the set of variables a region covers."""

    items: tuple[VariableRef, ...]
    span: Span


# A region in a partition statement: a braced scope, or a bare reference (region name, variable,
# array or slice).
RegionRef = ScopeExpr | VariableRef


@dataclass(frozen=True)
class VariableDecl:
    """One declared name of a ``var`` statement, with its array shape (``()`` for a scalar)."""

    name: Name
    shape: tuple[Number, ...]
    span: Span


@dataclass(frozen=True)
class CircuitStatement:
    """``circuit NAME``."""

    name: Name
    span: Span


@dataclass(frozen=True)
class VarStatement:
    """``var A, x[16] : binary`` — all declared names share one domain."""

    decls: tuple[VariableDecl, ...]
    domain: Call
    span: Span


@dataclass(frozen=True)
class LeafStatement:
    """``leaf A, img ~ binomial(255)`` — the leaf family of each referenced variable."""

    targets: tuple[VariableRef, ...]
    family: Call
    span: Span


@dataclass(frozen=True)
class SizeStatement:
    """``sums K``, ``inputs K`` or ``heads K`` (``keyword`` says which)."""

    keyword: str
    value: Number
    span: Span


@dataclass(frozen=True)
class RegionSizeStatement:
    """``sums {A, B} = 12`` or ``inputs A = 12``: the K of one region, overriding ``sums`` /
    ``inputs`` there (a grown circuit's regions hold different numbers of units)."""

    keyword: str  # "sums" (an internal region) | "inputs" (a leaf region)
    region: RegionRef
    value: Number
    span: Span


@dataclass(frozen=True)
class StructureStatement:
    """``structure random_binary_trees(depth = 3, replicas = 10)`` — a structure generator."""

    generator: Call
    span: Span


@dataclass(frozen=True)
class ProductStatement:
    """``product hadamard`` — how the circuit's partitions combine their parts."""

    kind: Name
    span: Span


@dataclass(frozen=True)
class RegionProductStatement:
    """``product {A, B, C} = hadamard`` — the product kind of one region's partitions, overriding
    the circuit's ``product`` there (HCLT patches under an outer-product circuit)."""

    region: RegionRef
    kind: Name
    span: Span


@dataclass(frozen=True)
class RegionStatement:
    """``region all = {A, B, C, D}`` — a name for a scope."""

    name: Name
    scope: ScopeExpr
    span: Span


@dataclass(frozen=True)
class PartitionStatement:
    """``all -> {A, B} * {C, D}`` — one partition of ``region`` into ``parts``."""

    region: RegionRef
    parts: tuple[RegionRef, ...]
    span: Span


@dataclass(frozen=True)
class LatentStatement:
    """``latent z1 = {A, B}`` — names the K-state latent variable of one region."""

    name: Name
    region: RegionRef
    span: Span


@dataclass(frozen=True)
class LatentGeneratorStatement:
    """``latent patches(over = img, size = [7, 7])`` — one latent per region a generator names."""

    generator: Call
    span: Span


Statement = (
    CircuitStatement
    | VarStatement
    | LeafStatement
    | SizeStatement
    | RegionSizeStatement
    | StructureStatement
    | ProductStatement
    | RegionProductStatement
    | RegionStatement
    | PartitionStatement
    | LatentStatement
    | LatentGeneratorStatement
)


@dataclass(frozen=True)
class Program:
    """A parsed ``.pc`` file: its statements in source order, plus the text for diagnostics."""

    filename: str
    statements: tuple[Statement, ...]
    source: str = field(default="", compare=False, repr=False)

    @property
    def sources(self) -> dict[str, str]:
        """The ``{filename: text}`` map that ``Diagnostic.format`` needs to print source lines."""
        return {self.filename: self.source}
