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
(``benchmarks/debd_reference_lls.csv``, a copy of ``../shared/data/debd_reference_lls.csv``).
The data come from ``--data-dir``, else einc's data cache, else ``../shared/data``
(``einc data fetch debd NAME`` fetches a set).

Scheduling: the whole run gets a wall-clock budget. Every dataset's default configuration is
trained first (so each dataset gets a complete row), then the rest of the grid (shallow depths
first, larger models first within a depth), round-robin over the datasets, skipping
configurations whose estimated time no longer fits. ``--resume`` keeps the runs already in the
JSON file (from earlier invocations, possibly with other recipes; each run records its recipe),
skips configurations already trained with the same recipe, and selects over all of them.
Results are rewritten after every finished configuration, so an interrupted run leaves a table.

Progress goes to stderr (one line per epoch); the tables go to ``benchmarks/results/debd.md`` and
``benchmarks/results/debd.json``.

The HCLT arm (``--arm hclt``, issue 8): hidden Chow-Liu trees learned from each training split by
``einc.tools.structure_learning`` (the ``einc learn-structure hclt`` of the CLI), K hidden states per
tree node, element-wise products; the same protocol — online EM then full-batch EM, each stopped
on valid, model selection over K on valid — with its own recipe (larger batches and steps and a
pseudocount, as HCLT training uses). Its tables go to ``benchmarks/results/debd_hclt.{md,json}``
and compare with the published HCLT numbers and with einc's selected RAT-SPN from ``debd.json``.
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
from einc.io.files import atomic_write

import einc
from einc.io.data import load_array, prepare
from einc.io.datasets import DataMissing
from einc.io.datasets import find as find_dataset

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_LLS = ROOT / "benchmarks" / "debd_reference_lls.csv"  # published test LLs (EiNet paper, HCLT)
DATASETS = ("nltcs", "plants", "baudio", "bnetflix", "accidents", "pumsb_star")
# "Small" sets get the ±0.1 nats target, the others ±0.5 (issue 3, "Done when").
SMALL = frozenset({"nltcs", "plants"})
TOLERANCE = {True: 0.1, False: 0.5}


@dataclass(frozen=True)
class Config:
    depth: int
    replicas: int
    sums: int  # K: sums per region and Bernoulli leaves per leaf region
    structure: str = "rat"  # or "hclt": depth is then the learned tree's, replicas 0

    @property
    def label(self) -> str:
        if self.structure == "hclt":
            return f"HCLT K={self.sums}"
        return f"D={self.depth} R={self.replicas} K={self.sums}"


@dataclass(frozen=True)
class Recipe:
    """How one configuration is trained: online EM, then full-batch EM, each stopped on valid."""

    batch_size: int
    step_size: float
    epochs: int
    patience: int
    finetune_epochs: int
    finetune_patience: int
    pseudocount: float = 0.0

    @property
    def label(self) -> str:
        text = (
            f"online EM b{self.batch_size} step {self.step_size} <= {self.epochs} ep (patience {self.patience})"
            f" + full-batch EM <= {self.finetune_epochs} ep (patience {self.finetune_patience})"
        )
        return text + (f", pseudocount {self.pseudocount:g}" if self.pseudocount else "")


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
    structure: str = "rat"  # "rat" (depth, replicas) or "hclt" (depth = the tree's, replicas 0)


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
    source: str | None = None,
    recipe: Recipe | None = None,
    structure: str = "rat",
) -> Run:
    """Online EM with early stopping on valid, then full-batch EM; returns the best-valid model's
    figures. ``source``: the circuit (default: the RAT-SPN of ``config``); ``recipe``: default
    the RAT recipe of ``args``."""
    num_variables = data["train"].shape[1]
    recipe = recipe or rat_recipe(args)
    model = einc.compile(
        source or circuit_text(dataset, num_variables, config, args.seed),
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
    for epoch in range(1, recipe.epochs + 1):
        epoch_started = time.perf_counter()
        order = rng.permutation(len(train_split))
        total = 0.0
        for start in range(0, len(order), recipe.batch_size):
            stats = model.backend.statistics(
                model.params, train_split.batch(order[start : start + recipe.batch_size])
            )
            model.params = model.backend.em_update(model.params, stats, recipe.step_size, recipe.pseudocount)
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
        if epoch - best_epoch >= recipe.patience:
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
    for epoch in range(online_epochs + 1, online_epochs + 1 + recipe.finetune_epochs):
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
        model.params = model.backend.em_update(model.params, accumulated, 1.0, recipe.pseudocount)
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
        if since_best >= recipe.finetune_patience:
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
        recipe.label,
        history,
        structure,
    )


def rat_recipe(args: argparse.Namespace) -> Recipe:
    return Recipe(args.batch_size, args.step_size, args.epochs, args.patience, args.finetune_epochs,
                  args.finetune_patience)


