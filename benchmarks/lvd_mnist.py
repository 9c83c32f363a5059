"""Latent variable distillation on MNIST: four ways to start the same circuit, the same epochs.

    python benchmarks/lvd_mnist.py                     # the CPU run in the README (training subset)
    python benchmarks/lvd_mnist.py --arm-set pg ...    # EM / LVD / LVD-PG (benchmarks/lvd_pg_mnist.py)
    python benchmarks/lvd_mnist.py --train-rows 55000 --valid-rows 5000 --epochs 20 \\
        --distill-epochs 10 --teacher-epochs 20        # the full-data command (a GPU-sized run)

The circuit is ``examples/lvd/mnist_lvd.pc``: Poon–Domingos with delta 7 over 28×28 categorical(256)
pixels, K = ``--sums`` densities per region, and one K-state latent per 7×7 leaf patch
(``latent patches(over = img, size = [7, 7])``). Every arm trains it with the same online EM
recipe for ``--epochs`` epochs in all:

- ``em``: EM on x alone from the random initialisation;
- ``random``: latents drawn uniformly at random; ``--distill-epochs`` of EM on (x, z), the rest on x;
- ``pixels``: latents by k-means (one codebook shared by the 16 positions) over raw patch pixels;
- ``teacher``: k-means over the embeddings of a teacher trained here on the same rows
  (``examples/lvd/teacher.py``: a VQ-VAE with a convolutional encoder and an independent
  per-patch decoder, as in the paper's §5).

Every epoch (of either phase) is scored on a validation split (the last ``--valid-rows`` training
images, never trained on) and each run keeps the parameters of its best validation epoch: with
tens of thousands of 256-way leaf parameters per pixel, EM on a few thousand images overfits, and
early stopping is what a user would do. Measured per arm and seed: exact test bits per dimension
(−log p(x) / (784 ln 2)) of those parameters, and of the last epoch's;
for the latent arms the paper's triple (§3, Figure 2) on train and test, in bits per dimension:
the teacher's ELBO under the same discretisation (teacher arm), the LVD objective (mean
log p(x, z) right after training on the pairs) and the circuit's log p(x) at that moment (the
variational gap closed by the exact posterior). The verdict compares the teacher arm with
``em``: success is a test bpd lower by more than two standard deviations of the difference,
√(s_em² + s_teacher²) with s each arm's standard deviation over seeds.

Writes ``benchmarks/results/lvd_mnist.{json,md}`` (machine, date, command, every number) and
``lvd_mnist.png`` (train bits per dimension per epoch, each arm's seed mean).
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
from PIL import Image, ImageDraw

import einc
from einc.train import lvd
from einc.io.files import atomic_write

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "lvd"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import records  # benchmarks/records.py
import teacher as teacher_module  # examples/lvd/teacher.py, on the paths above

PIXELS = 784
ARMS = ("em", "random", "pixels", "teacher")
# The experiment's arm sets: this script's one-shot starts, or progressive growing (issue 21),
# whose own script takes the rest of the command line
ARM_SETS = {"one-shot": "em, random, pixels, teacher: four starts of the same PD circuit (this script)",
            "pg": "em, lvd, lvd_pg: LVD with progressive growing against one-shot LVD and EM only, at equal "
                  "parameter counts (benchmarks/lvd_pg_mnist.py: its options follow, see --arm-set pg --help)"}
COLOURS = {"em": (200, 40, 40), "random": (150, 150, 150), "pixels": (40, 120, 200), "teacher": (30, 150, 60)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm-set", choices=ARM_SETS, default="one-shot",
                        help="; ".join(f"{name}: {text}" for name, text in ARM_SETS.items()))
    parser.add_argument("--data", type=Path, help=records.MNIST_HELP)
    parser.add_argument("--circuit", type=Path, default=ROOT / "examples" / "lvd" / "mnist_lvd.pc")
    parser.add_argument("--train-rows", type=int, default=8000, help="train on the first N training images")
    parser.add_argument("--valid-rows", type=int, default=2000,
                        help="validate on the last N training images (early stopping)")
    parser.add_argument("--test-rows", type=int, default=None, help="score the first N test images (default all)")
    parser.add_argument("--sums", type=int, default=10, help="K: densities per region = states per patch latent")
    parser.add_argument("--epochs", type=int, default=6, help="EM epochs of every arm, in all")
    parser.add_argument("--distill-epochs", type=int, default=3, help="of which on (x, z) in the latent arms")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--step-size", type=float, default=0.05, help="online EM step size")
    parser.add_argument("--pseudocount", type=float, default=0.1)
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--teacher-dims", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lvd_mnist")
    parser.add_argument("--report-only", action="store_true",
                        help="only write the table and PNG again from the JSON of an earlier run at --out")
    return parser.parse_args(argv)


def bits(ll: float) -> float:
    """Mean log-likelihood in nats per image -> bits per dimension."""
    return -ll / PIXELS / math.log(2)


def patch_pixels(images: np.ndarray) -> np.ndarray:
    """(N, 784) -> (N, 16, 49) raw patch pixels in [0, 1], patches in the latents' order."""
    return teacher_module.to_patches(torch.as_tensor(images)).numpy() / 255.0


