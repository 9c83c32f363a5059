"""Structure generators: RAT-SPN random binary trees and Poon-Domingos, checked structurally.

Oracles: the closed-form counts of the paper's constructions, an independent re-derivation of the
RAT splits with ``numpy.array_split``, and a naive 2-D Poon-Domingos search that the generator's
per-axis shortcut must reproduce exactly.
"""

from __future__ import annotations

import doctest
import math
import pickle
from collections import Counter, defaultdict

import numpy as np
import pytest
from einc.compiler import generators
from einc.compiler.generators import (
    GeneratorArgumentError,
    check_poon_domingos,
    check_random_binary_trees,
    poon_domingos,
    random_binary_trees,
)
from einc.compiler.verify import verify
from einc.ir.region_graph import (
    Domain,
    LeafFamily,
    Partition,
    Region,
    RegionGraph,
    RegionId,
    Variable,
    region_sort_key,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

MNIST = np.arange(28 * 28).reshape(28, 28)


# --------------------------------------------------------------------------------------------
# Shared structural checks
# --------------------------------------------------------------------------------------------


def check_smooth_and_decomposable(regions: list[Region], partitions: list[Partition]) -> None:
    """Every partition's parts are known regions, pairwise disjoint, and cover its region."""
    ids = {region.id for region in regions}
    assert len(ids) == len(regions), "a region id occurs twice"
    for partition in partitions:
        assert partition.region in ids
        assert len(partition.parts) == 2
        covered: list[int] = []
        for part in partition.parts:
            assert part in ids
            assert part[0] == tuple(sorted(part[0])), "scopes are sorted tuples"
            covered.extend(part[0])
        assert len(covered) == len(set(covered)), f"parts overlap in {partition}"
        assert sorted(covered) == list(partition.region[0]), f"parts do not cover {partition}"


def check_canonical_order(regions: list[Region], partitions: list[Partition]) -> None:
    keys = [region_sort_key(region.id) for region in regions]
    assert keys == sorted(keys)
    partition_keys = [region_sort_key(partition.region) for partition in partitions]
    assert partition_keys == sorted(partition_keys)


def parents(partitions: list[Partition]) -> dict[RegionId, list[int]]:
    out: dict[RegionId, list[int]] = defaultdict(list)
    for index, partition in enumerate(partitions):
        for part in partition.parts:
            out[part].append(index)
    return out


def leaf_ids(regions: list[Region], partitions: list[Partition]) -> list[RegionId]:
    internal = {partition.region for partition in partitions}
    return [region.id for region in regions if region.id not in internal]


def reachable(root: RegionId, partitions: list[Partition]) -> set[RegionId]:
    children: dict[RegionId, list[RegionId]] = defaultdict(list)
    for partition in partitions:
        children[partition.region].extend(partition.parts)
    seen = {root}
    stack = [root]
    while stack:
        for child in children[stack.pop()]:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


# --------------------------------------------------------------------------------------------
# Random binary trees
# --------------------------------------------------------------------------------------------


@st.composite
def rat_arguments(draw: st.DrawFn) -> tuple[int, int, int, int]:
    num_variables = draw(st.integers(2, 300))
    depth = draw(st.integers(1, min(6, int(math.log2(num_variables)))))
    replicas = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    return num_variables, depth, replicas, seed


@settings(max_examples=60, deadline=None)
@given(rat_arguments())
def test_rat_counts_and_structure(arguments: tuple[int, int, int, int]) -> None:
    num_variables, depth, replicas, seed = arguments
    regions, partitions = random_binary_trees(num_variables, depth, replicas, seed)

    assert len(regions) == 1 + replicas * (2 ** (depth + 1) - 2)
    assert len(partitions) == replicas * (2**depth - 1)
    leaves = leaf_ids(regions, partitions)
    assert len(leaves) == replicas * 2**depth
    check_smooth_and_decomposable(regions, partitions)
    check_canonical_order(regions, partitions)

    root: RegionId = (tuple(range(num_variables)), 0)
    root_partitions = [p for p in partitions if p.region == root]
    # One partition per replica at the shared root, in replica order.
    assert [p.parts[0][1] for p in root_partitions] == list(range(1, replicas + 1))
    assert reachable(root, partitions) == {region.id for region in regions}

    for partition in partitions:
        copies = {part[1] for part in partition.parts}
        assert len(copies) == 1, "a partition stays inside one replica"
        if partition.region != root:
            assert partition.region[1] in copies
        # numpy.array_split semantics: the first half takes the odd variable.
        sizes = [len(part[0]) for part in partition.parts]
        assert sizes == [(len(partition.region[0]) + 1) // 2, len(partition.region[0]) // 2]

    # Every non-root region belongs to one replica's tree: exactly one parent partition.
    parent_counts = parents(partitions)
    for region in regions:
        if region.id != root:
            assert 1 <= region.copy <= replicas
            assert len(parent_counts[region.id]) == 1

    for copy in range(1, replicas + 1):
        replica_leaves = [leaf for leaf in leaves if leaf[1] == copy]
        assert len(replica_leaves) == 2**depth
        sizes = [len(scope) for scope, _ in replica_leaves]
        assert max(sizes) - min(sizes) <= 1
        variables = sorted(v for scope, _ in replica_leaves for v in scope)
        assert variables == list(range(num_variables)), "a replica's leaves partition all variables"


def test_rat_leaves_are_all_at_depth() -> None:
    depth = 4
    regions, partitions = random_binary_trees(50, depth, replicas=3, seed=7)
    level: dict[RegionId, int] = {(tuple(range(50)), 0): 0}
    for partition in sorted(partitions, key=lambda p: -len(p.region[0])):
        for part in partition.parts:
            level[part] = level[partition.region] + 1
    leaves = leaf_ids(regions, partitions)
    assert {level[leaf] for leaf in leaves} == {depth}


def expected_rat_splits(
    num_variables: int, depth: int, replicas: int, seed: int
) -> set[tuple[RegionId, tuple[RegionId, ...]]]:
    """The RAT splits re-derived directly: one permutation per replica, halved by array_split."""
    rng = np.random.RandomState(seed)
    root: RegionId = (tuple(range(num_variables)), 0)
    splits: set[tuple[RegionId, tuple[RegionId, ...]]] = set()
    for replica in range(replicas):
        permutation = rng.permutation(num_variables)
        level = [(root, permutation)]
        for _ in range(depth):
            next_level = []
            for region_id, order in level:
                halves = np.array_split(order, 2)
                parts = tuple((tuple(sorted(int(v) for v in half)), replica + 1) for half in halves)
                splits.add((region_id, parts))
                next_level.extend(zip(parts, halves))
            level = next_level
    return splits


@pytest.mark.parametrize(
    ("num_variables", "depth", "replicas", "seed"),
    [(8, 1, 1, 0), (16, 3, 4, 1), (17, 4, 2, 123), (512, 4, 10, 0), (5, 2, 3, 2**32 - 1)],
)
def test_rat_follows_one_permutation_per_replica(
    num_variables: int, depth: int, replicas: int, seed: int
) -> None:
    _, partitions = random_binary_trees(num_variables, depth, replicas, seed)
    produced = {(partition.region, partition.parts) for partition in partitions}
    assert produced == expected_rat_splits(num_variables, depth, replicas, seed)


def test_rat_is_deterministic_for_a_seed() -> None:
    first = random_binary_trees(64, 3, 5, seed=42)
    second = random_binary_trees(64, 3, 5, seed=42)
    assert first == second
    assert repr(first) == repr(second)


def test_rat_differs_between_seeds() -> None:
    graphs = {repr(random_binary_trees(32, 3, 2, seed)[1]) for seed in range(10)}
    assert len(graphs) == 10


def test_rat_replicas_with_equal_scopes_stay_separate() -> None:
    # Two variables, depth 1: every replica splits into {0} and {1}, the same scopes each time.
    regions, partitions = random_binary_trees(2, depth=1, replicas=3, seed=0)
    ids = [region.id for region in regions]
    assert ids == [((0, 1), 0), ((0,), 1), ((0,), 2), ((0,), 3), ((1,), 1), ((1,), 2), ((1,), 3)]
    assert len(partitions) == 3


@pytest.mark.parametrize(
    ("arguments", "argument", "message"),
    [
        ((16, 0, 2, 0), "depth", "depth must be at least 1, found 0"),
        ((16, 2, 0, 0), "replicas", "replicas must be at least 1, found 0"),
        (
            (16, 5, 2, 0),
            "depth",
            "depth 5 needs at least 32 variables, the circuit has 16; expected depth at most 4",
        ),
        (
            (5, 3, 1, 0),
            "depth",
            "depth 3 needs at least 8 variables, the circuit has 5; expected depth at most 2",
        ),
        (
            (16, 100_000, 1, 0),
            "depth",
            "depth 100000 needs at least 2**100000 variables, the circuit has 16; "
            "expected depth at most 4",
        ),
        ((16, 2, 1, -1), "seed", "seed must be between 0 and 2**32 - 1, found -1"),
        (
            (1, 1, 1, 0),
            "random_binary_trees",
            "random_binary_trees needs at least 2 variables to split, the circuit has 1",
        ),
    ],
)
def test_rat_argument_errors(
    arguments: tuple[int, int, int, int], argument: str, message: str
) -> None:
    with pytest.raises(GeneratorArgumentError) as caught:
        random_binary_trees(*arguments)
    assert caught.value.argument == argument
    assert caught.value.message == message
    assert str(caught.value) == message


def test_rat_check_reports_every_error() -> None:
    errors = check_random_binary_trees(num_variables=1, depth=0, replicas=0, seed=2**32)
    assert [error.argument for error in errors] == [
        "depth",
        "replicas",
        "seed",
        "random_binary_trees",
    ]
    assert check_random_binary_trees(num_variables=8, depth=3, replicas=1, seed=0) == []


def test_generator_error_pickles_with_its_argument() -> None:
    error = GeneratorArgumentError("delta 5 does not divide the 28 columns of img", "delta")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.message, copy.argument, str(copy)) == (error.message, "delta", error.message)


# --------------------------------------------------------------------------------------------
# Poon-Domingos
# --------------------------------------------------------------------------------------------


def triangle(n: int) -> int:
    """Intervals of cells in a row of n cells: n(n+1)/2."""
    return n * (n + 1) // 2


def cut_sum(n: int) -> int:
    """Sum over those intervals of (length - 1), the cuts each has: C(n+1, 3)."""
    return sum((n - length + 1) * (length - 1) for length in range(1, n + 1))


def test_cut_sum_closed_form() -> None:
    assert [cut_sum(n) for n in range(1, 7)] == [math.comb(n + 1, 3) for n in range(1, 7)]


def rectangle_of(scope: tuple[int, ...], grid: np.ndarray) -> tuple[int, int, int, int]:
    """The (row0, row1, col0, col1) rectangle of the grid whose variables are exactly ``scope``."""
    position = {int(v): divmod(i, grid.shape[1]) for i, v in enumerate(grid.ravel())}
    rows = [position[v][0] for v in scope]
    columns = [position[v][1] for v in scope]
    rect = (min(rows), max(rows) + 1, min(columns), max(columns) + 1)
    block = grid[rect[0] : rect[1], rect[2] : rect[3]]
    assert sorted(int(v) for v in block.ravel()) == list(scope), "a region is not a rectangle"
    return rect


def shuffled_grid(height: int, width: int, seed: int) -> np.ndarray:
    """A grid whose variable numbers are not row-major (e.g. an image declared column-major)."""
    return np.random.RandomState(seed).permutation(height * width).reshape(height, width)


@st.composite
def single_delta_grids(draw: st.DrawFn) -> tuple[int, int, int, int, bool]:
    cells_down = draw(st.integers(1, 6))
    cells_across = draw(st.integers(1 if cells_down > 1 else 2, 6))
    delta = draw(st.integers(1, 3))
    shuffled = draw(st.booleans())
    return cells_down, cells_across, delta, draw(st.integers(0, 1000)), shuffled


@settings(max_examples=40, deadline=None)
@given(single_delta_grids())
def test_pd_both_axes_counts(arguments: tuple[int, int, int, int, bool]) -> None:
    n, m, delta, seed, shuffled = arguments
    height, width = n * delta, m * delta
    grid = (
        shuffled_grid(height, width, seed)
        if shuffled
        else np.arange(height * width).reshape(height, width)
    )
    regions, partitions = poon_domingos(grid, [delta], "both")

    assert len(regions) == triangle(n) * triangle(m)
    # Each a x b rectangle of cells has (a - 1) + (b - 1) cuts.
    assert len(partitions) == cut_sum(n) * triangle(m) + triangle(n) * cut_sum(m)
    leaves = leaf_ids(regions, partitions)
    assert len(leaves) == n * m
    for scope, _ in leaves:
        row0, row1, col0, col1 = rectangle_of(scope, grid)
        assert (row1 - row0, col1 - col0) == (delta, delta)
        assert row0 % delta == 0 and col0 % delta == 0
    check_smooth_and_decomposable(regions, partitions)
    check_canonical_order(regions, partitions)
    root: RegionId = (tuple(sorted(int(v) for v in grid.ravel())), 0)
    assert reachable(root, partitions) == {region.id for region in regions}


@pytest.mark.parametrize("axes", ["vertical", "horizontal"])
@settings(max_examples=20, deadline=None)
@given(cells=st.integers(2, 7), other=st.integers(1, 9), delta=st.integers(1, 4))
def test_pd_one_axis_counts(axes: str, cells: int, other: int, delta: int) -> None:
    # The cut axis has `cells` cells of delta pixels; the other axis is never cut, so its length
    # need not be a multiple of delta.
    shape = (other, cells * delta) if axes == "vertical" else (cells * delta, other)
    grid = np.arange(shape[0] * shape[1]).reshape(shape)
    regions, partitions = poon_domingos(grid, [delta], axes)

    # Only strips spanning the whole other axis: intervals of cells along the cut axis.
    assert len(regions) == triangle(cells)
    assert len(partitions) == cut_sum(cells)
    leaves = leaf_ids(regions, partitions)
    assert len(leaves) == cells
    for scope, _ in leaves:
        row0, row1, col0, col1 = rectangle_of(scope, grid)
        strip = (other, delta) if axes == "vertical" else (delta, other)
        assert (row1 - row0, col1 - col0) == strip
    check_smooth_and_decomposable(regions, partitions)


def test_pd_vertical_cuts_split_columns() -> None:
    grid = np.arange(2 * 4).reshape(2, 4)
    regions, partitions = poon_domingos(grid, [2], "vertical")
    assert [region.scope for region in regions] == [
        (0, 1, 2, 3, 4, 5, 6, 7),
        (0, 1, 4, 5),
        (2, 3, 6, 7),
    ]
    assert partitions == [
        Partition(((0, 1, 2, 3, 4, 5, 6, 7), 0), (((0, 1, 4, 5), 0), ((2, 3, 6, 7), 0)))
    ]
    _, horizontal = poon_domingos(grid.T.copy(), [1], "horizontal")
    _, vertical = poon_domingos(grid.T.copy(), [1], "vertical")
    assert len(horizontal) == cut_sum(4) and len(vertical) == cut_sum(2)


def test_pd_mnist_shares_subrectangles() -> None:
    regions, partitions = poon_domingos(MNIST, [7], "both")
    parent_counts = Counter({region: len(ps) for region, ps in parents(partitions).items()})
    # A 1x2 block of cells is cut out of a 2x2 block both along rows and along columns, etc.
    assert max(parent_counts.values()) >= 2
    assert sum(count >= 2 for count in parent_counts.values()) > len(regions) // 2
    root = (tuple(range(784)), 0)
    assert root not in parent_counts
    assert all(parent_counts[region.id] >= 1 for region in regions if region.id != root)


def naive_poon_domingos(
    grid: np.ndarray, deltas: list[int], axes: str
) -> set[tuple[RegionId, tuple[RegionId, ...]]]:
    """Literal 2-D search over rectangles, without the generator's per-axis factorisation."""

    scopes: dict[tuple[int, int, int, int], tuple[int, ...]] = {}

    def scope(rect: tuple[int, int, int, int]) -> tuple[int, ...]:
        if rect not in scopes:
            block = grid[rect[0] : rect[1], rect[2] : rect[3]]
            scopes[rect] = tuple(sorted(int(v) for v in block.ravel()))
        return scopes[rect]

    directions = {"vertical": (1,), "horizontal": (0,), "both": (0, 1)}[axes]
    seen: set[tuple[int, int, int, int]] = set()
    splits: set[tuple[RegionId, tuple[RegionId, ...]]] = set()
    pending = [(0, grid.shape[0], 0, grid.shape[1])]
    while pending:
        rect = pending.pop()
        if rect in seen:
            continue
        seen.add(rect)
        row0, row1, col0, col1 = rect
        for axis in directions:
            start, stop = (row0, row1) if axis == 0 else (col0, col1)
            for position in range(start + 1, stop):
                if not any((position - start) % delta == 0 for delta in deltas):
                    continue
                if axis == 0:
                    first, second = (row0, position, col0, col1), (position, row1, col0, col1)
                else:
                    first, second = (row0, row1, col0, position), (row0, row1, position, col1)
                splits.add(((scope(rect), 0), ((scope(first), 0), (scope(second), 0))))
                pending += [first, second]
    return splits


@settings(max_examples=40, deadline=None)
@given(
    deltas=st.lists(st.sampled_from([1, 2, 3, 4, 6]), min_size=1, max_size=3),
    rows=st.sampled_from([1, 2, 3, 4]),
    columns=st.sampled_from([1, 2, 3, 4]),
    axes=st.sampled_from(["vertical", "horizontal", "both"]),
    shuffled=st.booleans(),
)
def test_pd_matches_naive_search(
    deltas: list[int], rows: int, columns: int, axes: str, shuffled: bool
) -> None:
    # Grid sides are multiples of every delta (lcm), times a small factor; small enough for the
    # naive search.
    unit = math.lcm(*deltas)
    height, width = unit * rows, unit * columns
    assume(height <= 12 and width <= 12)
    grid = (
        shuffled_grid(height, width, 0)
        if shuffled
        else np.arange(height * width).reshape(height, width)
    )
    if check_poon_domingos(grid, deltas, axes):
        return  # e.g. a 1x1-cell grid along the cut axis: no cut at all (tested below)
    regions, partitions = poon_domingos(grid, deltas, axes)
    assert {(p.region, p.parts) for p in partitions} == naive_poon_domingos(grid, deltas, axes)
    assert len(partitions) == len({(p.region, p.parts) for p in partitions}), "duplicate partition"
    check_smooth_and_decomposable(regions, partitions)
    check_canonical_order(regions, partitions)
    root: RegionId = (tuple(sorted(int(v) for v in grid.ravel())), 0)
    assert reachable(root, partitions) == {region.id for region in regions}


def test_pd_several_deltas_cut_at_each_position_once() -> None:
    grid = np.arange(8).reshape(1, 8)
    _, partitions = poon_domingos(grid, [2, 4], "vertical")
    root = (tuple(range(8)), 0)
    cuts = [len(p.parts[0][0]) for p in partitions if p.region == root]
    assert cuts == [2, 4, 6]  # 4 and 8 (from 4) coincide with multiples of 2: no duplicates


def test_pd_mnist_with_two_deltas() -> None:
    regions, partitions = poon_domingos(MNIST, [7, 4], "both")
    # Offsets are measured from each rectangle's own start, so a 4-cut of a 7-wide strip leaves a
    # 3-wide one: rectangles are not aligned to a single cell grid.
    widths = {len({int(v) % 28 for v in region.scope}) for region in regions}
    assert 3 in widths and 7 in widths and 4 in widths
    check_smooth_and_decomposable(regions, partitions)
    # The two axes close independently: every row interval pairs with every column interval.
    column_intervals = len(poon_domingos(MNIST, [7, 4], "vertical")[0])
    assert len(regions) == column_intervals**2


@pytest.mark.parametrize(
    ("shape", "deltas", "axes", "argument", "message"),
    [
        ((28, 28), [5], "vertical", "delta", "delta 5 does not divide the 28 columns of img"),
        ((30, 28), [4], "both", "delta", "delta 4 does not divide the 30 rows of img"),
        ((1, 28), [7], "both", "delta", "delta 7 does not divide the 1 row of img"),
        ((28, 28), [0], "both", "delta", "delta must be at least 1, found 0"),
        ((28, 28), [], "both", "delta", "delta needs at least one step size"),
        (
            (28, 28),
            [7],
            "diagonal",
            "axes",
            "unknown axes 'diagonal'; expected one of vertical, horizontal, both",
        ),
        (
            (1, 1),
            [1],
            "both",
            "over",
            "poon_domingos needs a grid of at least 1x2 variables; img is 1x1",
        ),
        (
            (16,),
            [4],
            "both",
            "over",
            "poon_domingos needs a 2-D grid of variables; img has 1 dimension",
        ),
        (
            (28, 28),
            [28],
            "both",
            "delta",
            "delta [28] leaves no cut inside the 28x28 grid img (axes = both); use a smaller delta",
        ),
        (
            (1, 8),
            [1],
            "horizontal",
            "delta",
            (
                "delta [1] leaves no cut inside the 1x8 grid img (axes = horizontal); "
                "use a smaller delta"
            ),
        ),
    ],
)
def test_pd_argument_errors(
    shape: tuple[int, ...], deltas: list[int], axes: str, argument: str, message: str
) -> None:
    grid = np.arange(math.prod(shape)).reshape(shape)
    with pytest.raises(GeneratorArgumentError) as caught:
        poon_domingos(grid, deltas, axes, name="img")
    assert (caught.value.argument, caught.value.message) == (argument, message)


def test_pd_delta_need_only_divide_the_cut_axes() -> None:
    grid = np.arange(30 * 28).reshape(30, 28)
    regions, _ = poon_domingos(grid, [7], "vertical")  # 30 rows are never cut
    assert len(regions) == triangle(4)


def test_pd_check_reports_every_error() -> None:
    errors = check_poon_domingos(MNIST, [5, 3, 0, 7], "both", name="img")
    assert [error.message for error in errors] == [
        "delta 5 does not divide the 28 rows of img",
        "delta 5 does not divide the 28 columns of img",
        "delta 3 does not divide the 28 rows of img",
        "delta 3 does not divide the 28 columns of img",
        "delta must be at least 1, found 0",
    ]


def test_pd_rejects_a_variable_listed_twice() -> None:
    grid = np.array([[0, 1], [1, 2]])
    with pytest.raises(GeneratorArgumentError, match="lists a variable more than once"):
        poon_domingos(grid, [1], "both", name="img")


def test_pd_is_deterministic() -> None:
    assert repr(poon_domingos(MNIST, [7, 4], "vertical")) == repr(
        poon_domingos(MNIST, [7, 4], "vertical")
    )


def test_docstring_examples_run() -> None:
    result = doctest.testmod(generators)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------------------------
# Through the verifier, as the pipeline does
# --------------------------------------------------------------------------------------------


def _graph(num_variables: int, regions: list[Region], partitions: list[Partition]) -> RegionGraph:
    variables = tuple(
        Variable(i, f"x[{i}]", Domain("binary", 2), LeafFamily("bernoulli"), column=i)
        for i in range(num_variables)
    )
    return RegionGraph("generated", variables, tuple(regions), tuple(partitions), sums=3, inputs=2)


@settings(max_examples=15, deadline=None)
@given(rat_arguments())
def test_rat_graphs_verify(arguments: tuple[int, int, int, int]) -> None:
    num_variables = arguments[0]
    assert verify(_graph(num_variables, *random_binary_trees(*arguments))) == []


@pytest.mark.parametrize(
    ("deltas", "axes"), [([7], "both"), ([4], "both"), ([7, 4], "both"), ([4], "vertical")]
)
def test_pd_graphs_verify(deltas: list[int], axes: str) -> None:
    assert verify(_graph(784, *poon_domingos(MNIST, deltas, axes))) == []
