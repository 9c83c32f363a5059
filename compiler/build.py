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

import difflib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np
from einc.compiler import generators, size
from einc.ir.diagnostics import Diagnostic, DiagnosticSink, Note, ResourceError, Span
from einc.ir.program import (
    Call,
    CircuitStatement,
    Index,
    LatentGeneratorStatement,
    LatentStatement,
    LeafStatement,
    ListValue,
    Name,
    Number,
    PartitionStatement,
    ProductStatement,
    Program,
    RegionRef,
    RegionSizeStatement,
    RegionStatement,
    ScopeExpr,
    SizeStatement,
    StructureStatement,
    Value,
    VariableRef,
    VarStatement,
)
from einc.ir.region_graph import (
    Domain,
    Latent,
    LeafFamily,
    Partition,
    Region,
    RegionGraph,
    RegionId,
    Scope,
    Variable,
    region_sort_key,
)
from einc.ir import neural
from einc.ir.neural import is_neural
from einc.ir.products import DEFAULT_PRODUCT, PRODUCT_KINDS

DEFAULT_SUMS = 10
DEFAULT_HEADS = 1
DEFAULT_MIN_VAR = 1e-4
DEFAULT_MAX_VAR = 10.0

DOMAINS = ("binary", "categorical(n)", "count", "real", "real(d)")
FAMILIES = ("bernoulli", "binomial(N)", "categorical", "indicator", "normal", "poisson",
            "vae(latent, hidden, decoder)")
GENERATORS = ("random_binary_trees", "poon_domingos", "tree")
LATENT_GENERATORS = ("patches",)

# Words people reach for that are not ours, mapped to ours; difflib catches plain misspellings.
_DOMAIN_SYNONYMS = {
    "bool": "binary",
    "boolean": "binary",
    "bit": "binary",
    "int": "count",
    "integer": "count",
    "nat": "count",
    "natural": "count",
    "float": "real",
    "continuous": "real",
    "gaussian": "real",
    "discrete": "categorical",
    "categories": "categorical",
}
_FAMILY_SYNONYMS = {
    "gaussian": "normal",
    "gauss": "normal",
    "multinomial": "categorical",
    "discrete": "categorical",
    "binary": "bernoulli",
    "bool": "bernoulli",
}

_PRODUCT_SYNONYMS = {
    "elementwise": "hadamard",
    "element_wise": "hadamard",
    "cp": "hadamard",
    "einsum": "outer",
    "kronecker": "outer",
}

# The domain kinds each family accepts; size limits (bernoulli: 2 categories, binomial(N):
# N + 1) are checked in _family_fits.
_FAMILY_DOMAINS = {
    "bernoulli": ("binary", "categorical"),
    "categorical": ("binary", "categorical"),
    "binomial": ("binary", "categorical", "count"),
    "indicator": ("binary", "categorical"),
    "poisson": ("binary", "categorical", "count"),
    "normal": ("real",),
    # a neural family fits every domain its decoder fits (ir.neural.resolve_decoder)
    "vae": ("binary", "categorical", "count", "real"),
}
_SUGGESTED_FAMILY = {
    "binary": "bernoulli",
    "categorical": "categorical",
    "count": "poisson",
    "real": "normal",
}


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
# Declared variables


@dataclass(frozen=True)
class _Group:
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


# ---------------------------------------------------------------------------------------------
# Call arguments: one small binder for domains, families and generators


_REQUIRED = object()


@dataclass(frozen=True)
class _Param:
    name: str
    kind: str  # "int" | "number" | "name" | "ints" (a number or a list of them)
    default: object = _REQUIRED


@dataclass(frozen=True)
class _Bound:
    """Bound arguments: the Python value and where it was written (the call, for defaults)."""

    values: dict[str, object]
    spans: dict[str, Span]


def _did_you_mean(
    word: str, candidates: Sequence[str], synonyms: dict[str, str] | None = None
) -> str:
    """`` — did you mean X?`` for a close candidate or a known synonym, else ``""``."""
    synonyms = synonyms or {}
    guess = synonyms.get(word.lower())
    if guess is None:
        close = difflib.get_close_matches(word, [*candidates, *synonyms], n=1, cutoff=0.6)
        guess = synonyms.get(close[0], close[0]) if close else None
    return f" — did you mean {guess}?" if guess else ""


