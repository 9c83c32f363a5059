"""Test oracles independent of the einsum plan's execution: hand-built graphs, a naive recursive
evaluator of the region graph with leaf densities written out directly, and enumeration helpers."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np

from einc.compiler.generators import poon_domingos, random_binary_trees, tree
from einc.backends.base import Batch
from einc.compiler.layering import layer
from einc.compiler.lower import lower
from einc.ir.families import LOG_ZERO
from einc.ir.neural import observation_family, vae_family
from einc.ir.plan import EinsumOp, HadamardOp, InputOp, MixingOp, Plan
from einc.ir.region_graph import Domain, LeafFamily, Partition, Region, RegionGraph, Variable, region_sort_key

BERNOULLI = (LeafFamily("bernoulli"), Domain("binary", 2))
CATEGORICAL3 = (LeafFamily("categorical"), Domain("categorical", 3))
BINOMIAL3 = (LeafFamily("binomial", (("n", 3.0),)), Domain("categorical", 4))
POISSON = (LeafFamily("poisson"), Domain("count", 1))
NORMAL = (LeafFamily("normal", (("min_var", 1e-4), ("max_var", 10.0))), Domain("real", 1))
INDICATOR = (LeafFamily("indicator"), Domain("binary", 2))
INDICATOR3 = (LeafFamily("indicator"), Domain("categorical", 3))  # for circuits with K = 3
# every family in ir.families.FAMILIES, as a (LeafFamily, Domain) the oracles can build
FAMILY_CASES = {
    "bernoulli": BERNOULLI,
    "categorical": CATEGORICAL3,
    "binomial": BINOMIAL3,
    "normal": NORMAL,
    "poisson": POISSON,
    "indicator": INDICATOR,
}


# vae leaves (ir.neural) with every decoder, over domains the oracles know
VAE_CASES = {
    "bernoulli": (vae_family(1, (4,), LeafFamily("bernoulli")), Domain("binary", 2)),
    "binomial": (vae_family(2, (3, 3), LeafFamily("binomial", (("n", 3.0),))), Domain("categorical", 4)),
    "categorical": (vae_family(1, (), LeafFamily("categorical")), Domain("categorical", 3)),
    "normal": (vae_family(2, (4,), LeafFamily("normal", (("min_var", 1e-4), ("max_var", 10.0)))), Domain("real", 1)),
    "poisson": (vae_family(1, (4,), LeafFamily("poisson")), Domain("count", 1)),
}


# The CPU backends every cross-backend test compares (CuPy runs in the GPU tests).
BACKENDS = ("torch", "numpy")


def rid(*scope: int) -> tuple[tuple[int, ...], int]:
    """The id of the region over ``scope`` (replica 0)."""
    return (tuple(scope), 0)


def variables(families: list[tuple[LeafFamily, Domain]]) -> tuple[Variable, ...]:
    out, column = [], 0
    for index, (family, domain) in enumerate(families):
        out.append(Variable(index, f"v{index}", domain, family, column))
        column += domain.columns
    return tuple(out)


def make_graph(families, regions, partitions, k=3, inputs=None, heads=1, name="test",
               product="outer") -> RegionGraph:
    regions = tuple(sorted(regions, key=lambda r: region_sort_key(r.id)))
    order = {r.id: i for i, r in enumerate(regions)}
    partitions = tuple(sorted(partitions, key=lambda p: (order[p.region], p.parts)))
    return RegionGraph(name, variables(families), regions, partitions, k, inputs or k, heads,
                       product=product)


def explicit_graph(families, k=3, inputs=None, heads=1) -> RegionGraph:
    """4 variables; the root has two partitions (a mixture), {0,1} is shared by both (a DAG)."""
    assert len(families) == 4
    def rid(*scope):
        return (tuple(scope), 0)
    scopes = [(0, 1, 2, 3), (0, 1), (2, 3), (0, 2, 3), (0,), (1,), (2,), (3,), (1, 2, 3)]
    regions = [Region(s) for s in scopes]
    partitions = [
        Partition(rid(0, 1, 2, 3), (rid(0, 1), rid(2, 3))),
        Partition(rid(0, 1, 2, 3), (rid(0,), rid(1, 2, 3))),
        Partition(rid(0, 1), (rid(0,), rid(1,))),
        Partition(rid(2, 3), (rid(2,), rid(3,))),
        Partition(rid(1, 2, 3), (rid(1,), rid(2, 3))),
        Partition(rid(0, 2, 3), (rid(0,), rid(2, 3))),  # unreachable from root -> not added below
    ]
    regions = [r for r in regions if r.scope != (0, 2, 3)]
    partitions = partitions[:5]
    return make_graph(families, regions, partitions, k, inputs, heads)


def hadamard_graph(families, k=3, heads=1) -> RegionGraph:
    """5 variables, element-wise products: 3-ary and binary partitions, a mixture at the root and
    at {2,3,4}, and {3,4} shared by two partitions (a DAG)."""
    assert len(families) == 5

    def rid(*scope):
        return (tuple(scope), 0)

    scopes = [(0, 1, 2, 3, 4), (0,), (1, 2), (3, 4), (0, 1), (2, 3, 4), (1,), (2,), (3,), (4,)]
    partitions = [
        Partition(rid(0, 1, 2, 3, 4), (rid(0,), rid(1, 2), rid(3, 4))),
        Partition(rid(0, 1, 2, 3, 4), (rid(0, 1), rid(2, 3, 4))),
        Partition(rid(1, 2), (rid(1,), rid(2,))),
        Partition(rid(3, 4), (rid(3,), rid(4,))),
        Partition(rid(0, 1), (rid(0,), rid(1,))),
        Partition(rid(2, 3, 4), (rid(2,), rid(3,), rid(4,))),
        Partition(rid(2, 3, 4), (rid(2,), rid(3, 4))),
    ]
    return make_graph(families, [Region(s) for s in scopes], partitions, k, k, heads,
                      product="hadamard")


def mixed_graph(families, k=3, heads=1) -> RegionGraph:
    """``hadamard_graph``'s regions with both product kinds (``Partition.product``): a 3-ary
    element-wise and a binary outer partition mixed at the root, the same at {2,3,4}, {3,4} a part
    of an element-wise and of an outer partition, einsum and hadamard ops in one layer."""
    graph = hadamard_graph(families, k, heads)
    outer = {(rid(0, 1), rid(2, 3, 4)), (rid(1,), rid(2,)), (rid(2,), rid(3, 4))}
    partitions = tuple(replace(p, product=None if p.parts in outer else "hadamard") for p in graph.partitions)
    return replace(graph, partitions=partitions, product="outer", _cache={})


def tree_graph(families, parents, k=3, inputs=None, heads=1) -> RegionGraph:
    """The ``tree`` generator's region graph (an HCLT with K = k) with hadamard products."""
    regions, partitions = tree(parents)
    return make_graph(families, regions, partitions, k, inputs or k, heads, product="hadamard")


