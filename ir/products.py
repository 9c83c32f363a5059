"""Product kinds: how a partition combines the K-vectors of its parts (``product outer|hadamard``).

One table keyed by the name a ``.pc`` file writes: ``product KIND`` for the circuit's default,
``product REGION = KIND`` for the partitions of one region (a circuit may mix kinds: HCLT patches
under an outer-product circuit over the patches). An entry says everything the language-level
stages need to know about a kind — the builder (which names exist), the verifier (how many parts a
partition may have, whether the parts' K must agree) and the parameter count of ``einc check`` —
while lowering (``compiler.lower``) decides the plan op it becomes.

- ``outer`` (the default; EiNet paper eq. 5): ``S[k] = Σ_ij W[k,i,j] L[i] R[j]``, the outer product
  of exactly two child vectors, ``K_out·K_left·K_right`` weights per partition.
- ``hadamard`` (element-wise / CP layers, as in HCLTs, PyJuice and cirkit):
  ``S[k] = Σ_j W[k,j] Π_c C_c[j]``, the element-wise product of any number (≥ 2) of child vectors
  of one common length K_in, then a ``K_out × K_in`` sum: ``K_out·K_in`` weights per partition.

    >>> PRODUCT_KINDS["hadamard"].weights(4, (3, 3, 3))
    12
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ProductKind:
    name: str
    summary: str  # one line for messages and docs
    max_parts: int | None  # None: any number of parts (at least two)
    equal_part_sizes: bool  # every part's K must be the same (element-wise product)
    weight_count: Callable[[int, Sequence[int]], int]  # (K_out, part K's) -> weights

    @property
    def elementwise(self) -> bool:
        """Product unit j is unit j of every part: the parts' units line up, and the sum weights
        have one axis for all parts (growing copies the parts' units together)."""
        return self.equal_part_sizes

    def weights(self, k_out: int, part_sizes: Sequence[int]) -> int:
        """Sum weights of one partition with ``k_out`` outputs over parts of these K's."""
        return self.weight_count(k_out, part_sizes)


PRODUCT_KINDS: dict[str, ProductKind] = {
    "outer": ProductKind(
        name="outer",
        summary="outer product of two child vectors (EiNet einsum layer, K_out·K_left·K_right weights)",
        max_parts=2,
        equal_part_sizes=False,
        weight_count=lambda k_out, sizes: k_out * math.prod(sizes),
    ),
    "hadamard": ProductKind(
        name="hadamard",
        summary="element-wise product of n child vectors of one length K, then a K_out×K sum (CP layer)",
        max_parts=None,
        equal_part_sizes=True,
        weight_count=lambda k_out, sizes: k_out * sizes[0],
    ),
}

DEFAULT_PRODUCT = "outer"
