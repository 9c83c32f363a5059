"""``sums R = K`` / ``inputs R = K``: one region's own K, resolved to the region it names.

A grown circuit (``compiler.grow``, LVD-PG) holds different numbers of units in different
regions; these statements say so in the ``.pc`` text. A scope with several generated copies
(RAT-SPN replicas) names the first copy, as a latent does.
"""

from __future__ import annotations

from collections.abc import Sequence

from einc.compiler.scopes import Scopes
from einc.ir.diagnostics import Note, Span
from einc.ir.program import RegionSizeStatement
from einc.ir.region_graph import Region, RegionId, Scope, region_sort_key


def first_copies(regions: Sequence[Region]) -> dict[Scope, RegionId]:
    """The region a scope names in a statement: its first copy (RAT-SPN replicas have several)."""
    first: dict[Scope, RegionId] = {}
    for region in regions:
        if region.scope not in first or region.copy < first[region.scope][1]:
            first[region.scope] = region.id
    return first


def resolve_region_sizes(scopes: Scopes, statements: Sequence[object],
                         structure: tuple | None) -> tuple[tuple[RegionId, int], ...]:
    """The regions given a K of their own, sorted, with located errors: a scope that is not a
    region, the root (its K is ``heads``), ``sums`` on a leaf region or ``inputs`` on an internal
    one, K < 1, one region given twice."""
    given = [(s, scopes.region_scope(s.region)) for s in statements if isinstance(s, RegionSizeStatement)]
    if structure is None:
        return ()
    regions, partitions, _generator = structure
    internal = {p.region for p in partitions}
    first = first_copies(regions)
    root = tuple(range(len(scopes.group_of)))
    sizes: dict[RegionId, int] = {}
    where: dict[RegionId, Span] = {}
    for statement, scope in given:
        if scope is None:
            continue  # reported by region_scope
        number, keyword = statement.value, statement.keyword
        region = first.get(scope)
        expected = "inputs" if region not in internal else "sums"
        if region is None:
            scopes.sink.error(f"{keyword} names {scopes.scope_text(scope)}, which is not a region of the circuit",
                              statement.span)
        elif scope == root:
            scopes.sink.error(f"{keyword} names the root, whose K is the number of heads; write `heads "
                              f"{number.text}`", statement.span)
        elif keyword != expected:
            kind = "a leaf region" if expected == "inputs" else "an internal region"
            scopes.sink.error(f"{scopes.scope_text(scope)} is {kind}: its K is given by `{expected} REGION = K`, "
                              f"not `{keyword}`", statement.span)
        elif not number.is_integer or int(number.value) < 1:
            scopes.sink.error(f"{keyword} of {scopes.scope_text(scope)} (its K) must be a whole number of at least 1, "
                              f"found {number.text}", number.span)
        elif region in sizes:
            scopes.sink.error(f"the K of {scopes.scope_text(scope)} is given twice", statement.span,
                              Note("first given here", where[region]))
        else:
            sizes[region] = int(number.value)
            where[region] = statement.span
    return tuple(sorted(sizes.items(), key=lambda item: region_sort_key(item[0])))
