"""SPVAE (Tan & Peharz, ICML 2019) against a single VAE on discrete MNIST: the paper's Table 1.

    nice -n 5 python benchmarks/spvae_mnist.py --run-dir benchmarks/results/spvae_run   # start (CPU)
    nice -n 5 python benchmarks/spvae_mnist.py --resume benchmarks/results/spvae_run     # continue it
    python benchmarks/spvae_mnist.py --device cuda --run-dir benchmarks/results/spvae_run_cuda
    python benchmarks/spvae_mnist.py --train-fraction 0.01 --run-dir benchmarks/results/spvae_run_1pct
    python benchmarks/spvae_mnist.py --figure2 benchmarks/results/spvae_data_efficiency.png \\
        benchmarks/results/spvae_run benchmarks/results/spvae_run_10pct benchmarks/results/spvae_run_1pct
    python benchmarks/spvae_mnist.py --smoke --run-dir /tmp/spvae_smoke        # seconds (the tests)

Protocol (the paper's §4): 10,000 training images held out for validation (a random 10k); Adam,
batch 128, k = 5 importance samples while training and validating; after every epoch the
validation bound (fixed noise), the best epoch kept, early stopping after ``--patience`` (20)
epochs without a better one. The SPVAE is ``examples/mnist_spvae.pc`` (Poon–Domingos Δ=7: a 4×4
array of 7×7 super-pixels, 2 VAE experts per super-pixel, 2 sums per internal region, Binomial(255)
decoders, softplus MLPs) with n_z and H chosen from the paper's ranges (n_z ∈ {1, 2, 5, 25, 50},
H ∈ {8, 16, 32}); the baseline is one VAE over all 784 pixels (n_z ≤ 200, H ∈ {30, 100, 300, 600}).
The choice is a short *pilot*, not the paper's full cross-validation (a CPU budget): every
candidate of ``--spvae-grid`` / ``--vae-grid`` trains ``--pilot-epochs`` epochs on the first
``--pilot-rows`` training images and the best validation bound on ``--pilot-valid-rows`` validation
images wins. That favours configurations that learn fast, which need not be the ones that end best.
Learning rates: 0.01 for the SPVAE, 0.003 for the VAE (a 300-step pilot of the earlier run; the
paper too found SPVAEs take larger ones). Test: the 5000-sample IWAE estimate on all 10,000 test
images, in nats and bits per dimension (−log p / (784 ln 2)); the paper: SPVAE 2.82 bpd
(−1532 nats, 310k parameters), VAE 4.33 (−2351 nats, 1,158k).

Runs survive interruptions: the run directory holds ``run.json`` (the command, pilot results,
chosen configurations, test progress), one checkpoint per arm written atomically after every
epoch (``{arm}_checkpoint.npz``: parameters, best parameters, Adam's moments, generators, patience
counter, epoch table) and the report (``table.md``, ``results.json``, ``curve.png`` after every
epoch; ``samples.png`` and ``inpaint.png`` at the end; ``spvae_model.npz``, the best SPVAE as an
einc model file, whenever the validation bound improves). ``--resume RUN_DIR`` continues exactly
where the run stopped (on the CPU bit for bit; on CUDA with fresh noise); only the sitting's options
(``--threads``, ``--device``, ``--budget-minutes``, ``--sitting-epochs``, ``--retire``) may change,
and the step-size schedule (``--decay-factor``, ``--decay-patience``: from the next epoch on, kept
in ``run.json`` for later sittings; each epoch's record says the step size it ran at). The two arms
train interleaved, one epoch each in turn, so both curves grow together; the 5000-sample test is
scored in blocks of 500 rows, each recorded as it finishes. Progress (per-epoch lines with time,
ETA) goes to stderr.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch

from einc.io.files import atomic_write
from einc.io.images import grid, image_mask, image_shape, inpainting_figure, inpainting_rows, save_png, to_images
from plots import curve_png
from spvae_training import (DEFAULT_LAYERS, Arm, Config, SingleVae, bpd, checkpoint_config, config_key, config_parts,
                            decoder_spec, load_checkpoint, mean_estimate, pixel_logits, save_checkpoint,
                            score_blocks, spvae_model, train_epoch)
from spvae_report import data_efficiency_png, report

import records  # benchmarks/records.py

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("spvae", "vae")
# options a resumed run may change: they describe the sitting, not the experiment
# (--data too: where MNIST lies is the machine's business; the split is fixed by --seed)
SITTING = {"threads": 1, "device": "cpu", "budget_minutes": None, "sitting_epochs": None, "data": None,
           "retire": None}

# options of the experiment that a resumed run may still change: the step-size schedule (from
# the next epoch on); the new values replace the old in run.json's argv, so later sittings keep them
SCHEDULE = ("decay_factor", "decay_patience")

SITTING_HELP = {
    "threads": "torch threads (default 1)", "device": "cpu (default) or cuda",
    "budget_minutes": "stop this sitting (after a checkpoint) once it ran this long",
    "sitting_epochs": "stop this sitting after this many epochs per arm",
    "data": records.MNIST_HELP + "; with --smoke examples/data/mnist_small.npz",
    "retire": "end these arms' training now (comma-separated), as if early stopping had ended them: their "
              "best epoch is tested; recorded in run.json (to give a dominated arm's CPU to the others)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--circuit", type=Path, default=ROOT / "examples" / "mnist_spvae.pc")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "benchmarks" / "results" / "spvae_run")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--models", default="spvae,vae", help="which arms to train")
    parser.add_argument("--spvae-grid", default="5x32,25x32,50x32,5x16", help="SPVAE candidates n_zxH, or n_zxHxL with L hidden layers per MLP (default 2)")
    parser.add_argument("--vae-grid", default="25x100,50x300,100x300,200x300", help="VAE candidates n_zxH, or n_zxHxL with L hidden layers per MLP (default 2)")
    parser.add_argument("--any-vae-size", action="store_true",
                        help="let the pilot choose a VAE with fewer parameters than the SPVAE")
    parser.add_argument("--pilot-epochs", type=int, default=2)
    parser.add_argument("--pilot-rows", type=int, default=10000, help="training images of a pilot")
    parser.add_argument("--pilot-valid-rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3000, help="at most this many epochs per arm")
    parser.add_argument("--patience", type=int, default=20, help="stop after this many epochs without a better valid")
    parser.add_argument("--min-steps-per-epoch", type=int, default=128,
                        help="an epoch is as many passes as make this many Adam steps (1%% of the data: 32 "
                             "passes); the paper validated every 128 batches")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=5, help="IWAE k while training and validating")
    parser.add_argument("--spvae-learning-rate", type=float, default=0.01)
    parser.add_argument("--vae-learning-rate", type=float, default=0.003)
    parser.add_argument("--decay-factor", type=float, default=1.0,
                        help="multiply an arm's Adam step size by this after every --decay-patience epochs "
                             "without a better validation bound (default 1: constant, the paper's Adam); "
                             "a resumed run may change it, from its next epoch on")
    parser.add_argument("--decay-patience", type=int, default=5,
                        help="epochs without a better validation bound per step-size decay (default 5)")
    parser.add_argument("--valid-rows", type=int, default=10000)
    parser.add_argument("--train-fraction", type=float, default=1.0, help="train on this share of the 50,000")
    parser.add_argument("--train-rows", type=int, default=None, help="only the first N training rows (dry runs)")
    parser.add_argument("--test-rows", type=int, default=10000, help="score the first N test images")
    parser.add_argument("--eval-samples", type=int, default=5000, help="IWAE k of the test estimate")
    parser.add_argument("--test-block", type=int, default=500, help="test rows scored (and recorded) at a time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="a seconds-long run: 300 train / 100 valid / 20 test images, tiny grids")
    parser.add_argument("--figure2", type=Path, metavar="PNG", help="draw test bpd of the RUN_DIRs given after it")
    parser.add_argument("runs", nargs="*", type=Path, help="(with --figure2) run directories")
    for name in SITTING:
        parser.add_argument("--" + name.replace("_", "-"), default=None,
                            type={"device": str, "budget_minutes": float, "data": Path, "retire": str}.get(name, int),
                            help=SITTING_HELP[name])
    return parser.parse_args(argv)


def settled(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The run's options: the stored command of ``--resume RUN_DIR`` with this sitting's options
    on top, or this command's; and the argv to store (without the sitting's options)."""
    args = parse_args(argv)
    sitting = {name: getattr(args, name) for name in SITTING}
    if args.resume is not None:
        resume = args.resume
        if not (resume / "run.json").exists():
            raise SystemExit(f"spvae_mnist.py: error: {resume}: no run.json there, nothing to resume")
        given = _without_sitting(sys.argv[1:] if argv is None else argv)
        schedule, given = _split_options(given, SCHEDULE)
        extra = [t for t in given if t not in ("--resume", str(args.resume)) and not t.startswith("--resume=")]
        if extra:
            raise SystemExit(f"spvae_mnist.py: error: a resumed run keeps the options it started with; only "
                             f"{', '.join('--' + n.replace('_', '-') for n in (*SITTING, *SCHEDULE))} may "
                             f"change, found {' '.join(extra)}")
        stored = json.loads((resume / "run.json").read_text())["argv"]
        if schedule:  # the values given replace the stored ones
            named = tuple(name for name in SCHEDULE if _split_options(schedule, (name,))[0])
            stored = _split_options(stored, named)[1] + schedule
        args = parse_args(stored)
        args.run_dir, args.resume = resume, resume
    else:
        stored = _without_sitting(sys.argv[1:] if argv is None else argv)
    for name, default in SITTING.items():
        setattr(args, name, default if sitting[name] is None else sitting[name])
    if not (0.0 < args.decay_factor <= 1.0 and args.decay_patience >= 1):
        raise SystemExit(f"spvae_mnist.py: error: --decay-factor must be in (0, 1] and --decay-patience at least "
                         f"1, found {args.decay_factor:g} and {args.decay_patience}")
    if not 0.0 < args.train_fraction <= 1.0:
        raise SystemExit(f"spvae_mnist.py: error: --train-fraction must be in (0, 1], found {args.train_fraction}")
    for option in ("spvae_grid", "vae_grid"):
        grid_of(getattr(args, option), "--" + option.replace("_", "-"))  # checked before any work
    unknown = [n for n in (args.retire or "").split(",") if n and n not in args.models.split(",")]
    if unknown:
        raise SystemExit(f"spvae_mnist.py: error: --retire {','.join(unknown)}: this run trains {args.models}")
    if args.data is None and args.smoke:
        args.data = ROOT / "examples" / "data" / "mnist_small.npz"
    if args.smoke:
        args.pilot_rows, args.pilot_valid_rows, args.valid_rows, args.test_rows = 200, 50, 100, 20
        args.eval_samples, args.test_block = min(args.eval_samples, 10), 10
        # 300 rows: 3 steps, one pass per epoch; --train-fraction 0.5: 2 steps a pass, 2 passes
        args.min_steps_per_epoch = min(args.min_steps_per_epoch, 3)
        args.spvae_grid, args.vae_grid = args.spvae_grid if "--spvae-grid" in stored else "2x8,1x8", \
            args.vae_grid if "--vae-grid" in stored else "2x16,1x16"
    return args, stored


