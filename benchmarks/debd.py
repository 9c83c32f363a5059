"""Reproduce the EiNet paper's Table 1 protocol on the DEBD binary density-estimation sets.

    python benchmarks/debd.py [--datasets nltcs,plants] [--quick] [--budget-minutes 45]

Protocol (paper §4.1, Table 1; Peharz et al. 2019 for the structures): RAT-SPN structures
(``random_binary_trees``: R random balanced binary trees of split-depth D over all variables,
mixed at the root) with K sums per region and K Bernoulli leaves per leaf region, trained by
stochastic online EM (batch 100, step size 0.05, as in the EiNet reference demo) with early
stopping on the validation split, then full-batch EM (step 1) from the best online model, again
stopped on valid (online EM at step 0.05 plateaus ~0.4 nats below where a few full-batch steps
go), model selection over a small (D, R, K) grid on the validation split, and
the mean test log-likelihood of the selected model next to the paper's numbers
(``../shared/data/debd_reference_lls.csv``).

Scheduling: the whole run gets a wall-clock budget. Every dataset's default configuration is
trained first (so each dataset gets a complete row), then the rest of the grid (shallow depths
first, larger models first within a depth), round-robin over the datasets, skipping
configurations whose estimated time no longer fits. ``--resume`` keeps the runs already in the
JSON file (from earlier invocations, possibly with other recipes; each run records its recipe),
skips configurations already trained with the same recipe, and selects over all of them.
Results are rewritten after every finished configuration, so an interrupted run leaves a table.

Progress goes to stderr (one line per epoch); the tables go to ``benchmarks/results/debd.md`` and
``benchmarks/results/debd.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einc.backends.base import Batch
from einc.files import atomic_write

import einc
from einc.data import load_array, prepare

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ("nltcs", "plants", "baudio", "bnetflix", "accidents", "pumsb_star")
# "Small" sets get the ±0.1 nats target, the others ±0.5 (issue 3, "Done when").
SMALL = frozenset({"nltcs", "plants"})
TOLERANCE = {True: 0.1, False: 0.5}


@dataclass(frozen=True)
class Config:
    depth: int
    replicas: int
    sums: int  # K: sums per region and Bernoulli leaves per leaf region

    @property
    def label(self) -> str:
        return f"D={self.depth} R={self.replicas} K={self.sums}"


@dataclass
class Run:
    dataset: str
    depth: int
    replicas: int
    sums: int
    parameters: int
    epochs: int
    best_epoch: int
    train_ll: float  # running mean over the best epoch's mini-batches (before each update)
    valid_ll: float
    test_ll: float
    seconds: float
    stopped: str  # "patience", "max_epochs" or "time"
    recipe: str = ""
    history: list[dict[str, float]] = field(default_factory=list)


# ------------------------------------------------------------------------------ the circuits
def circuit_text(name: str, num_variables: int, config: Config, seed: int) -> str:
    """A RAT-SPN over ``num_variables`` binary variables as .pc source."""
    return (
        f"circuit {name}\n\n"
        f"var x[{num_variables}] : binary\n"
        "leaf x ~ bernoulli\n\n"
        f"sums {config.sums}\n"
        f"inputs {config.sums}\n\n"
        f"structure random_binary_trees(depth = {config.depth}, replicas = {config.replicas}, "
        f"seed = {seed})\n"
    )


def max_depth(num_variables: int) -> int:
    """The deepest split-depth whose 2^D leaf regions each still hold a variable."""
    return math.floor(math.log2(num_variables))


def default_config(num_variables: int) -> Config:
    # Shallow and wide first: a deep RAT with K=10 is an information bottleneck (a tree's halves
    # talk only through K-state latents), and on plants D=4 R=10 K=10 stalls at -16.1 nats where
    # D=1 R=100 K=1 (a mixture of 100 products) reaches -13.5. nltcs is small enough for D=3.
    if num_variables < 32:
        return Config(min(3, max_depth(num_variables)), 20, 10)
    return Config(1, 40, 20)


def grid(num_variables: int, quick: bool) -> list[Config]:
    if quick:
        return [Config(min(2, max_depth(num_variables)), 4, 4)]
    depths = [d for d in (1, 2, 3, 4) if d <= max_depth(num_variables)]
    return [Config(d, r, k) for d in depths for r in (10, 20, 40) for k in (10, 20)]


def cost_units(num_variables: int, config: Config, rows: int) -> float:
    """A rough work estimate: multiply-adds of one epoch (einsum layers K^3 per region, leaves)."""
    regions = config.replicas * (2 ** (config.depth + 1) - 1)
    return rows * (regions * config.sums**3 + num_variables * config.replicas * config.sums * 4)


# ------------------------------------------------------------------------------ training
class Split:
    def __init__(self, model: einc.Model, data: np.ndarray, label: str) -> None:
        self.values, self.observed = prepare(model.graph, data, None, label)

    def __len__(self) -> int:
        return len(self.values)

    def batch(self, index: Any) -> Batch:
        return Batch(self.values[index], self.observed[index])


def mean_ll(model: einc.Model, split: Split, batch_size: int = 2000) -> float:
    total = 0.0
    for start in range(0, len(split), batch_size):
        ll = model.backend.log_likelihood(
            model.params, split.batch(slice(start, start + batch_size))
        )
        total += float(ll[:, 0].sum())
    return total / len(split)


def train(
    dataset: str,
    data: dict[str, np.ndarray],
    config: Config,
    args: argparse.Namespace,
    deadline: float,
) -> Run:
    """Online EM with early stopping on valid; returns the best-valid model's figures."""
    num_variables = data["train"].shape[1]
    model = einc.compile(
        circuit_text(dataset, num_variables, config, args.seed),
        backend="torch",
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
    )
    train_split, valid_split, test_split = (
        Split(model, data[s], s) for s in ("train", "valid", "test")
    )
    rng = np.random.default_rng(args.seed)
    best_valid, best_epoch, best_params, best_train = -math.inf, 0, model.parameters(), math.nan
    history: list[dict[str, float]] = []
    stopped = "max_epochs"
    started = time.perf_counter()
    epoch = 0
    for epoch in range(1, args.epochs + 1):
        epoch_started = time.perf_counter()
        order = rng.permutation(len(train_split))
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            stats = model.backend.statistics(
                model.params, train_split.batch(order[start : start + args.batch_size])
            )
            model.params = model.backend.em_update(model.params, stats, args.step_size)
            total += stats.log_likelihood
        train_ll = total / len(order)
        valid_ll = mean_ll(model, valid_split)
        seconds = time.perf_counter() - epoch_started
        history.append(
            {"epoch": epoch, "train_ll": train_ll, "valid_ll": valid_ll, "seconds": seconds}
        )
        improved = valid_ll > best_valid
        if improved:
            best_valid, best_epoch, best_params, best_train = (
                valid_ll,
                epoch,
                model.parameters(),
                train_ll,
            )
        print(
            f"  {dataset} {config.label} epoch {epoch:3d}: train {train_ll:9.4f} valid {valid_ll:9.4f}"
            f"{' *' if improved else '  '} ({seconds:5.1f} s)",
            file=sys.stderr,
            flush=True,
        )
        if epoch - best_epoch >= args.patience:
            stopped = "patience"
            break
        if time.perf_counter() + seconds > deadline:
            stopped = "time"
            break
    online_epochs = epoch
    model.set_parameters(best_params)
    # Phase 2: full-batch EM (step 1) from the best online model. Online EM at step 0.05 keeps
    # jittering around an optimum; a few monotone full-batch steps settle it (nltcs: +0.015 nats).
    since_best = 0
    for epoch in range(online_epochs + 1, online_epochs + 1 + args.finetune_epochs):
        if stopped == "time" or time.perf_counter() > deadline:
            break
        epoch_started = time.perf_counter()
        accumulated = None
        for start in range(0, len(train_split), 1000):
            stats = model.backend.statistics(
                model.params, train_split.batch(slice(start, start + 1000))
            )
            accumulated = stats if accumulated is None else accumulated + stats
        assert accumulated is not None
        model.params = model.backend.em_update(model.params, accumulated, 1.0)
        train_ll = accumulated.log_likelihood / len(
            train_split
        )  # of the parameters before the step
        valid_ll = mean_ll(model, valid_split)
        seconds = time.perf_counter() - epoch_started
        history.append(
            {
                "epoch": epoch,
                "train_ll": train_ll,
                "valid_ll": valid_ll,
                "seconds": seconds,
                "full_batch": 1.0,
            }
        )
        improved = valid_ll > best_valid
        since_best = 0 if improved else since_best + 1
        if improved:
            best_valid, best_epoch, best_params, best_train = (
                valid_ll,
                epoch,
                model.parameters(),
                train_ll,
            )
        print(
            f"  {dataset} {config.label} epoch {epoch:3d} (full-batch EM): train {train_ll:9.4f} "
            f"valid {valid_ll:9.4f}{' *' if improved else '  '} ({seconds:5.1f} s)",
            file=sys.stderr,
            flush=True,
        )
        if since_best >= args.finetune_patience:
            break
    model.set_parameters(best_params)
    test_ll = mean_ll(model, test_split)
    return Run(
        dataset,
        config.depth,
        config.replicas,
        config.sums,
        model.num_parameters,
        len(history),
        best_epoch,
        best_train,
        best_valid,
        test_ll,
        time.perf_counter() - started,
        stopped,
        recipe_label(args),
        history,
    )


