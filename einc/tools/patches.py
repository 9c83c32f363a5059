"""Cluster-conditioned patch circuits: the sub-circuit below a latent as a multi-headed circuit.

A latent Z_j on region R_j (``latent`` statements) makes the circuit

    p(x) = Σ_z p(z) Π_j p(x_j | z_j),

where p(x_j | Z_j = k) is unit k of R_j — the k-th head of the sub-circuit below R_j, whose
heads share all its structure and parameters — and p(z) is the rest of the circuit, evaluated
with R_j's units as indicators of z_j (LVD paper §5: "p(x_i | z_i)" learnt per patch, "p(z)" a
circuit over the latents). ``patch_model`` takes that sub-circuit out as a standalone
multi-headed model over the patch's variables (head k = p(x_j | Z_j = k)), to train on
(x_j, cluster) pairs (``fit(x_j, labels=z_j)``: EM on log p(x_j | z_j), each sample's head only),
to re-label samples by its own likelihoods, and to grow (``einc.tools.growing``); ``with_patch`` puts
its parameters — and, if it grew, its growth — back into the full circuit (``with_patches``: several
patches, one recompilation).

    >>> patch = patch_model(model, 0)                         # doctest: +SKIP
    >>> patch.fit(patch_data(model, 0, x), labels=z[:, 0])   # doctest: +SKIP
    >>> model = with_patch(model, 0, patch)                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from einc.compiler.grow import DEFAULT_SHARE, Growth, assemble_parameters, grow_graph, item_parameters
from einc.compiler.layering import layer
from einc.compiler.lower import lower
from einc.compiler.params import init_parameters
from einc.compiler.verify import verify
from einc.errors import DataError, EincError
from einc.io.data import as_rows
from einc.ir.region_graph import Partition, Region, RegionGraph, RegionId, Variable, region_sort_key
from einc.model import Model, compile as compile_model
from einc.tools.growing import carry_grown_parameters, grown_source


@dataclass(frozen=True)
class Patch:
    """Where a patch circuit sits in the full circuit: its variables (old indices, in order) and
    the old region of every region of the patch graph."""

    latent: int
    variables: tuple[int, ...]
    regions: dict[RegionId, RegionId]  # patch region -> full-circuit region
    partitions: dict[int, int]  # patch partition index -> full-circuit partition index


def subcircuit(graph: RegionGraph, region: RegionId, latent: int = 0) -> tuple[RegionGraph, Patch]:
    """The region graph below ``region`` as a circuit of its own: its variables renumbered in
    order, ``region`` its root with ``graph.size(region)`` heads, every other K kept."""
    below: set[RegionId] = set()
    stack = [region]
    while stack:
        current = stack.pop()
        if current not in below:
            below.add(current)
            for p in graph.partitions_of.get(current, ()):
                stack.extend(graph.partitions[p].parts)
    old_variables = region[0]
    position = {v: i for i, v in enumerate(old_variables)}
    variables, column = [], 0
    for i, v in enumerate(old_variables):
        old = graph.variables[v]
        variables.append(Variable(i, old.name, old.domain, old.family, column, old.span, old.family_span))
        column += old.domain.columns

    def renamed(old: RegionId) -> RegionId:
        return (tuple(position[v] for v in old[0]), old[1])

    regions = sorted((Region(renamed(r.id)[0], r.copy, r.name, r.span) for r in graph.regions if r.id in below),
                     key=lambda r: region_sort_key(r.id))
    order = {r.id: i for i, r in enumerate(regions)}
    kept = [(i, p) for i, p in enumerate(graph.partitions) if p.region in below]
    new_partitions = sorted(((Partition(renamed(p.region), tuple(renamed(q) for q in p.parts), p.span, p.product), i)
                             for i, p in kept), key=lambda item: (order[item[0].region], item[0].parts))
    sizes = tuple((renamed(r), k) for r, k in graph.region_sizes if r in below and r != region)
    patch_graph = RegionGraph(
        name=f"{graph.name}.patch{latent}", variables=tuple(variables), regions=tuple(regions),
        partitions=tuple(p for p, _ in new_partitions), sums=graph.sums, inputs=graph.inputs,
        heads=graph.size(region), product=graph.product, region_sizes=tuple(sorted(sizes, key=lambda i: region_sort_key(i[0]))),
    )
    patch = Patch(latent, tuple(old_variables), {renamed(r): r for r in below},
                  {new: old for new, (_, old) in enumerate(new_partitions)})
    return patch_graph, patch


def patch_model(model: Model, latent: int) -> Model:
    """The sub-circuit below latent ``latent`` (its index in ``model.latents``) as a multi-headed
    model over the patch's variables, with the full model's parameters: head k is p(x_j | Z_j = k)."""
    if not 0 <= latent < len(model.latents):
        raise EincError(f"latent must be an index in 0..{len(model.latents) - 1}, found {latent!r}")
    graph, patch = subcircuit(model.graph, model.latents[latent].region, latent)
    problems = verify(graph)
    if problems:
        raise EincError(f"the circuit below latent {model.latents[latent].name} is not a circuit of its own: "
                        f"{problems[0].message}")
    plan = lower(layer(graph))
    items = _renamed_items(item_parameters(model.plan, model.parameters()), patch, to_patch=True)
    params = assemble_parameters(plan, items, init_parameters(plan, model.seed))
    return Model(plan, "", f"{model.filename}:{model.latents[latent].name}", model.backend_name, model.device,
                 model.dtype, params, model.seed)


def patch_data(model: Model, latent: int, x: Any) -> np.ndarray:
    """The data columns of latent ``latent``'s patch variables, in the patch model's order."""
    rows = as_rows(x, "x")
    if rows.ndim != 2 or rows.shape[1] != model.graph.num_columns:
        raise DataError(f"x: shape {rows.shape}; expected (N, {model.graph.num_columns})")
    columns = [c for v in model.latents[latent].region[0]
               for c in range(model.graph.variables[v].column,
                              model.graph.variables[v].column + model.graph.variables[v].domain.columns)]
    return rows[:, columns]


def with_patch(model: Model, latent: int, patch: Model, growth: Growth | None = None,
               share: float = DEFAULT_SHARE) -> Model:
    """The full model with the patch model's parameters below latent ``latent``. If the patch
    grew (``growth``: what ``einc.tools.growing.grow`` copied in it), the full circuit grows alike
    first — the sums above the latent get split edges to its new states (``compiler.grow``) —
    and is returned as a new model whose source says the new sizes."""
    return with_patches(model, [(latent, patch, growth)], share)


def with_patches(model: Model, patches: Sequence[tuple[int, Model, Growth | None]],
                 share: float = DEFAULT_SHARE) -> Model:
    """``with_patch`` for several latents at once: ``patches`` holds (latent, patch model, growth
    or None), each patch taken from ``model``. The growths of all patches are one growth of the
    full circuit (the patches are disjoint sub-circuits; a sum above two of them splits its edges
    along each one's axis, which commutes), so the grown circuit is built and compiled once — not
    once per patch, which dominated a growing round with many patches (24 re-parses of the grown
    ``.pc`` for 16 patches: 84 of 94 s)."""
    latents = [latent for latent, _, _ in patches]
    if len(set(latents)) != len(latents):
        raise EincError(f"with_patches: a latent given twice ({sorted(latents)})")
    wheres = {latent: subcircuit(model.graph, model.latents[latent].region, latent)[1] for latent in latents}
    copies: dict[RegionId, tuple[int, ...]] = {}
    for latent, _, growth in patches:
        if growth is not None:
            copies.update({wheres[latent].regions[r]: units for r, units in growth.copies.items()})
    full = model
    if copies:
        mapped = Growth(copies)
        full = _recompiled(model, grown_source(model.source, model.filename, grow_graph(model.graph, mapped)))
        carry_grown_parameters(model, full, mapped, share)
        wheres = {latent: subcircuit(full.graph, full.latents[latent].region, latent)[1] for latent in latents}
    items = item_parameters(full.plan, full.parameters())
    for latent, patch, _ in patches:
        items.update(_renamed_items(item_parameters(patch.plan, patch.parameters()), wheres[latent], to_patch=False))
    full.set_parameters(assemble_parameters(full.plan, items, full.parameters()))
    return full


def _recompiled(model: Model, source: str) -> Model:
    out = compile_model(source, backend=model.backend_name, device=model.device, dtype=model.dtype, seed=model.seed)
    out.filename = model.filename
    return out


def _renamed_items(items: Mapping[tuple, np.ndarray], patch: Patch, to_patch: bool) -> dict[tuple, np.ndarray]:
    """Item parameters moved between the full circuit and the patch circuit."""
    regions = {old: new for new, old in patch.regions.items()} if to_patch else dict(patch.regions)
    partitions = {old: new for new, old in patch.partitions.items()} if to_patch else dict(patch.partitions)
    out: dict[tuple, np.ndarray] = {}
    for key, value in items.items():
        if key[0] == "partition" and key[1] in partitions:
            out[("partition", partitions[key[1]])] = value
        elif key[0] in ("leaf", "mixing") and key[1] in regions:
            out[(key[0], regions[key[1]], *key[2:])] = value
    return out


