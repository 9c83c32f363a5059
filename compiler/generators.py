"""Structure generators: region graphs built from a few arguments instead of written out.

Two generators as used by Einsum Networks (paper §4.1 and §4.2), and one for learned trees:

- ``random_binary_trees`` — RAT-SPNs (Peharz et al., 2019): R random balanced binary trees of
  split-depth D over all variables, mixed at a shared root.
- ``poon_domingos`` — the PD structure (Poon & Domingos, 2011) over a 2-D grid of variables:
  every rectangle is split in two at every multiple of a step size ``delta``; sub-rectangles are
  shared between parents, so the result is a DAG.
- ``tree`` — a tree over the variables given by a parent list (a Chow–Liu tree, or the backbone of
  a hidden Chow–Liu tree, HCLT; Liu & Van den Broeck 2021): every tree node's region is its
  subtree, partitioned into the node's own variable and each child's subtree (n-ary partitions,
  meant for ``product hadamard``). ``einc learn-structure`` writes these parent lists.

Both return ``(regions, partitions)`` in a deterministic order: regions sorted by
``region_sort_key``, partitions grouped by region in the same order and, within one region, in
generation order (replica for RAT, axis then cut position for PD). Bad arguments raise
``GeneratorArgumentError``; ``check_random_binary_trees`` / ``check_poon_domingos`` return every
argument error at once, so a caller can report all of them.

>>> regions, partitions = random_binary_trees(num_variables=4, depth=1, replicas=2, seed=0)
>>> len(regions), len(partitions)
(5, 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..ir.region_graph import Partition, Region, RegionId, region_sort_key

AXES = ("vertical", "horizontal", "both")
_MAX_SEED = 2**32 - 1  # numpy.random.RandomState accepts seeds in [0, 2**32 - 1]


class GeneratorArgumentError(Exception):
    """A generator argument the structure cannot be built from.

    ``argument`` is the keyword of the ``structure`` statement the error is about (``depth``,
    ``replicas``, ``seed``, ``delta``, ``axes``, ``over``) so that the caller can point at it; it is
    the generator's name (``random_binary_trees``) when the problem is the circuit as a whole.
    """

    def __init__(self, message: str, argument: str) -> None:
        super().__init__(message)
        self.message = message
        self.argument = argument

    def __reduce__(self) -> tuple[type[GeneratorArgumentError], tuple[str, str]]:
        # Exceptions pickle through ``args``, which holds only the message; keep the keyword too
        # (errors cross process boundaries in parallel test runs).
        return (type(self), (self.message, self.argument))

    def __repr__(self) -> str:
        return f"GeneratorArgumentError({self.message!r}, argument={self.argument!r})"


# --------------------------------------------------------------------------------------------
# Random binary trees (RAT-SPN)
# --------------------------------------------------------------------------------------------


def check_random_binary_trees(
    num_variables: int, depth: int, replicas: int, seed: int
) -> list[GeneratorArgumentError]:
    """Every reason ``random_binary_trees`` cannot be built with these arguments (empty if none)."""
    errors: list[GeneratorArgumentError] = []
    if depth < 1:
        errors.append(GeneratorArgumentError(f"depth must be at least 1, found {depth}", "depth"))
    if replicas < 1:
        errors.append(
            GeneratorArgumentError(f"replicas must be at least 1, found {replicas}", "replicas")
        )
    if not 0 <= seed <= _MAX_SEED:
        errors.append(
            GeneratorArgumentError(f"seed must be between 0 and 2**32 - 1, found {seed}", "seed")
        )
    if num_variables < 2:
        errors.append(
            GeneratorArgumentError(
                f"random_binary_trees needs at least 2 variables to split, "
                f"the circuit has {num_variables}",
                "random_binary_trees",
            )
        )
    elif depth >= num_variables.bit_length():
        # Balanced halving leaves every one of the 2**depth leaves non-empty exactly when there
        # are at least 2**depth variables; a larger depth would produce empty scopes. (Compared
        # by bit length: 2**depth of an absurd depth is a number too long to print.)
        needed = f"{2**depth}" if depth < 64 else f"2**{depth}"
        errors.append(
            GeneratorArgumentError(
                f"depth {depth} needs at least {needed} variables, "
                f"the circuit has {num_variables}; expected depth at most "
                f"{num_variables.bit_length() - 1}",
                "depth",
            )
        )
    return errors


def random_binary_trees(
    num_variables: int, depth: int, replicas: int, seed: int
) -> tuple[list[Region], list[Partition]]:
    """RAT-SPN region graph: ``replicas`` random balanced binary trees mixed at the root.

    For each replica r (in order) one random permutation of the variables is drawn from a single
    ``numpy.random.RandomState(seed)``; the permuted order is halved recursively with
    ``numpy.array_split`` semantics (the first half gets the extra variable) for ``depth`` levels,
    giving ``2**depth`` leaf regions per replica whose sizes differ by at most one. Halving one
    permutation is the same distribution over trees as EiNet's fresh shuffle per region, and
    needs a single draw per replica.

    The root (all variables, copy 0) is shared and gets one partition per replica. Every other
    region of replica r has ``copy = r + 1``, so equal scopes in different replicas remain separate
    regions with their own parameters, as in the RAT-SPN and EiNet code.

    Counts: regions ``1 + R * (2**(D+1) - 2)``, partitions ``R * (2**D - 1)``, leaves ``R * 2**D``.

    >>> regions, partitions = random_binary_trees(8, depth=2, replicas=3, seed=1)
    >>> len(regions), len(partitions), sum(len(r.scope) == 2 for r in regions)
    (19, 9, 12)
    """
    errors = check_random_binary_trees(num_variables, depth, replicas, seed)
    if errors:
        raise errors[0]

    rng = np.random.RandomState(seed)
    root: RegionId = (tuple(range(num_variables)), 0)
    regions: dict[RegionId, Region] = {root: Region(root[0], 0)}
    partitions: list[Partition] = []
    for replica in range(replicas):
        copy = replica + 1
        order: list[int] = [int(v) for v in rng.permutation(num_variables)]
        # Each entry: the region to split, its variables in permuted order, its level (root = 0).
        stack: list[tuple[RegionId, list[int], int]] = [(root, order, 0)]
        while stack:
            region_id, variables, level = stack.pop()
            halves = _halve(variables)
            parts: list[RegionId] = []
            for half in halves:
                part_id: RegionId = (tuple(sorted(half)), copy)
                # Within one replica the tree's scopes are disjoint at each level, and a scope
                # cannot recur at another level (it would be a strict subset of itself).
                assert part_id not in regions, part_id
                regions[part_id] = Region(part_id[0], copy)
                parts.append(part_id)
                if level + 1 < depth:
                    stack.append((part_id, half, level + 1))
            partitions.append(Partition(region_id, tuple(parts)))
    return canonical_order(regions.values(), partitions)


def _halve(variables: list[int]) -> tuple[list[int], list[int]]:
    """``numpy.array_split(variables, 2)`` on a list: the first half takes the odd element."""
    middle = (len(variables) + 1) // 2
    return variables[:middle], variables[middle:]


# --------------------------------------------------------------------------------------------
# Poon-Domingos
# --------------------------------------------------------------------------------------------

Interval = tuple[int, int]  # [start, stop) in rows or columns of the grid


@dataclass(frozen=True)
class _AxisSplits:
    """Every interval of one axis reachable by cutting from the full axis, with its cuts.

    Cuts along one axis never change the interval on the other, and which cuts a rectangle has
    along an axis depends only on its interval there; so the reachable rectangles are exactly the
    product of the two axes' reachable intervals, and each axis can be closed on its own in 1-D.
    """

    intervals: tuple[Interval, ...]  # every reachable interval, sorted
    # splits[i]: one (first part, second part) pair of interval numbers per cut of intervals[i],
    # by cut position; empty when intervals[i] cannot be cut along this axis.
    splits: tuple[tuple[tuple[int, int], ...], ...]


def check_poon_domingos(
    grid: np.ndarray, deltas: Sequence[int], axes: str, *, name: str = "the grid"
) -> list[GeneratorArgumentError]:
    """Every reason ``poon_domingos`` cannot be built with these arguments (empty if none)."""
    grid = np.asarray(grid)
    errors: list[GeneratorArgumentError] = []
    if axes not in AXES:
        errors.append(
            GeneratorArgumentError(
                f"unknown axes {axes!r}; expected one of vertical, horizontal, both", "axes"
            )
        )
    if grid.ndim != 2:
        errors.append(
            GeneratorArgumentError(
                f"poon_domingos needs a 2-D grid of variables; {name} has {grid.ndim} "
                f"dimension{'' if grid.ndim == 1 else 's'}",
                "over",
            )
        )
        return errors  # every further check reads the two axes
    height, width = grid.shape
    if height * width < 2:
        errors.append(
            GeneratorArgumentError(
                f"poon_domingos needs a grid of at least 1x2 variables; {name} is {height}x{width}",
                "over",
            )
        )
    elif len(np.unique(grid)) != grid.size:
        errors.append(GeneratorArgumentError(f"{name} lists a variable more than once", "over"))
    if not deltas:
        errors.append(GeneratorArgumentError("delta needs at least one step size", "delta"))
    if errors:
        return errors

    allowed = allowed_axes(axes)
    for delta in deltas:
        if delta < 1:
            errors.append(
                GeneratorArgumentError(f"delta must be at least 1, found {delta}", "delta")
            )
            continue
        for axis in allowed:
            length = grid.shape[axis]
            if length % delta != 0:
                # A delta that does not divide the axis leaves a ragged last strip the paper's
                # construction never produces; ask for a divisor instead of guessing.
                errors.append(
                    GeneratorArgumentError(
                        f"delta {delta} does not divide the {_count(length, _AXIS_NOUN[axis])} "
                        f"of {name}",
                        "delta",
                    )
                )
    if errors:
        return errors
    if not any(any(0 < delta < grid.shape[axis] for delta in deltas) for axis in allowed):
        # Every delta equals its axis: the root has no cut, the "structure" is one leaf region.
        shown = ", ".join(str(d) for d in deltas)
        errors.append(
            GeneratorArgumentError(
                f"delta [{shown}] leaves no cut inside the {height}x{width} grid {name} "
                f"(axes = {axes}); use a smaller delta",
                "delta",
            )
        )
    return errors


def poon_domingos(
    grid: np.ndarray, deltas: Sequence[int], axes: str, *, name: str = "the grid"
) -> tuple[list[Region], list[Partition]]:
    """Poon-Domingos region graph over a 2-D ``grid`` of variable indices (shape ``(H, W)``).

    Starting from the full rectangle, a rectangle is split into two sub-rectangles at every offset
    from its start that is a positive multiple of some delta and lies strictly inside it, along
    the allowed axes: ``"vertical"`` cut lines split the columns (left | right), ``"horizontal"``
    ones the rows (top / bottom), ``"both"`` both. Each (rectangle, cut) is one partition, parts
    ordered left before right / top before bottom. A rectangle with no cut is a leaf region.
    Sub-rectangles are shared between all parents (copy 0, keyed by scope), so the graph is a DAG.
    ``name`` is the grid's variable, used in error messages.

    With one delta dividing the grid into n x m cells and axes ``both`` there are
    ``n(n+1)/2 * m(m+1)/2`` regions (every rectangle of cells) and ``n*m`` leaves (the cells).

    >>> grid = np.arange(16).reshape(4, 4)
    >>> regions, partitions = poon_domingos(grid, [2], "both")
    >>> len(regions), len(partitions), sum(len(r.scope) == 4 for r in regions)
    (9, 6, 4)
    """
    errors = check_poon_domingos(grid, deltas, axes, name=name)
    if errors:
        raise errors[0]

    height, width = grid.shape
    allowed = allowed_axes(axes)
    steps = sorted({int(d) for d in deltas})
    rows = _close_axis(height, steps if 0 in allowed else [])
    columns = _close_axis(width, steps if 1 in allowed else [])

    # Rectangle (i, j) = rows.intervals[i] x columns.intervals[j] gets the flat number
    # i * num_columns + j; scopes are built once per rectangle, everything else is integers.
    num_columns = len(columns.intervals)
    values = np.asarray(grid, dtype=np.int64)
    row_major_sorted = bool(np.all(np.diff(values.ravel()) > 0))
    ids: list[RegionId] = []
    for row_start, row_stop in rows.intervals:
        for column_start, column_stop in columns.intervals:
            block = values[row_start:row_stop, column_start:column_stop].ravel()
            if not row_major_sorted:  # the common row-major grid is already in index order
                block = np.sort(block)
            ids.append((tuple(block.tolist()), 0))

    # Emitting partitions region by region in canonical order spares sorting ~10^5 partitions.
    ordered = sorted(range(len(ids)), key=lambda rect: region_sort_key(ids[rect]))
    regions = [Region(ids[rect][0], 0) for rect in ordered]
    partitions: list[Partition] = []
    for rect in ordered:
        row, column = divmod(rect, num_columns)
        region_id = ids[rect]
        for top, bottom in rows.splits[row]:
            top_id, bottom_id = ids[top * num_columns + column], ids[bottom * num_columns + column]
            partitions.append(Partition(region_id, (top_id, bottom_id)))
        base = row * num_columns
        for left, right in columns.splits[column]:
            partitions.append(Partition(region_id, (ids[base + left], ids[base + right])))
    return regions, partitions


_AXIS_NOUN = {0: "row", 1: "column"}


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def allowed_axes(axes: str) -> tuple[int, ...]:
    """Grid axes that may be cut: vertical cut lines split axis 1 (columns), horizontal axis 0."""
    return {"vertical": (1,), "horizontal": (0,), "both": (0, 1)}[axes]


def _close_axis(length: int, steps: Sequence[int]) -> _AxisSplits:
    """Intervals of ``[0, length)`` reachable by cutting at multiples of ``steps`` from a start."""
    cuts: dict[Interval, tuple[int, ...]] = {}
    pending: list[Interval] = [(0, length)]
    while pending:
        interval = pending.pop()
        if interval in cuts:
            continue
        start, stop = interval
        # Several deltas can name the same position (4 and 8 both cut at 8): one partition each.
        positions = tuple(sorted({p for s in steps for p in range(start + s, stop, s)}))
        cuts[interval] = positions
        for position in positions:
            pending.append((start, position))
            pending.append((position, stop))
    intervals = tuple(sorted(cuts))
    number = {interval: index for index, interval in enumerate(intervals)}
    splits = tuple(
        tuple((number[(start, cut)], number[(cut, stop)]) for cut in cuts[(start, stop)])
        for start, stop in intervals
    )
    return _AxisSplits(intervals, splits)


# --------------------------------------------------------------------------------------------


def canonical_order(
    regions: Iterable[Region], partitions: list[Partition]
) -> tuple[list[Region], list[Partition]]:
    """Regions by ``region_sort_key``; partitions grouped by region in that order, stable within."""
    ordered_regions = sorted(regions, key=lambda region: region_sort_key(region.id))
    ordered_partitions = sorted(partitions, key=lambda partition: region_sort_key(partition.region))
    return ordered_regions, ordered_partitions


# --------------------------------------------------------------------------------------------
# Trees from a parent list (Chow-Liu trees, HCLTs)
# --------------------------------------------------------------------------------------------


def check_tree(parents: Sequence[int], names: Sequence[str]) -> list[GeneratorArgumentError]:
    """Every reason ``parents`` is not a tree over the ``len(names)`` variables (empty if none).

    ``parents[v]`` is the parent variable of variable ``v``; the root has ``-1``.
    """
    count = len(names)
    errors: list[GeneratorArgumentError] = []
    if len(parents) != count:
        errors.append(
            GeneratorArgumentError(
                f"parents has {len(parents)} entries; expected one per variable ({count}), in "
                "declaration order, -1 for the root",
                "parents",
            )
        )
        return errors
    if count < 2:
        errors.append(
            GeneratorArgumentError(
                f"tree needs at least 2 variables to split, the circuit has {count}", "tree"
            )
        )
        return errors
    for v, parent in enumerate(parents):
        if parent == v:
            errors.append(
                GeneratorArgumentError(
                    f"parents[{v}] = {v}: variable {names[v]} cannot be its own parent", "parents"
                )
            )
        elif not -1 <= parent < count:
            errors.append(
                GeneratorArgumentError(
                    f"parents[{v}] = {parent} is not a variable; expected -1 (the root) or "
                    f"0..{count - 1}",
                    "parents",
                )
            )
    roots = [v for v, parent in enumerate(parents) if parent == -1]
    if len(roots) != 1:
        listed = ", ".join(names[v] for v in roots[:4]) + (" ..." if len(roots) > 4 else "")
        found = f"{len(roots)} ({listed})" if roots else "none"
        errors.append(
            GeneratorArgumentError(
                f"a tree has exactly one root (parent -1); found {found}", "parents"
            )
        )
    if errors:
        return errors
    # Every variable must reach the root: walking up from any node meets no node twice.
    state = [0] * count  # 0 unvisited, 1 on the current walk, 2 known to reach the root
    state[roots[0]] = 2
    for start in range(count):
        walk = []
        v = start
        while state[v] == 0:
            state[v] = 1
            walk.append(v)
            v = parents[v]
        if state[v] == 1:
            cycle = walk[walk.index(v) :] + [v]
            errors.append(
                GeneratorArgumentError(
                    "parents make a cycle, not a tree: "
                    + " -> ".join(names[u] for u in cycle[:8])
                    + (" -> ..." if len(cycle) > 8 else ""),
                    "parents",
                )
            )
            return errors
        for u in walk:
            state[u] = 2
    return errors


def tree(parents: Sequence[int]) -> tuple[list[Region], list[Partition]]:
    """The region graph of a tree over variables 0..V-1 given by ``parents`` (root: -1).

    Every tree node v is the region of its subtree's variables; an inner node has one partition,
    ``subtree(v) -> {v} * subtree(c1) * ... * subtree(cm)`` over its children c. A tree leaf's
    subtree is the leaf region ``{v}``. With ``product hadamard`` and K states per region this is
    a hidden Chow–Liu tree (the K entries of subtree(v)'s vector are the states of v's parent's
    hidden variable, the element-wise product runs over the states of v's own); with indicator
    leaves on inner nodes and K = their number of categories it is a Chow–Liu tree.

    >>> regions, partitions = tree([-1, 0, 0, 1])
    >>> [r.scope for r in regions], [[part[0] for part in p.parts] for p in partitions]
    ([(0, 1, 2, 3), (1, 3), (0,), (1,), (2,), (3,)], [[(0,), (1, 3), (2,)], [(1,), (3,)]])
    """
    names = [f"variable {v}" for v in range(len(parents))]
    errors = check_tree(parents, names)
    if errors:
        raise errors[0]
    count = len(parents)
    children: list[list[int]] = [[] for _ in range(count)]
    for v, parent in enumerate(parents):
        if parent >= 0:
            children[parent].append(v)
    root = parents.index(-1)
    # subtree scopes bottom-up: a post-order of an explicit stack (trees can be deep: no recursion)
    order: list[int] = []
    stack = [root]
    while stack:
        v = stack.pop()
        order.append(v)
        stack.extend(children[v])
    scope: list[tuple[int, ...]] = [()] * count
    for v in reversed(order):
        scope[v] = tuple(sorted([v, *(u for c in children[v] for u in scope[c])]))
    regions: dict[RegionId, Region] = {}
    partitions: list[Partition] = []
    for v in order:
        regions[(scope[v], 0)] = Region(scope[v], 0)
        if not children[v]:
            continue
        regions[((v,), 0)] = Region((v,), 0)
        parts = sorted([((v,), 0), *((scope[c], 0) for c in children[v])])
        partitions.append(Partition((scope[v], 0), tuple(parts)))
    return canonical_order(regions.values(), partitions)
