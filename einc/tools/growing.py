"""Grow a model (``compiler.grow``, LVD-PG Algorithm 1) and write it as an editable ``.pc`` file.

``grow(model, flows, roots, threshold)`` returns a new model: the circuit with the chosen units
copied, its parameters set so that every old head — and every copied head, like the head it
copies — computes the same distribution as before (copies are split apart by training on the
new clusters). Its ``source`` is the original ``.pc`` text with the size statements rewritten:
the global ``sums``/``inputs``/``heads`` and one ``sums R = K`` / ``inputs R = K`` line per
region whose K grew, so the file stays the user's file (structure generators and comments
kept) and ``einc check`` / ``einc compile --emit`` read it like any other.

    >>> flows = model.flows(x[chosen], heads=z[chosen])                        # doctest: +SKIP
    >>> grown, growth = grow(model, flows, {model.graph.root: clusters}, 0.05)  # doctest: +SKIP
    >>> write_grown(grown, "grown.pc", "grown.npz")                            # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from einc.compiler.grow import (
    DEFAULT_SHARE,
    Growth,
    assemble_parameters,
    grow_graph,
    grow_parameters,
    item_parameters,
    select_units,
)
from einc.compiler.layering import layer
from einc.compiler.lower import lower
from einc.compiler.params import init_parameters
from einc.io.files import atomic_write, check_writable
from einc.grammar.parser import parse
from einc.ir.diagnostics import EincError
from einc.ir.program import RegionSizeStatement, SizeStatement
from einc.ir.region_graph import RegionGraph, RegionId, Scope
from einc.model import Model, compile as compile_model

# the last line of every .pc that write_grown writes: a later `einc lvd --grow` may replace such a
# file at its default path, and no other file there (einc.cli.commands.check_derived_grown_pc)
WRITTEN_MARK = "# written by einc lvd --grow"
GROWN_HEADER = "# sizes of the grown circuit (einc growing, LVD-PG Algorithm 1): K per region where it differs"


def grow(model: Model, flows, roots: Mapping[RegionId, Sequence[int]], threshold: float,
         share: float = DEFAULT_SHARE) -> tuple[Model, Growth]:
    """The grown model (same backend, device, dtype and seed) and what was copied.

    ``flows`` are the model's flows over the samples of the clusters to split (``model.flows``),
    ``roots`` the units to copy for them — the heads of those clusters ({``model.graph.root``:
    heads}) or the states of a latent region — and ``threshold`` the flow per sample from which a
    unit below them is copied too; ``share`` the weight each sum gives the other copy of a child.
    """
    graph = model.graph
    growth = select_units(graph, flows, roots, threshold)
    grown_graph = grow_graph(graph, growth)
    if model.source.strip():
        grown = compile_model(grown_source(model.source, model.filename, grown_graph), backend=model.backend_name,
                              device=model.device, dtype=model.dtype, seed=model.seed)
        grown.filename = model.filename
    else:  # a circuit built in memory (e.g. a patch circuit, einc.tools.patches): no text to rewrite
        plan = lower(layer(grown_graph))
        grown = Model(plan, "", model.filename, model.backend_name, model.device, model.dtype,
                      init_parameters(plan, model.seed), model.seed)
    if [(p.region, p.parts) for p in grown.graph.partitions] != [(p.region, p.parts) for p in graph.partitions] or any(
            grown.graph.size(r.id) != grown_graph.size(r.id) for r in graph.regions):
        raise EincError("internal: the grown .pc text does not compile to the grown circuit")  # a bug if seen
    carry_grown_parameters(model, grown, growth, share)
    return grown, growth


def carry_grown_parameters(model: Model, grown: Model, growth: Growth, share: float = DEFAULT_SHARE) -> None:
    """Give ``grown`` (``model``'s circuit grown by ``growth``) ``model``'s parameters, each copied
    unit's weights split between original and copy so that every head's distribution is kept."""
    items = grow_parameters(model.graph, item_parameters(model.plan, model.parameters()), growth, share)
    grown.set_parameters(assemble_parameters(grown.plan, items, grown.parameters()))


def grown_source(source: str, filename: str, graph: RegionGraph) -> str:
    """``source`` with its size statements replaced by ``graph``'s: the global K's and one line
    per region with a K of its own, appended at the end."""
    program = parse(source, filename)
    drop: set[int] = set()
    for statement in program.statements:
        if isinstance(statement, (SizeStatement, RegionSizeStatement)):
            drop.update(range(statement.span.line, statement.span.end_line + 1))
    lines = [line for number, line in enumerate(source.splitlines(), 1) if number not in drop]
    while lines and (not lines[-1].strip() or lines[-1] == GROWN_HEADER):
        lines.pop()
    block = ["", GROWN_HEADER, f"sums {graph.sums}", f"inputs {graph.inputs}", f"heads {graph.heads}"]
    for region, k in graph.region_sizes:
        keyword = "inputs" if graph.is_leaf(region) else "sums"
        block.append(f"{keyword} {scope_text(graph, region[0])} = {k}")
    return "\n".join(lines + block) + "\n"


_ELEMENT = re.compile(r"^(?P<base>[A-Za-z_][A-Za-z0-9_]*)\[(?P<index>[^\]]*)\]$")


def scope_text(graph: RegionGraph, scope: Scope) -> str:
    """A scope as ``.pc`` text: ``{A, B}``, with an array's elements as one rectangle of slices
    (``img[0:7, 0:7]``) where they form one, else as runs along the last axis."""
    scalars: list[str] = []
    arrays: dict[str, list[tuple[int, ...]]] = {}
    for index in scope:
        name = graph.variables[index].name
        match = _ELEMENT.match(name)
        if match is None:
            scalars.append(name)
        else:
            arrays.setdefault(match.group("base"), []).append(tuple(int(i) for i in match.group("index").split(",")))
    parts = list(scalars)
    for base, indices in arrays.items():
        cells = np.array(indices)
        low, high = cells.min(0), cells.max(0) + 1
        if len(indices) == int(np.prod(high - low)):  # a full rectangle (indices are distinct)
            parts.append(f"{base}[{', '.join(_axis(a, b) for a, b in zip(low, high))}]")
            continue
        for row in sorted(indices):
            parts.append(f"{base}[{', '.join(map(str, row))}]")
    return "{" + ", ".join(parts) + "}"


def _axis(start: int, stop: int) -> str:
    return str(start) if stop == start + 1 else f"{start}:{stop}"


def write_grown(model: Model, pc_path: str | os.PathLike, model_path: str | os.PathLike) -> None:
    """Write the grown circuit's ``.pc`` text and its model file (both atomically)."""
    check_writable(pc_path, "circuit output")
    check_writable(model_path, "model output")
    # the mark goes last, so that the file's line numbers stay those of model.source
    text = model.source
    if WRITTEN_MARK not in text:
        text = text.rstrip("\n") + "\n" + WRITTEN_MARK + "\n"
    atomic_write(pc_path, lambda stream: stream.write(text.encode("utf-8")))
    model.save(model_path)