class Watch:
    """Per epoch (of any phase): train log p(x) for the curve, validation log p(x), and a copy of
    the parameters of the best validation epoch so far — early stopping over the whole run, the
    distillation epochs included (fit's keep_best sees one call to fit only)."""

    def __init__(self, model: einc.Model, arm: str, seed: int, train: np.ndarray, valid: np.ndarray) -> None:
        self.model, self.arm, self.seed, self.train, self.valid = model, arm, seed, train, valid
        self.curve: list[float] = []
        self.valid_curve: list[float] = []
        self.best: tuple[float, int, dict] | None = None  # (valid bpd, epoch, parameters)

    def __call__(self, *parts) -> None:
        # fit reports its objective: log p(x, z) while distilling; the curve is log p(x) throughout
        on_pairs = len(parts) == 2 and parts[0].startswith("distill")
        model = self.model
        self.curve.append(bits(float(model.log_likelihood(self.train).mean())) if on_pairs
                          else bits(parts[-1].train_ll))
        self.valid_curve.append(bits(float(model.log_likelihood(self.valid).mean())))
        epoch = len(self.curve)
        if self.best is None or self.valid_curve[-1] < self.best[0]:
            self.best = (self.valid_curve[-1], epoch, model.parameters())
        objective = f", log p(x, z) {bits(parts[-1].train_ll):.4f}" if on_pairs else ""
        print(f"  {self.arm:8s} seed {self.seed} epoch {epoch:2d}  train log p(x) {self.curve[-1]:.4f} bpd"
              f"{objective}, valid {self.valid_curve[-1]:.4f}", flush=True)