def _without_sitting(argv: list[str]) -> list[str]:
    return _split_options(argv, tuple(SITTING))[1]


def _split_options(argv: list[str], names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(the tokens of the options ``names``, with their values; the other tokens)."""
    inside, outside, value_follows = [], [], False
    flags = {"--" + name.replace("_", "-") for name in names}
    for token in argv:
        if value_follows:
            inside.append(token)
            value_follows = False
        elif token in flags:
            inside.append(token)
            value_follows = True
        elif token.split("=")[0] in flags:
            inside.append(token)
        else:
            outside.append(token)
    return inside, outside


def grid_of(text: str, option: str = "grid") -> list[Config]:
    """``"5x32,100x600x1"`` -> [(5, 32), (100, 600, 1)]: candidates n_z x H, or n_z x H x L with L
    hidden layers in each MLP (encoder and decoder; ``DEFAULT_LAYERS`` when not given, and a given
    default is dropped so that one configuration has one key)."""
    try:
        grid = [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]
    except ValueError:
        grid = []
    if not grid or any(len(c) not in (2, 3) or min(c) < 1 for c in grid):
        raise SystemExit(f"spvae_mnist.py: error: {option} takes n_zxH pairs (or n_zxHxL, L hidden layers) such "
                         f"as 5x32,25x32,100x600x1; found {text!r}")
    return [c[:2] if len(c) == 3 and c[2] == DEFAULT_LAYERS else c for c in grid]


def config_text(config: Config) -> str:
    latent, hidden, layers = config_parts(config)
    return f"n_z={latent} H={hidden}" + ("" if layers == DEFAULT_LAYERS else f" layers={layers}")


class Run:
    """The run directory: ``run.json`` (the protocol's state) and the arms' checkpoints."""

    def __init__(self, args: argparse.Namespace, argv: list[str], sitting_argv: list[str]) -> None:
        self.args, self.dir = args, args.run_dir
        path = self.dir / "run.json"
        if not args.resume and path.exists():
            raise SystemExit(f"spvae_mnist.py: error: {self.dir} already holds a run; continue it with "
                             f"--resume {self.dir}, or start a new one in another --run-dir")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        self.state = json.loads(path.read_text()) if args.resume else {
            "argv": argv, "command": records.command_line("spvae_mnist.py", argv), "pilot": {}, "chosen": {},
            "test": {}, "final": {}, "sittings": []}
        if args.resume and self.state["argv"] != argv:  # a new step-size schedule (SCHEDULE)
            self.state["argv"], self.state["command"] = argv, records.command_line("spvae_mnist.py", argv)
        # the circuit as the run started: a later edit of the .pc file does not change a resumed run
        self.state.setdefault("circuit", args.circuit.read_text())
        self.state["sittings"].append({"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                       "command": records.command_line("spvae_mnist.py", sitting_argv),
                                       "machine": records.machine_text(args.device), "threads": args.threads,
                                       "load_average": round(os.getloadavg()[0], 2)})
        self.save()

    def _lock(self) -> None:
        """``run.lock`` (host, pid) while a process trains in the directory: a second process on the
        same run — a resume while the first still runs — would overwrite its checkpoints."""
        lock = self.dir / "run.lock"
        if lock.exists():
            holder = json.loads(lock.read_text() or "{}")
            pid = holder.get("pid", 0)
            if holder.get("host") == socket.gethostname() and pid != os.getpid() and _alive(pid):
                raise SystemExit(f"spvae_mnist.py: error: {self.dir} is in use by process {holder['pid']} "
                                 f"on this machine; stop it first (kill {holder['pid']}) or wait for it")
        self._mine = {"host": socket.gethostname(), "pid": os.getpid()}
        atomic_write(lock, lambda s: s.write(json.dumps(self._mine).encode()))
        atexit.register(self.close)

    def close(self) -> None:
        """Give up ``run.lock`` (if it is still this process's)."""
        lock = self.dir / "run.lock"
        if lock.exists() and json.loads(lock.read_text() or "{}") == self._mine:
            lock.unlink()

    def save(self) -> None:
        atomic_write(self.dir / "run.json", lambda s: s.write((json.dumps(self.state, indent=1) + "\n").encode()))

    def checkpoint(self, name: str) -> Path:
        return self.dir / f"{name}_checkpoint.npz"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return pid > 0


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the data
def load_data(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Train / valid / test rows as float32: a random 10k of the training images for validation
    (the paper's split), the first ``--train-fraction`` of the rest (in that random order)."""
    records.require_device(args.device, "spvae_mnist.py")
    images, test = records.mnist_images(args.data)
    if args.smoke:
        images = images[:400]
    order = np.random.default_rng(args.seed).permutation(len(images))
    valid, rest = images[order[: args.valid_rows]], images[order[args.valid_rows :]]
    if args.smoke:
        rest = rest[:300]
    rest = rest[: args.train_rows]
    count = max(1, round(args.train_fraction * len(rest)))
    return {"train": rest[:count].astype(np.float32), "valid": valid.astype(np.float32),
            "test": test[: args.test_rows].astype(np.float32)}


def build(name: str, config: Config, args: argparse.Namespace, logits: np.ndarray, source: str):
    """(arm, SPVAE model or None) for ``name`` with (n_z, H[, layers]) = ``config``; ``source`` the circuit."""
    latent, hidden, layers = config_parts(config)
    spvae = spvae_model(source, latent, hidden, logits, args.device, args.seed, layers)
    if name == "spvae":
        module = spvae.module(args.samples)
    else:
        module = SingleVae(latent, hidden, decoder_spec(spvae), logits, layers).to(args.device)
        spvae = None
    return Arm(name, module, getattr(args, f"{name}_learning_rate"), args.seed), spvae


# ---------------------------------------------------------------- the protocol
def pilot(run: Run, name: str, data: dict[str, torch.Tensor], logits: np.ndarray) -> Config:
    """Each candidate (n_z, H[, layers]) trains ``--pilot-epochs`` epochs on ``--pilot-rows`` images (or as
    many steps on fewer, with ``--train-fraction``); the best
    validation bound (bpd) on ``--pilot-valid-rows`` images chooses. Recorded per candidate."""
    args = run.args
    results = run.state["pilot"].setdefault(name, {})
    candidates = grid_of(getattr(args, f"{name}_grid"))
    train_x, valid_x = data["train"][: args.pilot_rows], data["valid"][: args.pilot_valid_rows]
    for config in candidates:
        key = config_key(config)
        if key in results:
            continue
        started = time.perf_counter()
        arm, _ = build(name, config, args, logits, run.state["circuit"])
        # as many Adam steps as --pilot-epochs passes over --pilot-rows, also when a --train-fraction
        # leaves fewer rows (1%: 500 images, 40 epochs)
        for _ in range(math.ceil(args.pilot_epochs * args.pilot_rows / len(train_x))):
            record = train_epoch(arm, train_x, valid_x, args.batch_size, args.samples, 10**9, 10**9)
        results[key] = {"valid": min(h["valid"] for h in arm.history), "parameters": arm.parameter_count,
                        "seconds": time.perf_counter() - started, "last_epoch_valid": record["valid"],
                        "epochs": len(arm.history), "rows": len(train_x)}
        run.save()
        log(f"pilot {name} {config_text(config)}: valid {results[key]['valid']:.4f} bpd after "
            f"{len(arm.history)} epochs on {len(train_x)} images ({results[key]['parameters']:,} parameters, "
            f"{results[key]['seconds']:.0f} s)")
    best = choose(name, candidates, run.state, args.any_vae_size)
    run.state["chosen"][name] = list(best)
    run.save()
    log(f"pilot {name}: chose {config_text(best)}")
    return best


def choose(name: str, candidates: list[Config], state: dict, any_size: bool = False) -> Config:
    """The candidate with the best pilot validation bound; for the VAE, among those with at least
    the chosen SPVAE's parameters (unless ``any_size``, or none is that large)."""
    results = state["pilot"][name]
    allowed = candidates
    spvae = state["chosen"].get("spvae")
    if name == "vae" and not any_size and spvae is not None:
        # the paper's VAEs were 3-10x larger than its SPVAEs; a short pilot favours small,
        # fast-learning VAEs, which would make the comparison unfair to the baseline
        floor = state["pilot"]["spvae"][config_key(spvae)]["parameters"]
        allowed = [c for c in candidates if results[config_key(c)]["parameters"] >= floor] or candidates
    return min(allowed, key=lambda c: results[config_key(c)]["valid"])


def eta_text(arm: Arm, arms: dict[str, Arm], max_epochs: int) -> str:
    """Speed and ETA: the arms take turns, so an epoch of this arm costs a round of all running arms."""
    def recent(other: Arm) -> float:
        times = [h["seconds"] for h in other.history[-5:]]
        return sum(times) / len(times) if times else 0.0

    per_round = sum(recent(other) for other in arms.values() if not other.done or other is arm)
    gain = ""
    if len(arm.history) > 10:
        # signed: a bound that rose over the last 10 epochs shows as +, not as "--"
        gain = f"; valid {arm.history[-1]['valid'] - arm.history[-11]['valid']:+.3f} bpd in 10 epochs"
    return (f"{per_round:.0f} s/round of {sum(not a.done or a is arm for a in arms.values())} arm(s); "
            f"ETA to 500 epochs {max(0, 500 - arm.epoch) * per_round / 3600:.1f} h, to the {max_epochs}-epoch "
            f"cap {(max_epochs - arm.epoch) * per_round / 3600:.1f} h (early stopping ends it sooner){gain}")


def main(argv: list[str] | None = None) -> int:
    args, stored = settled(argv)
    if args.figure2 is not None:
        data_efficiency_png(args.figure2, args.runs)
        print(args.figure2)
        return 0
    torch.set_num_threads(args.threads)
    sitting_started = time.perf_counter()
    arrays = load_data(args)
    run = Run(args, stored, sys.argv[1:] if argv is None else argv)
    try:
        return train_and_test(run, args, arrays, sitting_started)
    finally:
        run.close()


def train_and_test(run: Run, args: argparse.Namespace, arrays: dict[str, np.ndarray], sitting_started: float) -> int:
    """Pilot, interleaved training, test and pictures, each continuing where an earlier sitting stopped."""
    logits = pixel_logits(arrays["train"])
    data = {k: torch.as_tensor(v, device=args.device) for k, v in arrays.items()}
    names = [n for n in args.models.split(",") if n]
    arms, models = {}, {}
    for name in names:
        config = tuple(run.state["chosen"][name]) if name in run.state["chosen"] else pilot(run, name, data, logits)
        arms[name], models[name] = build(name, config, args, logits, run.state["circuit"])
        if run.checkpoint(name).exists():
            load_checkpoint(arms[name], run.checkpoint(name), checkpoint_config(config))
            log(f"{name}: resumed after epoch {arms[name].epoch} (best {arms[name].best_epoch}, "
                f"patience {arms[name].stale}/{args.patience})")

    retire(run, arms)

    def write_report() -> None:
        report(run.dir, run.state, {n: a.history for n, a in arms.items()},
               {n: a.parameter_count for n, a in arms.items()}, args)

    sitting_epochs = 0
    while not all(arm.done for arm in arms.values()):
        if args.sitting_epochs is not None and sitting_epochs >= args.sitting_epochs:
            log(f"stopping this sitting after {sitting_epochs} epochs per arm (--sitting-epochs)")
            return 0
        for name, arm in arms.items():
            if arm.done:
                continue
            record = train_epoch(arm, data["train"], data["valid"], args.batch_size, args.samples,
                                 args.patience, args.epochs, args.min_steps_per_epoch, args.decay_factor,
                                 args.decay_patience)
            save_checkpoint(arm, run.checkpoint(name), checkpoint_config(run.state["chosen"][name]))
            if name == "spvae" and arm.best_epoch == arm.epoch:
                write_model(models[name], run.dir / "spvae_model.npz")
            write_report()
            log(f"{name} epoch {arm.epoch:4d}: train {record['train']:.4f} valid {record['valid']:.4f} bpd "
                f"(best {bpd(arm.best_valid):.4f} at {arm.best_epoch}, patience {arm.stale}/{args.patience}) "
                f"{record['seconds']:.0f} s | {eta_text(arm, arms, args.epochs)}"
                + (f" | step size {record['learning_rate']:g} -> {arm.learning_rate:g}"
                   if arm.learning_rate != record["learning_rate"] else ""))
        sitting_epochs += 1
        if args.budget_minutes is not None and time.perf_counter() - sitting_started > 60 * args.budget_minutes:
            log(f"stopping this sitting: its {args.budget_minutes:g}-minute budget is spent (resume with --resume)")
            return 0
    for name, arm in arms.items():
        if name not in run.state["final"]:
            test_arm(run, arm, models[name], arrays["test"], data["test"])
            write_report()
    if "spvae" in models and not (run.dir / "inpaint.png").exists():
        arms["spvae"].load_best()
        write_pictures(models["spvae"], arrays["test"], run.dir, args.seed)
    print((run.dir / "table.md").read_text())
    return 0


def retire(run: Run, arms: dict[str, Arm]) -> None:
    """``--retire``: end the named arms' training where they stand (their best epoch is what the
    test scores, as after early stopping); ``run.json`` records when, so the table can say so."""
    for name in (run.args.retire or "").split(","):
        if not name:
            continue
        arm = arms[name]
        if arm.done:
            continue
        arm.done = True
        run.state.setdefault("retired", {})[name] = {
            "epoch": arm.epoch, "best_epoch": arm.best_epoch, "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        save_checkpoint(arm, run.checkpoint(name), checkpoint_config(run.state["chosen"][name]))
        run.save()
        log(f"{name}: retired after epoch {arm.epoch} (--retire); its best epoch {arm.best_epoch} is tested")


def test_arm(run: Run, arm: Arm, model, test: np.ndarray, test_x: torch.Tensor) -> None:
    """The ``--eval-samples``-sample IWAE estimate of the best epoch on the test rows, in blocks."""
    args = run.args
    arm.load_best()
    started = time.perf_counter()
    progress = run.state["test"].setdefault(arm.name, {"blocks": [], "seconds": 0.0})

    def score(rows: np.ndarray, index: int) -> float:
        if model is not None:  # through the model's own query: the module shares its parameters
            return float(model.log_likelihood(rows, samples=args.eval_samples, batch_size=20,
                                              seed=args.seed + index).sum())
        start = index * args.test_block
        return mean_estimate(arm.module, test_x[start : start + len(rows)], args.eval_samples,
                             args.seed + index, batch=20) * len(rows)

    def on_block(blocks: list[float]) -> None:
        progress["blocks"] = blocks
        progress["seconds"] += time.perf_counter() - started - progress.get("_sitting", 0.0)
        progress["_sitting"] = time.perf_counter() - started
        run.save()
        log(f"{arm.name} test: {min(len(test), len(blocks) * args.test_block)}/{len(test)} rows scored")

    mean = score_blocks(score, test, args.test_block, progress["blocks"], on_block)
    progress.pop("_sitting", None)
    run.state["final"][arm.name] = {"test_bpd": bpd(mean), "test_nats": -mean, "best_epoch": arm.best_epoch,
                                    "valid_bpd": bpd(arm.best_valid), "epochs": arm.epoch,
                                    "parameters": arm.parameter_count, "config": run.state["chosen"][arm.name],
                                    "evaluation_seconds": progress["seconds"], "test_rows": len(test),
                                    "eval_samples": args.eval_samples}
    run.save()
    log(f"{arm.name}: test {bpd(mean):.4f} bpd ({-mean:.1f} nats; {args.eval_samples}-sample IWAE, {len(test)} images)")


def write_model(model, path: Path) -> None:
    """The SPVAE's current parameters as an einc model file (float32: the model's own dtype, half
    the size of ``Model.save``'s float64 copy): ``einc eval PATH --data ... --samples 5000``."""
    arrays = model.archive_arrays({k: v.astype(np.float32) for k, v in model.parameters().items()})
    atomic_write(path, lambda stream: np.savez(stream, **arrays))


def write_pictures(model, test: np.ndarray, out: Path, seed: int) -> None:
    """``samples.png`` (64 ancestral samples, decoder means) and ``inpaint.png`` (original / left
    half hidden / conditional sample / approximate MPE; 8 test images)."""
    samples = model.sample(64, seed=seed, leaf_value="mean")
    save_png(out / "samples.png", grid(to_images(model.graph, samples), columns=8))
    count = min(8, len(test))
    hidden = image_mask("left", image_shape(model.graph), count, seed)
    rows = inpainting_rows(model, test[:count], hidden, seed=seed, leaf_value="mean")
    save_png(out / "inpaint.png", inpainting_figure(model, rows, hidden))


if __name__ == "__main__":
    sys.exit(main())
