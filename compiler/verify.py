"""Structural verification of a region graph: is it a valid smooth and decomposable circuit?

``verify`` is a pass: it returns diagnostics (never raises, never a boolean), each naming the
partition or region, the scopes and the offending variables, located at the source span of the
partition or region when it has one. The caller decides whether to raise.

    >>> from einc.ir.region_graph import Domain, LeafFamily, Partition, Region, RegionGraph, Variable
    >>> bit, leaf = Domain("binary", 2), LeafFamily("bernoulli")
    >>> variables = tuple(Variable(i, name, bit, leaf, column=i) for i, name in enumerate("ABC"))
    >>> regions = tuple(Region(scope) for scope in [(0, 1, 2), (0, 1), (1, 2)])
    >>> overlap = Partition(((0, 1, 2), 0), (((0, 1), 0), ((1, 2), 0)))
    >>> graph = RegionGraph("abc", variables, regions, (overlap,), sums=2, inputs=2)
    >>> print(verify(graph)[0].message)
    partition {A, B, C} -> {A, B} * {B, C} is not decomposable: parts {A, B} and {B, C} share B

Checks, in order: every part is a region; a partition has at least two parts and (decision)
exactly two; it is decomposable (parts pairwise disjoint) and smooth (parts cover exactly the
region); the graph is acyclic; exactly one region covers every variable (the root); every region
is reachable from it.

Why binary only: an EiNet einsum layer (paper eq. 5) contracts one weight tensor W[l,k,i,j] with
exactly two child vectors. A partition into more parts would need a differently shaped einsum per
arity; a product of n parts is written equivalently as nested binary partitions,
``{A,B,C} -> {A} * {B,C}`` and ``{B,C} -> {B} * {C}``, which also gives the nested product its
own K-vector of sums. So einc rejects n-ary partitions with that suggestion instead of
half-supporting them.
"""

from __future__ import annotations

from collections.abc import Sequence

from einc.compiler.build import sort_diagnostics
from einc.ir.diagnostics import Diagnostic, Note, Span
from einc.ir.region_graph import Partition, RegionGraph, RegionId, Scope

# Long scopes (a 784-pixel image) are shortened in messages to their first few variables.
_SHOWN_VARIABLES = 6


def verify(graph: RegionGraph) -> list[Diagnostic]:
    """Every structural error of ``graph`` (empty when it is a valid circuit)."""
    diagnostics: list[Diagnostic] = []
    regions = graph.region_by_id
    all_valid = True
    for partition in graph.partitions:
        if _is_valid_binary(partition, regions):
            continue  # the common case, checked without building any message (PD: 10^5 of them)
        all_valid = False
        diagnostics += _check_partition(graph, partition)
    if not all_valid:
        # With every partition valid, each part is a strictly smaller scope than its region, so
        # no cycle can exist; only a failed partition can close one.
        diagnostics += _check_cycles(graph)
    diagnostics += _check_root(graph)
    return sort_diagnostics(diagnostics)


# ---------------------------------------------------------------------------------------------
# Messages


def _names(graph: RegionGraph, variables: Sequence[int]) -> str:
    shown = [graph.variables[v].name for v in variables[:_SHOWN_VARIABLES]]
    more = len(variables) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _scope_text(graph: RegionGraph, scope: Scope) -> str:
    if len(scope) <= _SHOWN_VARIABLES:
        return graph.scope_names(scope)
    first = ", ".join(graph.variables[v].name for v in scope[:3])
    return f"{{{first}, … ({len(scope)} variables)}}"


def region_text(graph: RegionGraph, region_id: RegionId) -> str:
    """A region as users know it: its name, else its scope; ``#copy`` for generated copies."""
    region = graph.region_by_id.get(region_id)
    label = region.name if region is not None and region.name else None
    label = label or _scope_text(graph, region_id[0])
    return label if region_id[1] == 0 else f"{label}#{region_id[1]}"