def rat_graph(families, depth=2, replicas=3, seed=0, k=3, heads=1) -> RegionGraph:
    regions, partitions = random_binary_trees(len(families), depth, replicas, seed)
    return make_graph(families, regions, partitions, k, heads=heads)


def pd_graph(families, height, width, delta=1, axes="both", k=2) -> RegionGraph:
    grid = np.arange(height * width).reshape(height, width)
    regions, partitions = poon_domingos(grid, [delta], axes)
    return make_graph(families, regions, partitions, k)


def plan_of(graph: RegionGraph) -> Plan:
    return lower(layer(graph))


# ---------------------------------------------------------------- naive evaluator
def _leaf_log_density(family: LeafFamily, phi: np.ndarray, x: float) -> np.ndarray:
    """log f_k(x) for every component k; phi (K, t). Written out directly, not via einc."""
    name = family.name
    if name == "bernoulli":
        p = phi[:, 0]
        return x * np.log(p) + (1 - x) * np.log1p(-p)
    if name == "categorical":
        return np.log(phi[:, int(x)])
    if name == "indicator":
        return np.where(phi[:, int(x)] > 0.5, 0.0, LOG_ZERO)
    if name == "binomial":
        n = family.arg("n")
        p = phi[:, 0] / n
        log_choose = math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1)
        return log_choose + x * np.log(p) + (n - x) * np.log1p(-p)
    if name == "poisson":
        rate = phi[:, 0]
        return x * np.log(rate) - rate - math.lgamma(x + 1)
    if name == "normal":
        mu = phi[:, 0]
        var = np.clip(phi[:, 1] - mu**2, family.arg("min_var"), family.arg("max_var"))
        return -0.5 * np.log(2 * np.pi * var) - 0.5 * (x - mu) ** 2 / var
    raise AssertionError(name)


