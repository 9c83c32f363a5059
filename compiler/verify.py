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

Checks, in order: every part is a region; a partition has at least two parts, and as many as
its product kind allows (``outer``: exactly two; ``hadamard``: any number — each partition
against its own kind, ``RegionGraph.product_of``, as a circuit may mix them); it is decomposable
(parts pairwise disjoint) and smooth (parts cover exactly the region); the graph is acyclic;
exactly one region covers every variable (the root); every region is reachable from it. Then the
sizes: a ``hadamard`` partition multiplies its parts element-wise, so their K must agree; a leaf
family whose components are fixed (``indicator``) needs enough of them (``inputs``). Last, a leaf
region with a neural family (``vae``) is one network over its whole scope: all its variables
need that same family (and one domain).

Why ``outer`` is binary: an EiNet einsum layer (paper eq. 5) contracts one weight tensor
W[l,k,i,j] with exactly two child vectors, and an n-ary outer product would need K^(n+1) weights.
A product of n parts is written equivalently as nested binary partitions,
``{A,B,C} -> {A} * {B,C}`` and ``{B,C} -> {B} * {C}``, or with ``product hadamard``, whose
element-wise product takes any number of parts for K_out·K weights.
"""

from __future__ import annotations

from collections.abc import Sequence

from einc.compiler.build import sort_diagnostics
from einc.ir.diagnostics import Diagnostic, Note, Span
from einc.ir.families import family_rule
from einc.ir.neural import is_neural, observation_family
from einc.ir.products import PRODUCT_KINDS, ProductKind
from einc.ir.region_graph import Latent, Partition, RegionGraph, RegionId, Scope

# Long scopes (a 784-pixel image) are shortened in messages to their first few variables.
_SHOWN_VARIABLES = 6


def verify(graph: RegionGraph) -> list[Diagnostic]:
    """Every structural error of ``graph`` (empty when it is a valid circuit)."""
    diagnostics: list[Diagnostic] = []
    regions = graph.region_by_id
    all_valid = True
    for partition in graph.partitions:
        # each partition against its own kind (a circuit may mix them: ``product R = hadamard``)
        product = PRODUCT_KINDS[graph.product_of(partition)]
        if _is_valid(partition, regions, product.max_parts):
            continue  # the common case, checked without building any message (PD: 10^5 of them)
        all_valid = False
        diagnostics += _check_partition(graph, partition, product)
    if not all_valid:
        # With every partition valid, each part is a strictly smaller scope than its region, so
        # no cycle can exist; only a failed partition can close one.
        diagnostics += _check_cycles(graph)
    diagnostics += _check_root(graph)
    diagnostics += _check_part_sizes(graph)
    diagnostics += _check_leaf_components(graph)
    if graph.latents and all_valid:
        diagnostics += _check_latents(graph)
    diagnostics += _check_neural_leaf_regions(graph)
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


def _is_valid(partition: Partition, regions: dict[RegionId, object], max_parts: int | None) -> bool:
    """At least two (at most ``max_parts``) known, non-empty parts whose scopes together are
    exactly the region's scope."""
    parts = partition.parts
    if len(parts) < 2 or (max_parts is not None and len(parts) > max_parts):
        return False
    if partition.region not in regions:
        return False
    if any(not part[0] or part not in regions for part in parts):
        return False
    # Scopes are sorted and duplicate-free, so equal sorted concatenation means disjoint parts
    # (decomposable) that cover the region exactly (smooth).
    return sorted(v for part in parts for v in part[0]) == list(partition.region[0])