def recipe_label(args: argparse.Namespace) -> str:
    return (
        f"online EM b{args.batch_size} step {args.step_size} <= {args.epochs} ep (patience {args.patience})"
        f" + full-batch EM <= {args.finetune_epochs} ep (patience {args.finetune_patience})"
    )


# ------------------------------------------------------------------------------ results
def read_reference(path: Path) -> dict[str, dict[str, float]]:
    with open(path, newline="") as handle:
        return {
            row["debd_name"]: {
                "display_name": row["display_name"],
                "ratspn_einet_paper": float(row["ratspn_einet_paper"]),
                "einet_paper": float(row["einet_paper"]),
            }
            for row in csv.DictReader(handle)
        }


def select(runs: list[Run]) -> dict[str, Run]:
    """Model selection on the validation split, per dataset."""
    best: dict[str, Run] = {}
    for run in runs:
        if run.dataset not in best or run.valid_ll > best[run.dataset].valid_ll:
            best[run.dataset] = run
    return best


def write_results(
    runs: list[Run],
    datasets: list[str],
    reference: dict[str, dict[str, float]],
    meta: dict[str, Any],
    out: Path,
) -> None:
    selected = select(runs)
    rows = []
    for name in datasets:
        ref = reference.get(name, {})
        run = selected.get(name)
        row: dict[str, Any] = {
            "dataset": name,
            "display_name": ref.get("display_name", name),
            "einet_paper": ref.get("einet_paper"),
            "ratspn_einet_paper": ref.get("ratspn_einet_paper"),
            "configs_tried": sum(r.dataset == name for r in runs),
        }
        if run is not None:
            diff = run.test_ll - ref["einet_paper"] if ref else None
            tolerance = TOLERANCE[name in SMALL]
            row.update(
                {
                    "config": f"D={run.depth} R={run.replicas} K={run.sums}",
                    "parameters": run.parameters,
                    "epochs": run.epochs,
                    "best_epoch": run.best_epoch,
                    "valid_ll": run.valid_ll,
                    "test_ll": run.test_ll,
                    "diff_vs_einet": diff,
                    "diff_vs_ratspn": run.test_ll - ref["ratspn_einet_paper"] if ref else None,
                    "tolerance": tolerance,
                    "within_target": None if diff is None else diff >= -tolerance,
                }
            )
        rows.append(row)
    payload = {"meta": meta, "table": rows, "runs": [asdict(r) for r in runs]}
    atomic_write(out.with_suffix(".json"), lambda stream: stream.write((json.dumps(payload, indent=1) + "\n").encode()))
    atomic_write(out.with_suffix(".md"), lambda stream: stream.write(markdown(rows, runs, meta).encode()))