def run_arm(arm: str, args: argparse.Namespace, seed: int, train: np.ndarray, valid: np.ndarray,
            test: np.ndarray, teacher: dict | None) -> dict:
    model = einc.compile(args.circuit, seed=seed, options=einc.CompileOptions(sums=args.sums, inputs=args.sums))
    options = {"batch_size": args.batch_size, "step_size": args.step_size, "pseudocount": args.pseudocount}
    started = time.perf_counter()
    watch = Watch(model, arm, seed, train, valid)
    result: dict = {"arm": arm, "seed": seed}

    if arm == "em":
        model.fit(train, epochs=args.epochs, seed=seed, keep_best=False, on_epoch=watch, **options)
    else:
        states = args.sums
        if arm == "random":
            rng = np.random.default_rng(seed)
            z_train = rng.integers(0, states, (len(train), 16))
            z_test = rng.integers(0, states, (len(test), 16))
            codebook = None
        else:
            features_train, features_test = (
                (patch_pixels(train), patch_pixels(test)) if arm == "pixels"
                else (teacher["features_train"], teacher["features_test"]))
            z_train, codebook = lvd.assign_latents(features_train, states, seed=seed)
            z_test = codebook.assign(features_test)
        distilled = lvd.distill(model, train, latents=z_train, epochs=args.distill_epochs, finetune_epochs=0,
                                seed=seed, on_epoch=watch, **options)
        result["lvd_objective_train"] = bits(distilled.objective)
        result["pc_after_distill_train"] = bits(distilled.distilled_ll)
        result["lvd_objective_test"] = bits(float(model.log_likelihood(test, latents=z_test).mean()))
        result["pc_after_distill_test"] = bits(float(model.log_likelihood(test).mean()))
        if arm == "teacher":
            prior = teacher_module.factorised_prior(z_train, states)
            net, centres = teacher["model"], codebook.centres
            result["teacher_elbo_train"] = bits(float(teacher_module.elbo(net, train, z_train, centres, prior).mean()))
            result["teacher_elbo_test"] = bits(float(teacher_module.elbo(net, test, z_test, centres, prior).mean()))
        remaining = args.epochs - args.distill_epochs
        if remaining:
            model.fit(train, epochs=remaining, seed=seed + 1, keep_best=False, on_epoch=watch, **options)
    result["last_train_bpd"] = bits(float(model.log_likelihood(train).mean()))
    result["last_test_bpd"] = bits(float(model.log_likelihood(test).mean()))
    best_valid, best_epoch, best_params = watch.best
    model.set_parameters(best_params)
    result["best_epoch"] = best_epoch
    result["valid_bpd"] = best_valid
    result["train_bpd"] = bits(float(model.log_likelihood(train).mean()))
    result["test_bpd"] = bits(float(model.log_likelihood(test).mean()))
    result["seconds"] = time.perf_counter() - started
    result["curve"] = watch.curve
    result["valid_curve"] = watch.valid_curve
    print(f"  {arm:8s} seed {seed}: test {result['test_bpd']:.4f} bpd at the best validation epoch {best_epoch} "
          f"(last epoch: {result['last_test_bpd']:.4f}) ({result['seconds']:.0f} s)", flush=True)
    return result


def summarise(results: list[dict], arms: list[str]) -> dict:
    summary = {}
    for arm in arms:
        rows = [r for r in results if r["arm"] == arm]
        summary[arm] = {}
        for key in rows[0]:
            if key in ("arm", "seed") or not isinstance(rows[0][key], (int, float)):
                continue
            values = np.array([r[key] for r in rows])
            summary[arm][key] = {"mean": float(values.mean()),
                                 "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan")}
    return summary


def verdict(summary: dict) -> dict | None:
    if "em" not in summary or "teacher" not in summary:
        return None
    em, teacher = summary["em"]["test_bpd"], summary["teacher"]["test_bpd"]
    if math.isnan(em["std"]) or math.isnan(teacher["std"]):  # fewer than two seeds so far
        return None
    gap = em["mean"] - teacher["mean"]
    spread = math.sqrt(em["std"] ** 2 + teacher["std"] ** 2)
    return {"gap_bpd": gap, "std_of_difference": spread, "success": bool(gap > 2 * spread)}


