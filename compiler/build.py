"""Program to region graph: name resolution, semantic checks and structure construction.

``build_region_graph`` reads a parsed ``Program`` and returns the ``RegionGraph`` it describes,
together with every semantic error it found (unknown or duplicate names, indices out of range,
leaf families that do not fit their variable's domain, bad sizes, bad generator arguments, ...).
It checks names, types and arguments; whether the structure is a valid smooth and decomposable
circuit is ``compiler.verify``'s job.

    >>> from einc.grammar.parser import parse
    >>> text = "var A, B : binary\\nleaf A, B ~ bernoulli\\n{A, B} -> A * B\\n"
    >>> graph, diagnostics = build_region_graph(parse(text, "ab.pc"))
    >>> diagnostics, [graph.scope_names(r.scope) for r in graph.regions]
    ([], ['{A, B}', '{A}', '{B}'])

Variables are numbered in declaration order with arrays flattened row-major; a variable's data
columns follow the same order (a ``real(d)`` variable takes d consecutive columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath

from einc.compiler import size
from einc.compiler.latent_regions import resolve_latents
from einc.compiler.region_products import partition_kinds, product_kind, resolve_region_products
from einc.compiler.region_sizes import resolve_region_sizes
from einc.compiler.leaves import leaf_families
from einc.compiler.scopes import Scopes
from einc.compiler.structures import generate
from einc.ir.diagnostics import Diagnostic, Note, Span
from einc.ir.program import (
    CircuitStatement,
    LeafStatement,
    PartitionStatement,
    ProductStatement,
    Program,
    RegionStatement,
    SizeStatement,
    StructureStatement,
    VarStatement,
)
from einc.ir.products import DEFAULT_PRODUCT
from einc.ir.region_graph import (
    LeafFamily,
    Partition,
    Region,
    RegionGraph,
    RegionId,
    Scope,
    Variable,
    region_sort_key,
)

DEFAULT_SUMS = 10
DEFAULT_HEADS = 1


def build_region_graph(
    program: Program, limits: size.SizeLimits | None = None
) -> tuple[RegionGraph | None, list[Diagnostic]]:
    """Resolve ``program`` into a region graph; return it and every semantic error found.

    The graph is ``None`` whenever there is an error: a graph is only handed on when each of its
    variables has a domain and a fitting leaf family and each of its scopes resolved. The
    returned graph is not yet verified (see ``compiler.verify.verify``).

    Before declaring variables or running a generator, the size of what it would build is
    estimated from its arguments; one over ``limits`` raises ``ResourceError`` at once, located at
    the declaration or the structure statement (nothing absurd is attempted).
    """
    return _Builder(program, limits or size.SizeLimits()).build()


def sort_diagnostics(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Source order (stable; diagnostics without a location last), as a reader meets them."""
    return sorted(
        diagnostics,
        key=lambda d: (d.span is None, d.span.line if d.span else 0, d.span.col if d.span else 0),
    )


# ---------------------------------------------------------------------------------------------
# The builder: one pass over the program, collecting diagnostics. Names and scopes are
# ``Scopes``'; leaf families, structure generators and latents are tables of their own modules.


