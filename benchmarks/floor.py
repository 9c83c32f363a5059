"""How far a circuit's EM epoch and inference are from the speed of their arithmetic (issue 18).

    python benchmarks/floor.py examples/nltcs.pc --data examples/data/nltcs/train.csv.gz
    python benchmarks/floor.py benchmarks/efficiency_k10.pc --random-rows 2000 --batch-size 100
    python benchmarks/floor.py hclt.pc --data train.csv.gz --sums 32 --label "HCLT K=32 baudio"
    python benchmarks/floor.py --table benchmarks/results/floor_before.json benchmarks/results/floor_after.json

The floor is the plan's own FLOP count (``einc compile --emit plan``, "MFLOP/batch": two per
multiply-add of every op) at the single-precision matmul throughput of this process, measured
here and now: ``torch.mm`` of 512×1024 by 1024×1024. An EM epoch does a forward pass and a
backward pass (about twice the forward's work) over every row, so its floor is 3 × the forward
FLOPs of the epoch's rows; an inference batch's floor is 1 × its forward FLOPs. The ratios
(measured time / floor) are what the issue's targets bound (HCLT K=32: epoch ≤ 10×, inference ≤ 5×).

Runs on one torch thread by default (``--threads``), float32, the torch backend on the CPU; the
epoch is the backend's resident-data online-EM epoch (``train_epoch``), timed after one warm-up
epoch, each timed epoch listed (a circuit whose epochs slow down shows it). Times are the CPU
time of the calling thread (``time.thread_time``; with one torch thread it does all the work),
for the sgemm as for the circuit, so that a machine shared with other jobs (this project's
2-core Xeon often runs at a load of 4-8) slows neither side of a ratio; the wall times of the
epochs are listed too. Appends one JSON
record per run to ``--out`` (machine, date, command, git commit, load average) and prints it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import einc
from einc.backends.base import Batch
from einc.compiler.pipeline import CompileOptions
from einc.data import load_array, prepare

import records  # benchmarks/records.py

ROOT = Path(__file__).resolve().parent.parent
SGEMM = (512, 1024, 1024)  # (m, k, n) of the reference matmul


def sgemm_flops_per_second(repeats: int = 20) -> float:
    """Median FLOP/s of float32 ``torch.mm`` (512, 1024) x (1024, 1024) in this process."""
    m, k, n = SGEMM
    generator = torch.Generator().manual_seed(0)
    a = torch.rand((m, k), generator=generator)
    b = torch.rand((k, n), generator=generator)
    out = torch.empty((m, n))
    for _ in range(3):
        torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        torch.mm(a, b, out=out)
        times.append(time.thread_time() - start)
    return 2.0 * m * k * n / statistics.median(times)


def forward_flops_per_sample(model: einc.Model) -> float:
    """Σ over the plan's ops of 2 × multiply-adds per sample (the plan table's MFLOP/batch ÷ batch)."""
    return float(sum(2 * model.plan.op_cost(op)[0] for op in model.plan.ops))


def resident_bytes(field: str) -> int | None:
    """A line of /proc/self/status in bytes ("VmRSS": now, "VmHWM": the peak), None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the process's peak resident size (Linux ≥ 4.0: writing 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def epoch_memory(model: einc.Model, run_epoch: Any, batch_size: int) -> dict[str, Any]:
    """The peak resident memory of one EM epoch, the process's first: what it adds to the process
    (its peak minus what was resident before it: torch, the data set on the device) plus the
    parameters it trains,
    against the issue's budget, 2 × (parameters + statistics + one batch's values): parameters and the
    statistics of an E-step (weight counts and leaf statistics, one number per parameter) at the
    backend's float32, and every op's value (rows × batch × K) for one batch."""
    import gc

    gc.collect()
    before = resident_bytes("VmRSS")
    if before is None or not reset_peak():
        return {"measured": False, "why": "needs Linux /proc/self/status and clear_refs"}
    run_epoch()
    peak = resident_bytes("VmHWM")
    assert peak is not None
    itemsize = 4
    parameters = sum(int(np.prod(spec.shape)) for spec in model.plan.params) * itemsize
    values = sum(op.rows * op.vector_size for op in model.plan.ops) * batch_size * itemsize
    budget = 2 * (parameters + parameters + values)
    mb = 1 / 2**20
    return {
        "measured": True,
        "resident_before_mb": before * mb,
        "epoch_peak_mb": peak * mb,
        "epoch_extra_mb": (peak - before) * mb,
        # what the epoch holds at its peak: what it added, and the parameters it trains
        "epoch_working_mb": (peak - before + parameters) * mb,
        "parameters_mb": parameters * mb,
        "statistics_mb": parameters * mb,
        "batch_values_mb": values * mb,
        "budget_mb": budget * mb,
        "working_over_budget": (peak - before + parameters) / budget,
    }


