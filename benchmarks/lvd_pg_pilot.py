"""A CPU pilot of LVD with progressive growing on binarised, down-sampled MNIST (not issue 21's
experiment: one seed, a toy circuit, pixel patches as the "teacher").

Images are max-pooled to 14×14 and binarised (> 127). The circuit (written as .pc text here) has
a latent on each of the four 7×7 quadrants; each quadrant is a k-d tree of binary splits down to
single pixels, and the quadrants are joined by two binary partitions (outer products). The
"teacher" embedding of a quadrant is its 49 pixels. Arms, each ending with the same fine-tuning
on x and keeping the best validation epoch:

Every arm trains for as many EM epochs as lvd_pg did (its rounds × ``--epochs``, then
``--finetune-epochs``), so the arms differ in what they train on, not in how long.

- em:     the circuit with N1·N2 states per latent, EM on x only;
- em_big: the same with K = ``--big-sums`` everywhere else, about lvd_pg's final size;
- lvd:    the same circuit, latents by k-means (one shared codebook) over the quadrants, EM on
          (x, z), then fine-tuning (``einc.train.lvd.distill``);
- lvd_pg: progressive growing from N1 to N1·N2 states per latent (``einc.train.lvd_pg``), then
          fine-tuning; its inner regions grow too, so it ends with more parameters (how many
          depends on ``--grow-threshold``).

    python benchmarks/lvd_pg_pilot.py --train-rows 1000 --valid-rows 500 --test-rows 2000 --epochs 2 \
        --finetune-epochs 3 --grow 2x2 --sums 4 --big-sums 11
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import command_line, machine_text  # noqa: E402

import einc  # noqa: E402
from einc.train import lvd, lvd_pg  # noqa: E402
from einc.tools.growing import write_grown  # noqa: E402


def kd_tree(rows: range, cols: range, lines: list[str]) -> None:
    """Binary splits of a rectangle, the longer side first, down to single pixels."""
    if len(rows) * len(cols) == 1:
        return
    if len(rows) >= len(cols):
        cut = rows.start + len(rows) // 2
        parts = [(range(rows.start, cut), cols), (range(cut, rows.stop), cols)]
    else:
        cut = cols.start + len(cols) // 2
        parts = [(rows, range(cols.start, cut)), (rows, range(cut, cols.stop))]
    lines.append(f"{rect(rows, cols)} -> {rect(*parts[0])} * {rect(*parts[1])}")
    for part in parts:
        kd_tree(*part, lines)


def rect(rows: range, cols: range) -> str:
    def axis(r: range) -> str:
        return str(r.start) if len(r) == 1 else f"{r.start}:{r.stop}"
    return f"{{img[{axis(rows)}, {axis(cols)}]}}"


def circuit(sums: int, states: int | None) -> str:
    lines = ["circuit quadrants", "var img[14, 14] : binary", "leaf img ~ bernoulli", f"sums {sums}",
             f"{{img}} -> {rect(range(0, 7), range(0, 14))} * {rect(range(7, 14), range(0, 14))}",
             f"{rect(range(0, 7), range(0, 14))} -> {rect(range(0, 7), range(0, 7))} * {rect(range(0, 7), range(7, 14))}",
             f"{rect(range(7, 14), range(0, 14))} -> {rect(range(7, 14), range(0, 7))} * {rect(range(7, 14), range(7, 14))}"]
    quadrants = [(range(r, r + 7), range(c, c + 7)) for r in (0, 7) for c in (0, 7)]
    for q in quadrants:
        kd_tree(*q, lines)
    for number, q in enumerate(quadrants):
        lines.append(f"latent q{number} = {rect(*q)}")
        if states is not None:
            lines.append(f"sums {rect(*q)} = {states}")
    return "\n".join(lines) + "\n"


def data(path: str, train_rows: int, valid_rows: int, test_rows: int) -> tuple[np.ndarray, ...]:
    with np.load(path) as archive:
        train, test = archive["x_train"], archive["x_test"]

    def pooled(x: np.ndarray) -> np.ndarray:
        return (x.reshape(-1, 14, 2, 14, 2).max((2, 4)) > 127).reshape(-1, 196).astype(np.float64)

    return pooled(train[:train_rows]), pooled(train[-valid_rows:]), pooled(test[:test_rows])


def quadrant_features(x: np.ndarray) -> np.ndarray:
    image = x.reshape(-1, 14, 14)
    return np.stack([image[:, r:r + 7, c:c + 7].reshape(-1, 49) for r in (0, 7) for c in (0, 7)], 1)


def bpd(ll: float) -> float:
    return -ll / 196 / np.log(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mnist.npz")
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--valid-rows", type=int, default=1000)
    parser.add_argument("--test-rows", type=int, default=10000)
    parser.add_argument("--sums", type=int, default=4)
    parser.add_argument("--grow", default="2x4")
    parser.add_argument("--grow-threshold", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=3, help="EM epochs per distillation / growing round")
    parser.add_argument("--finetune-epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/lvd_pg_pilot")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--big-sums", type=int, default=11, help="K of the em_big arm (about lvd_pg's size)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    outer, inner = lvd_pg.parse_grow(args.grow)
    train, valid, test = data(args.data, args.train_rows, args.valid_rows, args.test_rows)
    features = quadrant_features(train)
    options = {"batch_size": 100, "step_size": 0.1, "pseudocount": 0.1}
    results = {}
    # lvd_pg first: every other arm then gets as many EM epochs as it had (rounds x epochs + fine-tuning)
    rounds_done = 0
    for arm in ("lvd_pg", "em", "em_big", "lvd"):
        started = time.perf_counter()
        sums = args.big_sums if arm == "em_big" else args.sums
        model = einc.compile(circuit(sums, outer * inner if arm != "lvd_pg" else None), dtype="float32",
                             seed=args.seed)
        extra: dict = {}
        if arm in ("em", "em_big"):
            model.fit(train, valid=valid, epochs=rounds_done * args.epochs + args.finetune_epochs, seed=args.seed,
                      **options)
        elif arm == "lvd":
            result = lvd.distill(model, train, features=features, epochs=rounds_done * args.epochs,
                                 finetune_epochs=args.finetune_epochs, valid=valid, seed=args.seed, **options)
            extra = {"objective_bpd": bpd(result.objective), "distilled_bpd": bpd(result.distilled_ll)}
        else:
            model, z, rounds = lvd_pg.progressive_growing(
                model, train, features, outer, inner, threshold=args.grow_threshold, epochs=args.epochs,
                valid=valid, seed=args.seed, on_round=lambda r: print(f"  {r}", flush=True), **options)
            extra = {"objective_bpd": bpd(float(model.log_likelihood(train, latents=z).mean())),
                     "distilled_bpd": bpd(float(model.log_likelihood(train).mean())),
                     "rounds": [{"states": r.states, "train_bpd_xz": bpd(r.train_ll), "valid_bpd": bpd(r.valid_ll),
                                 "parameters": r.parameters} for r in rounds]}
            rounds_done = len(rounds)
            model.fit(train, valid=valid, epochs=args.finetune_epochs, seed=args.seed, **options)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            write_grown(model, f"{args.out}_lvd_pg.pc", f"{args.out}_lvd_pg.npz")
        results[arm] = {"K": sums, "test_bpd": bpd(float(model.log_likelihood(test).mean())),
                        "valid_bpd": bpd(float(model.log_likelihood(valid).mean())),
                        "parameters": model.num_parameters, "seconds": time.perf_counter() - started, **extra}
        print(arm, json.dumps(results[arm]), flush=True)
    record = {"command": command_line("lvd_pg_pilot.py", None), "machine": machine_text(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": vars(args), "arms": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}.json")


if __name__ == "__main__":
    main()
