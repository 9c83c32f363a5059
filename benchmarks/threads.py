"""Torch CPU threads: time one EM epoch at 1, 2, ... threads and with ``--threads auto``.

Each measurement runs in a fresh process (torch's thread pool is set once per process), trains
one epoch of online EM (batch 100) after a warm-up batch, and reports the median of ``--repeats``
runs with the 1-minute load average, since other jobs on a shared machine change the answer.

    python benchmarks/threads.py                      # nltcs and MNIST PD, threads 1, 2 and auto
    python benchmarks/threads.py --threads 1,2,4 --repeats 5

Prints a table and one JSON line per (circuit, threads) to stdout; appends the JSON lines to
benchmarks/results/threads.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "nltcs": ("examples/nltcs.pc", "examples/data/nltcs/train.csv.gz", 16181),
    "mnist-pd": ("examples/mnist.pc", "examples/data/mnist_small.npz", 1000),
}

_CHILD = """
import json, sys, time
import torch
from einc.cli.session import choose_threads
import einc
from einc.io.data import read_data
circuit, data, rows, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
model = einc.compile(circuit, seed=0)
count = choose_threads(threads, model.plan)
torch.set_num_threads(count)
train = read_data(data).values[:rows]
model.fit(train[:100], epochs=1)                       # warm-up
started = time.perf_counter()
model.fit(train, epochs=1)
print(json.dumps({"seconds": time.perf_counter() - started, "threads_used": count}))
"""


def measure(case: str, threads: str, repeats: int) -> dict:
    circuit, data, rows = CASES[case]
    runs = []
    for _ in range(repeats):
        load = os.getloadavg()[0]
        result = subprocess.run(
            [sys.executable, "-c", _CHILD, circuit, data, str(rows), threads],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )
        runs.append((json.loads(result.stdout.strip().splitlines()[-1]), load))
    return {
        "case": case,
        "rows": rows,
        "threads": threads,
        "threads_used": runs[0][0]["threads_used"],
        "epoch_s_median": round(statistics.median(r["seconds"] for r, _ in runs), 3),
        "epoch_s_all": [round(r["seconds"], 3) for r, _ in runs],
        "load_average": [round(load, 2) for _, load in runs],
        "cores": os.cpu_count(),
        "machine": platform.node(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmarks/threads.py " + " ".join(sys.argv[1:]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--threads", default="1,2,auto", help="comma-separated thread counts or auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "threads.jsonl")
    args = parser.parse_args(argv)
    records = []
    print(f"{'case':10} {'threads':>8} {'used':>5} {'epoch s (median)':>17}  runs / load average")
    for case in args.cases.split(","):
        for threads in args.threads.split(","):
            record = measure(case, threads, args.repeats)
            records.append(record)
            print(f"{case:10} {threads:>8} {record['threads_used']:>5} {record['epoch_s_median']:>17.3f}  "
                  f"{record['epoch_s_all']} / {record['load_average']}", flush=True)
    with open(args.out, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
