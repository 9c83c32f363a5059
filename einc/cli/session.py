"""A training run on the command line, the same for one process and many (``einc train``,
``--stream``, ``--nproc``, torchrun; ``einc lvd`` shares the writes and the reports).

What is written here once: the compile options and threads of a command; the checks of the
output paths before any work (the model, its history table, the ``--plot`` picture); the model of
``--resume``; the epoch line; and how a run ends — finished, interrupted (Ctrl-C 130, SIGTERM 143)
or diverged (1) — each time writing the model, its per-epoch history (``MODEL.history.csv``) and
the learning curves, and saying what was written. The epochs themselves run in
``einc.train.loop``, which prints its own lines (patience, checkpoints) through ``say``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from einc.compiler.pipeline import CompileOptions
from einc.errors import EincError, TrainingError
from einc.io.files import check_distinct_paths, check_writable
from einc.ir.neural import DEFAULT_QUERY_SAMPLES
from einc.ir.plan import Plan
from einc.loading import load
from einc.model import Model, compile
from einc.progress import counted
from einc.train.history import history_path, learning_curves, read_history, write_history
from einc.train.loop import EpochRecord
from einc.train.options import check_label_options

# Below this many multiply-adds per batch of 100, a second thread costs more than it saves
# (benchmarks/threads.py: nltcs, 3.5 M, is no faster with 2 threads; MNIST PD, 170 M, is).
SMALL_WORK = 20_000_000
MAX_AUTO_THREADS = 8


def choose_threads(setting: str | int | None, plan: Plan | None = None) -> int:
    """Torch CPU threads for ``--threads``: a number, or ``auto``.

    ``auto`` is 1 for circuits whose batch is too small to split, and otherwise the cores not
    already busy (usable cores minus the 1-minute load average, at most 8): torch's own default
    (all cores) oversubscribes a machine that is doing other work, which made training 4× slower
    than one thread on a shared 2-core machine.
    """
    if setting not in (None, "auto"):
        return int(setting)
    if plan is not None:
        work = sum(plan.op_cost(op)[0] for op in plan.ops) * 100
        if work < SMALL_WORK:
            return 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(usable - busy, MAX_AUTO_THREADS))


def set_threads(args: argparse.Namespace, plan: Plan | None, local_workers: int = 1) -> None:
    """--threads N: N per process; auto: the cores ``auto`` would use, shared among this
    machine's workers instead of oversubscribing them."""
    if getattr(args, "backend", "torch") != "torch" or getattr(args, "threads", None) is None:
        return
    import torch

    threads = choose_threads(args.threads, plan)
    if args.threads in (None, "auto"):
        threads = max(1, threads // local_workers)
    torch.set_num_threads(threads)


def compile_options(args: argparse.Namespace, dtype: str | None = None) -> CompileOptions:
    """The front end's options from the command line (K overrides, size limits, dtype)."""
    defaults = CompileOptions()
    return CompileOptions(
        sums=getattr(args, "sums", None),
        inputs=getattr(args, "inputs", None),
        heads=getattr(args, "heads", None),
        dtype=dtype or getattr(args, "dtype", None) or defaults.dtype,
        max_bytes=getattr(args, "max_memory", None) or defaults.max_bytes,
        max_build_seconds=getattr(args, "max_build_seconds", None) or defaults.max_build_seconds,
        target=getattr(args, "device", None),  # the device picks the einsum kernels
    )


def load_model(args: argparse.Namespace, dtype: str | None = None) -> Any:
    """The model (or mixture) of a command's MODEL argument, at ``--dtype`` (default its own)."""
    return load(args.model, backend=args.backend, device=args.device, dtype=dtype or args.dtype,
                options=compile_options(args, dtype or args.dtype))


def epoch_line(record: EpochRecord) -> str:
    """One epoch as ``einc train`` prints it; a running train LL (data read block by block: the
    mean over the epoch's steps as they ran) says so."""
    valid_text = "" if record.valid_ll is None else f"  valid LL {record.valid_ll:.4f}"
    train = "running train LL" if record.running else "train LL"
    return f"epoch {record.epoch:3d}  {train} {record.train_ll:.4f}{valid_text}  ({record.seconds:.2f}s)"


def check_train_options(args: argparse.Namespace) -> None:
    """Option combinations that cannot work, refused before anything is read or compiled."""
    if args.patience is not None and not args.valid:
        raise EincError("--patience stops on the validation log-likelihood: give --valid too")
    check_label_options(args.labels, args.valid is not None, args.valid_labels, flags=True)
    if args.mixture is not None:
        unsupported = [flag for flag, value in (("--resume", args.resume), ("--checkpoint-every", args.checkpoint_every),
                                                ("--labels", args.labels), ("--valid-labels", args.valid_labels))
                       if value]
        if unsupported:
            raise EincError(f"--mixture cannot be combined with {', '.join(unsupported)}: a mixture is trained "
                            f"component by component and written once all are trained")
    if args.method == "adam" and args.backend != "torch":
        raise EincError(f"--method adam needs autograd: use --backend torch (not {args.backend})")


def check_outputs(args: argparse.Namespace) -> Path:
    """The model, its history table and the --plot picture can be written where they go, and
    writing them destroys no input."""
    inputs = {"FILE.pc": args.file, "--data": args.data, "--valid": args.valid, "--test": args.test,
              "--labels": args.labels, "--valid-labels": args.valid_labels}
    output = check_writable(args.output, "model")
    table = check_writable(history_path(output), "training history")
    plot = getattr(args, "plot", None)
    if plot is not None:
        if not str(plot).lower().endswith(".png"):
            raise EincError(f"--plot {plot}: the learning curves are a PNG picture; name it FILE.png")
        check_writable(plot, "picture")
    # --resume is not among the inputs: -o replacing the model it continues is the usual use
    check_distinct_paths({"-o": output, "history table": table, "--plot": plot}, inputs)
    return output


def training_model(args: argparse.Namespace, device: str | None = None) -> Model:
    """A fresh model from FILE.pc, or the model of --resume (which must have the same circuit);
    on ``device`` (default ``--device``: a data-parallel worker passes its own GPU)."""
    device = device or args.device
    options = compile_options(args)
    model = compile(args.file, backend=args.backend, device=device, dtype=args.dtype, seed=args.seed,
                    options=options, precision=args.precision)
    if not args.resume:
        return model
    resumed = load(args.resume, backend=args.backend, device=device, dtype=args.dtype, options=options,
                   precision=args.precision)
    if not isinstance(resumed, Model):
        raise EincError(f"--resume {args.resume}: a mixture cannot be resumed")
    shapes = [(s.name, s.shape) for s in model.plan.params]
    if shapes != [(s.name, s.shape) for s in resumed.plan.params] or model.columns != resumed.columns:
        trained_with, asked = _k_flags(resumed.overrides), _k_flags(model.overrides)
        if trained_with != asked:  # the same file, other K: say which options continue it
            raise EincError(f"--resume {args.resume}: the model was trained with {trained_with or 'the K of its file'}, "
                            f"this run asks for {asked or 'the K of the file'}; give the same --sums/--inputs/--heads "
                            f"to continue it")
        raise EincError(f"--resume {args.resume}: the model was trained from another circuit than {args.file} "
                        f"(its variables or parameter shapes differ)")
    if resumed.training is None:
        raise EincError(f"--resume {args.resume}: the model holds no training state (it was not written by "
                        f"einc train or Model.fit)")
    return resumed


def _k_flags(overrides: dict[str, int]) -> str:
    """'--sums 2 --heads 2': the K options a model was compiled with (its recorded overrides)."""
    return " ".join(f"--{key} {overrides[key]}" for key in ("sums", "inputs", "heads") if key in overrides)


class Terminated(KeyboardInterrupt):
    """SIGTERM during training: handled like Ctrl-C (the work done is saved), exit 143."""


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """While training, SIGTERM (``kill``, a job scheduler's time limit) saves like Ctrl-C does."""

    def terminate(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (einc.cli.main called from a worker thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return 128 + signal.SIGTERM if isinstance(interrupt, Terminated) else 130


def _silent(*_: Any, **__: Any) -> None:
    pass


class Session:
    """One ``einc train`` run's output: the epoch lines (with ``say``: rank 0 of several
    processes prints, the others are silent), the history, and the model written however the run
    ends."""

    def __init__(self, args: argparse.Namespace, model: Model, output: Any, main: bool = True,
                 prefix: str = "") -> None:
        self.args, self.model, self.output = args, model, output
        self.say: Callable[..., None] = print if main else _silent
        self.prefix = prefix
        self.records: list[EpochRecord] = []
        resumed = getattr(args, "resume", None)
        if resumed and model.training is not None:
            # a resumed run extends the history of the run it continues (where it was kept)
            earlier = history_path(resumed)
            if main and earlier.is_file():
                self.records = [r for r in read_history(earlier) if r.epoch <= model.training.epoch]

    def message(self, line: str) -> None:
        self.say(line, flush=True)

    def on_epoch(self, record: EpochRecord) -> None:
        self.records.append(record)
        self.say(f"{self.prefix}{epoch_line(record)}", flush=True)

    def write(self) -> None:
        """The model, its history table beside it and (--plot) the learning curves."""
        self.model.save(self.output)
        table = history_path(self.output)
        write_history(table, self.records)
        plot = getattr(self.args, "plot", None)
        if plot is not None:
            learning_curves(plot, self.records, f"{self.model.graph.name}: log-likelihood per epoch")

    def _written(self) -> str:
        plot = getattr(self.args, "plot", None)
        extra = f" and {plot}" if plot is not None else ""
        return f"its history table {history_path(self.output)}{extra}"

    def finish(self, history: list[EpochRecord], test_ll: float | None) -> int:
        """Say how training ended and write the model (one process, or rank 0 of several)."""
        model, args = self.model, self.args
        if args.resume and not history:
            print(f"already trained for {counted(model.training.epoch if model.training else 0, 'epoch')}; "
                  f"raise --epochs to train longer")
        if args.valid and model.training is not None and model.training.best_epoch is not None:
            print(f"kept the parameters of the best validation epoch ({model.training.best_epoch}): "
                  f"valid LL {model.training.best_valid_ll:.4f}")
        if test_ll is not None and not np.isfinite(test_ll):
            # training finished: the model is written, but a NaN/inf test LL is not a result
            self.write()
            print(f"einc: error: --test: the mean test log-likelihood is {test_ll}{parameter_cause(model)}; "
                  f"wrote {self.output} and {self._written()}", file=sys.stderr)
            return 1
        if test_ll is not None:
            estimate = "" if model.exact else f" (IWAE estimate with {DEFAULT_QUERY_SAMPLES} samples per leaf)"
            print(f"test LL {test_ll:.4f}{estimate}")
        self.write()
        print(f"wrote {self.output} and {self._written()}")
        return 0

    def diverged(self, error: TrainingError) -> int:
        """Training diverged: report it and write the last good model (the loop restored it)."""
        print(error.render("einc"), file=sys.stderr)
        if self.model.training is not None:
            self.write()
            print(f"einc: wrote the last good model (epoch {self.model.training.epoch}) to {self.output}",
                  file=sys.stderr)
        return 1

    def interrupted(self, interrupt: KeyboardInterrupt) -> int:
        state = self.model.training
        code = exit_code(interrupt)
        word = "terminated" if isinstance(interrupt, Terminated) else "interrupted"
        if state is None:
            print(f"einc: {word} before the first epoch finished; nothing written", file=sys.stderr)
            return code
        self.write()
        if state.best_epoch is not None:
            what = f"the parameters of epoch {state.best_epoch} (best valid LL {state.best_valid_ll:.4f})"
        else:
            what = f"the parameters after epoch {state.epoch}"
        print(f"einc: {word} after {counted(state.epoch, 'epoch')}; wrote {what} to {self.output} "
              f"(continue with --resume {self.output})", file=sys.stderr)
        return code


def finite_ll(ll: Any, model: Any, what: str) -> Any:
    """``ll`` unchanged when every entry is finite; else ``EincError`` (exit 1) saying how many
    are NaN or infinite, the first one, and the likely cause: the largest parameter of the model
    (finite but absurd weights overflow inside the circuit). A NaN mean was printed with exit 0."""
    array = np.asarray(ll, dtype=np.float64)
    per_row = array.reshape(len(array) if array.ndim else 1, -1)
    bad = ~np.isfinite(per_row)
    if not bad.any():
        return ll
    rows = np.nonzero(bad.any(1))[0]
    first = float(per_row[rows[0]][bad[rows[0]]][0])
    kind = "NaN" if np.isnan(first) else "+inf" if first > 0 else "-inf (probability 0)"
    raise EincError(f"{what}: the log-likelihood is not finite for {len(rows)} of {len(per_row)} samples "
                    f"(first: sample {rows[0] + 1}, {kind}){parameter_cause(model)}; no result is reported")


def parameter_cause(model: Any) -> str:
    """'; the model's largest parameter is ... ' for a model with absurd weights, else ''."""
    components = getattr(model, "components", [model])
    largest, name = 0.0, ""
    for component in components:
        for key, value in component.parameters().items():
            magnitude = float(np.nanmax(np.abs(value))) if np.size(value) else 0.0
            if not magnitude <= largest:  # NaN wins too
                largest, name = magnitude, key
    if largest < 1e6:
        return "; its parameters are of ordinary size (check the data for extreme values)"
    return (f"; the model's parameter '{name}' holds values up to {largest:.3g}: such weights overflow inside "
            f"the circuit (retrain, or use dtype float64)")