def recipe_label(args: argparse.Namespace) -> str:
    return rat_recipe(args).label


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


# ------------------------------------------------------------------------------ the HCLT arm
HCLT_TARGETS = {
    # issue 8: beat einc's RAT-SPN by >= 5 nats here ...
    "accidents": ("rat", 5.0),
    "pumsb_star": ("rat", 5.0),
    # ... and be within 0.3 nats of the published HCLT numbers here
    "nltcs": ("hclt", 0.3),
    "baudio": ("hclt", 0.3),
    "bnetflix": ("hclt", 0.3),
}


def hclt_recipe(args: argparse.Namespace) -> Recipe:
    return Recipe(args.hclt_batch_size, args.hclt_step_size, args.hclt_epochs, args.patience,
                  args.hclt_finetune_epochs, args.finetune_patience, args.pseudocount)


def selected_rat(path: Path) -> dict[str, Run]:
    """einc's RAT-SPN selected on valid per dataset, from the RAT arm's JSON (if it exists)."""
    if not path.exists():
        return {}
    runs = [Run(**{"recipe": "", **r}) for r in json.loads(path.read_text())["runs"]]
    return select([r for r in runs if r.structure == "rat"])


def main_hclt(args: argparse.Namespace, datasets: list[str], data: dict[str, dict[str, np.ndarray]],
              reference_path: Path, meta: dict[str, Any], started: float, folders: dict[str, Path]) -> int:
    """Learn each dataset's Chow-Liu tree once, train an HCLT for every K (the largest first for
    every dataset, then the rest while the budget lasts), select K on valid."""
    from einc.tools.structure_learning import learn_structure

    deadline = started + 60.0 * args.budget_minutes
    sizes = sorted({int(k) for k in args.hclt_sums.split(",") if k.strip()}, reverse=True)
    recipe = hclt_recipe(args)
    meta.update({"arm": "hclt", "recipe": recipe.label, "hclt_sums": sizes, "bins": args.bins})
    runs: list[Run] = []
    # every training invocation whose runs are in the file: command, date, budget, time, load
    meta["invocations"] = []
    if (args.resume or args.report_only) and args.out.with_suffix(".json").exists():
        previous = json.loads(args.out.with_suffix(".json").read_text())
        runs = [Run(**r) for r in previous["runs"]]
        meta["invocations"] = previous["meta"].get("invocations", [])
    if args.report_only:
        if args.out.with_suffix(".json").exists():  # keep the last training invocation's settings
            meta = {**previous["meta"], "date": meta["date"]}
        write_hclt_results(runs, datasets, reference_path, meta, args)
        print(args.out.with_suffix(".md").read_text())
        return 0
    done = {(r.dataset, r.sums, r.recipe) for r in runs}
    queue = [(d, k) for k in sizes for d in datasets]
    for position, (dataset, k) in enumerate(queue):
        if (dataset, k, recipe.label) in done:
            continue
        if position >= len(datasets) and time.perf_counter() > deadline:
            meta["skipped"].append(f"{dataset} HCLT K={k}")
            continue
        learned = time.perf_counter()
        train_path = folders[dataset] / "train.csv.gz"
        source, tree = learn_structure("hclt", train_path, f"{dataset}_hclt.pc", hidden_states=k, bins=args.bins)
        learning = time.perf_counter() - learned
        print(f"[{position + 1}/{len(queue)}] {dataset} HCLT K={k}: tree of depth {tree.depth} rooted at "
              f"variable {tree.root} ({learning:.1f} s to learn)", file=sys.stderr, flush=True)
        config = Config(tree.depth, 0, k, "hclt")
        run = train(dataset, data[dataset], config, args, deadline if position >= len(datasets) else math.inf,
                    source=source, recipe=recipe, structure="hclt")
        run.seconds += learning
        runs.append(run)
        print(f"  -> {dataset} HCLT K={k}: valid {run.valid_ll:.4f} test {run.test_ll:.4f} "
              f"({run.epochs} epochs, {run.seconds:.0f} s)", file=sys.stderr, flush=True)
        meta["elapsed_minutes"] = (time.perf_counter() - started) / 60
        meta["load_end"] = round(os.getloadavg()[0], 2)
        meta["note"] = (
            f"shared 2-core machine, load average {meta['load_start']:.2f} at start, "
            f"{meta['load_end']:.2f} at the last write"
        )
        record_invocation(meta)
        write_hclt_results(runs, datasets, reference_path, meta, args)
    if not runs:
        print("error: nothing ran", file=sys.stderr)
        return 1
    write_hclt_results(runs, datasets, reference_path, meta, args)
    print(args.out.with_suffix(".md").read_text())
    return 0