def _logsumexp(a: np.ndarray, axis=None) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):  # a sum of only −inf terms (clamped latents) is −inf
        return np.squeeze(top, axis=axis) + np.log(np.sum(np.exp(a - top), axis=axis))


def oracle_log_density(plan: Plan, params: dict[str, np.ndarray], x: np.ndarray,
                       observed: np.ndarray | None = None, max_product: bool = False,
                       clamped: dict | None = None) -> np.ndarray:
    """Recursive evaluation over regions of log p(x) (or max-product) for one sample -> (heads,).

    ``clamped`` {region id: state} keeps only that entry of the region's vector (its others
    become −inf): log p(x, z) for latents on those regions, written out without the plan."""
    graph = plan.graph
    observed = np.ones_like(x, dtype=bool) if observed is None else observed
    leaf_row, partition_loc, mixing_loc = {}, {}, {}
    for op in plan.ops:
        if isinstance(op, InputOp):
            input_op = op
            for row, region in enumerate(op.regions):
                leaf_row[region] = row
        elif isinstance(op, (EinsumOp, HadamardOp)):
            for row, p in enumerate(op.partitions):
                partition_loc[p] = (op.param, row)
        elif isinstance(op, MixingOp):
            for row, region in enumerate(op.regions):
                mixing_loc[region] = (op.param, row)
    reduce = (lambda a, axis=None: np.max(a, axis=axis)) if max_product else _logsumexp
    memo: dict = {}

    def value(region) -> np.ndarray:
        if region in memo:
            return memo[region]
        vector = unclamped(region)
        if clamped and region in clamped and clamped[region] >= 0:
            vector = np.where(np.arange(len(vector)) == clamped[region], vector, -np.inf)
        memo[region] = vector
        return vector

    def unclamped(region) -> np.ndarray:
        if graph.is_leaf(region):
            row = leaf_row[region]
            total = np.zeros(graph.inputs)
            for block in input_op.blocks:
                phi = params[block.param][row]  # (S, K, t)
                for s, column in enumerate(block.columns[row]):
                    if column < 0:
                        continue
                    if observed[column]:
                        total += _leaf_log_density(block.family, phi[s], x[column])
                    elif max_product:
                        total += _max_leaf(block.family, phi[s])
            return total
        per_partition = []
        for p in graph.partitions_of[region]:
            name, row = partition_loc[p]
            parts = [value(part) for part in graph.partitions[p].parts]
            if graph.product_of(graph.partitions[p]) == "hadamard":
                w = params[name][row]  # (k, j): an element-wise product of the parts, then a sum
                scores = np.log(w) + np.sum(parts, axis=0)[None, :]
            else:
                w = params[name][row]  # (k, i, j): the outer product of two parts, then a sum
                left, right = parts
                scores = np.log(w) + left[None, :, None] + right[None, None, :]
            per_partition.append(reduce(scores.reshape(w.shape[0], -1), axis=1))
        if len(per_partition) == 1:
            return per_partition[0]
        name, row = mixing_loc[region]
        v = params[name][row]  # (C, K)
        return reduce(np.log(v) + np.stack(per_partition), axis=0)

    return value(graph.root)


def _max_leaf(family: LeafFamily, phi: np.ndarray) -> np.ndarray:
    """max_x log f_k(x) by search over a generous finite range (discrete) or at the mean (normal)."""
    if family.name == "normal":
        var = np.clip(phi[:, 1] - phi[:, 0] ** 2, family.arg("min_var"), family.arg("max_var"))
        return -0.5 * np.log(2 * np.pi * var)
    discrete = family.name in ("categorical", "indicator")
    candidates = _support(family, Domain("categorical", phi.shape[-1]) if discrete else None)
    return np.max(np.stack([_leaf_log_density(family, phi, v) for v in candidates]), axis=0)


def _support(family: LeafFamily, domain: Domain | None = None) -> list[float]:
    if family.name == "bernoulli":
        return [0.0, 1.0]
    if family.name in ("categorical", "indicator"):
        return [float(v) for v in range(domain.size if domain else 3)]
    if family.name == "binomial":
        return [float(v) for v in range(int(family.arg("n")) + 1)]
    if family.name == "poisson":
        return [float(v) for v in range(60)]
    raise AssertionError(family.name)


