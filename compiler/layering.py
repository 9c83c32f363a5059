"""Topological layers of a region graph: Algorithm 1 of the EiNet paper (appendix A).

In the paper's computational graph, internal regions are sum nodes, partitions are product nodes
(each with exactly one parent, its region) and leaf regions are leaves. From the root down, the
algorithm alternately takes every sum node whose parent products are all placed, then every
product whose sum is placed; the leaves form the bottom layer. Read bottom-up, every node's
inputs lie in strictly lower layers, and each product layer sits directly under the sum layer of
its regions, so the pair is one einsum layer. A sum region with several partitions is computed as
one simple sum per partition followed by a mixing layer (appendix B); ``SumLayer.mixing`` lists
those regions.

Order inside a layer is canonical (``region_sort_key`` for regions, index for partitions), so the
layered circuit, and every dump of it, is the same on every run.
"""

from __future__ import annotations

from ..ir.layers import Layer, LayeredCircuit, LeafLayer, ProductLayer, SumLayer
from ..ir.region_graph import RegionGraph, region_sort_key


def layer(graph: RegionGraph) -> LayeredCircuit:
    """Arrange a verified region graph in topological layers, bottom-up.

    ``layers[0]`` is the leaf layer (every region without partitions, however high its parents
    are); then product and sum layers alternate, and the last sum layer holds the root. The graph
    must be verified (smooth, decomposable, acyclic, one root).

    >>> from einc.compiler.generators import random_binary_trees
    >>> from einc.ir.region_graph import Domain, LeafFamily, RegionGraph, Variable
    >>> regions, partitions = random_binary_trees(4, depth=1, replicas=2, seed=0)
    >>> variables = tuple(
    ...     Variable(i, f"x[{i}]", Domain("binary", 2), LeafFamily("bernoulli"), column=i)
    ...     for i in range(4)
    ... )
    >>> graph = RegionGraph("rat", variables, tuple(regions), tuple(partitions), sums=2, inputs=2)
    >>> [type(each).__name__ for each in layer(graph).layers]
    ['LeafLayer', 'ProductLayer', 'SumLayer']
    """
    partitions_of = graph.partitions_of
    # A sum region is ready once every partition that uses it as a part has been placed; count
    # the unplaced parent partitions instead of rescanning M as the paper's set notation would.
    # Counters live in a list so that each part costs one dict lookup: hashing a scope tuple is
    # what dominates on large graphs.
    internal = [region.id for region in graph.regions if partitions_of.get(region.id)]
    slot = {region_id: number for number, region_id in enumerate(internal)}
    waiting = [len(graph.parents_of.get(region_id, ())) for region_id in internal]
    ready = [region_id for region_id, parents in zip(internal, waiting) if parents == 0]

    top_down: list[Layer] = []
    placed_sums = 0
    while ready:
        sums = tuple(sorted(ready, key=region_sort_key))
        mixing = tuple(region_id for region_id in sums if len(partitions_of[region_id]) > 1)
        top_down.append(SumLayer(sums, mixing))
        placed_sums += len(sums)
        # Every partition has exactly one parent (its region), so the products whose parents are
        # all placed are exactly the partitions of this sum layer's regions.
        products = tuple(sorted(index for region_id in sums for index in partitions_of[region_id]))
        top_down.append(ProductLayer(products))
        ready = []
        for index in products:
            for part in graph.partitions[index].parts:
                number = slot.get(part)
                if number is None:
                    continue  # a leaf region: it goes to the bottom layer whatever its parents
                waiting[number] -= 1
                if waiting[number] == 0:
                    ready.append(part)
    # Only a cycle (or a part that is no region) leaves sum regions unplaced; verify rejects both.
    assert placed_sums == len(internal), "layer() needs a verified, acyclic region graph"

    leaves = tuple(sorted(graph.leaf_regions, key=region_sort_key))
    return LayeredCircuit(graph, (LeafLayer(leaves), *reversed(top_down)))