def _one_of(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else "one of " + ", ".join(words)


def _convert(value: Value, kind: str, what: str, sink: DiagnosticSink) -> object | None:
    """A parsed value as the Python value ``kind`` asks for; report and return None if it is not."""
    if kind == "name":
        if isinstance(value, Name):
            return value.text
        sink.error(f"{what} must be a name, found {_value_text(value)}", value.span)
        return None
    if kind == "ints" and isinstance(value, ListValue):
        items = [_convert(item, "int", what, sink) for item in value.items]
        return None if any(i is None for i in items) else tuple(items)
    if isinstance(value, Number):
        if kind == "number":
            return value.value
        if value.is_integer:
            return (value.value,) if kind == "ints" else value.value
    expected = "a whole number" if kind in ("int", "ints") else "a number"
    if kind == "ints":
        expected += " or a list of them, e.g. [7, 4]"
    sink.error(f"{what} must be {expected}, found {_value_text(value)}", value.span)
    return None


def _value_text(value: Value, width: int = 60) -> str:
    """The value as written, cut to ``width`` characters for a one-line message."""
    if isinstance(value, Number):
        text = value.text
    elif isinstance(value, Name):
        text = f"'{value.text}'"
    else:
        text = "[" + ", ".join(_value_text(item, width) for item in value.items[:20]) + "]"
    return text if len(text) <= width else text[: width - 3] + "..."


def _bind(call: Call, params: Sequence[_Param], sink: DiagnosticSink) -> _Bound | None:
    """Match a call's arguments to ``params`` like Python does; report every mismatch."""
    what = call.name.text
    values: dict[str, object] = {}
    spans: dict[str, Span] = {}
    ok = True
    seen_keyword = False
    # Parameters a misspelt keyword was matched to: "did you mean depth?" already says that
    # depth is missing, so do not report it twice.
    suggested: set[str] = set()
    for position, argument in enumerate(call.arguments):
        if argument.keyword is None:
            if seen_keyword:
                sink.error(
                    f"a positional argument cannot follow keyword arguments in {what}(...)",
                    argument.span,
                )
                ok = False
                continue
            if position >= len(params):
                takes = f"takes {len(params)} argument{'s' if len(params) != 1 else ''}"
                sink.error(f"{what} {takes}, found {len(call.arguments)}", argument.span)
                ok = False
                continue
            param = params[position]
        else:
            seen_keyword = True
            names = [p.name for p in params]
            matches = [p for p in params if p.name == argument.keyword.text]
            if not matches:
                expected = _one_of(names) if names else "no arguments"
                suggested.update(difflib.get_close_matches(argument.keyword.text, names, n=1))
                sink.error(
                    f"unknown argument '{argument.keyword.text}' of {what}; expected {expected}"
                    + _did_you_mean(argument.keyword.text, names),
                    argument.keyword.span,
                )
                ok = False
                continue
            param = matches[0]
        if param.name in spans:
            sink.error(
                f"argument '{param.name}' of {what} given twice",
                argument.span,
                Note("first given here", spans[param.name]),
            )
            ok = False
            continue
        converted = _convert(argument.value, param.kind, param.name, sink)
        spans[param.name] = argument.value.span
        if converted is None:
            ok = False
            continue
        values[param.name] = converted
    for param in params:
        if param.name in spans:
            continue
        if param.default is _REQUIRED:
            if param.name not in suggested:
                sink.error(f"{what} needs argument '{param.name}'", call.span)
            ok = False
            continue
        values[param.name] = param.default
        spans[param.name] = call.span
    return _Bound(values, spans) if ok else None


# ---------------------------------------------------------------------------------------------
# The builder: one pass over the program, collecting diagnostics


@dataclass
class _Builder:
    program: Program
    limits: size.SizeLimits = field(default_factory=size.SizeLimits)
    sink: DiagnosticSink = field(default_factory=DiagnosticSink)
    groups: dict[str, _Group] = field(default_factory=dict)
    group_of: list[_Group] = field(default_factory=list)  # variable index -> its group
    region_names: dict[str, tuple[Scope, RegionStatement]] = field(default_factory=dict)
    # Names declared with an invalid domain or shape: already reported, so references to them
    # fail silently instead of cascading into "unknown variable" errors.
    broken: set[str] = field(default_factory=set)
    referenced: int = 0  # variables named by references so far (explicit scopes, leaf targets)
    family_spans: dict[int, Span] = field(default_factory=dict)  # variable -> its `leaf` family

    def build(self) -> tuple[RegionGraph | None, list[Diagnostic]]:
        statements = self.program.statements
        name = self._circuit_name([s for s in statements if isinstance(s, CircuitStatement)])
        self._declare([s for s in statements if isinstance(s, VarStatement)])
        families = self._leaf_families([s for s in statements if isinstance(s, LeafStatement)])
        sizes = self._sizes([s for s in statements if isinstance(s, SizeStatement)])
        product = self._product([s for s in statements if isinstance(s, ProductStatement)])
        if not any(isinstance(s, VarStatement) for s in statements):
            self.sink.error(
                f"{self.program.filename}: the circuit declares no variables; "
                "add e.g. `var A, B : binary`"
            )
        structure = self._structure(statements)
        latents = self._latents(statements, structure[0] if structure is not None else None)
        region_sizes = self._region_sizes(statements, structure)
        if self.sink.has_errors or structure is None:
            return None, sort_diagnostics(self.sink.diagnostics)
        regions, partitions, generator = structure
        variables = self._variables(families)
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

    # circuit ---------------------------------------------------------------------------------

    def _circuit_name(self, statements: list[CircuitStatement]) -> str:
        for extra in statements[1:]:
            self.sink.error(
                "the circuit is named twice; a file holds one circuit",
                extra.span,
                Note("first named here", statements[0].span),
            )
        if statements:
            return statements[0].name.text
        return PurePath(self.program.filename).stem or "circuit"

    # variables -------------------------------------------------------------------------------

    def _declare(self, statements: list[VarStatement]) -> None:
        next_index = 0
        for statement in statements:
            domain = self._domain(statement.domain)
            for decl in statement.decls:
                shape = self._shape(decl.shape)
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
                self._check_size(size.SizeEstimate(count, 0, 0, 0, 0, self.limits.dtype), decl.span, what)
                group = _Group(decl.name.text, shape, next_index, domain, decl.span)
                self.groups[group.name] = group
                self.group_of.extend([group] * group.size)
                next_index += group.size

    def _shape(self, dims: tuple[Number, ...]) -> tuple[int, ...] | None:
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

    def _domain(self, call: Call) -> Domain | None:
        kind = call.name.text
        if kind in ("binary", "count"):
            bound = _bind(call, (), self.sink)
            return Domain(kind, 2 if kind == "binary" else 1) if bound else None
        if kind == "categorical":
            bound = _bind(call, (_Param("n", "int"),), self.sink)
            if bound is None:
                return None
            n = int(bound.values["n"])  # type: ignore[call-overload]
            if n < 2:
                self.sink.error(
                    f"categorical needs at least 2 categories, found {n}", bound.spans["n"]
                )
                return None
            return Domain("categorical", n)
        if kind == "real":
            bound = _bind(call, (_Param("d", "int", 1),), self.sink)
            if bound is None:
                return None
            d = int(bound.values["d"])  # type: ignore[call-overload]
            if d < 1:
                self.sink.error(f"real(d) needs d of at least 1, found {d}", bound.spans["d"])
                return None
            return Domain("real", d)
        self.sink.error(
            f"unknown domain '{kind}'; expected {_one_of(DOMAINS)}"
            + _did_you_mean(kind, ("binary", "categorical", "count", "real"), _DOMAIN_SYNONYMS),
            call.name.span,
        )
        return None

    def _variables(self, families: dict[int, LeafFamily]) -> tuple[Variable, ...]:
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

    # references: A, x, x[3], x[0:8], img[0:7, 0:7] --------------------------------------------

    def _unknown_variable(self, name: Name, also: Sequence[str] = ()) -> None:
        known = list(self.groups) + list(also)
        what = "region or variable" if also else "variable"
        listing = f"; declared: {', '.join(known)}" if 0 < len(known) <= 8 else ""
        self.sink.error(
            f"unknown {what} '{name.text}'{listing}" + _did_you_mean(name.text, known), name.span
        )

    def _resolve(self, ref: VariableRef) -> list[int] | None:
        """The variable indices a reference denotes, row-major; None (reported) if invalid."""
        group = self.groups.get(ref.name.text)
        if group is None:
            if ref.name.text not in self.broken:
                self._unknown_variable(ref.name)
            return None
        if ref.indices is None:
            self._count_references(group.size, ref.span)
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
            selected = self._index_range(index, extent, group)
            if selected is None:
                return None
            ranges.append(selected)
        self._count_references(int(np.prod([len(r) for r in ranges], dtype=object)), ref.span)
        # row-major offsets of every selected position, without a Python loop per position
        grids = np.meshgrid(*[np.arange(r.start, r.stop) for r in ranges], indexing="ij")
        offsets = np.ravel_multi_index(tuple(g.ravel() for g in grids), group.shape)
        return (group.first + offsets).tolist()

    def _count_references(self, count: int, span: Span) -> None:
        """Explicit scopes list variables one reference at a time: a slice of a huge array is
        short text for a lot of work, so the running total is checked before it is expanded."""
        self.referenced += count
        estimate = size.SizeEstimate(len(self.group_of), 0, 0, self.referenced, 0, self.limits.dtype)
        self._check_size(estimate, span, "the circuit up to this reference")

    def _index_range(self, index: Index, size: int, group: _Group) -> range | None:
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

    def _subject(self, indices: Sequence[int]) -> str:
        """ "variable 'B'" or "variables x[4], x[5], x[6] and 3 more", for messages."""
        if len(indices) == 1:
            return f"variable '{self._name_of(indices[0])}'"
        return f"variables {self._variable_text(indices)}"

    def _variable_text(self, indices: Sequence[int]) -> str:
        """'A', or 'x[4], x[5], x[6] and 9 more' for long lists."""
        names = [self._name_of(i) for i in indices[:3]]
        more = len(indices) - len(names)
        return ", ".join(names) + (f" and {more} more" if more else "")

    def _name_of(self, index: int) -> str:
        group = self.group_of[index]
        return group.element_name(index - group.first)

    # leaf families ---------------------------------------------------------------------------

    def _leaf_families(self, statements: list[LeafStatement]) -> dict[int, LeafFamily]:
        families: dict[int, LeafFamily] = {}
        given_at: dict[int, Span] = {}
        for statement in statements:
            family, categories = self._family(statement.family)
            for target in statement.targets:
                indices = self._resolve(target)
                if indices is None:
                    continue
                again = [i for i in indices if i in given_at]
                if again:
                    self.sink.error(
                        f"{self._subject(again)} already "
                        f"{'has' if len(again) == 1 else 'have'} a leaf family",
                        target.span,
                        Note("first given here", given_at[again[0]]),
                    )
                    continue
                for i in indices:
                    given_at[i] = target.span
                    self.family_spans[i] = statement.family.span
                if family is None:
                    continue
                if is_neural(family):
                    families.update(self._neural_families(family, statement.family, indices))
                    continue
                self._check_fit(family, categories, statement.family, target, indices)
                families.update((i, family) for i in indices)
        missing = [i for i in range(len(self.group_of)) if i not in given_at]
        for group, members in itertools.groupby(missing, key=lambda i: self.group_of[i]):
            members_list = list(members)
            suggestion = _SUGGESTED_FAMILY[group.domain.kind]
            if group.shape and len(members_list) == group.size:
                subject = f"the variables of '{group.name}' have"
            else:
                have = "has" if len(members_list) == 1 else "have"
                subject = f"{self._subject(members_list)} {have}"
            self.sink.error(
                f"{subject} no leaf family; add e.g. `leaf {group.name} ~ {suggestion}`",
                group.span,
            )
        return families

    def _family(self, call: Call) -> tuple[LeafFamily | None, int | None]:
        """The normalised family, and the category count ``categorical(n)`` insists on."""
        family = self._family_of(call)
        if call.name.text == "categorical" and call.arguments and family is not None:
            bound = _bind(call, (_Param("n", "int", None),), DiagnosticSink())
            return family, int(bound.values["n"]) if bound else None  # type: ignore[call-overload]
        return family, None

    def _family_of(self, call: Call) -> LeafFamily | None:
        name = call.name.text
        if name in ("bernoulli", "indicator", "poisson"):
            return LeafFamily(name) if _bind(call, (), self.sink) else None
        if name == "categorical":
            # n comes from the domain; an explicit categorical(n) is checked against it.
            bound = _bind(call, (_Param("n", "int", None),), self.sink)
            return LeafFamily("categorical") if bound else None
        if name == "binomial":
            bound = _bind(call, (_Param("n", "int"),), self.sink)
            if bound is None:
                return None
            n = int(bound.values["n"])  # type: ignore[call-overload]
            if n < 1:
                self.sink.error(f"binomial(N) needs N of at least 1, found {n}", bound.spans["n"])
                return None
            return LeafFamily("binomial", (("n", float(n)),))
        if name == "normal":
            params = (
                _Param("min_var", "number", DEFAULT_MIN_VAR),
                _Param("max_var", "number", DEFAULT_MAX_VAR),
            )
            bound = _bind(call, params, self.sink)
            if bound is None:
                return None
            low, high = float(bound.values["min_var"]), float(bound.values["max_var"])  # type: ignore[arg-type]
            if not low > 0:
                self.sink.error(f"min_var must be positive, found {low:g}", bound.spans["min_var"])
                return None
            if not high >= low:
                self.sink.error(
                    f"max_var must be at least min_var ({low:g}), found {high:g}",
                    bound.spans["max_var"],
                )
                return None
            return LeafFamily("normal", (("min_var", low), ("max_var", high)))
        if name == "vae":
            return self._vae(call)
        self.sink.error(
            f"unknown leaf family '{name}'; expected {_one_of(FAMILIES)}"
            + _did_you_mean(name, list(_FAMILY_DOMAINS), _FAMILY_SYNONYMS),
            call.name.span,
        )
        return None

    def _vae(self, call: Call) -> LeafFamily | None:
        """``vae(latent, hidden, decoder)``, its decoder still unresolved (it depends on the domain
        of each variable the statement names: ``_neural_families``)."""
        params = (
            _Param("latent", "int", neural.DEFAULT_LATENT),
            _Param("hidden", "ints", neural.DEFAULT_HIDDEN),
            _Param("decoder", "name", None),
        )
        bound = _bind(call, params, self.sink)
        if bound is None:
            return None
        latent = int(bound.values["latent"])  # type: ignore[call-overload]
        hidden = tuple(int(h) for h in bound.values["hidden"])  # type: ignore[attr-defined]
        decoder = bound.values["decoder"]
        ok = True
        if latent < 1:
            self.sink.error(f"latent (the size of z) must be at least 1, found {latent}", bound.spans["latent"])
            ok = False
        if any(h < 1 for h in hidden):
            self.sink.error(
                f"hidden sizes must be at least 1, found {[*hidden]}; write hidden = [] for "
                f"networks without hidden layers",
                bound.spans["hidden"],
            )
            ok = False
        if decoder is not None and decoder not in neural.DECODERS:
            self.sink.error(
                f"unknown decoder '{decoder}'; expected {_one_of(neural.DECODERS)}"
                + _did_you_mean(str(decoder), neural.DECODERS, _FAMILY_SYNONYMS),
                bound.spans["decoder"],
            )
            ok = False
        if not ok:
            return None
        args: tuple = (("latent", float(latent)), ("hidden", hidden))
        if decoder is not None:
            args += (("decoder", LeafFamily(str(decoder))),)
        return LeafFamily("vae", args)

    def _neural_families(
        self, family: LeafFamily, call: Call, indices: list[int]
    ) -> dict[int, LeafFamily]:
        """A neural family per variable, its decoder resolved for the variable's domain; a
        decoder that does not fit is reported at the decoder argument (or the call)."""
        written = dict(family.args).get("decoder")
        span = next(
            (a.value.span for a in call.arguments if a.keyword and a.keyword.text == "decoder"),
            call.span,
        )
        out: dict[int, LeafFamily] = {}
        reported: set[Domain] = set()
        for i in indices:
            group = self.group_of[i]
            decoder, problem = neural.resolve_decoder(written.name if written else None, group.domain,
                                                      f"'{group.name}'")
            if decoder is None:
                if group.domain not in reported:
                    reported.add(group.domain)
                    self.sink.error(
                        str(problem),
                        span,
                        Note(f"'{group.name}' declared here", group.span),
                    )
                continue
            out[i] = neural.vae_family(int(family.arg("latent")), family.arg("hidden"), decoder)
        return out

    def _check_fit(
        self,
        family: LeafFamily,
        categories: int | None,
        call: Call,
        target: VariableRef,
        indices: list[int],
    ) -> None:
        misfits = [
            i for i in indices if not _family_fits(family, categories, self.group_of[i].domain)
        ]
        if not misfits:
            return
        group = self.group_of[misfits[0]]
        subject = (
            f"'{group.name}'"
            if len(misfits) == group.size and target.indices is None
            else self._variable_text(misfits)
        )
        self.sink.error(
            f"leaf family {family} does not fit {subject}; expected "
            f"{_fitting_domains(family, categories)}, found {group.domain}",
            call.span,
            Note(f"'{group.name}' declared here", group.span),
        )

    # sizes -----------------------------------------------------------------------------------

    def _sizes(self, statements: list[SizeStatement]) -> dict[str, int]:
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

    # product kind ----------------------------------------------------------------------------

    def _product(self, statements: list[ProductStatement]) -> str:
        for extra in statements[1:]:
            self.sink.error(
                "product is given twice; a circuit has one product kind",
                extra.span,
                Note("first given here", statements[0].span),
            )
        if not statements:
            return DEFAULT_PRODUCT
        kind = statements[0].kind
        if kind.text not in PRODUCT_KINDS:
            self.sink.error(
                f"unknown product kind '{kind.text}'; expected {_one_of(list(PRODUCT_KINDS))}"
                + _did_you_mean(kind.text, list(PRODUCT_KINDS), _PRODUCT_SYNONYMS),
                kind.span,
            )
            return DEFAULT_PRODUCT
        return kind.text

    # latent variables ------------------------------------------------------------------------

    def _latents(self, statements: Sequence[object], regions: list[Region] | None) -> tuple[Latent, ...]:
        """Each declared latent resolved to its region, in declaration order.

        A latent names a scope; the region with that scope must exist (generated structures may
        hold several copies of one scope: the first is taken, and verify reports that the
        induced trees through the others avoid it). Whether summing the latent out is sound is
        ``compiler.verify``'s check.
        """
        declared: list[tuple[str, Scope, Span, Span]] = []  # name, scope, statement, name span
        for statement in statements:
            if isinstance(statement, LatentStatement):
                scope = self._region_scope(statement.region)
                if scope is not None:
                    declared.append((statement.name.text, scope, statement.span, statement.name.span))
            elif isinstance(statement, LatentGeneratorStatement):
                declared += self._latent_generator(statement)
        if regions is None:
            return ()  # the structure did not build; its errors are reported
        copies: dict[Scope, list[RegionId]] = {}
        for region in regions:
            copies.setdefault(region.scope, []).append(region.id)
        first_named: dict[str, Span] = {}
        latents: list[Latent] = []
        for name, scope, span, name_span in declared:
            if name in first_named:
                self.sink.error(
                    f"latent '{name}' is declared twice", name_span, Note("first declared here", first_named[name])
                )
                continue
            first_named[name] = name_span
            ids = copies.get(scope)
            if not ids:
                self.sink.error(
                    f"latent '{name}' names {self._scope_text(scope)}, which is not a region of the "
                    f"circuit; expected the scope of a region (a partition's region or one of its parts)",
                    span,
                )
                continue
            latents.append(Latent(name, min(ids, key=lambda region_id: region_id[1]), span))
        return tuple(latents)

    def _region_sizes(self, statements: Sequence[object], structure: tuple | None) -> tuple[tuple[RegionId, int], ...]:
        """``sums R = K`` / ``inputs R = K``: one region's own K (a grown circuit's regions hold
        different numbers of units). A scope with several generated copies names the first."""
        given = [(s, self._region_scope(s.region)) for s in statements if isinstance(s, RegionSizeStatement)]
        if structure is None:
            return ()
        regions, partitions, _generator = structure
        internal = {p.region for p in partitions}
        first: dict[Scope, RegionId] = {}
        for region in regions:
            if region.scope not in first or region.copy < first[region.scope][1]:
                first[region.scope] = region.id
        root = tuple(range(len(self.group_of)))
        sizes: dict[RegionId, int] = {}
        where: dict[RegionId, Span] = {}
        for statement, scope in given:
            if scope is None:
                continue  # reported by _region_scope
            number, keyword = statement.value, statement.keyword
            region = first.get(scope)
            leaf_or_internal = "inputs" if region not in internal else "sums"
            if region is None:
                self.sink.error(f"{keyword} names {self._scope_text(scope)}, which is not a region of the circuit",
                                statement.span)
            elif scope == root:
                self.sink.error(f"{keyword} names the root, whose K is the number of heads; write `heads "
                                f"{number.text}`", statement.span)
            elif keyword != leaf_or_internal:
                kind = "a leaf region" if leaf_or_internal == "inputs" else "an internal region"
                self.sink.error(f"{self._scope_text(scope)} is {kind}: its K is given by `{leaf_or_internal} "
                                f"REGION = K`, not `{keyword}`", statement.span)
            elif not number.is_integer or int(number.value) < 1:
                self.sink.error(f"{keyword} of {self._scope_text(scope)} (its K) must be a whole number of at least "
                                f"1, found {number.text}", number.span)
            elif region in sizes:
                self.sink.error(f"the K of {self._scope_text(scope)} is given twice", statement.span,
                                Note("first given here", where[region]))
            else:
                sizes[region] = int(number.value)
                where[region] = statement.span
        return tuple(sorted(sizes.items(), key=lambda item: region_sort_key(item[0])))

    def _scope_text(self, scope: Scope) -> str:
        return "{" + self._variable_text(scope) + "}"

    def _latent_generator(self, statement: LatentGeneratorStatement) -> list[tuple[str, Scope, Span, Span]]:
        call = statement.generator
        if call.name.text not in LATENT_GENERATORS:
            self.sink.error(
                f"unknown latent generator '{call.name.text}'; expected {_one_of(LATENT_GENERATORS)}, "
                f"or a single latent `latent NAME = SCOPE`" + _did_you_mean(call.name.text, LATENT_GENERATORS),
                call.name.span,
            )
            return []
        return self._patches(call, statement.span)

    def _patches(self, call: Call, span: Span) -> list[tuple[str, Scope, Span, Span]]:
        """``patches(over = img, size = [h, w])``: one latent per h x w block tiling the 2-D array
        ``over``, named ``patches[r, c]`` by block row and column, declared row-major."""
        bound = _bind(call, (_Param("over", "name", None), _Param("size", "ints")), self.sink)
        if bound is None:
            return []
        grids = [g for g in self.groups.values() if len(g.shape) == 2]
        over = bound.values["over"]
        if over is None:
            if len(grids) != 1:
                self.sink.error(
                    "patches needs `over = NAME`, the 2-D array variable it tiles (it may be left "
                    "out only when the circuit has exactly one 2-D array)",
                    call.span,
                )
                return []
            over = grids[0].name
        group = self.groups.get(str(over))
        if group is None:
            if str(over) not in self.broken:
                self._unknown_variable(Name(str(over), bound.spans["over"]))
            return []
        if len(group.shape) != 2:
            self.sink.error(
                f"patches tiles a 2-D array; '{group.name}' is declared {group.describe()}",
                bound.spans["over"],
                Note(f"'{group.name}' declared here", group.span),
            )
            return []
        size = tuple(int(v) for v in bound.values["size"])  # type: ignore[attr-defined]
        if len(size) == 1:
            size = size * 2  # `size = 7`: square patches
        height, width = group.shape
        if len(size) != 2 or any(s < 1 for s in size) or height % size[0] or width % size[1]:
            self.sink.error(
                f"patch size {list(size)} does not tile '{group.name}' ({height}x{width}); expected "
                f"[h, w] with h dividing {height} and w dividing {width}",
                bound.spans["size"],
            )
            return []
        grid = np.arange(group.first, group.first + group.size).reshape(group.shape)
        out = []
        for row in range(height // size[0]):
            for column in range(width // size[1]):
                block = grid[row * size[0] : (row + 1) * size[0], column * size[1] : (column + 1) * size[1]]
                scope = tuple(int(v) for v in np.sort(block, axis=None))
                out.append((f"{call.name.text}[{row}, {column}]", scope, span, call.name.span))
        return out

    # structure -------------------------------------------------------------------------------

    def _structure(
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
        self._name_regions(regions)
        explicit = self._explicit(regions, partitions)
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
            return self._generate(structures[0])
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

    def _scope_of(self, scope: ScopeExpr) -> Scope | None:
        indices: list[int] = []
        seen: set[int] = set()
        ok = True
        for item in scope.items:
            resolved = self._resolve(item)
            if resolved is None:
                ok = False
                continue
            twice = sorted(seen.intersection(resolved))
            if twice:
                self.sink.error(f"the scope lists {self._subject(twice)} twice", item.span)
                ok = False
                continue
            indices.extend(resolved)
            seen.update(resolved)
        return tuple(sorted(indices)) if ok else None

    def _name_regions(self, statements: list[RegionStatement]) -> None:
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
            scope = self._scope_of(statement.scope)
            if scope is not None:
                self.region_names[name] = (scope, statement)

    def _region_scope(self, ref: RegionRef) -> Scope | None:
        if isinstance(ref, ScopeExpr):
            return self._scope_of(ref)
        if ref.indices is None and ref.name.text in self.region_names:
            return self.region_names[ref.name.text][0]
        known = ref.name.text in self.groups or ref.name.text in self.broken
        if ref.indices is None and not known:
            self._unknown_variable(ref.name, also=list(self.region_names))
            return None
        resolved = self._resolve(ref)
        return tuple(sorted(resolved)) if resolved is not None else None

    def _explicit(
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
            region = self._region_scope(statement.region)
            parts = [self._region_scope(part) for part in statement.parts]
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

    def _generate(
        self, statement: StructureStatement
    ) -> tuple[list[Region], list[Partition], str | None] | None:
        call = statement.generator
        builders: dict[str, Callable[[Call], tuple[list[Region], list[Partition], str] | None]]
        builders = {
            "random_binary_trees": self._random_binary_trees,
            "poon_domingos": self._poon_domingos,
            "tree": self._tree,
        }
        builder = builders.get(call.name.text)
        if builder is None:
            self.sink.error(
                f"unknown structure generator '{call.name.text}'; expected {_one_of(GENERATORS)}"
                + _did_you_mean(call.name.text, GENERATORS),
                call.name.span,
            )
            return None
        if not self.group_of:
            return None  # no variables; already reported where they were declared
        built = builder(call)
        if built is None:
            return None
        regions, partitions, description = built
        # Generated regions and partitions point at the structure statement, so that a
        # structural error in generated code is still reported at a line of the file.
        span = statement.span
        regions = [Region(r.scope, r.copy, r.name, span) for r in regions]
        partitions = [Partition(p.region, p.parts, span) for p in partitions]
        return regions, partitions, description

    def _check_size(self, estimate: size.SizeEstimate, span: Span, what: str) -> None:
        """Stop building (``ResourceError`` at ``span``) when ``estimate`` exceeds the limits."""
        problem = size.limit_problem(estimate, self.limits, what)
        if problem is not None:
            raise ResourceError(
                [Diagnostic(problem, span)], {self.program.filename: self.program.source}
            )

    def _report_generator_errors(
        self, call: Call, bound: _Bound, errors: list[generators.GeneratorArgumentError]
    ) -> bool:
        for error in errors:
            self.sink.error(error.message, bound.spans.get(error.argument, call.span))
        return not errors

    def _random_binary_trees(self, call: Call) -> tuple[list[Region], list[Partition], str] | None:
        params = (_Param("depth", "int"), _Param("replicas", "int"), _Param("seed", "int", 0))
        bound = _bind(call, params, self.sink)
        if bound is None:
            return None
        depth, replicas, seed = (int(bound.values[k]) for k in ("depth", "replicas", "seed"))  # type: ignore[call-overload]
        errors = generators.check_random_binary_trees(len(self.group_of), depth, replicas, seed)
        if not self._report_generator_errors(call, bound, errors):
            return None
        estimate = size.estimate_random_binary_trees(
            len(self.group_of), depth, replicas, self.limits.dtype
        )
        self._check_size(
            estimate,
            call.span,
            f"random_binary_trees(depth = {depth}, replicas = {replicas}) over "
            f"{len(self.group_of):,} variables",
        )
        regions, partitions = generators.random_binary_trees(
            len(self.group_of), depth, replicas, seed
        )
        description = f"random_binary_trees(depth={depth}, replicas={replicas}, seed={seed})"
        return regions, partitions, description

    def _tree(self, call: Call) -> tuple[list[Region], list[Partition], str] | None:
        bound = _bind(call, (_Param("parents", "ints"),), self.sink)
        if bound is None:
            return None
        parents = tuple(int(p) for p in bound.values["parents"])  # type: ignore[attr-defined]
        names = [self._name_of(i) for i in range(len(self.group_of))]
        errors = generators.check_tree(parents, names)
        if not self._report_generator_errors(call, bound, errors):
            return None
        regions, partitions = generators.tree(parents)
        root = parents.index(-1)
        description = f"tree(parents=[{len(parents)} entries], root={names[root]})"
        return regions, partitions, description

    def _poon_domingos(self, call: Call) -> tuple[list[Region], list[Partition], str] | None:
        params = (
            _Param("delta", "ints"),
            _Param("axes", "name", "both"),
            _Param("over", "name", None),
        )
        bound = _bind(call, params, self.sink)
        if bound is None:
            return None
        over = bound.values["over"]
        grids = [g for g in self.groups.values() if len(g.shape) == 2]
        if over is None:
            if len(self.groups) != 1 or not grids:
                self.sink.error(
                    "poon_domingos needs `over = NAME`, the 2-D array variable it splits "
                    "(it may be left out only when the circuit's one variable is a 2-D array)",
                    call.span,
                )
                return None
            over = grids[0].name
        group = self.groups.get(str(over))
        if group is None:
            self._unknown_variable(Name(str(over), bound.spans["over"]))
            return None
        others = [g.name for g in self.groups.values() if g is not group]
        if others:
            self.sink.error(
                f"poon_domingos over '{group.name}' needs '{group.name}' to be the circuit's only "
                f"variables; also declared: {', '.join(others)}",
                bound.spans["over"],
            )
            return None
        grid = np.arange(group.first, group.first + group.size).reshape(group.shape or (1,))
        deltas = tuple(int(d) for d in bound.values["delta"])  # type: ignore[attr-defined]
        axes = str(bound.values["axes"])
        errors = generators.check_poon_domingos(grid, deltas, axes, name=f"'{group.name}'")
        if not self._report_generator_errors(call, bound, errors):
            return None
        height, width = grid.shape
        allowed = generators.allowed_axes(axes)
        estimate = size.estimate_poon_domingos(
            height, width, deltas if 0 in allowed else (), deltas if 1 in allowed else (),
            self.limits.dtype, budget=3 * self.limits.partition_budget,
        )
        shown_deltas = ", ".join(str(d) for d in deltas)
        self._check_size(
            estimate,
            call.span,
            f"poon_domingos(delta = [{shown_deltas}], axes = {axes}) over the {height}x{width} grid",
        )
        regions, partitions = generators.poon_domingos(grid, deltas, axes, name=f"'{group.name}'")
        shown = ", ".join(str(d) for d in deltas)
        description = f"poon_domingos(delta=[{shown}], axes={axes}, over={group.name})"
        return regions, partitions, description


def _family_fits(family: LeafFamily, categories_required: int | None, domain: Domain) -> bool:
    if domain.kind not in _FAMILY_DOMAINS[family.name]:
        return False
    categories = 2 if domain.kind == "binary" else domain.size
    if family.name == "bernoulli":
        return categories == 2
    if family.name == "binomial" and domain.kind != "count":
        return categories <= family.arg("n") + 1
    if family.name == "categorical" and categories_required is not None:
        return categories == categories_required
    return True


def _fitting_domains(family: LeafFamily, categories_required: int | None) -> str:
    if family.name == "bernoulli":
        return "a binary or categorical(2) variable"
    if family.name == "binomial":
        n = int(family.arg("n"))
        return f"a binary, count or categorical(n) variable with n at most N + 1 = {n + 1}"
    if family.name == "categorical":
        if categories_required is not None:
            return f"a categorical({categories_required}) variable"
        return "a binary or categorical(n) variable"
    if family.name == "indicator":
        return "a binary or categorical(n) variable"
    if family.name == "poisson":
        return "a binary, categorical(n) or count variable"
    return "a real variable"