def partition_text(graph: RegionGraph, partition: Partition) -> str:
    parts = " * ".join(region_text(graph, part) for part in partition.parts)
    return f"{region_text(graph, partition.region)} -> {parts}"


def _region_span(graph: RegionGraph, region_id: RegionId) -> Span | None:
    region = graph.region_by_id.get(region_id)
    return region.span if region is not None else None


def _partition_span(graph: RegionGraph, partition: Partition) -> Span | None:
    return partition.span or _region_span(graph, partition.region)


# ---------------------------------------------------------------------------------------------
# Partitions: known parts, arity, decomposability, smoothness


def _is_valid_binary(partition: Partition, regions: dict[RegionId, object]) -> bool:
    """Two known, non-empty parts whose scopes together are exactly the region's scope."""
    if len(partition.parts) != 2 or partition.region not in regions:
        return False
    (left, _), (right, _) = partition.parts
    if (
        not left
        or not right
        or partition.parts[0] not in regions
        or partition.parts[1] not in regions
    ):
        return False
    # Scopes are sorted and duplicate-free, so equal sorted concatenation means disjoint parts
    # (decomposable) that cover the region exactly (smooth).
    return sorted(left + right) == list(partition.region[0])


def _check_partition(graph: RegionGraph, partition: Partition) -> list[Diagnostic]:
    span = _partition_span(graph, partition)
    text = partition_text(graph, partition)
    out: list[Diagnostic] = []

    unknown = [r for r in (partition.region, *partition.parts) if r not in graph.region_by_id]
    if unknown:
        # Only generators or hand-built graphs can get here; the parser makes every scope a region.
        listed = ", ".join(region_text(graph, r) for r in unknown)
        out.append(
            Diagnostic(f"partition {text} refers to regions that do not exist: {listed}", span)
        )
        return out

    if len(partition.parts) < 2:
        out.append(
            Diagnostic(
                f"partition {text} has {len(partition.parts)} part; a partition splits its region "
                f"into two parts, e.g. {region_text(graph, partition.region)} -> {{...}} * {{...}}",
                span,
            )
        )
    elif len(partition.parts) > 2:
        out.append(
            Diagnostic(
                f"partition {text} has {len(partition.parts)} parts; einc supports binary "
                f"partitions only (an EiNet einsum layer multiplies two children); nest binary "
                f"partitions instead, e.g. {_nested_suggestion(graph, partition)}",
                span,
            )
        )

    region_scope = set(partition.region[0])
    for part in partition.parts:
        if part == partition.region:
            out.append(
                Diagnostic(
                    f"partition {text} has the region itself as a part, which makes a cycle; "
                    f"every part must be a strictly smaller region",
                    span,
                )
            )

    shared: set[int] = set()
    overlapping: list[tuple[RegionId, RegionId]] = []
    for i, left in enumerate(partition.parts):
        for right in partition.parts[i + 1 :]:
            common = set(left[0]) & set(right[0])
            if common:
                shared |= common
                overlapping.append((left, right))
    if shared:
        pairs = "; ".join(
            f"parts {region_text(graph, a)} and {region_text(graph, b)} share "
            f"{_names(graph, sorted(set(a[0]) & set(b[0])))}"
            for a, b in overlapping
        )
        out.append(Diagnostic(f"partition {text} is not decomposable: {pairs}", span))

    covered = {v for part in partition.parts for v in part[0]}
    missing = sorted(region_scope - covered)
    extra = sorted(covered - region_scope)
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing {_names(graph, missing)}")
        if extra:
            problems.append(f"{_names(graph, extra)} not in the region")
        out.append(
            Diagnostic(
                f"partition {text} is not smooth: its parts do not cover exactly "
                f"{region_text(graph, partition.region)}; {' and '.join(problems)}",
                span,
            )
        )
    return out