@dataclass
class _Builder(Scopes):
    def build(self) -> tuple[RegionGraph | None, list[Diagnostic]]:
        statements = self.program.statements
        name = self.circuit_name([s for s in statements if isinstance(s, CircuitStatement)])
        self.declare([s for s in statements if isinstance(s, VarStatement)])
        families = leaf_families(self, [s for s in statements if isinstance(s, LeafStatement)])
        sizes = self.sizes([s for s in statements if isinstance(s, SizeStatement)])
        product = self.product([s for s in statements if isinstance(s, ProductStatement)])
        if not any(isinstance(s, VarStatement) for s in statements):
            self.sink.error(
                f"{self.program.filename}: the circuit declares no variables; "
                "add e.g. `var A, B : binary`"
            )
        structure = self.structure(statements)
        latents = resolve_latents(self, statements, structure[0] if structure is not None else None)
        region_sizes = resolve_region_sizes(self, statements, structure)
        region_products = resolve_region_products(self, statements, structure)
        if self.sink.has_errors or structure is None:
            return None, sort_diagnostics(self.sink.diagnostics)
        regions, partitions, generator = structure
        partitions = partition_kinds(partitions, region_products, product)
        variables = self.variables(families)
        graph = RegionGraph(
            name=name,
            variables=variables,
            regions=tuple(regions),
            partitions=tuple(partitions),
            sums=sizes["sums"],
            inputs=sizes["inputs"],
            heads=sizes["heads"],
            generator=generator,
            product=product,
            latents=latents,
            region_sizes=region_sizes,
        )
        return graph, sort_diagnostics(self.sink.diagnostics)

    def once(self, statements: Sequence[CircuitStatement | ProductStatement], message: str, note: str) -> None:
        """Report every statement after the first of a kind a file may hold once."""
        for extra in statements[1:]:
            self.sink.error(message, extra.span, Note(note, statements[0].span))

    def circuit_name(self, statements: list[CircuitStatement]) -> str:
        self.once(statements, "the circuit is named twice; a file holds one circuit", "first named here")
        if statements:
            return statements[0].name.text
        return PurePath(self.program.filename).stem or "circuit"

    def variables(self, families: dict[int, LeafFamily]) -> tuple[Variable, ...]:
        variables: list[Variable] = []
        column = 0
        for index, group in enumerate(self.group_of):
            variables.append(
                Variable(
                    index=index,
                    name=group.element_name(index - group.first),
                    domain=group.domain,
                    family=families[index],
                    column=column,
                    span=group.span,
                    family_span=self.family_spans.get(index),
                )
            )
            column += group.domain.columns
        return tuple(variables)

    def sizes(self, statements: list[SizeStatement]) -> dict[str, int]:
        first: dict[str, SizeStatement] = {}
        values: dict[str, int] = {}
        for statement in statements:
            keyword = statement.keyword
            if keyword in first:
                self.sink.error(
                    f"{keyword} is given twice",
                    statement.span,
                    Note("first given here", first[keyword].span),
                )
                continue
            first[keyword] = statement
            number = statement.value
            meaning = {
                "sums": "densities per internal region",
                "inputs": "densities per leaf region",
                "heads": "outputs of the root",
            }[keyword]
            if not number.is_integer or int(number.value) < 1:
                self.sink.error(
                    f"{keyword} (K, the number of {meaning}) must be a whole number of at "
                    f"least 1, found {number.text}",
                    number.span,
                )
                continue
            values[keyword] = int(number.value)
        sums = values.get("sums", DEFAULT_SUMS)
        return {
            "sums": sums,
            "inputs": values.get("inputs", sums),
            "heads": values.get("heads", DEFAULT_HEADS),
        }

    def product(self, statements: list[ProductStatement]) -> str:
        self.once(statements, "product is given twice; a circuit has one product kind", "first given here")
        if not statements:
            return DEFAULT_PRODUCT
        return product_kind(self, statements[0].kind) or DEFAULT_PRODUCT

    def structure(
        self, statements: Sequence[object]
    ) -> tuple[list[Region], list[Partition], str | None] | None:
        structures = [s for s in statements if isinstance(s, StructureStatement)]
        regions = [s for s in statements if isinstance(s, RegionStatement)]
        partitions = [s for s in statements if isinstance(s, PartitionStatement)]
        for extra in structures[1:]:
            self.sink.error(
                "a circuit has one structure generator; found a second",
                extra.span,
                Note("first given here", structures[0].span),
            )
        self.name_regions(regions)
        explicit = self.explicit(regions, partitions)
        if structures and (partitions or regions):
            first_explicit = min(s.span for s in [*regions, *partitions])
            self.sink.error(
                f"a circuit has either a structure generator or explicit regions and partitions, "
                f"not both; found {structures[0].generator.name.text} and "
                f"{len(regions) + len(partitions)} explicit statement"
                f"{'s' if len(regions) + len(partitions) != 1 else ''}",
                structures[0].span,
                Note("first explicit region or partition here", first_explicit),
            )
            return None
        if structures:
            return generate(self, structures[0])
        if not partitions:
            self.sink.error(
                f"{self.program.filename}: the circuit has no structure; add a generator "
                f"(`structure random_binary_trees(depth = 2, replicas = 2)`) or partitions "
                f"(`region -> part * part`)"
            )
            return None
        if explicit is None:
            return None
        regions_out, partitions_out = explicit
        return regions_out, partitions_out, None

    def explicit(
        self, region_statements: list[RegionStatement], statements: list[PartitionStatement]
    ) -> tuple[list[Region], list[Partition]] | None:
        # A region's span is where it is named, else where it first appears.
        spans: dict[Scope, Span] = {}
        names: dict[Scope, str] = {}
        for name, (scope, statement) in self.region_names.items():
            spans.setdefault(scope, statement.span)
            names.setdefault(scope, name)
        seen: dict[tuple[RegionId, tuple[RegionId, ...]], Span] = {}
        partitions: list[Partition] = []
        ok = True
        for statement in statements:
            region = self.region_scope(statement.region)
            parts = [self.region_scope(part) for part in statement.parts]
            if region is None or any(part is None for part in parts):
                ok = False
                continue
            spans.setdefault(region, statement.region.span)
            for part, ref in zip(parts, statement.parts):
                assert part is not None
                spans.setdefault(part, ref.span)
            # Parts in canonical (scope) order: `A * B` and `B * A` are the same partition.
            part_ids = tuple(sorted((part, 0) for part in parts if part is not None))
            key = ((region, 0), part_ids)
            if key in seen:
                self.sink.error(
                    "this partition is given twice",
                    statement.span,
                    Note("first given here", seen[key]),
                )
                continue
            seen[key] = statement.span
            partitions.append(Partition((region, 0), part_ids, statement.span))
        if not ok:
            return None
        regions = [Region(scope, 0, names.get(scope), span) for scope, span in spans.items()]
        regions.sort(key=lambda r: region_sort_key(r.id))
        partitions.sort(key=lambda p: (region_sort_key(p.region), p.parts))
        return regions, partitions
