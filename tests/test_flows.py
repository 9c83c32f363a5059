"""Circuit flows (``einc.flows``, ``Model.flows``) against enumerating induced trees.

The oracle lists every induced tree of the circuit for one sample (a head, then at every sum unit
one child, at every product unit all factors), with its weight p(tree, x); the flow of a unit or
a sum edge is then, by definition, Σ_{trees containing it} p(tree, x) / p(x) — the posterior
probability that it lies on the tree that generated x. Checked in float64 on both CPU backends,
for outer and element-wise products, mixtures, DAGs, several heads, missing values and clamped
latents; then conservation (root flow = samples per head, a unit's flow = the flow of its edges)
on a larger circuit where enumeration would be slow.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from einc.compiler.params import init_parameters
from einc.compiler.verify import verify
from einc.ir.diagnostics import EincError
from einc.ir.plan import EinsumOp, HadamardOp, InputOp, MixingOp
from einc.ir.region_graph import Latent, Partition, Region
from oracles import (
    BACKENDS,
    rid,
    BERNOULLI,
    CATEGORICAL3,
    _leaf_log_density,
    explicit_graph,
    hadamard_graph,
    mixed_graph,
    make_graph,
    pd_graph,
    plan_of,
    random_data,
    tree_graph,
)

from einc.model import Model

def mixing_graph(families, k: int = 2, inputs: int = 2, heads: int = 1):
    """{1,2,3,4} has two partitions (a mixing region) and the leaves {1}..{4} are shared (a DAG)."""
    scopes = [(0, 1, 2, 3, 4), (0,), (1, 2, 3, 4), (1, 2), (3, 4), (1, 3), (2, 4), (1,), (2,), (3,), (4,)]
    partitions = [
        Partition(rid(0, 1, 2, 3, 4), (rid(0), rid(1, 2, 3, 4))),
        Partition(rid(1, 2, 3, 4), (rid(1, 2), rid(3, 4))),
        Partition(rid(1, 2, 3, 4), (rid(1, 3), rid(2, 4))),
        Partition(rid(1, 2), (rid(1), rid(2))),
        Partition(rid(3, 4), (rid(3), rid(4))),
        Partition(rid(1, 3), (rid(1), rid(3))),
        Partition(rid(2, 4), (rid(2), rid(4))),
    ]
    return make_graph(families, [Region(s) for s in scopes], partitions, k=k, inputs=inputs, heads=heads)


CASES = {
    "outer, a mixture at the root, a shared region (DAG)": lambda: explicit_graph(
        [BERNOULLI, CATEGORICAL3, BERNOULLI, CATEGORICAL3], k=2),
    "outer, two heads": lambda: explicit_graph([BERNOULLI, BERNOULLI, CATEGORICAL3, BERNOULLI], k=2, heads=2),
    "outer, a mixing region below the root": lambda: mixing_graph([BERNOULLI, CATEGORICAL3, BERNOULLI, BERNOULLI, BERNOULLI]),
    "hadamard, 3-ary partitions, mixtures, a DAG": lambda: hadamard_graph([BERNOULLI] * 5, k=2),
    "hadamard tree (HCLT), three heads": lambda: tree_graph(
        [BERNOULLI, CATEGORICAL3, BERNOULLI, BERNOULLI], [-1, 0, 0, 1], k=2, heads=3),
    "both kinds in one circuit, two heads": lambda: mixed_graph([BERNOULLI] * 5, k=2, heads=2),
}


# ---------------------------------------------------------------- the induced-tree oracle
def induced_trees(plan, params, x, observed, head, clamped=None):
    """Every induced tree under ``head`` as (log p(tree, x), units, edges): units are
    (value, row, k) plan locations, edges (param, row, k, *children) for product ops and
    (param, row, c, k) for mixing. ``clamped`` {(value, row): state} drops the other states."""
    graph = plan.graph
    region_at = {region: (value, row) for region, value, row in plan.region_rows}
    partition_at, leaf_at, mixing_at = {}, {}, {}
    for value, op in enumerate(plan.ops):
        if isinstance(op, (EinsumOp, HadamardOp)):
            for row, p in enumerate(op.partitions):
                partition_at[p] = (value, row, op.param)
        elif isinstance(op, MixingOp):
            for row, region in enumerate(op.regions):
                mixing_at[region] = (value, row, op.param)
        elif isinstance(op, InputOp):
            for row, region in enumerate(op.regions):
                leaf_at[region] = (value, row, op)
    memo: dict = {}

    def leaf_density(region, k):
        value, row, op = leaf_at[region]
        total = 0.0
        for block in op.blocks:
            phi = params[block.param][row]
            for s, column in enumerate(block.columns[row]):
                if column >= 0 and observed[column]:
                    total += _leaf_log_density(block.family, phi[s], x[column])[k]
        return total

    def of_partition(p, k):
        value, row, param = partition_at[p]
        parts = graph.partitions[p].parts
        w = params[param][row]
        out = []
        if graph.product_of(graph.partitions[p]) == "hadamard":
            for j in range(w.shape[1]):
                for combo in itertools.product(*[of_region(part, j) for part in parts]):
                    out.append((np.log(w[k, j]) + sum(t[0] for t in combo),
                                frozenset().union(*[t[1] for t in combo]) | {(value, row, k)},
                                frozenset().union(*[t[2] for t in combo]) | {(param, row, k, j)}))
        else:
            left, right = parts
            for i, j in itertools.product(range(w.shape[1]), range(w.shape[2])):
                for a, b in itertools.product(of_region(left, i), of_region(right, j)):
                    out.append((np.log(w[k, i, j]) + a[0] + b[0], a[1] | b[1] | {(value, row, k)},
                                a[2] | b[2] | {(param, row, k, i, j)}))
        return out

    def of_region(region, k):
        if (region, k) in memo:
            return memo[(region, k)]
        location = region_at[region]
        if clamped and location in clamped and clamped[location] != k:
            out = []
        elif graph.is_leaf(region):
            out = [(leaf_density(region, k), frozenset({(*location, k)}), frozenset())]
        elif len(graph.partitions_of[region]) == 1:
            out = of_partition(graph.partitions_of[region][0], k)
        else:
            value, row, param = mixing_at[region]
            out = [(np.log(params[param][row][c, k]) + t[0], t[1] | {(value, row, k)}, t[2] | {(param, row, c, k)})
                   for c, p in enumerate(graph.partitions_of[region]) for t in of_partition(p, k)]
        memo[(region, k)] = out
        return out

    return of_region(graph.root, head)


def oracle_flows(plan, params, x, observed, heads, clamped=None):
    """(unit flows {(value, row, k): flow}, edge flows {edge: flow}) summed over the samples."""
    units: dict = {}
    edges: dict = {}
    for b in range(len(x)):
        trees = induced_trees(plan, params, x[b], observed[b], heads[b], clamped[b] if clamped else None)
        weights = np.array([t[0] for t in trees])
        posterior = np.exp(weights - np.logaddexp.reduce(weights))
        for (_, tree_units, tree_edges), q in zip(trees, posterior):
            for u in tree_units:
                units[u] = units.get(u, 0.0) + q
            for e in tree_edges:
                edges[e] = edges.get(e, 0.0) + q
    return units, edges


def _model(graph, backend, seed=0):
    assert verify(graph) == []
    plan = plan_of(graph)
    return Model(plan, "", "<test>", backend, "cpu", "float64", init_parameters(plan, seed=seed))


def _data(graph, n, seed, missing=0.0):
    x = random_data(graph, n, seed)
    observed = np.random.default_rng(seed + 1).random(x.shape) >= missing
    return np.where(observed, x, np.nan), observed


def _assert_matches_oracle(flows, plan, units, edges):
    for value, array in enumerate(flows.values):
        for row, k in itertools.product(range(array.shape[0]), range(array.shape[1])):
            np.testing.assert_allclose(array[row, k], units.get((value, row, k), 0.0), rtol=0, atol=1e-10,
                                       err_msg=f"unit v{value}[{row}, {k}] ({plan.ops[value].kind})")
    for name, array in flows.edges.items():
        for index in itertools.product(*[range(n) for n in array.shape]):
            np.testing.assert_allclose(array[index], edges.get((name, *index), 0.0), rtol=0, atol=1e-10,
                                       err_msg=f"edge {name}{list(index)}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_flows_are_the_posteriors_of_units_and_edges_on_the_induced_tree(case: str, backend: str) -> None:
    graph = CASES[case]()
    model = _model(graph, backend)
    x, observed = _data(graph, 4, seed=3, missing=0.25)
    heads = np.arange(len(x)) % graph.heads
    flows = model.flows(x, heads=heads if graph.heads > 1 else None, batch_size=3)  # two batches, added
    params = model.parameters()
    units, edges = oracle_flows(model.plan, params, np.nan_to_num(x), observed, heads)
    _assert_matches_oracle(flows, model.plan, units, edges)
    assert flows.samples == len(x)
    np.testing.assert_allclose(flows.heads, np.bincount(heads, minlength=graph.heads), atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flows_of_log_p_x_z_with_a_clamped_latent(backend: str) -> None:
    graph = replace(explicit_graph([BERNOULLI, CATEGORICAL3, BERNOULLI, CATEGORICAL3], k=2),
                    latents=(Latent("z", rid(2, 3)),))
    model = _model(graph, backend, seed=1)
    x, observed = _data(graph, 3, seed=5)
    z = np.array([[0], [1], [1]])
    flows = model.flows(x, latents=z)
    location = next((v, r) for region, v, r in model.plan.region_rows if region == rid(2, 3))
    units, edges = oracle_flows(model.plan, model.parameters(), x, observed, [0, 0, 0],
                                [{location: int(state)} for state in z[:, 0]])
    _assert_matches_oracle(flows, model.plan, units, edges)
    np.testing.assert_allclose(flows.region(rid(2, 3)), [1, 2], atol=1e-10)  # all flow at the clamped state


@pytest.mark.parametrize("backend", BACKENDS)
def test_flows_conserve_on_a_poon_domingos_dag(backend: str) -> None:
    graph = replace(pd_graph([BERNOULLI] * 9, 3, 3, k=3), heads=2)
    model = _model(graph, backend, seed=2)
    x, _observed = _data(graph, 50, seed=7, missing=0.1)
    heads = np.random.default_rng(0).integers(0, 2, len(x))
    flows = model.flows(x, heads=heads)
    np.testing.assert_allclose(flows.heads, np.bincount(heads, minlength=2), atol=1e-9)
    read_by: dict = {}  # region -> the flow it receives from the product units it is a factor of
    for index, partition in enumerate(graph.partitions):
        edges = flows.partition_edges(index)  # (K, i, j)
        # a sum unit's flow is the flow of its edges; a product unit's the flow of its edges in
        np.testing.assert_allclose(edges.sum((1, 2)), flows.partition(index), atol=1e-9)
        left, right = partition.parts
        read_by[left] = read_by.get(left, 0) + flows.products(index).sum(1)
        read_by[right] = read_by.get(right, 0) + flows.products(index).sum(0)
    for region in graph.internal_regions:
        if len(graph.partitions_of[region]) > 1:
            mixing = flows.mixing_edges(region)  # (C, K)
            np.testing.assert_allclose(mixing.sum(0), flows.region(region), atol=1e-9)
            for c, p in enumerate(graph.partitions_of[region]):
                np.testing.assert_allclose(mixing[c], flows.partition(p), atol=1e-9)
    for region, received in read_by.items():
        np.testing.assert_allclose(received, flows.region(region), atol=1e-9)


def test_flows_agree_across_backends_and_match_em_statistics() -> None:
    graph = tree_graph([BERNOULLI, CATEGORICAL3, BERNOULLI, BERNOULLI, CATEGORICAL3], [-1, 0, 0, 1, 1], k=3, heads=2)
    x, _observed = _data(graph, 40, seed=11, missing=0.2)
    heads = np.arange(40) % 2
    torch_flows = _model(graph, "torch").flows(x, heads=heads)
    numpy_flows = _model(graph, "numpy").flows(x, heads=heads)
    for a, b in zip(torch_flows.values, numpy_flows.values):
        np.testing.assert_allclose(a, b, atol=1e-10)
    for name in torch_flows.edges:
        np.testing.assert_allclose(torch_flows.edges[name], numpy_flows.edges[name], atol=1e-10)
    assert "region" in torch_flows.table(threshold=1.0)


def test_flows_errors() -> None:
    graph = explicit_graph([BERNOULLI] * 4, k=2, heads=2)
    model = _model(graph, "torch")
    x, _ = _data(graph, 3, seed=0)
    with pytest.raises(EincError, match="2 heads: give heads="):
        model.flows(x)
    with pytest.raises(EincError, match="head must be an integer"):
        model.flows(x, heads=2)
    with pytest.raises(EincError, match="not a head of the circuit"):
        model.flows(x, heads=[0, 1, 5])
