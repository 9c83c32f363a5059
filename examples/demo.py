"""``make demo``: check every example, then train the nltcs RAT-SPN with EM and compare its test
log-likelihood with the EiNet paper's Table 1. Uses only data shipped in examples/data/."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import einc
from einc.cli import main as cli_main
from einc.io.data import load_array

ROOT = Path(__file__).resolve().parent.parent
PAPER_NLTCS = {"RAT-SPN (paper)": -6.011, "EiNet (paper)": -6.015}


def run() -> int:
    examples = sorted((ROOT / "examples").glob("*.pc"))
    for path in examples:
        if cli_main(["check", str(path)]) != 0:
            return 1
        print()
    torch.set_num_threads(1)
    data = ROOT / "examples" / "data" / "nltcs"
    train, valid, test = (load_array(data / f"{split}.csv.gz") for split in ("train", "valid", "test"))
    model = einc.compile(ROOT / "examples" / "nltcs.pc", seed=0)
    print(f"training examples/nltcs.pc: {model.num_parameters} parameters, {len(train)} samples")
    started = time.perf_counter()

    def report(record: einc.model.EpochRecord) -> None:
        print(f"  epoch {record.epoch:2d}  train LL {record.train_ll:.4f}  valid LL {record.valid_ll:.4f}", flush=True)

    # the recipe benchmarks/debd.py selected: online EM (batch 100, step 0.05), then full-batch EM,
    # each phase keeping its best validation epoch
    model.fit(train, valid=valid, epochs=10, batch_size=100, step_size=0.05, on_epoch=report)
    print("  full-batch EM:")
    model.fit(train, valid=valid, epochs=10, update="epoch", step_size=1.0, batch_size=1000, on_epoch=report)
    test_ll = float(model.log_likelihood(test).mean())
    print(f"trained in {time.perf_counter() - started:.1f}s (CPU, 1 thread)")
    print("\nnltcs test log-likelihood (nats per sample, higher is better)")
    print(f"  einc (this run)   {test_ll:8.3f}")
    for name, value in PAPER_NLTCS.items():
        print(f"  {name:<17} {value:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
