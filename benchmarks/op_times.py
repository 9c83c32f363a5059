"""Where an inference batch's time goes, op by op (issue 18): the thread CPU time of each plan
op's torch rule (``forward``, or ``defer`` for a deferred leaf value) in a query pass.

    python benchmarks/op_times.py benchmarks/hclt_baudio.pc --data DEBD/baudio/train.csv.gz

Prints the machine, date, load and command, then per op its kind, rows and median time (ms) over
``--repeats`` batches after 5 warm-ups, their sum, and the median batch time with and without the
per-op timers (the difference is what the timers cost). 1 torch thread, float32, the seed's
parameters, the first ``--batch-size`` rows of the data. The HCLT K=32 tables of the README's
sixth round (``benchmarks/results/floor_round6_profile.txt``) are its output.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from typing import Any

import numpy as np
import torch

import einc
from einc.backends import torch_backend
from einc.backends.base import Batch
from einc.data import load_array, prepare

import records  # benchmarks/records.py


def _timed(rule: Any, times: dict[int, list[float]]) -> Any:
    """The rule with its forward and defer wrapped in thread-time stopwatches."""

    def wrap(function: Any) -> Any:
        if function is None:
            return None

        def timed(backend: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            out = function(backend, op, *args, **kwargs)
            times.setdefault(backend.reads.op_index[id(op)], []).append(time.thread_time() - start)
            return out

        return timed

    return dataclasses.replace(rule, forward=wrap(rule.forward), defer=wrap(rule.defer))


def _median_ms(run: Any, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.thread_time()
        run()
        samples.append(time.thread_time() - start)
    return 1e3 * statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("circuit", help="a .pc file")
    parser.add_argument("--data", required=True, help="rows (.csv[.gz], .npy, .npz)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = einc.compile(args.circuit, dtype="float32", seed=args.seed)
    rows = load_array(args.data)[: args.batch_size]
    values, observed = prepare(model.graph, np.asarray(rows, dtype=np.float64), None, "data")
    backend, batch = model.backend, Batch(values, observed)

    def run() -> None:
        backend.log_likelihood(model.params, batch)

    plain = dict(torch_backend.OP_RULES)
    times: dict[int, list[float]] = {}
    try:
        for kind, rule in plain.items():
            torch_backend.OP_RULES[kind] = _timed(rule, times)
        for _ in range(5):
            run()
        times.clear()
        timed = _median_ms(run, args.repeats)
    finally:
        torch_backend.OP_RULES.update(plain)
    for _ in range(5):
        run()
    untimed = _median_ms(run, args.repeats)
    print(f"# {records.machine_text()}, {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, "
          f"load {os.getloadavg()[0]:.2f}, einc at {os.path.dirname(os.path.dirname(einc.__file__))}")
    print(f"# {records.command_line('op_times.py', argv)}")
    print("| op | kind | rows | ms |\n|---:|---|---:|---:|")
    medians = []
    for index in sorted(times):
        op = model.plan.ops[index]
        medians.append(1e3 * statistics.median(times[index]))
        print(f"| {index} | {type(op).__name__} | {op.rows} | {medians[-1]:.3f} |")
    print(f"ops together {sum(medians):.3f} ms; a batch {timed:.3f} ms with the timers, {untimed:.3f} ms without")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
