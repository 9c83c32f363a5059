"""The layered circuit: Algorithm 1 of the EiNet paper (appendix A), bottom-up.

Layers alternate product/sum above one leaf layer. A sum layer lists its regions; those with more
than one partition are computed by an einsum layer over all their partitions followed by a mixing
layer (appendix B), and are listed in ``mixing``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .region_graph import RegionGraph, RegionId


@dataclass(frozen=True)
class LeafLayer:
    regions: tuple[RegionId, ...]


@dataclass(frozen=True)
class ProductLayer:
    partitions: tuple[int, ...]  # indices into RegionGraph.partitions


@dataclass(frozen=True)
class SumLayer:
    regions: tuple[RegionId, ...]
    mixing: tuple[RegionId, ...]  # the regions of this layer with more than one partition


Layer = LeafLayer | ProductLayer | SumLayer


@dataclass(frozen=True)
class LayeredCircuit:
    graph: RegionGraph
    layers: tuple[Layer, ...]  # layers[0] is the leaf layer; the last layer holds the root