def curve_png(path: Path, results: list[dict], arms: list[str], title: str) -> None:
    width, height, margin = 720, 420, 60
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    curves = {arm: np.mean([r["curve"] for r in results if r["arm"] == arm], 0) for arm in arms}
    valid_curves = {arm: np.mean([r["valid_curve"] for r in results if r["arm"] == arm], 0) for arm in arms}
    values = np.concatenate(list(curves.values()) + list(valid_curves.values()))
    low, high = float(values.min()), float(min(values.max(), values.min() + 1.5))
    epochs = max(len(c) for c in curves.values())

    def point(epoch: float, value: float) -> tuple[float, float]:
        x = margin + (epoch - 1) / max(1, epochs - 1) * (width - 2 * margin)
        y = margin + (min(value, high) - low) / max(1e-9, high - low) * (height - 2 * margin)
        return x, y

    draw.rectangle([margin, margin, width - margin, height - margin], outline="black")
    draw.text((margin, 20), title, fill="black")
    for step in range(5):
        value = low + step * (high - low) / 4
        draw.text((5, point(1, value)[1] - 6), f"{value:.2f}", fill="black")
    for arm, curve in curves.items():
        draw.line([point(e + 1, v) for e, v in enumerate(valid_curves[arm])], fill=COLOURS[arm], width=1)
        points = [point(e + 1, v) for e, v in enumerate(curve)]
        draw.line(points, fill=COLOURS[arm], width=3)
        draw.text((points[-1][0] - 50, points[-1][1] - 14), arm, fill=COLOURS[arm])
    for epoch in range(1, epochs + 1):
        draw.text((point(epoch, low)[0] - 3, height - margin + 4), str(epoch), fill="black")
    draw.text((width // 2 - 30, height - margin + 20), "epoch", fill="black")
    draw.text((5, margin - 16), "bpd (lower is better, up)", fill="black")
    canvas.save(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chooser = argparse.ArgumentParser(add_help=False)
    chooser.add_argument("--arm-set", choices=ARM_SETS, default="one-shot")
    chosen, rest = chooser.parse_known_args(argv)
    if chosen.arm_set == "pg":
        import lvd_pg_mnist  # benchmarks/, on the path above

        return lvd_pg_mnist.main(rest)
    args = parse_args(argv)
    if not 0 <= args.distill_epochs <= args.epochs:
        raise SystemExit("--distill-epochs must be between 0 and --epochs")
    if args.report_only:
        payload = json.loads(args.out.with_suffix(".json").read_text())
        args.arms = [arm for arm in ARMS if any(r["arm"] == arm for r in payload["results"])]
        args.sums = payload["meta"]["sums"]
        write_results(args, payload["meta"], payload["results"])
        print(args.out.with_suffix(".md").read_text())
        return 0
    torch.set_num_threads(args.threads)
    command = records.command_line("lvd_mnist.py", argv)
    started = time.perf_counter()
    images, test_images = records.mnist_images(args.data)
    if not 1 <= args.valid_rows < len(images) or not 1 <= args.train_rows <= len(images) - args.valid_rows:
        raise SystemExit(f"--train-rows + --valid-rows must fit in the {len(images)} training images")
    train = images[: args.train_rows].astype(np.float64)
    valid = images[len(images) - args.valid_rows :].astype(np.float64)
    test = test_images[: args.test_rows].astype(np.float64)
    print(f"MNIST: {len(train)} training, {len(valid)} validation and {len(test)} test images; arms {', '.join(args.arms)}; "
          f"seeds {args.seeds}; {args.epochs} epochs ({args.distill_epochs} on (x, z) in the latent arms)")
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": command,
        "machine": records.machine_text() + " shared with other jobs",
        "torch": torch.__version__,
        "threads": args.threads,
        "train_rows": len(train),
        "valid_rows": len(valid),
        "test_rows": len(test),
        "sums": args.sums,
        "epochs": args.epochs,
        "distill_epochs": args.distill_epochs,
        "recipe": f"online EM, batch {args.batch_size}, step {args.step_size}, pseudocount {args.pseudocount}",
        "teacher": f"VQ-VAE, {args.teacher_epochs} epochs, D={args.teacher_dims}, {args.sums} codes",
        "teacher_seconds": [],
    }
    results: list[dict] = []
    for seed in args.seeds:
        teacher = None
        if "teacher" in args.arms:
            began = time.perf_counter()
            config = teacher_module.TeacherConfig(dims=args.teacher_dims, codes=args.sums)
            net = teacher_module.train(train.astype(np.float32), config, epochs=args.teacher_epochs, seed=seed)
            teacher = {"model": net, "features_train": teacher_module.features(net, train.astype(np.float32)),
                       "features_test": teacher_module.features(net, test.astype(np.float32))}
            meta["teacher_seconds"].append(time.perf_counter() - began)
        for arm in args.arms:
            results.append(run_arm(arm, args, seed, train, valid, test, teacher))
            # written after every run: an interrupted benchmark keeps what it measured
            meta["load_average"] = round(os.getloadavg()[0], 2)
            meta["elapsed_minutes"] = (time.perf_counter() - started) / 60
            write_results(args, meta, results)
    print(args.out.with_suffix(".md").read_text())
    return 0


def write_results(args: argparse.Namespace, meta: dict, results: list[dict]) -> None:
    """JSON (every number), markdown table and PNG curves of the runs so far."""
    arms = [arm for arm in args.arms if any(r["arm"] == arm for r in results)]
    summary = summarise(results, arms)
    payload = {"meta": meta, "results": results, "summary": summary, "verdict": verdict(summary)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out.with_suffix(".json"), lambda s: s.write((json.dumps(payload, indent=1) + "\n").encode()))
    curve_png(args.out.with_suffix(".png"), results, arms,
              f"PD K={args.sums} on {meta['train_rows']} MNIST images: bits per dimension per epoch, "
              f"train (thick) and validation (thin), seed means")
    write_markdown(args.out.with_suffix(".md"), meta, summary, payload["verdict"], arms, args.out.name)


def write_markdown(path: Path, meta: dict, summary: dict, outcome: dict | None, arms: list[str], name: str) -> None:
    def cell(arm: str, key: str, digits: int = 3) -> str:
        entry = summary[arm].get(key)
        if entry is None:
            return "–"
        spread = "" if math.isnan(entry["std"]) else f" ± {entry['std']:.{digits}f}"
        return f"{entry['mean']:.{digits}f}{spread}"

    lines = [
        "# Latent variable distillation on MNIST",
        "",
        (f"Generated on {meta['date']} by `{meta['command']}` ({meta['machine']}; load average "
         f"{meta['load_average']}; torch {meta['torch']}, {meta['threads']} thread(s); "
         f"{meta['elapsed_minutes']:.1f} min in all)."),
        "",
        (f"PD delta 7, K = {meta['sums']}, one latent per 7×7 patch; {meta['train_rows']:,} training images, "
         f"{meta['valid_rows']:,} validation images (the last of the training set; each run keeps its best "
         f"validation epoch), {meta['test_rows']:,} test images; {meta['epochs']} epochs per arm ({meta['distill_epochs']} on (x, z) "
         f"in the latent arms); {meta['recipe']}. Teacher: {meta['teacher']}. Bits per dimension, mean ± "
         f"standard deviation over seeds."),
        "",
        ("| arm | test bpd | best epoch | last-epoch test bpd | train bpd | LVD objective (train / test) "
         "| PC after distillation (train / test) | teacher ELBO (train / test) |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in arms:
        lines.append(
            f"| {arm} | {cell(arm, 'test_bpd')} | {cell(arm, 'best_epoch', 1)} | {cell(arm, 'last_test_bpd')} | "
            f"{cell(arm, 'train_bpd')} | "
            f"{cell(arm, 'lvd_objective_train')} / {cell(arm, 'lvd_objective_test')} | "
            f"{cell(arm, 'pc_after_distill_train')} / {cell(arm, 'pc_after_distill_test')} | "
            f"{cell(arm, 'teacher_elbo_train')} / {cell(arm, 'teacher_elbo_test')} |")
    lines.append("")
    if outcome is not None:
        word = "success" if outcome["success"] else "not met (a null result)"
        lines.append(f"Teacher arm vs EM only: {outcome['gap_bpd']:+.4f} bpd better on test; the standard deviation "
                     f"of the difference, √(s_em² + s_teacher²) over seeds, is {outcome['std_of_difference']:.4f}; "
                     f"criterion "
                     f"(> 2 standard deviations): **{word}**.")
        lines.append("")
    lines.append(f"![train curves]({name}.png)")
    atomic_write(path, lambda s: s.write(("\n".join(lines) + "\n").encode()))


if __name__ == "__main__":
    sys.exit(main())
