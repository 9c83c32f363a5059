"""Latent statements: ``latent NAME = SCOPE`` and latent generators (``latent patches(...)``), each
resolved to the region of the circuit it names (whether the latent is sound is verify's check).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from einc.compiler.binding import Param, bind, did_you_mean, one_of
from einc.compiler.scopes import Scopes
from einc.ir.diagnostics import Note, Span
from einc.ir.program import Call, LatentGeneratorStatement, LatentStatement, Name
from einc.ir.region_graph import Latent, Region, RegionId, Scope


def resolve_latents(scopes: Scopes, statements: Sequence[object], regions: list[Region] | None) -> tuple[Latent, ...]:
    """Each declared latent resolved to its region, in declaration order.

    A latent names a scope; the region with that scope must exist (generated structures may
    hold several copies of one scope: the first is taken, and verify reports that the
    induced trees through the others avoid it). Whether summing the latent out is sound is
    ``compiler.verify``'s check.
    """
    declared: list[tuple[str, Scope, Span, Span]] = []  # name, scope, statement, name span
    for statement in statements:
        if isinstance(statement, LatentStatement):
            scope = scopes.region_scope(statement.region)
            if scope is not None:
                declared.append((statement.name.text, scope, statement.span, statement.name.span))
        elif isinstance(statement, LatentGeneratorStatement):
            declared += _latent_generator(scopes, statement)
    if regions is None:
        return ()  # the structure did not build; its errors are reported
    copies: dict[Scope, list[RegionId]] = {}
    for region in regions:
        copies.setdefault(region.scope, []).append(region.id)
    first_named: dict[str, Span] = {}
    latents: list[Latent] = []
    for name, scope, span, name_span in declared:
        if name in first_named:
            scopes.sink.error(
                f"latent '{name}' is declared twice", name_span, Note("first declared here", first_named[name])
            )
            continue
        first_named[name] = name_span
        ids = copies.get(scope)
        if not ids:
            scopes.sink.error(
                f"latent '{name}' names {scopes.scope_text(scope)}, which is not a region of the "
                f"circuit; expected the scope of a region (a partition's region or one of its parts)",
                span,
            )
            continue
        latents.append(Latent(name, min(ids, key=lambda region_id: region_id[1]), span))
    return tuple(latents)


def _latent_generator(scopes: Scopes, statement: LatentGeneratorStatement) -> list[tuple[str, Scope, Span, Span]]:
    call = statement.generator
    if call.name.text not in LATENT_GENERATORS:
        scopes.sink.error(
            f"unknown latent generator '{call.name.text}'; expected {one_of(list(LATENT_GENERATORS))}, "
            f"or a single latent `latent NAME = SCOPE`" + did_you_mean(call.name.text, list(LATENT_GENERATORS)),
            call.name.span,
        )
        return []
    return LATENT_GENERATORS[call.name.text](scopes, call, statement.span)


def patches(scopes: Scopes, call: Call, span: Span) -> list[tuple[str, Scope, Span, Span]]:
    """``patches(over = img, size = [h, w])``: one latent per h x w block tiling the 2-D array
    ``over``, named ``patches[r, c]`` by block row and column, declared row-major."""
    bound = bind(call, (Param("over", "name", None), Param("size", "ints")), scopes.sink)
    if bound is None:
        return []
    grids = [g for g in scopes.groups.values() if len(g.shape) == 2]
    over = bound.values["over"]
    if over is None:
        if len(grids) != 1:
            scopes.sink.error(
                "patches needs `over = NAME`, the 2-D array variable it tiles (it may be left "
                "out only when the circuit has exactly one 2-D array)",
                call.span,
            )
            return []
        over = grids[0].name
    group = scopes.groups.get(str(over))
    if group is None:
        if str(over) not in scopes.broken:
            scopes.unknown_variable(Name(str(over), bound.spans["over"]))
        return []
    if len(group.shape) != 2:
        scopes.sink.error(
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
        scopes.sink.error(
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


# Each latent generator: (scopes, call, statement span) -> [(name, scope, span, name span)]
LATENT_GENERATORS: dict[str, Callable[[Scopes, Call, Span], list[tuple[str, Scope, Span, Span]]]] = {
    "patches": patches,
}
