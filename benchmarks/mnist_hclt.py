"""A hidden Chow-Liu tree (HCLT) over MNIST's 784 pixels with categorical(256) leaves (issue 8).

    python benchmarks/mnist_hclt.py                                   # CPU: K=16, 15-minute budget
    python benchmarks/mnist_hclt.py --device cuda --sums 32 --epochs 350 --budget-minutes 600

Protocol: the last 5,000 training images are the validation split; the tree is learned by
``einc.tools.structure_learning`` (``einc learn-structure hclt --variables examples/mnist_categorical.pc``)
from at most ``--tree-rows`` of the other 55,000, with ``--bins`` equal-width grey-level bins; the
HCLT is trained by stochastic online EM (the torch backend's resident-data epoch: one captured
CUDA graph per batch on a GPU), the parameters of the best validation epoch are kept, and the
whole test set is scored with them: test bits per dimension = −log p(x) / (784 ln 2).

Writes ``benchmarks/results/mnist_hclt.{json,md}`` (machine, date, command, budget, the curve),
the training curve as ``mnist_hclt.png`` and the learned circuit as ``mnist_hclt.pc``. Targets
for comparison: PyJuice's HCLT K=32 reaches 1.22 bpd after 350 epochs (GPU); einc's PD EiNet
1.68; the issue asks for ≤ 1.25.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import einc
from einc.backends.base import Batch
from einc.io.data import prepare
from einc.io.files import atomic_write
from einc.tools.structure_learning import learn_structure
from plots import curve_png

import records  # benchmarks/records.py

ROOT = Path(__file__).resolve().parent.parent
PIXELS = 784


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help=records.MNIST_HELP)
    parser.add_argument("--sums", type=int, default=16, help="hidden states K per tree node")
    parser.add_argument("--epochs", type=int, default=50, help="at most this many epochs")
    parser.add_argument("--budget-minutes", type=float, default=15.0, help="training stops after this")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--step-size", type=float, default=0.1, help="online EM step size")
    parser.add_argument("--pseudocount", type=float, default=0.1)
    parser.add_argument("--bins", type=int, default=8, help="grey-level bins for the mutual information")
    parser.add_argument("--tree-rows", type=int, default=20000, help="training rows the tree is learned from")
    parser.add_argument("--valid-rows", type=int, default=5000)
    parser.add_argument("--train-rows", type=int, default=None, help="train on the first N (smoke runs)")
    parser.add_argument("--test-rows", type=int, default=None, help="score the first N test images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--precision", choices=["fp32", "tf32"], default="fp32",
                        help="float32 matmuls on CUDA: IEEE (default) or TF32 tensor cores")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mnist_hclt")
    return parser.parse_args(argv)


def bits_per_dimension(model: einc.Model, values: np.ndarray, observed: np.ndarray, batch: int = 2000) -> float:
    total = 0.0
    for start in range(0, len(values), batch):
        part = Batch(values[start : start + batch], observed[start : start + batch])
        total += float(model.backend.log_likelihood(model.params, part)[:, 0].sum())
    return -total / len(values) / (PIXELS * math.log(2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = records.command_line("mnist_hclt.py", argv)
    started = time.perf_counter()
    records.require_device(args.device, "mnist_hclt.py")
    images, test = records.mnist_images(records.mnist_path(args.data))
    train = images[: -args.valid_rows][: args.train_rows].astype(np.float64)
    valid = images[-args.valid_rows :].astype(np.float64)
    test = test[: args.test_rows].astype(np.float64)
    source, tree = learn_structure(
        "hclt", train, args.out.with_suffix(".pc"), hidden_states=args.sums,
        variables=ROOT / "examples" / "mnist_categorical.pc", bins=args.bins, max_rows=args.tree_rows,
        seed=args.seed,
    )
    atomic_write(args.out.with_suffix(".pc"), lambda stream: stream.write(source.encode("utf-8")))
    learning = time.perf_counter() - started
    print(f"tree: depth {tree.depth}, {tree.weight:.2f} nats of mutual information ({learning:.0f} s)",
          file=sys.stderr, flush=True)
    model = einc.compile(source, backend="torch", device=args.device, dtype=args.dtype, seed=args.seed,
                         precision=args.precision)
    splits = {name: prepare(model.graph, data, None, name) for name, data in
              (("train", train), ("valid", valid), ("test", test))}
    resident = model.backend.upload(*splits["train"], None)
    rng = np.random.default_rng(args.seed)
    history: list[dict[str, float]] = []
    best = (math.inf, model.parameters(), 0)
    deadline = time.perf_counter() + 60.0 * args.budget_minutes
    for epoch in range(1, args.epochs + 1):
        epoch_started = time.perf_counter()
        model.params, total = model.backend.train_epoch(
            model.params, resident, rng.permutation(len(train)), args.batch_size, args.step_size,
            args.pseudocount,
        )
        seconds = time.perf_counter() - epoch_started
        record = {
            "epoch": epoch,
            "seconds": seconds,
            # the running mean over the epoch's batches, each before its update
            "train": -total / len(train) / (PIXELS * math.log(2)),
            "valid": bits_per_dimension(model, *splits["valid"]),
        }
        if record["valid"] < best[0]:
            best = (record["valid"], model.parameters(), epoch)
        record["test"] = bits_per_dimension(model, *splits["test"])
        history.append(record)
        print(f"epoch {epoch:3d}: train {record['train']:.4f} valid {record['valid']:.4f} "
              f"test {record['test']:.4f} bpd ({seconds:.0f} s)", file=sys.stderr, flush=True)
        write(args, command, history, tree, learning, model, None, started)
        if time.perf_counter() + seconds > deadline:
            break
    model.set_parameters(best[1])
    final = {"epoch": best[2], "valid": best[0], "test": bits_per_dimension(model, *splits["test"])}
    write(args, command, history, tree, learning, model, final, started)
    print(args.out.with_suffix(".md").read_text())
    return 0


def write(args: argparse.Namespace, command: str, history: list[dict[str, float]], tree, learning: float,
          model: einc.Model, final: dict[str, float] | None, started: float) -> None:
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": command,
        "machine": records.machine_text(args.device),
        "load_average": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "device": args.device,
        "dtype": args.dtype,
        "precision": args.precision,
        "threads": args.threads,
        "sums": args.sums,
        "parameters": model.num_parameters,
        "recipe": f"online EM, batch {args.batch_size}, step {args.step_size}, pseudocount {args.pseudocount}",
        "budget_minutes": args.budget_minutes,
        "tree": {"depth": tree.depth, "root": int(tree.root), "mutual_information": tree.weight,
                 "bins": args.bins, "rows": args.tree_rows, "seconds": learning},
        "elapsed_minutes": (time.perf_counter() - started) / 60,
    }
    payload = {"meta": meta, "history": history, "final": final}
    atomic_write(args.out.with_suffix(".json"), lambda s: s.write((json.dumps(payload, indent=1) + "\n").encode()))
    curve_png(args.out.with_suffix(".png"), history, f"HCLT K={args.sums} on MNIST: bits per dimension")
    lines = [
        "# MNIST: a hidden Chow-Liu tree with categorical(256) pixel leaves",
        "",
        f"Generated on {meta['date']} by `{command}` ({meta['machine']}; load average "
        f"{meta['load_average']}; torch {meta['torch']}, {args.device}, {args.dtype}, {args.threads} thread(s)).",
        "",
        f"HCLT K={args.sums}: {meta['parameters']:,} parameters; tree learned in {learning:.0f} s from "
        f"{args.tree_rows} training rows ({args.bins} grey-level bins), depth {tree.depth}. "
        f"Recipe: {meta['recipe']}; training budget {args.budget_minutes:g} min "
        f"(wall time so far {meta['elapsed_minutes']:.1f} min including evaluation).",
        "",
    ]
    if final is not None:
        lines += [
            f"**Test: {final['test']:.4f} bits per dimension** (the best validation epoch, {final['epoch']}, "
            f"of {len(history)}; valid {final['valid']:.4f}). For comparison: PyJuice's HCLT K=32, "
            "1.22 bpd after 350 epochs on a GPU; einc's PD EiNet 1.68 bpd; target ≤ 1.25.",
            "",
        ]
    lines += [
        "![curve](mnist_hclt.png)",
        "",
        "| epoch | seconds | train bpd | valid bpd | test bpd |",
        "|---:|---:|---:|---:|---:|",
    ]
    for h in history:
        lines.append(f"| {h['epoch']} | {h['seconds']:.0f} | {h['train']:.4f} | {h['valid']:.4f} | {h['test']:.4f} |")
    atomic_write(args.out.with_suffix(".md"), lambda s: s.write(("\n".join(lines) + "\n").encode()))


if __name__ == "__main__":
    sys.exit(main())