def enumerate_states(graph: RegionGraph) -> np.ndarray:
    """Every joint state of a circuit over discrete variables (poisson truncated at 59)."""
    supports = []
    for variable in graph.variables:
        supports.append(_support(variable.family, variable.domain))
    return np.array(list(itertools.product(*supports)), dtype=np.float64)


def random_data(graph: RegionGraph, n: int, seed: int) -> np.ndarray:
    """Random values inside every variable's domain (for statistics and agreement tests)."""
    rng = np.random.default_rng(seed)
    columns = []
    for variable in graph.variables:
        family = observation_family(variable.family)
        name = family.name
        if name == "bernoulli":
            columns.append(rng.integers(0, 2, n))
        elif name in ("categorical", "indicator"):
            columns.append(rng.integers(0, variable.domain.size, n))
        elif name == "binomial":
            columns.append(rng.integers(0, int(family.arg("n")) + 1, n))
        elif name == "poisson":
            columns.append(rng.poisson(2.0, n))
        else:
            columns.append(rng.normal(size=n))
    return np.stack(columns, 1).astype(np.float64)


def chi_square_threshold(dof: int) -> float:
    """Wilson–Hilferty approximation of the 0.999 quantile of chi-square(dof)."""
    z = 3.09
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def chi_square(counts: np.ndarray, probs: np.ndarray, n: int) -> tuple[float, int]:
    """Pearson's statistic over cells expecting at least 5 draws, and its degrees of freedom."""
    expected = probs * n
    keep = expected >= 5
    return float((((counts - expected) ** 2) / expected)[keep].sum()), int(keep.sum()) - 1


def assert_samples_follow_the_model(backend, params, graph: RegionGraph, evidence: np.ndarray | None = None,
                                    n: int = 40000, seed: int = 3) -> None:
    """Sampling by ``backend.backtrack`` matches the exact distribution (χ² at the 0.999 level).

    ``evidence`` (NaN = free) makes it conditional sampling: draws must keep the evidence and
    follow p(free | evidence), computed by enumerating every state.
    """
    states = enumerate_states(graph)
    probs = np.exp(backend.log_likelihood(params, Batch(states, np.ones_like(states, dtype=bool)))[:, 0])
    if evidence is None:
        evidence = np.full(graph.num_columns, np.nan)
    given = ~np.isnan(evidence)
    values = np.where(given, evidence, 0.0)
    batch = Batch(np.tile(values, (n, 1)), np.tile(given, (n, 1)))
    draws = backend.backtrack(params, batch, False, "sample", np.zeros(n, dtype=int), seed=seed)
    assert np.all(draws[:, given] == values[given])
    consistent = np.all((states == values) | ~given, 1)
    conditional = probs[consistent] / probs[consistent].sum()
    index = {tuple(s): i for i, s in enumerate(states[consistent])}
    counts = np.bincount([index[tuple(d)] for d in draws], minlength=len(conditional))
    statistic, dof = chi_square(counts, conditional, n)
    assert statistic < chi_square_threshold(dof)


def assert_weight_counts_match_finite_differences(backend, plan: Plan, params, batch: Batch, rtol: float) -> None:
    """The E-step's weight counts n = W · ∂ Σ log p / ∂W (paper eq. 6) equal central differences
    of Σ log p at three random entries of every einsum and mixing weight tensor."""
    stats = backend.statistics(params, batch)

    def total(p) -> float:
        return float(backend.log_likelihood(p, batch)[:, 0].sum())

    rng = np.random.default_rng(0)
    eps = 1e-6
    for spec in plan.params:
        if spec.kind == "leaf":
            continue
        w = params[spec.name]
        for _ in range(3):
            index = tuple(int(rng.integers(n)) for n in spec.shape)
            plus, minus = (w.clone(), w.clone()) if hasattr(w, "clone") else (w.copy(), w.copy())
            plus[index] += eps
            minus[index] -= eps
            derivative = (total({**params, spec.name: plus}) - total({**params, spec.name: minus})) / (2 * eps)
            assert np.isclose(float(w[index]) * derivative, float(stats.weights[spec.name][index]), rtol=rtol, atol=1e-8)