def load_rows(args: argparse.Namespace, columns: int) -> np.ndarray:
    if args.data is not None:
        rows = np.asarray(load_array(args.data), dtype=np.float64)
        if args.rows is not None:
            rows = rows[: args.rows]
        return rows
    # no data: standard normal rows (for circuits of real variables, e.g. the efficiency RATs)
    return np.random.default_rng(args.seed).normal(size=(args.random_rows, columns))


def git_commit() -> str:
    """The commit of the einc that is imported (it may not be this file's checkout)."""
    where = Path(einc.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    options = CompileOptions(sums=args.sums, inputs=args.inputs)
    model = einc.compile(args.circuit, dtype="float32", seed=args.seed, options=options)
    backend = model.backend
    x = load_rows(args, model.plan.graph.num_columns)
    values, observed = prepare(model.graph, x, None, "data")
    data = backend.upload(values, observed, None)
    order = np.random.default_rng(args.seed + 1).permutation(len(values))
    per_sample = forward_flops_per_sample(model)
    sgemm = sgemm_flops_per_second()

    walls: list[float] = []

    def epoch() -> float:
        wall, start = time.perf_counter(), time.thread_time()
        model.params, _ = backend.train_epoch(model.params, data, order, args.batch_size, args.step_size, 0.01)
        walls.append(time.perf_counter() - wall)
        return time.thread_time() - start

    # the memory of the first epoch, from the state before any step: freed memory stays in the
    # process (backends/base.keep_freed_memory), so a later epoch would find its peak resident
    memory = None
    if args.memory:
        warm_up_time: list[float] = []
        memory = epoch_memory(model, lambda: warm_up_time.append(epoch()), args.batch_size)
        warm_up = warm_up_time[0]
    else:
        warm_up = epoch()
    epochs = [epoch() for _ in range(args.epochs)]
    batch = Batch(values[: args.batch_size], observed[: args.batch_size])
    backend.log_likelihood(model.params, batch)
    inference = []
    for _ in range(args.inference_repeats):
        start = time.thread_time()
        backend.log_likelihood(model.params, batch)
        inference.append(time.thread_time() - start)
    epoch_s, infer_s = statistics.median(epochs), statistics.median(inference)
    epoch_floor = 3.0 * per_sample * len(values) / sgemm
    infer_floor = per_sample * len(batch.values) / sgemm
    sgemm_after = sgemm_flops_per_second()  # the machine's speed may change under load: say so
    return {
        "benchmark": "floor",
        "label": args.label or Path(args.circuit).stem,
        "circuit": str(args.circuit),
        "sums": args.sums,
        "rows": int(len(values)),
        "batch_size": args.batch_size,
        "parameters": int(model.num_parameters),
        "ops": len(model.plan.ops),
        "forward_mflop_per_batch": per_sample * args.batch_size / 1e6,
        "sgemm_gflops": sgemm / 1e9,
        "sgemm_gflops_after": sgemm_after / 1e9,
        "warm_up_epoch_s": warm_up,
        "epochs_s": epochs,
        "epochs_wall_s": walls[1:],
        "epoch_s": epoch_s,
        "epoch_floor_s": epoch_floor,
        "epoch_ratio": epoch_s / epoch_floor,
        "inference_s": infer_s,
        "inference_floor_s": infer_floor,
        "inference_ratio": infer_s / infer_floor,
        "memory": memory,
        "threads": args.threads,
        "dtype": "float32",
        "torch": torch.__version__,
        "variant": args.variant,
        "einc_commit": git_commit(),
        "einc_path": str(Path(einc.__file__).resolve().parent.parent),
        "machine": records.machine_text(),
        "load_average": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()) + " UTC",
        "command": records.command_line("floor.py", args.argv),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("circuit", nargs="?", help="a .pc file")
    parser.add_argument("--table", nargs="+", type=Path, metavar="RESULTS",
                        help="print a markdown table of these results files (runs side by side by label)")
    parser.add_argument("--data", help="training rows (.csv[.gz], .npy, .npz); default: --random-rows normal rows")
    parser.add_argument("--rows", type=int, help="use the first N rows of --data")
    parser.add_argument("--random-rows", type=int, default=2000, help="standard normal rows when no --data")
    parser.add_argument("--sums", type=int, help="override the file's K (sums)")
    parser.add_argument("--inputs", type=int, help="override the file's inputs")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--step-size", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up")
    parser.add_argument("--inference-repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", action="store_true",
                        help="measure the first (warm-up) epoch's peak resident memory against 2 x (parameters + "
                             "statistics + one batch's values)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", help="the circuit's name in the results")
    parser.add_argument("--variant", default="", help="which einc this is (e.g. \"main b75eb0e\"), recorded")
    parser.add_argument("--out", type=Path, help="append the JSON record to this file")
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def table(paths: list[Path]) -> str:
    """One markdown row per circuit and results file (its variant), in the files' order."""
    import json

    runs = [(path, json.loads(line)) for path in paths for line in path.read_text().splitlines() if line.strip()]
    labels = list(dict.fromkeys(record["label"] for _, record in runs))
    lines = ["| circuit | einc | epoch s | floor s | ratio | inference ms | floor ms | ratio | epochs (s) | load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for label in labels:
        for path, r in runs:
            if r["label"] != label:
                continue
            epochs = ", ".join(f"{t:.2f}" for t in [r["warm_up_epoch_s"], *r["epochs_s"]])
            lines.append(f"| {label} | {r.get('variant') or path.stem} | {r['epoch_s']:.3f} | {r['epoch_floor_s']:.4f} | "
                         f"{r['epoch_ratio']:.1f}× | {r['inference_s'] * 1e3:.2f} | {r['inference_floor_s'] * 1e3:.3f} | "
                         f"{r['inference_ratio']:.1f}× | {epochs} | {r['load_average']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if args.circuit is None:
        raise SystemExit("floor.py: error: a .pc file (or --table RESULTS...) is required")
    record = measure(args)
    records.emit(record, args.out)
    print(f"{record['label']}: epoch {record['epoch_s']:.3f} s, floor {record['epoch_floor_s']:.4f} s, "
          f"ratio {record['epoch_ratio']:.1f}x; inference {record['inference_s'] * 1e3:.2f} ms, floor "
          f"{record['inference_floor_s'] * 1e3:.3f} ms, ratio {record['inference_ratio']:.1f}x "
          f"(sgemm {record['sgemm_gflops']:.0f} GFLOP/s)", file=sys.stderr)
    memory = record["memory"]
    if memory and memory["measured"]:
        print(f"epoch peak memory: {memory['epoch_working_mb']:.0f} MB (+{memory['epoch_extra_mb']:.0f} MB over the "
              f"{memory['resident_before_mb']:.0f} MB resident before it, and the parameters); budget 2 x (parameters "
              f"{memory['parameters_mb']:.1f} + statistics {memory['statistics_mb']:.1f} + one batch's values "
              f"{memory['batch_values_mb']:.1f} MB) = {memory['budget_mb']:.0f} MB: {memory['working_over_budget']:.2f}x",
              file=sys.stderr)
    elif memory:
        print(f"epoch peak memory: not measured ({memory['why']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
