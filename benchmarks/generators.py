"""Time the structure generators and the layering on the paper's sizes; print a table.

    python benchmarks/generators.py [--repeat N]

PD on MNIST-sized 28x28 grids (paper §4.2 and the issue's "well under a second"), RAT on 512
variables (paper §4.1: default D=4, R=10, and the largest D=9, R=40 of Figure 3). Each time is the
best of ``--repeat`` runs, after a garbage collection so that earlier runs' garbage is not billed.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from einc.compiler.generators import poon_domingos, random_binary_trees
from einc.compiler.layering import layer
from einc.ir.region_graph import Domain, LeafFamily, Partition, Region, RegionGraph, Variable


@dataclass(frozen=True)
class Case:
    name: str
    num_variables: int
    build: Callable[[], tuple[list[Region], list[Partition]]]


def _cases() -> list[Case]:
    mnist = np.arange(28 * 28).reshape(28, 28)
    cases = [
        Case(f"poon_domingos 28x28 delta={deltas} axes={axes}", 784, _pd(mnist, deltas, axes))
        for deltas in ([7], [4], [7, 4])
        for axes in ("both", "vertical")
    ]
    cases += [
        Case(
            f"random_binary_trees n=512 depth={depth} replicas={replicas}",
            512,
            _rat(512, depth, replicas),
        )
        for depth, replicas in ((4, 10), (9, 40))
    ]
    return cases


def _pd(
    grid: np.ndarray, deltas: list[int], axes: str
) -> Callable[[], tuple[list[Region], list[Partition]]]:
    return lambda: poon_domingos(grid, deltas, axes)


def _rat(
    num_variables: int, depth: int, replicas: int
) -> Callable[[], tuple[list[Region], list[Partition]]]:
    return lambda: random_binary_trees(num_variables, depth, replicas, seed=0)


def _graph(num_variables: int, regions: list[Region], partitions: list[Partition]) -> RegionGraph:
    variables = tuple(
        Variable(i, f"x[{i}]", Domain("binary", 2), LeafFamily("bernoulli"), column=i)
        for i in range(num_variables)
    )
    return RegionGraph(
        "benchmark", variables, tuple(regions), tuple(partitions), sums=10, inputs=10
    )


def _layer_fresh(
    num_variables: int, regions: list[Region], partitions: list[Partition]
) -> Callable[[], object]:
    # A fresh graph per run: RegionGraph caches its adjacency maps on first use, and building
    # them is part of what layering costs.
    return lambda: layer(_graph(num_variables, regions, partitions))


def _best_of(repeat: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    header = f"{'structure':<52} {'regions':>8} {'partitions':>10} {'layers':>6} {'generate':>10} {'layer':>10}"
    print(header)
    print("-" * len(header))
    for case in _cases():
        regions, partitions = case.build()
        graph = _graph(case.num_variables, regions, partitions)
        layered = layer(graph)
        generate = _best_of(args.repeat, case.build)
        layering = _best_of(args.repeat, _layer_fresh(case.num_variables, regions, partitions))
        print(
            f"{case.name:<52} {len(regions):>8} {len(partitions):>10} {len(layered.layers):>6}"
            f" {generate * 1e3:>8.1f}ms {layering * 1e3:>8.1f}ms"
        )


if __name__ == "__main__":
    main()
