"""Deterministic text dumps of the front end's IRs: for ``einc compile --emit``, ``einc check``
and golden tests.

Regions are numbered ``r0, r1, ...`` in the graph's canonical order and partitions ``p0, p1, ...``
by their index, so a dump is byte-identical from run to run and from machine to machine.

    >>> from einc.compiler.pipeline import front_end
    >>> layered = front_end("var A, B : binary\\nleaf A, B ~ bernoulli\\n{A, B} -> A * B\\n", "ab.pc")
    >>> print(dump_layers(layered).splitlines()[1])
    L0 leaf: 2 regions
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from einc.compiler.lower import PRODUCT_LOWERINGS
from einc.compiler.verify import partition_text, region_text
from einc.ir.families import family_rule
from einc.ir.neural import VaeSpec, is_neural
from einc.ir.layers import LayeredCircuit, LeafLayer, ProductLayer, SumLayer
from einc.ir.products import DEFAULT_PRODUCT, PRODUCT_KINDS
from einc.ir.region_graph import Domain, Partition, RegionGraph, RegionId, Variable


def _region_numbers(graph: RegionGraph) -> dict[RegionId, str]:
    return {region.id: f"r{index}" for index, region in enumerate(graph.regions)}


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns; trailing spaces stripped so golden files stay clean."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows)))]
    return [
        (indent + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row))).rstrip()
        for row in rows
    ]


def _columns(variable: Variable) -> str:
    width = variable.domain.columns
    first = variable.column
    return f"column {first}" if width == 1 else f"columns {first}-{first + width - 1}"


def _structure(graph: RegionGraph) -> str:
    return graph.generator or "explicit region graph"


def _sizes(graph: RegionGraph) -> str:
    """The K line; the product kind is shown when it is not the default, and how many partitions
    have a kind of their own (``product R = KIND``) when the circuit mixes kinds."""
    text = f"K: sums {graph.sums}, inputs {graph.inputs}, heads {graph.heads}"
    if graph.region_sizes:
        text += f" ({len(graph.region_sizes)} regions with a K of their own)"
    own: dict[str, int] = {}
    for partition in graph.partitions:
        if graph.product_of(partition) != graph.product:
            own[graph.product_of(partition)] = own.get(graph.product_of(partition), 0) + 1
    if not own:
        return text if graph.product == DEFAULT_PRODUCT else f"{text}; product {graph.product}"
    mixed = ", ".join(f"{_count(n, 'partition')} {kind}" for kind, n in sorted(own.items()))
    return f"{text}; product {graph.product} ({mixed})"


def _own_kind(graph: RegionGraph, partition: Partition) -> list[str]:
    """A dump row's kind column: a partition's own product kind, where it differs from the circuit's."""
    kind = graph.product_of(partition)
    return [kind] if kind != graph.product else []


# ---------------------------------------------------------------------------------------------
# IR


def dump_ir(graph: RegionGraph) -> str:
    """The region graph: variables with their data columns, regions, partitions."""
    numbers = _region_numbers(graph)
    lines = [
        f"circuit {graph.name}  ({_structure(graph)})",
        _sizes(graph),
        (
            f"variables: {graph.num_variables} in {graph.num_columns} data columns "
            "(declaration order, arrays row-major)"
        ),
    ]
    lines += _table(
        [
            [f"v{v.index}", v.name, str(v.domain), str(v.family), _columns(v)]
            for v in graph.variables
        ]
    )
    lines.append(
        f"regions: {len(graph.regions)} ({len(graph.leaf_regions)} leaf, "
        f"{len(graph.internal_regions)} internal)"
    )
    rows = []
    for region in graph.regions:
        partitions = graph.partitions_of.get(region.id, ())
        role = "leaf" if not partitions else " ".join(f"p{i}" for i in partitions)
        label = graph.scope_names(region.scope) + (f"#{region.copy}" if region.copy else "")
        own = dict(graph.region_sizes).get(region.id)
        role += f"  K={own}" if own is not None else ""  # a region with a K of its own (a grown circuit)
        rows.append([numbers[region.id], label, f"'{region.name}'" if region.name else "", role])
    lines += _table(rows)
    lines.append(f"partitions: {len(graph.partitions)}")
    lines += _table(
        [
            [f"p{index}", _partition_ids(partition, numbers), partition_text(graph, partition),
             *_own_kind(graph, partition)]
            for index, partition in enumerate(graph.partitions)
        ]
    )
    if graph.latents:
        lines.append(f"latents: {len(graph.latents)} (declaration order: the columns of latents=z)")
        lines += _table(
            [
                [f"z[:, {index}]", latent.name, numbers.get(latent.region, "?"),
                 region_text(graph, latent.region), f"K {graph.size(latent.region)}"]
                for index, latent in enumerate(graph.latents)
            ]
        )
    return "\n".join(lines) + "\n"


def _partition_ids(partition: Partition, numbers: dict[RegionId, str]) -> str:
    parts = " * ".join(numbers.get(part, "?") for part in partition.parts)
    return f"{numbers.get(partition.region, '?')} -> {parts}"


