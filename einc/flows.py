"""Circuit flows: the expected use of every unit and edge of a circuit over a batch.

The flow of a unit n for a sample x (Liu & Van den Broeck 2021; Dang et al. 2022; the LVD paper's
Definition 4) is the posterior probability that n lies on the induced tree that generated x:
F_root = 1 at the sample's head (0 at the other heads), a sum edge m → n carries
θ_mn p_n(x) / p_m(x) · F_m, and a unit's flow is the sum of the flows on the edges into it from
its parents. It equals ∂ log p_head(x) / ∂ log p_n(x), the derivative of the log-likelihood
with respect to the unit's log-value, and the flow of a sum edge equals θ · ∂ log p / ∂θ: einc's
EM statistics (``backends.em``) are exactly the edge flows. ``Model.flows`` sums them over a
batch:

- **units**: every plan value's rows × K (``Flows.values``), looked up per region
  (``Flows.region``: a leaf region's input units, an internal region's sum units, the root's
  heads) and per partition (``Flows.partition``: the K sum units its product op computes; for a
  region with one partition the same as the region's);
- **product units**: ``Flows.products(p)``, the sum of the edge flows out of each product unit of
  partition p — (K_left, K_right) for an outer product, (K_in,) for an element-wise one;
- **edges**: ``Flows.edges[param]``, shaped like the weight tensor: einsum (L, K, i, j), hadamard
  (L, K, j), mixing (M, C, K);
- **heads**: ``Flows.heads``, how many samples (with non-zero probability) each head carries.

Flows conserve: a sum unit's flow is the sum of its edges' flows, a product unit's flow the sum
of the flows of the edges into it, and a child unit's flow the sum of the flows of the product
units it is a factor of (``tests/test_flows.py`` checks all of it against enumerating induced
trees). Flows need data, so they are a query of a model (``model.flows(x, heads=z)``), not a
compile stage of ``einc compile --emit``.

    >>> flows = model.flows(x, heads=z)              # doctest: +SKIP
    >>> flows.region(model.graph.root)               # samples per head   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from einc.ir.diagnostics import EincError
from einc.ir.plan import EinsumOp, HadamardOp, MixingOp, Plan, format_table
from einc.ir.region_graph import RegionId


@dataclass(frozen=True)
class Flows:
    """Flows of every unit and sum edge of ``plan``, summed over ``samples`` samples."""

    plan: Plan
    samples: int
    values: tuple[np.ndarray, ...]  # per plan value: (rows, K) unit flows
    edges: dict[str, np.ndarray] = field(repr=False)  # per sum-weight parameter, its shape

    def __add__(self, other: "Flows") -> "Flows":
        """Flows of the union of two batches."""
        return Flows(self.plan, self.samples + other.samples,
                     tuple(a + b for a, b in zip(self.values, other.values)),
                     {name: self.edges[name] + other.edges[name] for name in self.edges})

    @cached_property
    def _region_rows(self) -> dict[RegionId, tuple[int, int]]:
        return {region: (value, row) for region, value, row in self.plan.region_rows}

    @cached_property
    def _partition_rows(self) -> dict[int, tuple[int, int, str]]:
        out: dict[int, tuple[int, int, str]] = {}
        for value, op in enumerate(self.plan.ops):
            if isinstance(op, (EinsumOp, HadamardOp)):
                for row, partition in enumerate(op.partitions):
                    out[partition] = (value, row, op.param)
        return out

    @property
    def heads(self) -> np.ndarray:
        """(heads,) the root's flows: the samples each head carries."""
        value, row = self.plan.root
        return self.values[value][row]

    def region(self, region: RegionId) -> np.ndarray:
        """(K,) the flows of a region's units (input units of a leaf region, the sum units of an
        internal one, the heads of the root)."""
        if region not in self._region_rows:
            raise EincError(f"{region!r} is not a region of circuit {self.plan.graph.name}")
        value, row = self._region_rows[region]
        return self.values[value][row]

    def partition(self, index: int) -> np.ndarray:
        """(K,) the flows of the sum units partition ``index``'s product op computes."""
        value, row, _param = self._partition_row(index)
        return self.values[value][row]

    def partition_edges(self, index: int) -> np.ndarray:
        """The flows of partition ``index``'s sum edges: (K, i, j) outer, (K, j) element-wise."""
        _value, row, param = self._partition_row(index)
        return self.edges[param][row]

    def products(self, index: int) -> np.ndarray:
        """The flows of partition ``index``'s product units: (K_left, K_right) for an outer
        product, (K_in,) for an element-wise one (each the sum of its edges to the sum units)."""
        return self.partition_edges(index).sum(0)

    def mixing_edges(self, region: RegionId) -> np.ndarray:
        """(C, K) the flows of a mixed region's edges to its partitions' sum units."""
        for op in self.plan.ops:
            if isinstance(op, MixingOp) and region in op.regions:
                return self.edges[op.param][op.regions.index(region)]
        raise EincError(f"region {self.plan.graph.region_label(region)} has a single partition: no mixing edges")

    def _partition_row(self, index: int) -> tuple[int, int, str]:
        if index not in self._partition_rows:
            raise EincError(f"circuit {self.plan.graph.name} has no partition {index!r}")
        return self._partition_rows[index]

    def table(self, threshold: float | None = None) -> str:
        """One line per region: its K, total flow, the largest unit flow, and how many of its units
        reach ``threshold`` (what the growing operator duplicates)."""
        graph = self.plan.graph
        header = ("region", "K", "flow", "max unit", "units ≥ threshold" if threshold is not None else "")
        rows = []
        for region, _value, _row in self.plan.region_rows:
            flows = self.region(region)
            grown = "" if threshold is None else str(int((flows >= threshold).sum()))
            rows.append((graph.region_label(region), str(len(flows)), f"{flows.sum():.4g}", f"{flows.max():.4g}", grown))
        return format_table(header, rows) + f"\nsamples: {self.samples}  heads: {np.array2string(self.heads, precision=4)}"