def markdown(rows: list[dict[str, Any]], runs: list[Run], meta: dict[str, Any]) -> str:
    lines = [
        "# DEBD test log-likelihoods (EiNet paper Table 1 protocol)",
        "",
        f"Generated by `benchmarks/debd.py` on {meta['date']} ({meta['machine']}; {meta['note']}).",
        (
            f"Recipe: online EM, batch {meta['batch_size']}, step size {meta['step_size']}, at most "
            f"{meta['epochs']} epochs, early stopping on valid (patience {meta['patience']}), then up to "
            f"{meta['finetune_epochs']} epochs of full-batch EM (step 1, patience {meta['finetune_patience']}), "
            f"{meta['dtype']}, {meta['threads']} torch thread(s), seed {meta['seed']}. "
            f"Budget {meta['budget_minutes']} min; wall time used {meta['elapsed_minutes']:.1f} min."
        ),
        "",
        (
            "Selected = best validation LL over the configurations tried. Diff = ours − paper "
            "(positive is better). Target: ≥ −0.1 nats on small sets (nltcs, plants), "
            "≥ −0.5 on the others."
        ),
        "",
        "| dataset | selected (D, R, K) | params | tried | valid LL | test LL | EiNet paper | diff | RAT-SPN (paper) | diff | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if "test_ll" not in row:
            lines.append(
                f"| {row['display_name']} | not run | | 0 | | | {row['einet_paper']:.3f} | | "
                f"{row['ratspn_einet_paper']:.3f} | | |"
            )
            continue
        verdict = (
            "ok"
            if row["within_target"]
            else f"miss by {-row['diff_vs_einet'] - row['tolerance']:.2f}"
        )
        lines.append(
            f"| {row['display_name']} | {row['config']} | {row['parameters']:,} | {row['configs_tried']} | "
            f"{row['valid_ll']:.3f} | {row['test_ll']:.3f} | {row['einet_paper']:.3f} | "
            f"{row['diff_vs_einet']:+.3f} | {row['ratspn_einet_paper']:.3f} | {row['diff_vs_ratspn']:+.3f} | "
            f"{verdict} |"
        )
    lines += [
        "",
        "## Every configuration trained",
        "",
        "| dataset | D | R | K | params | epochs (best) | stopped | train LL | valid LL | test LL | seconds | recipe |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.dataset} | {r.depth} | {r.replicas} | {r.sums} | {r.parameters:,} | "
            f"{r.epochs} ({r.best_epoch}) | {r.stopped} | {r.train_ll:.3f} | {r.valid_ll:.3f} | "
            f"{r.test_ll:.3f} | {r.seconds:.0f} | {r.recipe} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated DEBD names")
    parser.add_argument("--quick", action="store_true", help="smoke run: one tiny config, 2 epochs")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "debd",
        help="output stem: writes STEM.md and STEM.json",
    )
    parser.add_argument(
        "--budget-minutes", type=float, default=45.0, help="wall-clock budget of the whole run"
    )
    parser.add_argument(
        "--epochs", type=int, default=10, help="maximum online-EM epochs per configuration"
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=3,
        help="stop online EM after this many epochs without a better valid LL",
    )
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=30,
        help="maximum full-batch EM epochs after online EM",
    )
    parser.add_argument(
        "--finetune-patience",
        type=int,
        default=2,
        help="stop full-batch EM after this many epochs without a better valid LL",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in STEM.json and skip configurations done with this recipe",
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--step-size", type=float, default=0.05, help="online EM step size")
    parser.add_argument(
        "--grid",
        choices=("default", "full"),
        default="full",
        help="'default': only each dataset's default config",
    )
    parser.add_argument(
        "--configs",
        default=None,
        help="explicit configurations 'D,R,K;D,R,K' instead of the default + grid",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, 2)
        args.finetune_epochs = min(args.finetune_epochs, 1)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    data_dir = args.data_dir
    missing = [d for d in datasets if not (data_dir / "debd" / d / "train.csv.gz").exists()]
    if missing:
        print(f"error: no data for {', '.join(missing)} under {data_dir / 'debd'}", file=sys.stderr)
        return 2
    reference = read_reference(data_dir / "debd_reference_lls.csv")
    started = time.perf_counter()
    deadline = started + 60.0 * args.budget_minutes
    print(
        f"debd: {len(datasets)} datasets, budget {args.budget_minutes:.0f} min, "
        f"{args.threads} thread(s), load average {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    data = {
        d: {
            s: load_array(data_dir / "debd" / d / f"{s}.csv.gz") for s in ("train", "valid", "test")
        }
        for d in datasets
    }

    # Queue: every dataset's default config first, then the rest of the grid, round-robin.
    first = [(d, default_config(data[d]["train"].shape[1])) for d in datasets]
    if args.quick:
        first = [(d, grid(data[d]["train"].shape[1], True)[0]) for d in datasets]
    rest: list[tuple[str, Config]] = []
    if args.configs:
        explicit = [
            Config(*(int(v) for v in item.split(",")))
            for item in args.configs.split(";")
            if item.strip()
        ]
        first = [(d, explicit[0]) for d in datasets]
        rest = [(d, c) for c in explicit[1:] for d in datasets]
    if args.grid == "full" and not args.quick and not args.configs:
        per_dataset = {
            # shallow first (depth 1-2 won on every set tried), then by decreasing size
            d: sorted(
                (c for c in grid(data[d]["train"].shape[1], False) if c != first[i][1]),
                key=lambda c: (c.depth, -c.replicas * c.sums),
            )
            for i, d in enumerate(datasets)
        }
        for position in range(max((len(v) for v in per_dataset.values()), default=0)):
            rest += [
                (d, per_dataset[d][position]) for d in datasets if position < len(per_dataset[d])
            ]

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_start": round(os.getloadavg()[0], 2),
        "load_end": None,
        "note": f"shared 2-core machine, load average at start {os.getloadavg()[0]:.2f}",
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "step_size": args.step_size,
        "epochs": args.epochs,
        "patience": args.patience,
        "finetune_epochs": args.finetune_epochs,
        "finetune_patience": args.finetune_patience,
        "dtype": args.dtype,
        "threads": args.threads,
        "seed": args.seed,
        "budget_minutes": args.budget_minutes,
        "quick": args.quick,
        "elapsed_minutes": 0.0,
        "skipped": [],
    }
    runs: list[Run] = []
    if args.resume and args.out.with_suffix(".json").exists():
        previous = json.loads(args.out.with_suffix(".json").read_text())
        runs = [
            Run(**{"recipe": "earlier recipe (see runs' history)", **r}) for r in previous["runs"]
        ]
        meta["resumed_runs"] = len(runs)
        print(f"resume: {len(runs)} earlier runs", file=sys.stderr)
    done = {(r.dataset, Config(r.depth, r.replicas, r.sums), r.recipe) for r in runs}
    seconds_per_unit: list[float] = []  # measured cost of finished runs, to skip what cannot fit
    for position, (dataset, config) in enumerate(first + rest):
        remaining = deadline - time.perf_counter()
        if (dataset, config, recipe_label(args)) in done:
            continue
        rows, variables = len(data[dataset]["train"]), data[dataset]["train"].shape[1]
        estimate = None
        if seconds_per_unit:
            # a typical run lasts ~15 epochs with early stopping
            estimate = np.median(seconds_per_unit) * cost_units(variables, config, rows) * 15
        if position >= len(first) and (
            remaining <= 0 or (estimate is not None and estimate > remaining)
        ):
            meta["skipped"].append(f"{dataset} {config.label}")
            print(
                f"skip {dataset} {config.label}: estimated {estimate or 0:.0f} s, {remaining:.0f} s left",
                file=sys.stderr,
            )
            continue
        print(
            f"[{position + 1}/{len(first) + len(rest)}] {dataset} {config.label} "
            f"({remaining / 60:.1f} min left)",
            file=sys.stderr,
            flush=True,
        )
        # default configs always finish (each dataset gets a row); grid configs stop at the deadline
        run = train(
            dataset, data[dataset], config, args, deadline if position >= len(first) else math.inf
        )
        runs.append(run)
        seconds_per_unit.append(
            run.seconds / max(1, run.epochs) / cost_units(variables, config, rows)
        )
        print(
            f"  -> {dataset} {config.label}: valid {run.valid_ll:.4f} test {run.test_ll:.4f} "
            f"({run.epochs} epochs, best {run.best_epoch}, {run.seconds:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        meta["elapsed_minutes"] = (time.perf_counter() - started) / 60
        meta["load_end"] = round(os.getloadavg()[0], 2)
        meta["note"] = (
            f"shared 2-core machine, load average {meta['load_start']:.2f} at start, "
            f"{meta['load_end']:.2f} at the last write"
        )
        write_results(runs, datasets, reference, meta, args.out)
    if not runs:
        print("error: nothing ran", file=sys.stderr)
        return 1
    write_results(runs, datasets, reference, meta, args.out)
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