# ---------------------------------------------------------------------------------------------
# Layers


def dump_layers(layered: LayeredCircuit) -> str:
    """The topological layers (Algorithm 1), bottom-up, one line per region or partition."""
    graph = layered.graph
    numbers = _region_numbers(graph)
    lines = [f"layered circuit {graph.name}: {len(layered.layers)} layers"]
    for depth, layer in enumerate(layered.layers):
        if isinstance(layer, LeafLayer):
            lines.append(f"L{depth} leaf: {_count(len(layer.regions), 'region')}")
            lines += _table([[numbers[r], region_text(graph, r)] for r in layer.regions])
        elif isinstance(layer, ProductLayer):
            lines.append(f"L{depth} product: {_count(len(layer.partitions), 'partition')}")
            lines += _table(
                [
                    [
                        f"p{i}",
                        _partition_ids(graph.partitions[i], numbers),
                        partition_text(graph, graph.partitions[i]),
                        *_own_kind(graph, graph.partitions[i]),
                    ]
                    for i in layer.partitions
                ]
            )
        elif isinstance(layer, SumLayer):
            mixing = f", {len(layer.mixing)} mixing" if layer.mixing else ""
            lines.append(f"L{depth} sum: {_count(len(layer.regions), 'region')}{mixing}")
            rows = []
            for region_id in layer.regions:
                count = len(graph.partitions_of.get(region_id, ()))
                mix = f"mixing {count} partitions" if region_id in layer.mixing else ""
                rows.append([numbers[region_id], region_text(graph, region_id), mix])
            lines += _table(rows)
    return "\n".join(lines) + "\n"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------------------------------------
# Graphviz


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped + '"'


_OWN_SYMBOL = {"hadamard": "⊙", "outer": "⊗"}