def _check_partition(graph: RegionGraph, partition: Partition, product: ProductKind) -> list[Diagnostic]:
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
    elif product.max_parts is not None and len(partition.parts) > product.max_parts:
        # a circuit that already mixes kinds is told how to change this region only
        fix = (f"`product {region_text(graph, partition.region)} = hadamard`" if len(graph.product_kinds) > 1
               else "`product hadamard`")
        out.append(
            Diagnostic(
                f"partition {text} has {len(partition.parts)} parts; `product {product.name}` "
                f"multiplies exactly {product.max_parts} children (an EiNet einsum layer); write "
                f"{fix} for element-wise products of any number of parts, or nest "
                f"binary partitions, e.g. {_nested_suggestion(graph, partition)}",
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
    if len(rest) > 2:  # the inner product is still n-ary: nest it the same way, and so on
        tail = tuple(sorted(v for part in rest[1:] for v in part[0]))
        inner = f"{_scope_text(graph, rest[0][0])} * {_scope_text(graph, tail)}, and so on"
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
        # every region counts (in a graph of cycles no region is a top region)
        covered = {v for region in graph.regions for v in region.scope}
        missing = [v for v in full if v not in covered]
        detail = f"; no region contains {_names(graph, missing)}" if missing else ""
        top_text = " and ".join(_scope_text(graph, top[0]) for top in tops[:4])
        top_text = f" (top regions: {top_text})" if tops else ""
        suggestion = f"; add a partition of the root, e.g. {_scope_text(graph, full)} -> ..."
        return [
            Diagnostic(
                f"no root: no region covers every variable of circuit {graph.name}{detail}"
                f"{top_text}{suggestion}",
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


# ---------------------------------------------------------------------------------------------
# Sizes: element-wise products need equal K; fixed leaf components need enough K


def _check_part_sizes(graph: RegionGraph) -> list[Diagnostic]:
    """Parts of an element-wise product must have one K. Partitions generated from one statement
    share its span: those are reported once, with a count, instead of once per partition."""
    regions = graph.region_by_id
    by_span: dict[tuple[Span | None, str], list[Partition]] = {}
    for partition in graph.partitions:
        kind = graph.product_of(partition)
        if not PRODUCT_KINDS[kind].equal_part_sizes:
            continue
        if partition.region not in regions or any(part not in regions for part in partition.parts):
            continue  # reported above
        if len({graph.size(part) for part in partition.parts}) > 1:
            by_span.setdefault((_partition_span(graph, partition), kind), []).append(partition)
    out = []
    for (span, kind), partitions in by_span.items():
        first = partitions[0]
        product = PRODUCT_KINDS[kind]
        sizes = ", ".join(
            f"{region_text(graph, part)} has K = {graph.size(part)} "
            f"({'inputs' if graph.is_leaf(part) else 'sums'})"
            for part in first.parts
        )
        more = f" (and {len(partitions) - 1} more partitions like it)" if len(partitions) > 1 else ""
        out.append(
            Diagnostic(
                f"partition {partition_text(graph, first)} multiplies parts of different sizes: "
                f"{sizes}{more}; `product {product.name}` multiplies its parts element-wise, so "
                f"their K must agree; "
                + ("expected one K for every part (`sums R = K` / `inputs R = K` give a region its own)"
                   if graph.region_sizes else f"expected inputs = sums, found inputs {graph.inputs} and sums {graph.sums}"),
                span,
            )
        )
    return out


def _check_leaf_components(graph: RegionGraph) -> list[Diagnostic]:
    """A family may constrain the number of leaf components (``indicator``: one per category)."""
    out = []
    seen: set[tuple[object, object, int]] = set()
    # each variable with the K of every leaf region holding it (regions may have their own K)
    leaf_sizes = {(index, graph.size(region)) for region in graph.leaf_regions for index in region[0]}
    for index, k in sorted(leaf_sizes):
        variable = graph.variables[index]
        key = (variable.family, variable.domain, k)
        if key in seen:
            continue
        seen.add(key)
        check = family_rule(observation_family(variable.family)).check_components
        problem = check(variable.family, variable.domain, k) if check else None
        if problem:
            out.append(Diagnostic(f"{problem} (variable {variable.name})", variable.family_span))
    return out


# ---------------------------------------------------------------------------------------------
# Latent variables: every induced tree must pass through the latent's region


def _check_latents(graph: RegionGraph) -> list[Diagnostic]:
    """A latent Z on region R is sound when the circuit is linear in R's vector: then p(x) =
    Σ_k c_k(x) p_R(x_R | Z = k) and clamping Z = k keeps term k. That holds exactly when every
    induced tree (one partition per reached region, all parts of it) passes through R; a tree
    that avoids R would be counted once per state of Z when Z is summed out."""
    out: list[Diagnostic] = []
    owner: dict[RegionId, Latent] = {}
    root = graph.root
    for latent in graph.latents:
        where = f"latent '{latent.name}' on {region_text(graph, latent.region)}"
        if latent.region not in graph.region_by_id:
            out.append(Diagnostic(f"{where}: the circuit has no such region", latent.span))
            continue
        if latent.region == root:
            out.append(Diagnostic(
                f"{where}: the root cannot carry a latent; its {graph.heads} output"
                f"{'s are' if graph.heads != 1 else ' is'} the circuit's heads, not the states of a "
                f"summed variable; expected a region below the root", latent.span))
            continue
        if latent.region in owner:
            first = owner[latent.region]
            out.append(Diagnostic(
                f"{where}: the region already carries latent '{first.name}'; a region has one latent",
                latent.span, notes=(Note(f"'{first.name}' declared here", first.span),)))
            continue
        owner[latent.region] = latent
        avoiding = _avoiding_partition(graph, latent.region)
        if avoiding is not None:
            out.append(Diagnostic(
                f"{where}: not every induced tree of the circuit passes through this region: "
                f"the trees that use partition {partition_text(graph, avoiding)} avoid it, so summing "
                f"'{latent.name}' out would count them once per state; expected a region that every "
                f"induced tree passes through (e.g. a Poon-Domingos leaf patch, not one RAT-SPN replica)",
                latent.span))
    return out


def _avoiding_partition(graph: RegionGraph, target: RegionId) -> Partition | None:
    """A partition through which an induced tree from the root can avoid ``target``, or None if
    every induced tree passes through it.

    A region Q leads every tree to ``target`` when it is ``target``, or when each of its
    partitions has a part that contains ``target``'s scope and leads every tree to it (parts are
    disjoint, so at most one part can). Regions are visited once each (memoised), top-down from
    the root, following the first partition that fails.
    """
    scope = set(target[0])
    always: dict[RegionId, bool] = {}

    def leads(region_id: RegionId) -> bool:
        # iterative post-order: deep generated graphs must not hit the recursion limit
        pending = [region_id]
        while pending:
            current = pending[-1]
            if current in always:
                pending.pop()
                continue
            if current == target:
                always[current] = True
                pending.pop()
                continue
            partitions = graph.partitions_of.get(current, ())
            children = [_part_containing(graph.partitions[p], scope) for p in partitions]
            waiting = [c for c in children if c is not None and c not in always]
            if waiting:
                pending.extend(waiting)
                continue
            always[current] = bool(partitions) and all(c is not None and always[c] for c in children)
            pending.pop()
        return always[region_id]

    current = graph.root
    if leads(current):
        return None
    while True:
        for index in graph.partitions_of.get(current, ()):
            part = _part_containing(graph.partitions[index], scope)
            if part is None or (not leads(part) and graph.is_leaf(part)):
                return graph.partitions[index]  # its trees never reach target's scope, or stop short
            if not leads(part):
                current = part
                break
        else:  # the root without partitions (reported by _check_root)
            return None


def _part_containing(partition: Partition, scope: set[int]) -> RegionId | None:
    for part in partition.parts:
        if scope.issubset(part[0]):
            return part
    return None
def _check_neural_leaf_regions(graph: RegionGraph) -> list[Diagnostic]:
    """A neural leaf (a VAE expert) models its region's whole scope with one network: a leaf
    region must not mix a neural family with other families, other arguments or other domains.
    Regions generated from one statement share its span: reported once, with a count."""
    by_span: dict[Span | None, list[tuple[RegionId, int, int]]] = {}
    for region_id in graph.leaf_regions:
        scope = region_id[0]
        if not any(is_neural(graph.variables[v].family) for v in scope):
            continue
        keys = [_neural_key(graph, v) for v in scope]
        other = next((v for v, key in zip(scope, keys) if key != keys[0]), None)
        if other is not None:
            by_span.setdefault(_region_span(graph, region_id), []).append((region_id, scope[0], other))
    out = []
    for span, found in by_span.items():
        region_id, first, other = found[0]
        a, b = graph.variables[first], graph.variables[other]
        others = len(found) - 1
        more = f" (and {others} more leaf region{'s' if others > 1 else ''} like it)" if others else ""
        notes = tuple(
            Note(f"{v.name} gets {v.family} here", v.family_span)
            for v in (a, b)
            if v.family_span is not None
        )
        out.append(
            Diagnostic(
                f"leaf region {region_text(graph, region_id)} mixes leaf families: {a.name} is "
                f"{a.domain} ~ {a.family}, {b.name} is {b.domain} ~ {b.family}{more}; a vae leaf is "
                f"one network over its region's whole scope, so every variable of the region needs "
                f"the same vae family and domain",
                span,
                notes=notes,
            )
        )
    return out


def _neural_key(graph: RegionGraph, index: int) -> tuple[object, str]:
    variable = graph.variables[index]
    # a real(d) variable's columns are each real(1): real variables of any d share a decoder
    domain = "real" if variable.domain.kind == "real" else str(variable.domain)
    return (variable.family, domain)
