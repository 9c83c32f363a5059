"""Run by tests/test_distributed.py under torchrun (2 gloo workers, CPU, float64): trains each case
of ``CASES`` with ``einc.train.distributed.fit`` and saves every rank's parameters and history, which
the test compares with one process (``Model.fit``) and across ranks.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py DIR
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

# Every leaf family with its own statistics, missing values, two heads (for labels).
CIRCUIT = """
circuit mixed
var a, b : binary
var c : categorical(3)
var r : real
var n : count
var s : real(2)
leaf a, b ~ bernoulli
leaf c ~ categorical
leaf r, s ~ normal
leaf n ~ poisson
sums 3
inputs 3
heads 2
structure random_binary_trees(depth = 2, replicas = 2, seed = 0)
"""

TRAIN_ROWS = 400
WORKERS = 2

# name -> options of einc.train.distributed.fit; "data"/"labels"/"valid" name files in the directory,
# "in_memory" passes the array instead of the file
CASES: dict[str, dict[str, Any]] = {
    "full_batch": {"data": "train.npy", "update": "epoch", "step_size": 1.0, "epochs": 3, "batch_size": 64},
    "online": {"data": "train.npy", "valid": "valid.npy", "update": "batch", "step_size": 0.3, "epochs": 3,
               "batch_size": 50, "block_rows": 70},
    "online_in_memory": {"data": "train.npy", "in_memory": True, "valid": "valid.npy", "update": "batch",
                         "step_size": 0.3, "epochs": 3, "batch_size": 50, "block_rows": 70},
    "adam": {"data": "train.npy", "method": "adam", "learning_rate": 0.05, "epochs": 2, "batch_size": 50,
             "block_rows": 70},
    "files_labels": {"data": "part{rank}.npy", "labels": "labels{rank}.npy", "update": "batch", "step_size": 0.3,
                     "epochs": 2, "batch_size": 50},
}


def make_rows(count: int, seed: int) -> np.ndarray:
    """Columns a, b, c, r, n, s.0, s.1 of CIRCUIT; 5% of the entries missing (NaN)."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.integers(0, 2, count), rng.integers(0, 2, count), rng.integers(0, 3, count),
                         rng.normal(size=count), rng.poisson(2.0, count), rng.normal(size=(count, 2))])
    x = x.astype(np.float64)
    x[rng.random(x.shape) < 0.05] = np.nan
    return x


def write_data(directory: Path) -> None:
    """The files the cases read; the per-worker parts are sized as einc would split train.npy."""
    from einc.train.schedule import aligned_shard_sizes, shard_starts

    train = make_rows(TRAIN_ROWS, 1)
    np.save(directory / "train.npy", train)
    np.save(directory / "valid.npy", make_rows(100, 2))
    labels = np.random.default_rng(3).integers(0, 2, TRAIN_ROWS)
    sizes = aligned_shard_sizes(TRAIN_ROWS, WORKERS, CASES["files_labels"]["batch_size"])
    for rank, (start, size) in enumerate(zip(shard_starts(sizes), sizes)):
        np.save(directory / f"part{rank}.npy", train[start : start + size])
        np.save(directory / f"labels{rank}.npy", labels[start : start + size])
    np.save(directory / "labels.npy", labels)


def fit_options(case: dict[str, Any], directory: Path) -> dict[str, Any]:
    options = {k: v for k, v in case.items() if k not in ("data", "labels", "valid", "in_memory")}
    if "valid" in case:
        options["valid"] = str(directory / case["valid"])
    if "labels" in case:
        options["labels"] = str(directory / case["labels"])
    return options


def main(directory: Path) -> None:
    import torch.distributed as dist

    import einc
    from einc.train import distributed

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name, case in CASES.items():
        model = einc.compile(CIRCUIT, dtype="float64", seed=0)
        train: Any = str(directory / case["data"])
        if case.get("in_memory"):
            train = np.load(train)
        history = distributed.fit(model, train, **fit_options(case, directory))
        valid = [np.nan if record.valid_ll is None else record.valid_ll for record in history]
        np.savez(directory / f"{name}-rank{rank}.npz", valid_ll=np.array(valid),
                 **{f"param/{k}": v for k, v in model.parameters().items()})
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