def dump_dot(graph: RegionGraph) -> str:
    """Graphviz text: regions as ellipses (leaf regions as boxes), partitions as × nodes."""
    numbers = _region_numbers(graph)
    lines = [f"digraph {_quote(graph.name)} {{", "  rankdir=TB;", '  node [fontname="Helvetica"];']
    latent_of = {latent.region: latent.name for latent in graph.latents}
    for region in graph.regions:
        shape = "box" if graph.is_leaf(region.id) else "ellipse"
        label = region_text(graph, region.id)
        if region.name:
            label += "\n" + graph.scope_names(region.scope)
        if region.id in latent_of:
            label += f"\nlatent {latent_of[region.id]}"
        lines.append(f"  {numbers[region.id]} [label={_quote(label)}, shape={shape}];")
    for index, partition in enumerate(graph.partitions):
        # × for the circuit's kind; a partition of its own kind shows it (⊙ hadamard, ⊗ outer)
        symbol = _OWN_SYMBOL.get(graph.product_of(partition), "×") if partition.product else "×"
        lines.append(f'  p{index} [label="{symbol}", shape=circle, width=0.3, fixedsize=true];')
        lines.append(f"  {numbers.get(partition.region, '?')} -> p{index};")
        for part in partition.parts:
            lines.append(f"  p{index} -> {numbers.get(part, '?')};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Parameter count and the `einc check` summary


@dataclass(frozen=True)
class ParameterCount:
    """Free parameters of the circuit for its K (EiNet layout: paper §3.3, §3.4, appendix B)."""

    leaf: int  # per leaf region: inputs x its variables' family statistics, or x one neural expert
    product: int  # per partition: its product kind's weights (outer: K_out·K_left·K_right)
    mixing: int  # per region with C > 1 partitions: K_out x C
    # ``product`` split by the op kind the partitions lower to, sorted: (("einsum", n), ...)
    product_ops: tuple[tuple[str, int], ...] = field(default=(), compare=False)

    @property
    def total(self) -> int:
        return self.leaf + self.product + self.mixing


def parameter_count(graph: RegionGraph) -> ParameterCount:
    """Count the parameters lowering will allocate for ``graph``.

    A leaf region holds ``inputs`` factorised densities, each with one expectation parameter per
    sufficient statistic of each of its variables (bernoulli/binomial/poisson 1, categorical(n) n,
    normal 2 per real dimension; fixed indicator leaves none). A partition's weights are its
    product kind's (``outer``: ``K_out x K_left x K_right``; ``hadamard``: ``K_out x K``), where
    ``K_out`` is ``heads`` for the root's partitions and ``sums`` otherwise, and a part has
    ``inputs`` densities if it is a leaf region, ``sums`` if internal. A region with C > 1
    partitions adds a mixing layer of ``K_out x C`` weights.
    """
    per_variable = [
        0
        if is_neural(v.family) or family_rule(v.family).fixed
        else family_rule(v.family).stat_dim(v.family, v.domain) * v.domain.columns
        for v in graph.variables
    ]
    leaf = sum(
        graph.size(region) * sum(per_variable[i] for i in region[0]) for region in graph.leaf_regions
    )
    # a neural leaf region: `inputs` networks over all its data columns (verify: one family)
    leaf += sum(
        graph.size(region) * _neural_parameters(graph, region[0])
        for region in graph.leaf_regions
        if is_neural(graph.variables[region[0][0]].family)
    )

    # each partition by its own kind (a circuit may mix them)
    by_op: dict[str, int] = {PRODUCT_LOWERINGS[kind].op_kind: 0 for kind in graph.product_kinds}
    for p in graph.partitions:
        kind = graph.product_of(p)
        by_op[PRODUCT_LOWERINGS[kind].op_kind] += PRODUCT_KINDS[kind].weights(
            graph.size(p.region), [graph.size(part) for part in p.parts])
    weights = sum(by_op.values())
    mixing = sum(
        graph.size(region_id) * len(graph.partitions_of[region_id])
        for region_id in graph.internal_regions
        if len(graph.partitions_of[region_id]) > 1
    )
    return ParameterCount(leaf, weights, mixing, tuple(sorted(by_op.items())))


def neural_row_floats(graph: RegionGraph, samples: int) -> int:
    """Floats the vae leaves' networks hold for one data row with ``samples`` IWAE samples, all
    at once (as sampling and MPE draw them): ``VaeSpec.pass_floats`` over every neural leaf
    region's ``inputs`` experts. 0 for a circuit without neural leaves."""
    total = 0
    for region in graph.leaf_regions:
        first = graph.variables[region[0][0]]
        if is_neural(first.family):
            width = sum(graph.variables[i].domain.columns for i in region[0])
            domain = Domain("real", 1) if first.domain.kind == "real" else first.domain
            total += VaeSpec.of(first.family).pass_floats(graph.inputs, width, domain, 1, samples, False)
    return total


def _neural_parameters(graph: RegionGraph, scope: tuple[int, ...]) -> int:
    """Parameters of one neural expert over ``scope`` (ir.neural.VaeSpec)."""
    first = graph.variables[scope[0]]
    width = sum(graph.variables[i].domain.columns for i in scope)
    domain = Domain("real", 1) if first.domain.kind == "real" else first.domain
    return VaeSpec.of(first.family).parameter_count(width, domain)


def summary(layered: LayeredCircuit) -> str:
    """What ``einc check`` prints for a valid circuit."""
    graph = layered.graph
    layers = layered.layers
    sums = [layer for layer in layers if isinstance(layer, SumLayer)]
    mixing = sum(len(layer.mixing) for layer in sums)
    mixed_regions = sum(1 for r in graph.internal_regions if len(graph.partitions_of[r]) > 1)
    count = parameter_count(graph)
    lines = [
        f"circuit {graph.name}: ok ({_structure(graph)})",
        (
            f"variables: {graph.num_variables:,} in {graph.num_columns:,} data columns "
            "(declaration order, arrays row-major)"
        ),
    ]
    lines += _table(_variable_runs(graph))
    lines += [
        (
            f"regions: {len(graph.regions):,} ({len(graph.leaf_regions):,} leaf, "
            f"{len(graph.internal_regions):,} internal, {mixed_regions:,} with several partitions)"
        ),
        f"partitions: {len(graph.partitions):,}",
        (
            f"layers: {len(layers)} (1 leaf, {len(layers) - 1 - len(sums)} product, {len(sums)} sum; "
            f"{_count(mixing, 'mixed region')})"
        ),
        _sizes(graph),
        *_latent_lines(graph),
        (
            f"parameters: {count.total:,} (leaf {count.leaf:,}, "
            + "".join(f"{op_kind} {n:,}, " for op_kind, n in count.product_ops)
            + f"mixing {count.mixing:,})"
        ),
    ]
    return "\n".join(lines) + "\n"


def _variable_runs(graph: RegionGraph) -> list[list[str]]:
    """Consecutive variables of one array with one domain and family, as one row."""
    rows = []

    def key(v: Variable) -> tuple[str, str, str]:
        return (v.name.split("[", 1)[0], str(v.domain), str(v.family))

    for (_base, domain, family), run in itertools.groupby(graph.variables, key=key):
        members = list(run)
        first, last = members[0], members[-1]
        end = last.column + last.domain.columns - 1
        columns = (
            f"column {first.column}" if end == first.column else f"columns {first.column}-{end}"
        )
        names = first.name if len(members) == 1 else f"{first.name} .. {last.name}"
        rows.append([columns, names, domain, f"~ {family}"])
    return rows


def _latent_lines(graph: RegionGraph) -> list[str]:
    """The summary's latent line: how many, which, and their number of states."""
    if not graph.latents:
        return []
    names = [latent.name for latent in graph.latents]
    shown = ", ".join(names) if len(names) <= 4 else f"{names[0]} .. {names[-1]}"
    states = sorted({graph.size(latent.region) for latent in graph.latents})
    return [f"latents: {len(names)} ({shown}), {'/'.join(map(str, states))} states each"]
