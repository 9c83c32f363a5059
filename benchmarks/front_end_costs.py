"""Front-end cost per item: the measurements behind compiler/size.py's time and memory estimates.

Times parse → build → verify → layer (what ``einc check`` runs) and traces its peak Python memory
on RAT and PD circuits of different shapes, fits seconds per variable, region, partition and
scope entry by least squares, and prints each circuit's measured time and memory next to
``SizeEstimate``'s estimate.

    python benchmarks/front_end_costs.py            # table on stdout, one JSON line at the end

On a shared machine the fitted costs grow with the load average (printed); compiler/size.py
holds costs for an idle core.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
import tracemalloc

import numpy as np
from einc.compiler import size
from einc.compiler.dump import parameter_count
from einc.compiler.layering import layer
from einc.compiler.pipeline import CompileOptions, region_graph

PD = "var img[{h}, {w}] : binary\nleaf img ~ bernoulli\nsums 1\nstructure poon_domingos(delta = {d}, over = img)\n"
RAT = "var x[{v}] : binary\nleaf x ~ bernoulli\nsums 1\nstructure random_binary_trees(depth = {d}, replicas = {r})\n"
CASES = {
    "pd 28x28 d=[7,4]": PD.format(h=28, w=28, d="[7, 4]"),
    "pd 28x28 d=2": PD.format(h=28, w=28, d=2),
    "pd 28x28 d=4": PD.format(h=28, w=28, d=4),
    "pd 64x64 d=8": PD.format(h=64, w=64, d=8),
    "rat v=100000 D=4 R=10": RAT.format(v=100000, d=4, r=10),
    "rat v=20000 D=1 R=2": RAT.format(v=20000, d=1, r=2),
    "rat v=1000 D=3 R=1000": RAT.format(v=1000, d=3, r=1000),
    "rat v=16 D=3 R=10000": RAT.format(v=16, d=3, r=10000),
    "rat v=200 D=7 R=300": RAT.format(v=200, d=7, r=300),
}
UNLIMITED = CompileOptions(max_bytes=2**50, max_build_seconds=1e9)


def measure(text: str) -> tuple[size.SizeEstimate, float, int]:
    seconds = float("inf")
    for _ in range(2):
        started = time.process_time()
        graph = region_graph(text, "case.pc", UNLIMITED)
        layer(graph)
        seconds = min(seconds, time.process_time() - started)
    tracemalloc.start()
    layer(region_graph(text, "case.pc", UNLIMITED))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    count = parameter_count(graph)
    estimate = size.SizeEstimate(len(graph.variables), len(graph.regions), len(graph.partitions),
                                 sum(len(r.scope) for r in graph.regions), count.leaf + count.einsum + count.mixing)
    return estimate, seconds, peak


def main() -> int:
    load = os.getloadavg()[0]
    rows = []
    print(f"{'circuit':24} {'vars':>7} {'regions':>8} {'partitions':>10} {'scope':>9} "
          f"{'s (cpu)':>8} {'s (est.)':>8} {'MiB (peak)':>10} {'MiB (est.)':>10}")
    for name, text in CASES.items():
        estimate, seconds, peak = measure(text)
        rows.append((estimate, seconds))
        structure_bytes = estimate.bytes - estimate.parameters * (4 + size.HOST_COPIES * 8)
        print(f"{name:24} {estimate.variables:>7} {estimate.regions:>8} {estimate.partitions:>10} "
              f"{estimate.scope_entries:>9} {seconds:>8.2f} {estimate.build_seconds:>8.2f} "
              f"{peak / 2**20:>10.1f} {structure_bytes / 2**20:>10.1f}", flush=True)
    features = np.array([[e.variables, e.regions, e.partitions, e.scope_entries] for e, _ in rows], float)
    seconds = np.array([s for _, s in rows])
    fitted, *_ = np.linalg.lstsq(features, seconds, rcond=None)
    record = {
        "fitted_seconds_per": dict(zip(["variable", "region", "partition", "scope_entry"], fitted.tolist())),
        "size_py_seconds_per": {"variable": size.SECONDS_PER_VARIABLE, "region": size.SECONDS_PER_REGION,
                                "partition": size.SECONDS_PER_PARTITION, "scope_entry": size.SECONDS_PER_SCOPE_ENTRY},
        "load_average": round(load, 2),
        "machine": platform.node(),
        "cores": os.cpu_count(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmarks/front_end_costs.py",
    }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
