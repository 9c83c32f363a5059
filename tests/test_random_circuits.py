"""Property tests: random smooth, decomposable region graphs (trees and DAGs, several partitions
per region, mixed K; and with element-wise products, n-ary partitions, some mixed with outer
ones) lower to plans whose
distributions are normalised and equal the naive recursive evaluator — on the torch and numpy
backends, whose statistics agree too."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from einc.backends.base import Batch, create_backend
from einc.compiler.params import init_parameters
from einc.compiler.verify import verify
from einc.ir.region_graph import Partition, Region

from oracles import BERNOULLI, CATEGORICAL3, enumerate_states, make_graph, oracle_log_density, plan_of


def _draw_regions(draw, n: int, split) -> tuple[list[Region], list[Partition]]:
    """Regions from the root down: each internal region gets 1..3 partitions ``split(draw, scope)``
    draws; equal scopes are one region (so sub-regions are shared: a DAG)."""
    regions: dict[tuple[int, ...], Region] = {}
    partitions: set[tuple] = set()
    pending = [tuple(range(n))]
    while pending:
        scope = pending.pop()
        if scope in regions:
            continue
        regions[scope] = Region(scope)
        if len(scope) == 1 or (len(scope) < n and draw(st.booleans()) and draw(st.booleans())):
            continue  # a leaf region (the root always splits)
        for _ in range(draw(st.integers(1, 3))):
            parts = tuple(sorted((part, 0) for part in split(draw, scope)))
            partitions.add(((scope, 0), parts))
            pending += [part[0] for part in parts]
    return list(regions.values()), [Partition(r, p) for r, p in sorted(partitions)]


def _binary_split(draw, scope: tuple[int, ...]) -> list[tuple[int, ...]]:
    mask = draw(st.lists(st.booleans(), min_size=len(scope), max_size=len(scope)))
    left = tuple(v for v, m in zip(scope, mask) if m)
    right = tuple(v for v, m in zip(scope, mask) if not m)
    return [left, right] if left and right else [scope[:1], scope[1:]]


def _set_partition(draw, scope: tuple[int, ...]) -> list[tuple[int, ...]]:
    """A random split of ``scope`` into 2..4 non-empty parts."""
    arity = draw(st.integers(2, min(4, len(scope))))
    labels = draw(st.lists(st.integers(0, arity - 1), min_size=len(scope), max_size=len(scope)))
    labels[:arity] = range(arity)  # every part non-empty
    order = draw(st.permutations(list(range(len(scope)))))
    groups: dict[int, list[int]] = {}
    for position, label in zip(order, labels):
        groups.setdefault(label, []).append(scope[position])
    return [tuple(sorted(group)) for group in groups.values()]


@st.composite
def region_graphs(draw):
    """A random region graph over 2..5 variables: each region gets 1..3 random binary partitions;
    equal scopes are one region (so sub-regions are shared: a DAG)."""
    n = draw(st.integers(2, 5))
    families = [draw(st.sampled_from([BERNOULLI, CATEGORICAL3])) for _ in range(n)]
    regions, partitions = _draw_regions(draw, n, _binary_split)
    k = draw(st.integers(1, 3))
    inputs = draw(st.integers(1, 3))
    heads = draw(st.integers(1, 2))
    graph = make_graph(families, regions, partitions, k=k, inputs=inputs, heads=heads)
    return graph, draw(st.integers(0, 10_000))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(region_graphs())
def test_random_region_graphs_are_normalised_and_match_the_oracle(case):
    graph, seed = case
    assert verify(graph) == []
    plan = plan_of(graph)
    params = init_parameters(plan, seed)
    states = enumerate_states(graph)
    batch = Batch(states, np.ones_like(states, dtype=bool))
    results = {}
    for name in ("torch", "numpy"):
        backend = create_backend(name, plan, dtype="float64")
        results[name] = backend.log_likelihood(backend.put(params), batch)
    for head in range(graph.heads):
        assert math.isclose(np.exp(results["torch"][:, head]).sum(), 1.0, abs_tol=1e-9)
    np.testing.assert_allclose(results["numpy"], results["torch"], atol=1e-10)
    for row in states[:: max(1, len(states) // 6)]:
        expected = oracle_log_density(plan, params, row)
        actual = results["torch"][np.all(states == row, 1)][0]
        np.testing.assert_allclose(actual, expected, atol=1e-10)


@st.composite
def hadamard_region_graphs(draw):
    """A random region graph over 2..6 variables with element-wise products: each region gets
    1..3 random partitions into 2..4 parts (random set partitions of its scope); equal scopes are
    one region, so sub-regions are shared (a DAG). One K for every region (parts must agree).
    Half the graphs mix kinds: a random share of their binary partitions are outer products."""
    n = draw(st.integers(2, 6))
    families = [draw(st.sampled_from([BERNOULLI, CATEGORICAL3])) for _ in range(n)]
    regions, partitions = _draw_regions(draw, n, _set_partition)
    if draw(st.booleans()):
        partitions = [replace(p, product="outer") if len(p.parts) == 2 and draw(st.booleans()) else p
                      for p in partitions]
    k = draw(st.integers(1, 3))
    heads = draw(st.integers(1, 2))
    graph = make_graph(families, regions, partitions, k=k, inputs=k, heads=heads, product="hadamard")
    return graph, draw(st.integers(0, 10_000))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hadamard_region_graphs())
def test_random_hadamard_circuits_are_normalised_match_the_oracle_and_agree(case):
    graph, seed = case
    assert verify(graph) == []
    plan = plan_of(graph)
    params = init_parameters(plan, seed)
    states = enumerate_states(graph)
    batch = Batch(states, np.ones_like(states, dtype=bool))
    backends = {name: create_backend(name, plan, dtype="float64") for name in ("torch", "numpy")}
    results = {name: b.log_likelihood(b.put(params), batch) for name, b in backends.items()}
    for head in range(graph.heads):
        assert math.isclose(np.exp(results["torch"][:, head]).sum(), 1.0, abs_tol=1e-9)
    np.testing.assert_allclose(results["numpy"], results["torch"], atol=1e-10)
    for row in states[:: max(1, len(states) // 6)]:
        expected = oracle_log_density(plan, params, row)
        np.testing.assert_allclose(results["torch"][np.all(states == row, 1)][0], expected, atol=1e-10)
    # the derived backward (numpy) equals autograd (torch) on a half-observed batch
    observed = np.random.default_rng(seed).random(states.shape) < 0.5
    half = Batch(np.where(observed, states, 0.0), observed)
    stats = {name: b.statistics(b.put(params), half) for name, b in backends.items()}
    for name in stats["torch"].weights:
        np.testing.assert_allclose(np.asarray(stats["numpy"].weights[name]),
                                   stats["torch"].weights[name].numpy(), atol=1e-10)
