"""Lowering: layered circuit -> einsum plan (EiNet paper §3.3, §3.4, appendix B).

Each sum layer becomes product op(s) over all partitions of its regions, followed by mixing
op(s) for regions with C > 1 partitions, grouped by C. The leaf layer becomes one input op with a
block per (family, domain) for exponential-family leaves, and one vae op per (family, domain,
width) for neural leaves (``LEAF_LOWERINGS``). Which product op a partition becomes is the
partition's product kind (``RegionGraph.product_of``: its own, else the circuit's), looked up in
``PRODUCT_LOWERINGS``; a layer of a circuit that mixes kinds gets ops of each kind:

- ``outer``: einsum ops grouped by K signature (k_out, k_left, k_right), reading all left children,
  then all right children;
- ``hadamard``: hadamard ops grouped by (k_out, k_in), any arity in one op, reading every part of
  every partition in one operand ordered by the value the part comes from.

Row order is decided top-down, before any op is emitted: a region (or partition) is placed in its
producer's output in the order consumers first read it, and every einsum op reads all its left
children and then all its right children. On trees (RAT-SPNs) every operand is then one
contiguous slice of the value below — a view, no gather — which removes the per-layer copies
that dominate the reference EiNet code. On DAGs (Poon–Domingos) regions read by several
partitions are gathered by index only where the order cannot serve every reader.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import math

import opt_einsum

from einc.compiler.backward import derive_backward
from einc.compiler.kernels import einsum_kernel
from einc.ir.families import family_rule
from einc.ir.layers import LayeredCircuit, SumLayer
from einc.ir.neural import VaeSpec, is_neural
from einc.ir.plan import (
    EinsumOp,
    FamilyBlock,
    HadamardOp,
    InputOp,
    LatentSlot,
    MixingOp,
    Op,
    Operand,
    ParamSpec,
    Plan,
    RowIndex,
    RowRange,
    Segment,
    VaeOp,
)
from einc.ir.region_graph import Domain, LeafFamily, RegionGraph, RegionId

# Items whose rows are ordered: a region, or ("partition", index) for partitions of mixed regions.
Item = object


@dataclass
class _Group:
    """One future op: its kind, the items it outputs (in row order) and what it reads."""

    kind: str  # a leaf kind ("input", "vae") | "mixing" | a product lowering's op kind ("einsum", "hadamard")
    key: tuple
    items: list = field(default_factory=list)
    left: list[Item] = field(default_factory=list)
    right: list[Item] = field(default_factory=list)
    inputs: list[Item] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)  # hadamard: output row of each input item
    k_out: int = 0
    k_left: int = 0
    k_right: int = 0
    components: int = 0


@dataclass(frozen=True)
class _ProductLowering:
    """How one product kind becomes plan ops: its group (op) signature per partition, the order
    in which a group reads its parts (which decides the producers' row order), and the op."""

    op_kind: str
    # (graph, partition index) -> the K signature that must be shared by one op's rows
    signature: Callable[[RegionGraph, int], tuple[int, ...]]
    new_group: Callable[[str, tuple, tuple[int, ...]], _Group]
    # (graph, group, producer of each item) -> fills the group's reads, in reading order
    plan_reads: Callable[[RegionGraph, _Group, dict], None]
    # (graph, group, location, op name, batch_hint, target) -> the op and its parameters
    emit: Callable[[RegionGraph, _Group, dict, str, int, "_Target"], tuple[Op, list[ParamSpec]]]


@dataclass(frozen=True)
class _Target:
    """What an op's lowering may depend on besides the graph: the device and the kernel asked for."""

    device: str = "cpu"
    einsum_kernel: str = "auto"  # compiler/kernels.py


def lower(layered: LayeredCircuit, batch_hint: int = 100, target: str = "cpu",
          kernel: str = "auto") -> Plan:
    """Lower a verified, layered region graph to an einsum plan for a ``target`` device.

    ``kernel`` picks every einsum op's kernel (``matmul`` or ``fused``), or ``auto`` lets the
    target's rule in ``compiler/kernels.py`` pick per op from its K signature.
    """
    lowering_target = _Target(target, kernel)
    graph = layered.graph
    sum_layers = [layer for layer in layered.layers if isinstance(layer, SumLayer)]
    k_of = graph.size

    # ---- assign every region/partition to the group (future op) that produces it
    producer: dict[Item, tuple] = {}
    groups: dict[tuple, _Group] = {}
    for region in graph.leaf_regions:
        kind = _leaf_kind(graph, region)
        key = ("leaf", kind, LEAF_LOWERINGS[kind].signature(graph, region))
        if key not in groups:
            groups[key] = _Group(kind, key)
        producer[region] = key
    leaf_keys = sorted((k for k in groups if k[0] == "leaf"), key=repr)
    for depth, layer in enumerate(sum_layers):
        for region in layer.regions:
            partition_indices = graph.partitions_of[region]
            for p in partition_indices:
                product = PRODUCT_LOWERINGS[graph.product_of(graph.partitions[p])]
                signature = product.signature(graph, p)
                key = (product.op_kind, depth, signature)
                if key not in groups:
                    groups[key] = product.new_group(product.op_kind, key, signature)
                item = region if len(partition_indices) == 1 else ("partition", p)
                producer[item] = key
            if len(partition_indices) > 1:
                key = ("mixing", depth, len(partition_indices), k_of(region))
                if key not in groups:
                    groups[key] = _Group("mixing", key, components=len(partition_indices), k_out=k_of(region))
                producer[region] = key

    # ---- top-down: order rows by first read, record what each group reads
    first_read: dict[Item, int] = {graph.root: 0}

    def read(items: list[Item]) -> None:
        for item in items:
            first_read.setdefault(item, len(first_read))

    def ordered(key: tuple) -> list[Item]:
        mine = [item for item, k in producer.items() if k == key]
        return sorted(mine, key=lambda item: (first_read.get(item, len(first_read)), _canonical(item)))

    for depth in range(len(sum_layers) - 1, -1, -1):
        layer_keys = [k for k in groups if k[0] != "leaf" and k[1] == depth]
        for key in sorted((k for k in layer_keys if k[0] == "mixing"), key=repr):
            group = groups[key]
            group.items = ordered(key)
            group.inputs = [("partition", p) for region in group.items for p in graph.partitions_of[region]]
            read(group.inputs)
        for key in sorted((k for k in layer_keys if k[0] in _PRODUCT_OPS), key=repr):
            group = groups[key]
            group.items = ordered(key)
            _PRODUCT_OPS[group.kind].plan_reads(graph, group, producer)
            read(group.left)
            read(group.right)
            read(group.inputs)
    for key in leaf_keys:
        groups[key].items = ordered(key)

    # ---- bottom-up: emit ops; value index = op index
    emit_order = list(leaf_keys)
    for depth in range(len(sum_layers)):
        layer_keys = [k for k in groups if k[0] != "leaf" and k[1] == depth]
        emit_order += sorted((k for k in layer_keys if k[0] in _PRODUCT_OPS), key=repr)
        emit_order += sorted((k for k in layer_keys if k[0] == "mixing"), key=repr)

    location: dict[Item, tuple[int, int]] = {}
    ops: list[Op] = []
    params: list[ParamSpec] = []
    for value, key in enumerate(emit_order):
        group = groups[key]
        for row, item in enumerate(group.items):
            location[item] = (value, row)
        if key[0] == "leaf":
            op, specs = LEAF_LOWERINGS[group.kind].emit(graph, group.items, f"{group.kind}{value}")
        elif group.kind == "mixing":
            op, specs = _mixing_op(group, location, f"mixing{value}")
        else:
            op, specs = _PRODUCT_OPS[group.kind].emit(graph, group, location, f"{group.kind}{value}", batch_hint,
                                                      lowering_target)
        ops.append(op)
        params += specs

    region_rows = tuple(
        (region.id, *location[region.id]) for region in graph.regions if region.id in location
    )
    # a latent lives on its region's row: clamping it masks that row (ir.plan.LatentSlot)
    latents = tuple(
        LatentSlot(latent.name, latent.region, *location[latent.region], k_of(latent.region))
        for latent in graph.latents
    )
    plan = Plan(
        graph=graph,
        ops=tuple(ops),
        params=tuple(params),
        root=location[graph.root],
        replicas=_count_replicas(graph),
        region_rows=region_rows,
        latents=latents,
    )
    # the reverse-mode steps EM without autograd runs (array backends): derived here, at compile
    # time, so a backend only interprets them; None where an op kind has no derived backward
    # (neural leaves: their gradients are autograd's)
    return replace(plan, backward=derive_backward(plan) if plan.trained_by_em else None)


def _canonical(item: Item) -> tuple:
    if isinstance(item, tuple) and item and item[0] == "partition":
        return (1, item[1])
    scope, copy = item  # type: ignore[misc]
    return (0, -len(scope), scope, copy)


def _partition_index(graph: RegionGraph, item: Item) -> int:
    if isinstance(item, tuple) and item and item[0] == "partition":
        return item[1]  # type: ignore[return-value]
    (index,) = graph.partitions_of[item]  # type: ignore[index]
    return index


def _operand(items: list[Item], location: dict[Item, tuple[int, int]]) -> Operand:
    """Compress (value, row) reads into contiguous ranges where possible, gathers elsewhere."""
    runs: list[list[tuple[int, int]]] = []
    for item in items:
        value, row = location[item]
        if runs and runs[-1][-1][0] == value and runs[-1][-1][1] + 1 == row:
            runs[-1].append((value, row))
        else:
            runs.append([(value, row)])
    segments: list[Segment] = []
    for run in runs:
        value = run[0][0]
        if len(run) > 1:
            segments.append(RowRange(value, run[0][1], run[-1][1] + 1))
            continue
        last = segments[-1] if segments else None
        if isinstance(last, RowIndex) and last.value == value:
            segments[-1] = RowIndex(value, last.rows + (run[0][1],))
        else:
            segments.append(RowIndex(value, (run[0][1],)))
    # a single-row gather is a one-row range: a view
    segments = [RowRange(s.value, s.rows[0], s.rows[0] + 1) if isinstance(s, RowIndex) and len(s.rows) == 1 else s for s in segments]
    return Operand(tuple(segments))


def _input_op(graph: RegionGraph, regions: list[RegionId], name: str) -> tuple[InputOp, list[ParamSpec]]:
    k = graph.size(regions[0])  # the op's regions share one K (their group's signature)
    # factors[(family, domain)][l] = data columns of region l's univariate factors of that family
    factors: dict[tuple[LeafFamily, Domain], list[list[int]]] = defaultdict(lambda: [[] for _ in regions])
    for row, (scope, _copy) in enumerate(regions):
        for index in scope:
            variable = graph.variables[index]
            columns = range(variable.column, variable.column + variable.domain.columns)
            factors[(variable.family, variable.domain)][row].extend(columns)
    blocks: list[FamilyBlock] = []
    specs: list[ParamSpec] = []
    for number, ((family, domain), per_region) in enumerate(sorted(factors.items(), key=lambda kv: (kv[0][0].name, str(kv[0][0]), str(kv[0][1])))):
        width = max(len(cols) for cols in per_region)
        columns = tuple(tuple(cols + [-1] * (width - len(cols))) for cols in per_region)
        # a real(d) variable's factors are univariate normals over one column each
        factor_domain = _factor_domain(domain)
        rule = family_rule(family)
        stat_dim = rule.stat_dim(family, factor_domain)
        param = f"{name}.{number}.{family.name}"
        blocks.append(FamilyBlock(family, factor_domain, param, columns, stat_dim, not rule.zero_log_base(family)))
        specs.append(ParamSpec(param, (len(regions), width, k, stat_dim), "leaf", family, factor_domain))
    return InputOp(name, tuple(regions), k, tuple(blocks)), specs


def _factor_domain(domain: Domain) -> Domain:
    # a real(d) variable is d univariate real columns
    return Domain("real", 1) if domain.kind == "real" else domain


def _region_columns(graph: RegionGraph, scope: tuple[int, ...]) -> list[int]:
    """The data columns of a scope's variables, in variable order."""
    columns: list[int] = []
    for index in scope:
        variable = graph.variables[index]
        columns.extend(range(variable.column, variable.column + variable.domain.columns))
    return columns


def _vae_signature(graph: RegionGraph, region: RegionId) -> tuple:
    # one batched ensemble per (family, domain, width, K): verify gives a region one family and domain
    first = graph.variables[region[0][0]]
    return (str(first.family), str(_factor_domain(first.domain)), len(_region_columns(graph, region[0])),
            graph.size(region))


def _vae_op(graph: RegionGraph, regions: list[RegionId], name: str) -> tuple[VaeOp, list[ParamSpec]]:
    """K VAE experts per region, as (L, K, in, out) weights per MLP layer (ir/neural.py): one
    batched matmul per layer runs all L·K experts. Initialised like ``torch.nn.Linear``
    (uniform ±1/√fan_in), as the paper's networks were."""
    first = graph.variables[regions[0][0][0]]
    domain = _factor_domain(first.domain)
    spec = VaeSpec.of(first.family)
    columns = tuple(tuple(_region_columns(graph, scope)) for scope, _copy in regions)
    width = len(columns[0])
    rows, k = len(regions), graph.size(regions[0])
    specs: list[ParamSpec] = []
    networks: dict[str, list[tuple[str, str]]] = {"encoder": [], "decoder": []}
    for part, layers in (("encoder", spec.encoder_layers(width)), ("decoder", spec.decoder_layers(width, domain))):
        for number, layer in enumerate(layers):
            weight, bias = f"{name}.{part}{number}.weight", f"{name}.{part}{number}.bias"
            bound = 1.0 / math.sqrt(layer.fan_in)
            specs.append(ParamSpec(weight, (rows, k, layer.fan_in, layer.fan_out), "vae", free=True, init_bound=bound))
            specs.append(ParamSpec(bias, (rows, k, layer.fan_out), "vae", free=True, init_bound=bound))
            networks[part].append((weight, bias))
    op = VaeOp(
        name=name,
        regions=tuple(regions),
        k=k,
        columns=columns,
        family=first.family,
        domain=domain,
        encoder=tuple(networks["encoder"]),
        decoder=tuple(networks["decoder"]),
    )
    return op, specs


@dataclass(frozen=True)
class _LeafLowering:
    """How leaf regions of one kind become plan ops: regions with one signature share an op."""

    signature: Callable[[RegionGraph, RegionId], tuple]
    emit: Callable[[RegionGraph, list[RegionId], str], tuple[Op, list[ParamSpec]]]


# exponential-family leaves: one input op for every leaf region; neural leaves: a vae op per
# (family, domain, width)
LEAF_LOWERINGS: dict[str, _LeafLowering] = {
    "input": _LeafLowering(lambda graph, region: (graph.size(region),), _input_op),
    "vae": _LeafLowering(_vae_signature, _vae_op),
}


def _leaf_kind(graph: RegionGraph, region: RegionId) -> str:
    return "vae" if is_neural(graph.variables[region[0][0]].family) else "input"


def _einsum_signature(graph: RegionGraph, index: int) -> tuple[int, ...]:
    partition = graph.partitions[index]
    left, right = partition.parts
    return (graph.size(partition.region), graph.size(left), graph.size(right))


def _einsum_group(kind: str, key: tuple, signature: tuple[int, ...]) -> _Group:
    k_out, k_left, k_right = signature
    return _Group(kind, key, k_out=k_out, k_left=k_left, k_right=k_right)


def _einsum_reads(graph: RegionGraph, group: _Group, producer: dict) -> None:
    # all left children, then all right children: on trees each is one contiguous view
    partitions = [_partition_index(graph, item) for item in group.items]
    group.left = [graph.partitions[p].parts[0] for p in partitions]
    group.right = [graph.partitions[p].parts[1] for p in partitions]


def _einsum_op(graph: RegionGraph, group: _Group, location: dict, name: str, batch_hint: int,
               target: _Target) -> tuple[EinsumOp, list[ParamSpec]]:
    rows = len(group.items)
    shape = (rows, group.k_out, group.k_left, group.k_right)
    equation = EinsumOp.equation
    path, _ = opt_einsum.contract_path(
        equation,
        (rows, batch_hint, group.k_left),
        (rows, batch_hint, group.k_right),
        shape,
        shapes=True,
        optimize="optimal",
    )
    op = EinsumOp(
        name=name,
        partitions=tuple(_partition_index(graph, item) for item in group.items),
        left=_operand(group.left, location),
        right=_operand(group.right, location),
        k_out=group.k_out,
        k_left=group.k_left,
        k_right=group.k_right,
        param=f"{name}.weights",
        path=tuple(tuple(step) for step in path),
        kernel=einsum_kernel(target.einsum_kernel, target.device, group.k_left, group.k_right),
    )
    return op, [ParamSpec(op.param, shape, "einsum", normalised_over=(2, 3))]


def _hadamard_signature(graph: RegionGraph, index: int) -> tuple[int, ...]:
    partition = graph.partitions[index]
    # verify guarantees that every part has the same K (the element-wise product needs it)
    return (graph.size(partition.region), graph.size(partition.parts[0]))


def _hadamard_group(kind: str, key: tuple, signature: tuple[int, ...]) -> _Group:
    k_out, k_in = signature
    return _Group(kind, key, k_out=k_out, k_left=k_in)


def _hadamard_reads(graph: RegionGraph, group: _Group, producer: dict) -> None:
    # Every part of every row in one operand. The order of the factors of a product does not
    # matter, so the parts are read grouped by the op producing them (stable within): the
    # producers then place them in consecutive rows and most reads become contiguous views.
    reads = [
        (row, part)
        for row, item in enumerate(group.items)
        for part in graph.partitions[_partition_index(graph, item)].parts
    ]
    reads.sort(key=lambda read: repr(producer[read[1]]))
    group.inputs = [part for _row, part in reads]
    group.owner = [row for row, _part in reads]


def _hadamard_op(graph: RegionGraph, group: _Group, location: dict, name: str, batch_hint: int,
                 target: _Target) -> tuple[HadamardOp, list[ParamSpec]]:
    rows = len(group.items)
    op = HadamardOp(
        name=name,
        partitions=tuple(_partition_index(graph, item) for item in group.items),
        parts=_operand(group.inputs, location),
        owner=tuple(group.owner),
        k_out=group.k_out,
        k_in=group.k_left,
        param=f"{name}.weights",
    )
    return op, [ParamSpec(op.param, (rows, group.k_out, group.k_left), "hadamard", normalised_over=(2,))]


PRODUCT_LOWERINGS: dict[str, _ProductLowering] = {
    "outer": _ProductLowering("einsum", _einsum_signature, _einsum_group, _einsum_reads, _einsum_op),
    "hadamard": _ProductLowering("hadamard", _hadamard_signature, _hadamard_group, _hadamard_reads, _hadamard_op),
}
# the same lowerings by the op kind they emit: a layer's groups of every product kind are planned
# and emitted together (a circuit may mix kinds), each by its own lowering
_PRODUCT_OPS: dict[str, _ProductLowering] = {lowering.op_kind: lowering for lowering in PRODUCT_LOWERINGS.values()}


def _mixing_op(group: _Group, location: dict, name: str) -> tuple[MixingOp, list[ParamSpec]]:
    op = MixingOp(
        name=name,
        regions=tuple(group.items),
        input=_operand(group.inputs, location),
        components=group.components,
        k=group.k_out,
        param=f"{name}.weights",
    )
    return op, [ParamSpec(op.param, (len(group.items), group.components, group.k_out), "mixing", normalised_over=(1,))]


def _count_replicas(graph: RegionGraph) -> int:
    """The paper's R: the fewest 'replica' slots found greedily so that each holds disjoint scopes."""
    used: list[set[int]] = []
    # generator copies first, so that each RAT replica's leaves fill one slot
    for scope, _copy in sorted(graph.leaf_regions, key=lambda region: (region[1], region[0])):
        for slot in used:
            if slot.isdisjoint(scope):
                slot.update(scope)
                break
        else:
            used.append(set(scope))
    return len(used)
