"""Structure generators: ``structure NAME(arguments)`` builds the region graph's regions and partitions.

Each generator is one entry of ``GENERATORS``: a function that binds its arguments, reports bad
values at the argument (``compiler.generators`` holds the checks and the construction), checks
the size of what it would build before building it, and returns (regions, partitions,
description).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from einc.compiler import generators, patch_generators, size
from einc.compiler.binding import Bound, Param, bind, did_you_mean, one_of
from einc.compiler.region_products import product_kind
from einc.compiler.scopes import Scopes
from einc.ir.program import Call, Name, StructureStatement
from einc.ir.region_graph import Partition, Region

Generated = tuple[list[Region], list[Partition], str]


def report_generator_errors(
    scopes: Scopes, call: Call, bound: Bound, errors: list[generators.GeneratorArgumentError]
) -> bool:
    for error in errors:
        scopes.sink.error(error.message, bound.spans.get(error.argument, call.span))
    return not errors


def random_binary_trees(scopes: Scopes, call: Call) -> tuple[list[Region], list[Partition], str] | None:
    params = (Param("depth", "int"), Param("replicas", "int"), Param("seed", "int", 0))
    bound = bind(call, params, scopes.sink)
    if bound is None:
        return None
    depth, replicas, seed = (int(bound.values[k]) for k in ("depth", "replicas", "seed"))  # type: ignore[call-overload]
    errors = generators.check_random_binary_trees(len(scopes.group_of), depth, replicas, seed)
    if not report_generator_errors(scopes, call, bound, errors):
        return None
    estimate = size.estimate_random_binary_trees(
        len(scopes.group_of), depth, replicas, scopes.limits.dtype
    )
    scopes.check_size(
        estimate,
        call.span,
        f"random_binary_trees(depth = {depth}, replicas = {replicas}) over "
        f"{len(scopes.group_of):,} variables",
    )
    regions, partitions = generators.random_binary_trees(
        len(scopes.group_of), depth, replicas, seed
    )
    description = f"random_binary_trees(depth={depth}, replicas={replicas}, seed={seed})"
    return regions, partitions, description


def tree(scopes: Scopes, call: Call) -> tuple[list[Region], list[Partition], str] | None:
    bound = bind(call, (Param("parents", "ints"),), scopes.sink)
    if bound is None:
        return None
    parents = tuple(int(p) for p in bound.values["parents"])  # type: ignore[attr-defined]
    names = [scopes.name_of(i) for i in range(len(scopes.group_of))]
    errors = generators.check_tree(parents, names)
    if not report_generator_errors(scopes, call, bound, errors):
        return None
    regions, partitions = generators.tree(parents)
    root = parents.index(-1)
    description = f"tree(parents=[{len(parents)} entries], root={names[root]})"
    return regions, partitions, description


def poon_domingos(scopes: Scopes, call: Call) -> tuple[list[Region], list[Partition], str] | None:
    params = (
        Param("delta", "ints"),
        Param("axes", "name", "both"),
        Param("over", "name", None),
    )
    found = _bound_grid(scopes, call, params, "poon_domingos")
    if found is None:
        return None
    bound, group, grid = found
    deltas = tuple(int(d) for d in bound.values["delta"])  # type: ignore[attr-defined]
    axes = str(bound.values["axes"])
    errors = generators.check_poon_domingos(grid, deltas, axes, name=f"'{group.name}'")
    if not report_generator_errors(scopes, call, bound, errors):
        return None
    height, width = grid.shape
    allowed = generators.allowed_axes(axes)
    estimate = size.estimate_poon_domingos(
        height, width, deltas if 0 in allowed else (), deltas if 1 in allowed else (),
        scopes.limits.dtype, budget=3 * scopes.limits.partition_budget,
    )
    shown_deltas = ", ".join(str(d) for d in deltas)
    scopes.check_size(
        estimate,
        call.span,
        f"poon_domingos(delta = [{shown_deltas}], axes = {axes}) over the {height}x{width} grid",
    )
    regions, partitions = generators.poon_domingos(grid, deltas, axes, name=f"'{group.name}'")
    shown = ", ".join(str(d) for d in deltas)
    description = f"poon_domingos(delta=[{shown}], axes={axes}, over={group.name})"
    return regions, partitions, description


def patch_trees(scopes: Scopes, call: Call) -> tuple[list[Region], list[Partition], str] | None:
    params = (Param("size", "ints"), Param("over", "name", None), Param("parents", "ints", None),
              Param("patch_product", "name", None))
    found = _bound_grid(scopes, call, params, "patch_trees")
    if found is None:
        return None
    bound, group, grid = found
    patch_product = bound.values["patch_product"]
    if patch_product is not None:
        patch_product = product_kind(scopes, Name(str(patch_product), bound.spans["patch_product"]))
        if patch_product is None:
            return None
    if len(group.shape) != 2:
        scopes.sink.error(f"patch_trees splits a 2-D array; '{group.name}' is declared {group.describe()}",
                          bound.spans["over"])
        return None
    size_values = tuple(int(v) for v in bound.values["size"])  # type: ignore[attr-defined]
    if len(size_values) == 1:
        size_values = size_values * 2  # `size = 7`: square patches
    parents = bound.values["parents"]
    parent_list = None if parents is None else tuple(int(p) for p in parents)  # type: ignore[attr-defined]
    if parent_list is not None and len(size_values) == 2 and len(parent_list) != size_values[0] * size_values[1]:
        scopes.sink.error(
            f"parents has {len(parent_list)} entries; expected one per position of a "
            f"{size_values[0]}x{size_values[1]} patch ({size_values[0] * size_values[1]}), row-major, -1 for the root",
            bound.spans["parents"],
        )
        return None
    errors = patch_generators.check_patch_trees(grid, size_values, parent_list, name=f"'{group.name}'")
    if not report_generator_errors(scopes, call, bound, errors):
        return None
    # below the patches one partition per pixel; above them a PD over the (few) patches
    height, width = grid.shape
    patch_rows, patch_columns = height // size_values[0], width // size_values[1]
    top = size.estimate_poon_domingos(patch_rows, patch_columns, (1,), (1,), scopes.limits.dtype,
                                      budget=3 * scopes.limits.partition_budget)
    estimate = size.SizeEstimate(group.size, top.regions + 2 * group.size, top.partitions + group.size,
                                 (top.scope_entries + group.size) * size_values[0] * size_values[1], 0,
                                 scopes.limits.dtype)
    scopes.check_size(estimate, call.span, f"patch_trees(size = {list(size_values)}) over the {height}x{width} grid")
    regions, partitions = patch_generators.patch_trees(grid, size_values, parent_list, patch_product=patch_product,
                                                       name=f"'{group.name}'")
    inner = "k-d tree" if parent_list is None else f"tree(parents=[{len(parent_list)} entries])"
    inner += "" if patch_product is None else f", patch_product={patch_product}"
    description = f"patch_trees(size=[{size_values[0]}, {size_values[1]}], {inner}, over={group.name})"
    return regions, partitions, description


def _bound_grid(scopes: Scopes, call: Call, params: tuple[Param, ...], generator: str):
    """A grid generator's bound arguments, the array it splits (``over``, or the circuit's one 2-D
    array; it must be the circuit's only variables) and that array's variable numbers laid out
    in its shape; None after reporting why not."""
    bound = bind(call, params, scopes.sink)
    if bound is None:
        return None
    over = bound.values["over"]
    grids = [g for g in scopes.groups.values() if len(g.shape) == 2]
    if over is None:
        if len(scopes.groups) != 1 or not grids:
            scopes.sink.error(
                f"{generator} needs `over = NAME`, the 2-D array variable it splits "
                "(it may be left out only when the circuit's one variable is a 2-D array)",
                call.span,
            )
            return None
        over = grids[0].name
    group = scopes.groups.get(str(over))
    if group is None:
        scopes.unknown_variable(Name(str(over), bound.spans["over"]))
        return None
    others = [g.name for g in scopes.groups.values() if g is not group]
    if others:
        scopes.sink.error(
            f"{generator} over '{group.name}' needs '{group.name}' to be the circuit's only "
            f"variables; also declared: {', '.join(others)}",
            bound.spans["over"],
        )
        return None
    return bound, group, np.arange(group.first, group.first + group.size).reshape(group.shape or (1,))


GENERATORS: dict[str, Callable[[Scopes, Call], Generated | None]] = {
    "random_binary_trees": random_binary_trees,
    "poon_domingos": poon_domingos,
    "tree": tree,
    "patch_trees": patch_trees,
}


def generate(
    scopes: Scopes, statement: StructureStatement
) -> tuple[list[Region], list[Partition], str | None] | None:
    call = statement.generator
    builder = GENERATORS.get(call.name.text)
    if builder is None:
        scopes.sink.error(
            f"unknown structure generator '{call.name.text}'; expected {one_of(list(GENERATORS))}"
            + did_you_mean(call.name.text, list(GENERATORS)),
            call.name.span,
        )
        return None
    if not scopes.group_of:
        return None  # no variables; already reported where they were declared
    built = builder(scopes, call)
    if built is None:
        return None
    regions, partitions, description = built
    # Generated regions and partitions point at the structure statement, so that a
    # structural error in generated code is still reported at a line of the file.
    span = statement.span
    regions = [Region(r.scope, r.copy, r.name, span) for r in regions]
    partitions = [Partition(p.region, p.parts, span, p.product) for p in partitions]
    return regions, partitions, description