def record_invocation(meta: dict[str, Any]) -> None:
    """This invocation's line in meta["invocations"] (replaced as it progresses)."""
    this = {key: meta[key] for key in ("command", "date", "budget_minutes", "elapsed_minutes", "load_start", "load_end")}
    invocations = [i for i in meta["invocations"] if (i["command"], i["date"]) != (this["command"], this["date"])]
    meta["invocations"] = [*invocations, this]


def write_hclt_results(runs: list[Run], datasets: list[str], reference_path: Path, meta: dict[str, Any],
                       args: argparse.Namespace) -> None:
    with open(reference_path, newline="") as handle:
        published = {row["debd_name"]: row for row in csv.DictReader(handle)}
    rat = selected_rat(args.rat_results)
    selected = select(runs)
    rows = []
    for name in datasets:
        ref = published.get(name, {})
        row: dict[str, Any] = {
            "dataset": name,
            "display_name": ref.get("display_name", name),
            "hclt_published": float(ref["hclt_reg_repo_logs"]) if ref else None,
            "rat_einc": rat[name].test_ll if name in rat else None,
            "configs_tried": sum(r.dataset == name for r in runs),
        }
        run = selected.get(name)
        if run is not None:
            row.update({"sums": run.sums, "tree_depth": run.depth, "parameters": run.parameters,
                        "epochs": run.epochs, "valid_ll": run.valid_ll, "test_ll": run.test_ll,
                        "seconds": run.seconds})
            if row["hclt_published"] is not None:
                row["diff_vs_hclt"] = run.test_ll - row["hclt_published"]
            if row["rat_einc"] is not None:
                row["diff_vs_rat"] = run.test_ll - row["rat_einc"]
            target = HCLT_TARGETS.get(name)
            if target is not None:
                against, nats = target
                diff = row.get("diff_vs_rat") if against == "rat" else row.get("diff_vs_hclt")
                bound = nats if against == "rat" else -nats
                row["target"] = f"≥ RAT-SPN + {nats:g}" if against == "rat" else f"≥ HCLT − {nats:g}"
                row["within_target"] = None if diff is None else diff >= bound
                row["target_margin"] = None if diff is None else diff - bound
        rows.append(row)
    payload = {"meta": meta, "table": rows, "runs": [asdict(r) for r in runs]}
    out = args.out
    atomic_write(out.with_suffix(".json"), lambda stream: stream.write((json.dumps(payload, indent=1) + "\n").encode()))
    atomic_write(out.with_suffix(".md"), lambda stream: stream.write(hclt_markdown(rows, runs, meta).encode()))


