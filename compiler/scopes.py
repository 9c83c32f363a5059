"""Names and scopes: the variables a ``.pc`` file declares and what its references denote.

``Scopes`` holds the declared variables (each name a scalar or an array, flattened row-major),
the named regions, and the checks every reference goes through (unknown names with suggestions,
indices and slices in range, scalars taking no index). The builder, the leaf-family table, the
structure generators and the latent generators all resolve names here. Sizes are checked as
names are expanded (``check_size``), so a slice of a huge array is refused before it is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from einc.compiler import size
from einc.compiler.binding import did_you_mean
from einc.compiler.family_args import parse_domain
from einc.errors import ResourceError
from einc.ir.diagnostics import Diagnostic, DiagnosticSink, Note, Span
from einc.ir.program import Call, Index, Name, Number, Program, RegionRef, RegionStatement, ScopeExpr, VarStatement, VariableRef
from einc.ir.region_graph import Domain, Scope


@dataclass(frozen=True)
class Group:
    """One declared name: a scalar variable or an array of them (flattened row-major)."""

    name: str
    shape: tuple[int, ...]  # () for a scalar
    first: int  # index of its first variable
    domain: Domain
    span: Span

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def indices(self) -> range:
        return range(self.first, self.first + self.size)

    def element_name(self, offset: int) -> str:
        if not self.shape:
            return self.name
        position = np.unravel_index(offset, self.shape)
        return f"{self.name}[{', '.join(str(int(i)) for i in position)}]"

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}[{dims}]" if self.shape else self.name


@dataclass
class Scopes:
    """The declared names of one program, and the diagnostics found resolving them."""

    program: Program
    limits: size.SizeLimits = field(default_factory=size.SizeLimits)
    sink: DiagnosticSink = field(default_factory=DiagnosticSink)
    groups: dict[str, Group] = field(default_factory=dict)
    group_of: list[Group] = field(default_factory=list)  # variable index -> its group
    region_names: dict[str, tuple[Scope, RegionStatement]] = field(default_factory=dict)
    # Names declared with an invalid domain or shape, and region names whose scope did not
    # resolve: already reported, so references to them fail silently instead of cascading into
    # "unknown variable" errors.
    broken: set[str] = field(default_factory=set)
    referenced: int = 0  # variables named by references so far (explicit scopes, leaf targets)
    family_spans: dict[int, Span] = field(default_factory=dict)  # variable -> its `leaf` family

    def declare(self, statements: list[VarStatement]) -> None:
        next_index = 0
        for statement in statements:
            domain = self.domain(statement.domain)
            for decl in statement.decls:
                shape = self.shape(decl.shape)
                previous = self.groups.get(decl.name.text)
                if previous is not None:
                    self.sink.error(
                        f"variable '{decl.name.text}' is declared twice",
                        decl.span,
                        Note("first declared here", previous.span),
                    )
                    continue
                if domain is None or shape is None:
                    self.broken.add(decl.name.text)
                    continue
                count = next_index + int(np.prod(shape, dtype=object)) if shape else next_index + 1
                what = f"'{decl.name.text}'" if next_index == 0 else f"the variables up to '{decl.name.text}'"
                self.check_size(size.SizeEstimate(count, 0, 0, 0, 0, self.limits.dtype), decl.span, what)
                group = Group(decl.name.text, shape, next_index, domain, decl.span)
                self.groups[group.name] = group
                self.group_of.extend([group] * group.size)
                next_index += group.size

    def shape(self, dims: tuple[Number, ...]) -> tuple[int, ...] | None:
        shape: list[int] = []
        for dim in dims:
            if not dim.is_integer or int(dim.value) < 1:
                self.sink.error(
                    f"an array size must be a whole number of at least 1, found {dim.text}",
                    dim.span,
                )
                return None
            shape.append(int(dim.value))
        return tuple(shape)

    def domain(self, call: Call) -> Domain | None:
        return parse_domain(call, self.sink)

    def unknown_variable(self, name: Name, also: Sequence[str] = ()) -> None:
        known = list(self.groups) + list(also)
        what = "region or variable" if also else "variable"
        listing = f"; declared: {', '.join(known)}" if 0 < len(known) <= 8 else ""
        self.sink.error(
            f"unknown {what} '{name.text}'{listing}" + did_you_mean(name.text, known), name.span
        )

    def resolve(self, ref: VariableRef) -> list[int] | None:
        """The variable indices a reference denotes, row-major; None (reported) if invalid."""
        group = self.groups.get(ref.name.text)
        if group is None:
            if ref.name.text not in self.broken:
                self.unknown_variable(ref.name)
            return None
        if ref.indices is None:
            self.count_references(group.size, ref.span)
            return list(group.indices)
        if not group.shape:
            self.sink.error(
                f"'{group.name}' is a scalar variable and takes no index",
                ref.span,
                Note(f"'{group.name}' declared here", group.span),
            )
            return None
        if len(ref.indices) != len(group.shape):
            dims = len(group.shape)
            self.sink.error(
                f"'{group.name}' has {dims} dimension{'s' if dims != 1 else ''} "
                f"(declared {group.describe()}); "
                f"expected {dims} ind{'ices' if dims != 1 else 'ex'}, found {len(ref.indices)}",
                ref.span,
            )
            return None
        ranges: list[range] = []
        for index, extent in zip(ref.indices, group.shape):
            selected = self.index_range(index, extent, group)
            if selected is None:
                return None
            ranges.append(selected)
        self.count_references(int(np.prod([len(r) for r in ranges], dtype=object)), ref.span)
        # row-major offsets of every selected position, without a Python loop per position
        grids = np.meshgrid(*[np.arange(r.start, r.stop) for r in ranges], indexing="ij")
        offsets = np.ravel_multi_index(tuple(g.ravel() for g in grids), group.shape)
        return (group.first + offsets).tolist()

    def count_references(self, count: int, span: Span) -> None:
        """Explicit scopes list variables one reference at a time: a slice of a huge array is
        short text for a lot of work, so the running total is checked before it is expanded."""
        self.referenced += count
        estimate = size.SizeEstimate(len(self.group_of), 0, 0, self.referenced, 0, self.limits.dtype)
        self.check_size(estimate, span, "the circuit up to this reference")

    def index_range(self, index: Index, size: int, group: Group) -> range | None:
        for number in (index.start, index.stop):
            if number is None:
                continue
            if not number.is_integer:
                self.sink.error(
                    f"an index must be a whole number, found {number.text}", number.span
                )
                return None
        if not index.is_slice:
            assert index.start is not None
            at = int(index.start.value)
            if not 0 <= at < size:
                self.sink.error(
                    f"index {at} out of range for '{group.name}', declared {group.describe()}; "
                    f"expected 0..{size - 1}",
                    index.span,
                    Note(f"'{group.name}' declared here", group.span),
                )
                return None
            return range(at, at + 1)
        start = 0 if index.start is None else int(index.start.value)
        stop = size if index.stop is None else int(index.stop.value)
        if not (0 <= start <= size and 0 <= stop <= size):
            self.sink.error(
                f"slice {start}:{stop} out of range for '{group.name}', declared "
                f"{group.describe()}; "
                f"expected bounds in 0..{size}",
                index.span,
                Note(f"'{group.name}' declared here", group.span),
            )
            return None
        if start >= stop:
            self.sink.error(f"empty slice {start}:{stop}; expected start < stop", index.span)
            return None
        return range(start, stop)

    def subject(self, indices: Sequence[int]) -> str:
        """ "variable 'B'" or "variables x[4], x[5], x[6] and 3 more", for messages."""
        if len(indices) == 1:
            return f"variable '{self.name_of(indices[0])}'"
        return f"variables {self.variable_text(indices)}"

    def variable_text(self, indices: Sequence[int]) -> str:
        """'A', or 'x[4], x[5], x[6] and 9 more' for long lists."""
        names = [self.name_of(i) for i in indices[:3]]
        more = len(indices) - len(names)
        return ", ".join(names) + (f" and {more} more" if more else "")

    def name_of(self, index: int) -> str:
        group = self.group_of[index]
        return group.element_name(index - group.first)

    def scope_text(self, scope: Scope) -> str:
        return "{" + self.variable_text(scope) + "}"

    def scope_of(self, scope: ScopeExpr) -> Scope | None:
        indices: list[int] = []
        seen: set[int] = set()
        ok = True
        for item in scope.items:
            resolved = self.resolve(item)
            if resolved is None:
                ok = False
                continue
            twice = sorted(seen.intersection(resolved))
            if twice:
                self.sink.error(f"the scope lists {self.subject(twice)} twice", item.span)
                ok = False
                continue
            indices.extend(resolved)
            seen.update(resolved)
        return tuple(sorted(indices)) if ok else None

    def region_scope(self, ref: RegionRef) -> Scope | None:
        if isinstance(ref, ScopeExpr):
            return self.scope_of(ref)
        if ref.indices is None and ref.name.text in self.region_names:
            return self.region_names[ref.name.text][0]
        known = ref.name.text in self.groups or ref.name.text in self.broken
        if ref.indices is None and not known:
            self.unknown_variable(ref.name, also=list(self.region_names))
            return None
        resolved = self.resolve(ref)
        return tuple(sorted(resolved)) if resolved is not None else None

    def name_regions(self, statements: list[RegionStatement]) -> None:
        for statement in statements:
            name = statement.name.text
            if name in self.region_names:
                self.sink.error(
                    f"region '{name}' is defined twice",
                    statement.name.span,
                    Note("first defined here", self.region_names[name][1].span),
                )
                continue
            if name in self.groups:
                self.sink.error(
                    f"region name '{name}' is already a variable; choose another name",
                    statement.name.span,
                    Note(f"'{name}' declared here", self.groups[name].span),
                )
                continue
            scope = self.scope_of(statement.scope)
            if scope is not None:
                self.region_names[name] = (scope, statement)
            else:  # its scope's error is reported; partitions naming it would only repeat it
                self.broken.add(name)

    def check_size(self, estimate: size.SizeEstimate, span: Span, what: str) -> None:
        """Stop building (``ResourceError`` at ``span``) when ``estimate`` exceeds the limits."""
        problem = size.limit_problem(estimate, self.limits, what)
        if problem is not None:
            raise ResourceError(
                [Diagnostic(problem, span)], {self.program.filename: self.program.source}
            )