def _nested_suggestion(graph: RegionGraph, partition: Partition) -> str:
    first, *rest = partition.parts
    rest_scope = tuple(sorted(v for part in rest for v in part[0]))
    inner = " * ".join(_scope_text(graph, part[0]) for part in rest)
    return (
        f"{region_text(graph, partition.region)} -> {_scope_text(graph, first[0])} * "
        f"{_scope_text(graph, rest_scope)} and {_scope_text(graph, rest_scope)} -> {inner}"
    )


# ---------------------------------------------------------------------------------------------
# Cycles


def _check_cycles(graph: RegionGraph) -> list[Diagnostic]:
    """Cycles through two or more regions (a region that is its own part is reported above)."""
    children: dict[RegionId, list[RegionId]] = {r.id: [] for r in graph.regions}
    for partition in graph.partitions:
        if partition.region not in children:
            continue
        for part in partition.parts:
            if part != partition.region and part in children:
                children[partition.region].append(part)

    # Iterative depth-first search in canonical order, so the reported cycle is deterministic.
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(children, white)
    out: list[Diagnostic] = []
    for start in (r.id for r in graph.regions):
        if colour[start] != white:
            continue
        path: list[RegionId] = [start]
        stack = [iter(children[start])]
        colour[start] = grey
        while stack:
            child = next(stack[-1], None)
            if child is None:
                colour[path.pop()] = black
                stack.pop()
                continue
            if colour[child] == grey:
                cycle = path[path.index(child) :] + [child]
                chain = " -> ".join(region_text(graph, r) for r in cycle)
                out.append(
                    Diagnostic(
                        f"the region graph has a cycle: {chain}; a region's parts must be strictly "
                        f"smaller regions",
                        _region_span(graph, child),
                    )
                )
            elif colour[child] == white:
                colour[child] = grey
                path.append(child)
                stack.append(iter(children[child]))
    return out


# ---------------------------------------------------------------------------------------------
# Root and reachability


def _check_root(graph: RegionGraph) -> list[Diagnostic]:
    if not graph.regions:
        return [Diagnostic(f"circuit {graph.name} has no regions")]
    full = graph.full_scope
    roots = [r.id for r in graph.regions if r.scope == full]
    tops = [r.id for r in graph.regions if not graph.parents_of.get(r.id)]

    if not roots:
        notes = tuple(
            Note(f"top region {region_text(graph, top)} starts here", _region_span(graph, top))
            for top in tops
        )
        covered = {v for top in tops for v in top[0]}
        missing = [v for v in full if v not in covered]
        detail = f"; no region contains {_names(graph, missing)}" if missing else ""
        top_text = " and ".join(_scope_text(graph, top[0]) for top in tops[:4])
        suggestion = f"; add a partition of the root, e.g. {_scope_text(graph, full)} -> ..."
        return [
            Diagnostic(
                f"no root: no region covers every variable of circuit {graph.name}{detail} "
                f"(top regions: {top_text}){suggestion}",
                _region_span(graph, tops[0]) if tops else None,
                notes=notes[1:],
            )
        ]

    out: list[Diagnostic] = []
    root = graph.root if graph.root in graph.region_by_id else roots[0]
    if graph.is_leaf(root):
        out.append(
            Diagnostic(
                f"the root {region_text(graph, root)} has no partitions; a circuit needs at least "
                f"one partition of its root",
                _region_span(graph, root),
            )
        )

    reachable = {root}
    pending = [root]
    while pending:
        region_id = pending.pop()
        for index in graph.partitions_of.get(region_id, ()):
            for part in graph.partitions[index].parts:
                if part not in reachable and part in graph.region_by_id:
                    reachable.add(part)
                    pending.append(part)
    # Report only the top-most unreachable regions: everything below one is unreachable too.
    for top in tops:
        if top in reachable:
            continue
        what = "a second root" if top[0] == full else "not reachable from the root"
        out.append(
            Diagnostic(
                f"region {region_text(graph, top)} is {what}: no partition below the root "
                f"{region_text(graph, root)} has it as a part",
                _region_span(graph, top),
                notes=(Note(f"the root is {region_text(graph, root)}", _region_span(graph, root)),),
            )
        )
    return out
