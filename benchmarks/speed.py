"""Time EM training and inference on the EiNet paper's efficiency setup (paper §4.1, Figure 3).

    python benchmarks/speed.py [--sweep default|K|D|R|all] [--backend torch] [--device cpu|cuda]
                               [--threads 1] [--dtype float32]

Setup: N = 2000 samples of 512-dimensional standard Gaussian noise, one ``normal`` leaf per
variable, a RAT-SPN (``random_binary_trees``) with split-depth D = 4, R = 10 replicas and K = 10
sums/leaves by default; the sweeps vary one of them (K ∈ {1, 10, 20, 40}, D ∈ {1..6},
R ∈ {1, 10, 20, 40}) with the others at their defaults.

Measured per configuration (``time.perf_counter``; ``torch.cuda.synchronize()`` before every
clock read on CUDA):
- ``epoch_s``: one training epoch = 20 × (E-step statistics + online-EM update) with batch 100,
  median over ``--epochs`` timed epochs after one warm-up epoch (``warmup_epoch_s``, which holds
  any torch.compile / CUDA-graph capture). ``--path resident`` (the default where the backend has
  it) times ``backend.train_epoch`` on data uploaded once, which is what ``Model.fit`` runs;
  ``--path step`` times ``backend.statistics`` + ``backend.em_update`` on host NumPy batches
  (host→device copies included).
- ``infer_ms``: log-likelihood of one batch of 100 (host in, host out), median of ``--repeats``.
- peak memory: CUDA: ``torch.cuda.max_memory_allocated`` over compile + training + inference
  (``peak_mb``) and the part above what was allocated after the parameters were placed
  (``peak_above_params_mb``). CPU: ``ru_maxrss`` of a fresh process per configuration, as the
  delta from the moment before compiling (``peak_rss_delta_mb``; it includes the plan, the
  parameters and every transient buffer; tracemalloc cannot see torch's allocator).
- ``parameters``: the model's parameter count.

One JSON line per configuration goes to stdout and is appended to
``benchmarks/results/speed-<device>.jsonl`` (``--fresh`` truncates it first). Each configuration
runs in its own subprocess (so ru_maxrss is per configuration); ``--in-process`` skips that.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NUM_VARIABLES = 512
NUM_SAMPLES = 2000
BATCH = 100
DEFAULT = {"K": 10, "D": 4, "R": 10}
SWEEPS = {"K": [1, 10, 20, 40], "D": [1, 2, 3, 4, 5, 6], "R": [1, 10, 20, 40]}


def circuit_text(k: int, depth: int, replicas: int) -> str:
    return (
        "circuit noise\n\n"
        f"var x[{NUM_VARIABLES}] : real\n"
        "leaf x ~ normal\n\n"
        f"sums {k}\n"
        f"inputs {k}\n\n"
        f"structure random_binary_trees(depth = {depth}, replicas = {replicas}, seed = 0)\n"
    )


def configurations(sweep: str, depths: list[int]) -> list[dict[str, int]]:
    sweeps = dict(SWEEPS, D=depths)
    names = ["K", "D", "R"] if sweep == "all" else [] if sweep == "default" else [sweep]
    configs = [dict(DEFAULT)]
    for name in names:
        for value in sweeps[name]:
            config = dict(DEFAULT, **{name: value})
            if config not in configs:
                configs.append(config)
    return configs


def _rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def measure(config: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    """Compile, train and evaluate one configuration in this process; return its record."""
    import numpy as np
    import torch
    from einc.backends.base import Batch

    import einc
    from einc.io.data import prepare

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    data = np.random.default_rng(0).standard_normal((NUM_SAMPLES, NUM_VARIABLES))
    rss_before = _rss_mb()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated()

    compile_started = time.perf_counter()
    model = einc.compile(
        circuit_text(config["K"], config["D"], config["R"]),
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        seed=0,
    )
    compile_s = clock() - compile_started
    if cuda:
        allocated_params = torch.cuda.memory_allocated()
    values, observed = prepare(model.graph, data)
    batches = [
        Batch(values[s : s + BATCH], observed[s : s + BATCH]) for s in range(0, NUM_SAMPLES, BATCH)
    ]
    backend = model.backend

    path = args.path
    if path == "auto":
        path = "resident" if hasattr(backend, "train_epoch") else "step"
    if path == "resident":
        # what Model.fit runs: the training set uploaded once (outside the timing, as the paper's
        # code keeps its data on the device), then one backend call per epoch
        resident = backend.upload(values, observed, None)
        order = np.arange(NUM_SAMPLES)

    def epoch() -> float:
        started = clock()
        if path == "resident":
            model.params, _ = backend.train_epoch(
                model.params, resident, order, BATCH, args.step_size
            )
        else:
            for batch in batches:  # 20 × (statistics + EM update), host batches in
                stats = backend.statistics(model.params, batch)
                model.params = backend.em_update(model.params, stats, args.step_size)
        return clock() - started

    warmup_s = epoch()  # warm-up: caches, allocator, torch.compile / CUDA-graph capture
    epochs = [epoch() for _ in range(args.epochs)]

    probe = batches[0]
    backend.log_likelihood(model.params, probe)  # warm-up
    inference = []
    for _ in range(args.repeats):
        started = clock()
        backend.log_likelihood(model.params, probe)
        inference.append(clock() - started)

    record: dict[str, Any] = {
        "backend": args.backend,
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "K": config["K"],
        "D": config["D"],
        "R": config["R"],
        "parameters": model.num_parameters,
        "epoch_s": statistics.median(epochs),
        "epoch_s_min": min(epochs),
        "epoch_s_all": epochs,
        "infer_ms": 1e3 * statistics.median(inference),
        "infer_ms_min": 1e3 * min(inference),
        "compile_s": compile_s,
        "warmup_epoch_s": warmup_s,
        "train_path": path,
        "fuse": getattr(backend, "fuse", None),
    }
    if cuda:
        record["peak_mb"] = (torch.cuda.max_memory_allocated() - allocated_before) / 2**20
        record["peak_above_params_mb"] = (
            torch.cuda.max_memory_allocated() - allocated_params
        ) / 2**20
        record["memory_method"] = "torch.cuda.max_memory_allocated"
        record["gpu"] = torch.cuda.get_device_name()
    else:
        record["peak_rss_delta_mb"] = _rss_mb() - rss_before
        record["memory_method"] = (
            "ru_maxrss delta (fresh process)"
            if not args.in_process
            else "ru_maxrss delta (shared process: lower bound)"
        )
    record.update(
        {
            "torch": torch.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_avg": round(os.getloadavg()[0], 2),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "epochs_timed": args.epochs,
            "repeats": args.repeats,
        }
    )
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="torch", help="torch | numpy | cupy (as registered)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--sweep", default="default", choices=("default", "K", "D", "R", "all"))
    parser.add_argument(
        "--depths", default="1,2,3,4,5,6", help="the D sweep's values (paper: 1..9)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up")
    parser.add_argument("--repeats", type=int, default=20, help="timed inference batches")
    parser.add_argument("--step-size", type=float, default=0.05, help="online EM step size")
    parser.add_argument(
        "--path",
        default="auto",
        choices=("auto", "resident", "step"),
        help="training loop timed: 'resident' = backend.train_epoch on uploaded data "
        "(what Model.fit uses), 'step' = statistics + em_update per host batch; "
        "auto: resident where the backend has it",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON-lines file (default benchmarks/results/speed-<device>.jsonl)",
    )
    parser.add_argument("--fresh", action="store_true", help="truncate the output file first")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per configuration")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one config
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one is not None:  # child process: one configuration, one JSON line
        print(json.dumps(measure(json.loads(args.one), args)), flush=True)
        return 0
    depths = [int(d) for d in args.depths.split(",") if d.strip()]
    out = args.out or ROOT / "benchmarks" / "results" / f"speed-{args.device.split(':')[0]}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        out.write_text("")
    configs = configurations(args.sweep, depths)
    print(
        f"speed: {len(configs)} configuration(s), backend {args.backend}, device {args.device}, "
        f"{args.threads} thread(s), load average {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    failures = 0
    for config in configs:
        label = f"K={config['K']} D={config['D']} R={config['R']}"
        try:
            if args.in_process:
                record = measure(config, args)
            else:
                record = _run_child(config, args)
        except Exception as error:  # noqa: BLE001 - one failed config must not lose the others
            failures += 1
            print(f"{label}: failed: {error}", file=sys.stderr)
            continue
        record["sweep"] = args.sweep
        line = json.dumps(record)
        print(line, flush=True)
        with open(out, "a") as handle:
            handle.write(line + "\n")
        print(
            f"{label}: epoch {record['epoch_s']:.3f} s, inference {record['infer_ms']:.2f} ms, "
            f"{record['parameters']:,} parameters",
            file=sys.stderr,
            flush=True,
        )
    return 1 if failures else 0


def _run_child(config: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one",
        json.dumps(config),
        "--backend",
        args.backend,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--threads",
        str(args.threads),
        "--epochs",
        str(args.epochs),
        "--repeats",
        str(args.repeats),
        "--step-size",
        str(args.step_size),
        "--path",
        args.path,
    ]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
