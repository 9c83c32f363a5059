"""Patch circuits under a circuit over the patches (LVD: a latent per patch).

``patch_trees`` tiles a 2-D grid of variables into h×w patches, builds a circuit per patch
(a binarised tree over the patch positions, an HCLT with ``patch_product = hadamard``, or a k-d
tree) and joins the patches with a
Poon–Domingos structure over the grid of patches, so that each patch is one region of the
circuit — the region a latent per patch names (LVD paper §5). Same conventions as
``generators``: deterministic order, ``GeneratorArgumentError`` for bad arguments,
``check_patch_trees`` returning every argument error at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..ir.products import PRODUCT_KINDS
from ..ir.region_graph import Partition, Region, RegionId
from .generators import GeneratorArgumentError, canonical_order, check_tree, poon_domingos, tree


def check_patch_trees(
    grid: np.ndarray, size: Sequence[int], parents: Sequence[int] | None, *, name: str = "the grid"
) -> list[GeneratorArgumentError]:
    """Every reason ``patch_trees`` cannot be built with these arguments (empty if none)."""
    grid = np.asarray(grid)
    if grid.ndim != 2:
        return [GeneratorArgumentError(
            f"patch_trees needs a 2-D grid of variables; {name} has {grid.ndim} dimension"
            f"{'' if grid.ndim == 1 else 's'}", "over")]
    height, width = grid.shape
    if len(size) != 2 or any(s < 1 for s in size) or height % size[0] or width % size[1]:
        return [GeneratorArgumentError(
            f"patch size {list(size)} does not tile {name} ({height}x{width}); expected [h, w] "
            f"with h dividing {height} and w dividing {width}", "size")]
    if (height // size[0]) * (width // size[1]) < 2:
        return [GeneratorArgumentError(
            f"patch size {list(size)} leaves one patch of {name}: nothing to join above it; "
            f"expected a smaller patch", "size")]
    if parents is None:
        return []
    positions = [f"position {p} (row {p // size[1]}, column {p % size[1]})" for p in range(size[0] * size[1])]
    return check_tree(parents, positions)


def patch_trees(
    grid: np.ndarray, size: Sequence[int], parents: Sequence[int] | None = None, *,
    patch_product: str | None = None, name: str = "the grid"
) -> tuple[list[Region], list[Partition]]:
    """A circuit per h×w patch tiling ``grid``, joined by a Poon–Domingos structure over the patches.

    Above the patches: every rectangle of whole patches is a region, split at every patch
    boundary inside it (``poon_domingos`` over the grid of patches with delta 1), so each patch
    is one region of the circuit — the region a latent per patch (``latent patches(size = …)``)
    names — and the circuit over the patches is p(z) once the patches' units are read as z.

    Below each patch, its own circuit down to single pixels, binary partitions (outer products):

    - ``parents`` given (a tree over the h·w positions of a patch, row-major, −1 for the root; a
      Chow–Liu tree learned from the data's patches, as ``einc learn-structure`` writes for a
      whole image): every position v is the region of its subtree, split as {v} × (children's
      subtrees), the children joined one at a time — subtree(v) → {v} * rest₁, rest₁ →
      subtree(c₁) * rest₂, … — so the tree's dependencies are what the circuit multiplies last.
      One tree serves every patch (the patches are alike: LVD paper §5).
    - no ``parents``: a k-d tree — the rectangle split in half, the longer side first.

    Either way a patch of n pixels has n − 1 partitions.

    ``patch_product`` (a key of ``ir.products.PRODUCT_KINDS``; None: the circuit's ``product``)
    is the product kind of the partitions inside the patches, stored on each of them
    (``Partition.product``); the partitions over the patches keep the circuit's kind. With
    ``hadamard`` and ``parents`` each patch is a hidden Chow–Liu tree (HCLT): the partitions of
    ``generators.tree`` — subtree(v) → {v} * subtree(c₁) * … * subtree(c_m), every child at once,
    as element-wise products take any number of parts — so the patch circuits are HCLTs while
    the circuit over the patches stays an outer-product PD (``patch_product = hadamard`` under the
    default ``product outer``). With ``hadamard`` and no ``parents``, the k-d tree's halves are
    multiplied element-wise.

    >>> regions, partitions = patch_trees(np.arange(16).reshape(4, 4), [2, 2])
    >>> len(regions), len(partitions), sum(len(r.scope) == 4 for r in regions)
    (33, 18, 4)
    >>> regions, partitions = patch_trees(np.arange(16).reshape(4, 4), [2, 2], [-1, 0, 0, 1], patch_product="hadamard")
    >>> len(regions), len(partitions), sorted({p.product or "circuit's" for p in partitions})
    (29, 14, ["circuit's", 'hadamard'])
    """
    errors = check_patch_trees(grid, size, parents, name=name)
    if errors:
        raise errors[0]
    values = np.asarray(grid, dtype=np.int64)
    h, w = int(size[0]), int(size[1])
    rows, columns = values.shape[0] // h, values.shape[1] // w
    blocks = [values[r * h:(r + 1) * h, c * w:(c + 1) * w] for r in range(rows) for c in range(columns)]
    cells = [tuple(sorted(block.ravel().tolist())) for block in blocks]
    regions: dict[RegionId, Region] = {}
    partitions: list[Partition] = []

    def pixels(scope_of_patches: Sequence[int]) -> RegionId:
        return (tuple(sorted(v for p in scope_of_patches for v in cells[p])), 0)

    if rows * columns >= 2:  # the circuit over the patches: PD over the grid of patch numbers
        top_regions, top_partitions = poon_domingos(np.arange(rows * columns).reshape(rows, columns), [1], "both")
        for region in top_regions:
            regions[pixels(region.scope)] = Region(pixels(region.scope)[0], 0)
        for partition in top_partitions:
            partitions.append(Partition(pixels(partition.region[0]), tuple(pixels(p[0]) for p in partition.parts)))
    for block in blocks:
        inside: list[Partition] = []
        if parents is None:
            _kd_patch(block, regions, inside)
        elif patch_product is not None and PRODUCT_KINDS[patch_product].max_parts is None:
            _hclt_patch(block.ravel().tolist(), parents, regions, inside)
        else:
            _tree_patch(block.ravel().tolist(), parents, regions, inside)
        partitions += inside if patch_product is None else [replace(p, product=patch_product) for p in inside]
    return canonical_order(regions.values(), partitions)


def _add(regions: dict[RegionId, Region], partitions: list[Partition], whole: Sequence[int],
         parts: Sequence[Sequence[int]]) -> None:
    ids = [(tuple(sorted(int(v) for v in part)), 0) for part in (whole, *parts)]
    for region_id in ids:
        regions.setdefault(region_id, Region(region_id[0], 0))
    partitions.append(Partition(ids[0], tuple(ids[1:])))


def _kd_patch(block: np.ndarray, regions: dict[RegionId, Region], partitions: list[Partition]) -> None:
    """Halve the rectangle ``block`` (the longer side first; rows on a tie) down to single pixels."""
    stack = [block]
    while stack:
        rect = stack.pop()
        height, width = rect.shape
        if height * width == 1:
            regions.setdefault(((int(rect[0, 0]),), 0), Region((int(rect[0, 0]),), 0))
            continue
        halves = ((rect[: height // 2], rect[height // 2:]) if height >= width
                  else (rect[:, : width // 2], rect[:, width // 2:]))
        _add(regions, partitions, rect.ravel(), [half.ravel() for half in halves])
        stack.extend(halves)


def _hclt_patch(variables: list[int], parents: Sequence[int], regions: dict[RegionId, Region],
                partitions: list[Partition]) -> None:
    """``generators.tree`` (the HCLT's n-ary partitions) over one patch: position p of the patch
    is variable ``variables[p]``."""
    tree_regions, tree_partitions = tree(parents)

    def placed(region: RegionId) -> RegionId:
        return (tuple(sorted(variables[p] for p in region[0])), 0)

    for region in tree_regions:
        regions.setdefault(placed(region.id), Region(placed(region.id)[0], 0))
    partitions += [Partition(placed(p.region), tuple(sorted(placed(part) for part in p.parts)))
                   for p in tree_partitions]


def _tree_patch(variables: list[int], parents: Sequence[int], regions: dict[RegionId, Region],
                partitions: list[Partition]) -> None:
    """The binarised tree: position p of the patch is variable ``variables[p]``."""
    count = len(parents)
    children: list[list[int]] = [[] for _ in range(count)]
    for v, parent in enumerate(parents):
        if parent >= 0:
            children[parent].append(v)
    root = list(parents).index(-1)
    order, stack = [], [root]
    while stack:  # pre-order without recursion (a chain of 49 positions is deep)
        v = stack.pop()
        order.append(v)
        stack.extend(children[v])
    subtree: list[list[int]] = [[] for _ in range(count)]
    for v in reversed(order):
        subtree[v] = [variables[v], *(u for c in children[v] for u in subtree[c])]
    for v in order:
        if not children[v]:
            regions.setdefault(((variables[v],), 0), Region((variables[v],), 0))
            continue
        rest = [subtree[c] for c in children[v]]
        _add(regions, partitions, subtree[v], [[variables[v]], [u for part in rest for u in part]])
        while len(rest) >= 2:  # rest_i -> subtree(c_i) * rest_{i+1}
            _add(regions, partitions, [u for part in rest for u in part],
                 [rest[0], [u for part in rest[1:] for u in part]])
            rest = rest[1:]