def hclt_markdown(rows: list[dict[str, Any]], runs: list[Run], meta: dict[str, Any]) -> str:
    def number(value: Any, signed: bool = False) -> str:
        return "" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")

    lines = [
        "# DEBD test log-likelihoods: hidden Chow-Liu trees (HCLT arm of benchmarks/debd.py)",
        "",
        f"Written on {meta['date']} ({meta['machine']}, shared with other jobs; torch {meta['torch']}, "
        f"{meta['dtype']}, {meta['threads']} thread(s)) from these invocations (a budget stops further "
        "configurations, never the first one of a dataset):",
        "",
        *(
            f"- `{i['command']}` — {i['date']}, budget {i['budget_minutes']:g} min, wall "
            f"{i['elapsed_minutes']:.1f} min, load average {i['load_start']} → {i['load_end'] or '?'}"
            for i in meta.get("invocations", [])
        ),
        "",
        f"Structure: `einc learn-structure hclt` on each training split (mutual information with "
        f"pseudocount 1, maximum spanning tree rooted at its centre), K hidden states per tree node, "
        f"element-wise products. Recipes (each run's is in the second table): "
        + "; ".join(f"({n}) {recipe}" for n, recipe in enumerate(dict.fromkeys(r.recipe for r in runs), 1))
        + f"; seed {meta['seed']}. Model selection over every K and recipe tried, on the validation split.",
        "",
        "HCLT (published): `hclt_reg_repo_logs` of `benchmarks/debd_reference_lls.csv`. "
        "einc RAT-SPN: the RAT arm's selected model (`results/debd.md`). Targets (issue 8): beat the "
        "RAT-SPN by ≥ 5 nats on accidents and pumsb*, be within 0.3 nats of the published HCLT on "
        "nltcs, audio and netflix.",
        "",
        "| dataset | selected K | tree depth | params | valid LL | test LL | HCLT (published) | diff | einc RAT-SPN | diff | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if "test_ll" not in row:
            lines.append(f"| {row['display_name']} | not run | | | | | {number(row['hclt_published'])} | | "
                         f"{number(row['rat_einc'])} | | |")
            continue
        verdict = ""
        if "target" in row:
            margin = row["target_margin"]
            verdict = f"{row['target']}: " + (
                "no reference" if margin is None else "ok" if margin >= 0 else f"missed by {-margin:.2f}"
            )
        lines.append(
            f"| {row['display_name']} | {row['sums']} | {row['tree_depth']} | {row['parameters']:,} | "
            f"{row['valid_ll']:.3f} | {row['test_ll']:.3f} | {number(row['hclt_published'])} | "
            f"{number(row.get('diff_vs_hclt'), True)} | {number(row['rat_einc'])} | "
            f"{number(row.get('diff_vs_rat'), True)} | {verdict} |"
        )
    lines += [
        "",
        "## Every configuration trained",
        "",
        "| dataset | K | recipe | tree depth | params | epochs (best) | stopped | train LL | valid LL | test LL | seconds |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    recipes = {recipe: n for n, recipe in enumerate(dict.fromkeys(r.recipe for r in runs), 1)}
    for r in runs:
        lines.append(f"| {r.dataset} | {r.sums} | ({recipes[r.recipe]}) | {r.depth} | {r.parameters:,} | "
                     f"{r.epochs} ({r.best_epoch}) | {r.stopped} | {r.train_ll:.3f} | {r.valid_ll:.3f} | "
                     f"{r.test_ll:.3f} | {r.seconds:.0f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated DEBD names")
    parser.add_argument(
        "--arm",
        choices=("rat", "hclt"),
        default="rat",
        help="rat: the EiNet paper's RAT-SPN grid; hclt: hidden Chow-Liu trees (issue 8)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: one tiny config, 2 epochs")
    parser.add_argument("--data-dir", type=Path, help="a folder holding debd/NAME/{train,valid,test}.csv.gz; "
                        "default: einc's data cache, else ../shared/data (`einc data fetch debd NAME`)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output stem: writes STEM.md and STEM.json (default results/debd, results/debd_hclt)",
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
        "--report-only",
        action="store_true",
        help="train nothing: rewrite STEM.md from the runs in STEM.json for --datasets (HCLT arm)",
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
    hclt = parser.add_argument_group("HCLT arm (--arm hclt)")
    hclt.add_argument("--hclt-sums", default="32,16", help="hidden states K to select from (comma-separated)")
    hclt.add_argument("--hclt-batch-size", type=int, default=512)
    hclt.add_argument("--hclt-step-size", type=float, default=0.1, help="online EM step size")
    hclt.add_argument("--hclt-epochs", type=int, default=8, help="maximum online-EM epochs")
    hclt.add_argument("--hclt-finetune-epochs", type=int, default=40, help="maximum full-batch EM epochs")
    hclt.add_argument("--pseudocount", type=float, default=0.1, help="EM pseudocount of the HCLT arm")
    hclt.add_argument("--bins", type=int, default=16, help="mutual-information bins (binary data: unused)")
    hclt.add_argument(
        "--rat-results",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "debd.json",
        help="the RAT arm's JSON, for the comparison column",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / ("debd_hclt" if args.arm == "hclt" else "debd")
    if args.quick:
        args.epochs = min(args.epochs, 2)
        args.finetune_epochs = min(args.finetune_epochs, 1)
        args.hclt_epochs = min(args.hclt_epochs, 2)
        args.hclt_finetune_epochs = min(args.hclt_finetune_epochs, 1)
        args.hclt_sums = args.hclt_sums.split(",")[-1]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    try:
        folders = {d: find_dataset(f"debd/{d}", folder=args.data_dir, option="--data-dir") for d in datasets}
    except DataMissing as error:
        print(f"debd.py: {error}", file=sys.stderr)
        return 2
    reference = read_reference(REFERENCE_LLS)
    started = time.perf_counter()
    deadline = started + 60.0 * args.budget_minutes
    print(
        f"debd: {len(datasets)} datasets, budget {args.budget_minutes:.0f} min, "
        f"{args.threads} thread(s), load average {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    data = {
        d: {
            s: load_array(folders[d] / f"{s}.csv.gz") for s in ("train", "valid", "test")
        }
        for d in datasets
    }
    if args.arm == "hclt":
        meta_hclt: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": "python " + " ".join(["benchmarks/debd.py", *(sys.argv[1:] if argv is None else argv)]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
            "load_start": round(os.getloadavg()[0], 2),
            "note": f"shared 2-core machine, load average at start {os.getloadavg()[0]:.2f}",
            "torch": torch.__version__,
            "dtype": args.dtype,
            "threads": args.threads,
            "seed": args.seed,
            "budget_minutes": args.budget_minutes,
            "elapsed_minutes": 0.0,
            "skipped": [],
        }
        return main_hclt(args, datasets, data, REFERENCE_LLS, meta_hclt, started, folders)

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
