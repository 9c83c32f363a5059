"""The one training loop: epochs, and every rule of a run, for every way einc trains.

``train(plan, parameters, steps, ...)`` runs epochs of ``steps`` (``einc.train.steps``: EM or
Adam, from memory or from shards, with the all-reduce of several processes as a hook) and owns
what every run needs, written once:

- **resume**: it starts from a ``TrainingState`` (epoch count, batch-order generator, optimiser
  state, best epoch so far) and continues exactly;
- **divergence**: an epoch that makes the train or valid log-likelihood or a parameter
  non-finite restores the last good parameters and raises ``TrainingError``;
- **interrupts**: on ``KeyboardInterrupt`` (and the caller's ``stop_errors``, e.g. a lost worker)
  the parameters go back to the best (or last completed) epoch before the exception propagates;
- **the best epoch**: with validation data it keeps the best epoch's parameters (``keep_best``);
- **patience**: it stops after ``patience`` epochs without a better valid LL, and says so;
- **checkpoints**: every ``checkpoint_every`` epochs it hands the best parameters so far to the
  caller's writer, and says where they went;
- **progress**: a bar over each epoch's steps on a terminal (quiet when not asked for).

It takes a plan, parameters and the steps (which hold the backend), never a ``Model``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from einc.errors import EincError, TrainingError
from einc.ir.plan import Plan
from einc.progress import counted

# One training recipe for the API, the CLI and mixtures: the one the DEBD benchmark selected
# (benchmarks/README.md, "Training recipe"): online EM with batch 100 and step size 0.05.
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 100
DEFAULT_STEP_SIZE = 0.05
DEFAULT_LEARNING_RATE = 0.01  # Adam (method="adam")


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_ll: float
    valid_ll: float | None
    seconds: float
    # True when train_ll is the mean over the epoch's E-steps as they ran (data read block by
    # block: no second pass), False when it is measured after the epoch
    running: bool = False


@dataclass(frozen=True)
class TrainingState:
    """Where training stands after a completed epoch: enough to continue it exactly.

    ``fit`` keeps it in ``model.training``; ``save`` writes it with the model and ``load`` reads
    it back, so ``fit(..., resume=True)`` (CLI: ``einc train --resume MODEL``) continues with the
    same parameters, batch order and optimiser state as if training had never stopped.
    """

    epoch: int  # epochs completed
    params: dict[str, np.ndarray] = field(repr=False)  # after that epoch (not the best ones)
    rng: dict[str, Any] = field(repr=False)  # the generator that orders each epoch's batches
    method: str = "em"
    optimizer: dict[str, np.ndarray] | None = field(default=None, repr=False)  # Adam's moments
    best_epoch: int | None = None
    best_valid_ll: float | None = None
    stale_epochs: int = 0  # epochs since the best validation LL (for patience)


class Parameters(Protocol):
    """Where the parameters live (a ``Model`` is one): host copies in, host copies out."""

    def parameters(self) -> dict[str, np.ndarray]: ...

    def set_parameters(self, params: dict[str, np.ndarray]) -> None: ...


class EpochSteps(Protocol):
    """How one epoch updates the parameters (``einc.train.steps``)."""

    # steps per epoch, for the progress bar (0: not known in advance)
    steps_per_epoch: int

    def run(self, epoch: int, rng: np.random.Generator, advance: Callable[[int], None]) -> tuple[float, int]:
        """Run epoch ``epoch`` (batch order and noise drawn from ``rng``), calling ``advance(n)``
        after every n steps; return (Σ log p, rows) of its E-steps as they ran."""
        ...

    def optimizer_state(self) -> dict[str, np.ndarray] | None:
        """Adam's moments to save (None for EM)."""
        ...


@dataclass(frozen=True)
class Options:
    """The loop's own settings (each checked by ``check_options``)."""

    epochs: int
    method: str = "em"  # "em" or "adam": names the knob a divergence message suggests
    keep_best: bool = True  # with validation: end at the best validation epoch
    patience: int | None = None
    checkpoint_every: int = 0
    progress: bool = False


@dataclass
class Hooks:
    """What differs between callers, besides the steps.

    ``train_ll(total, rows)``: the epoch's train LL from its running totals (their mean for data
    read block by block) or measured again after the epoch; ``valid_ll()``: None without
    validation data. ``checkpoint(params)`` writes a checkpoint and returns where (None on a
    process that does not write). ``say`` prints a line about the run (patience, checkpoints);
    ``stop_errors``: exceptions that, like an interrupt, leave the best parameters behind.
    """

    train_ll: Callable[[float, int], float]
    valid_ll: Callable[[], float | None] = lambda: None
    running: bool = False
    checkpoint: Callable[[dict[str, np.ndarray]], str | None] | None = None
    on_epoch: Callable[[EpochRecord], None] | None = None
    say: Callable[[str], None] = lambda line: None
    stop_errors: tuple[type[BaseException], ...] = ()


@dataclass
class Run:
    """The bookkeeping of one run: epoch count, batch-order generator, best and last good
    parameters (host copies), so that an interrupt or a divergence never loses finished work."""

    epoch: int
    rng: np.random.Generator
    keep_best: bool
    last_good: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] | None = None
    best_epoch: int | None = None
    best_valid_ll: float | None = None
    best_params: dict[str, np.ndarray] | None = None
    stale_epochs: int = 0

    @staticmethod
    def start(parameters: Parameters, state: TrainingState | None, method: str, seed: int,
              keep_best: bool) -> Run:
        """A fresh run (``state`` None) seeded with ``seed``, or the continuation of ``state``:
        the current parameters are the best so far, training goes on from the last epoch's."""
        if state is None:
            return Run(0, np.random.default_rng(seed), keep_best, parameters.parameters())
        if isinstance(state.epoch, bool) or not isinstance(state.epoch, (int, np.integer)) or state.epoch < 0:
            raise EincError(f"cannot resume: the training state's epoch count is {state.epoch!r}; expected a "
                            f"whole number of at least 0")
        rng = np.random.default_rng()
        rng.bit_generator.state = state.rng
        best = parameters.parameters() if state.best_valid_ll is not None else None
        parameters.set_parameters(state.params)
        optimizer = state.optimizer if state.method == method else None
        return Run(int(state.epoch), rng, keep_best, dict(state.params), optimizer, state.best_epoch,
                   state.best_valid_ll, best, state.stale_epochs)

    def finish_epoch(self, epoch: int, params: dict[str, np.ndarray], valid_ll: float | None,
                     optimizer: dict[str, np.ndarray] | None, method: str) -> TrainingState:
        self.epoch = epoch
        self.last_good = params
        if valid_ll is not None:
            if self.best_valid_ll is None or valid_ll > self.best_valid_ll:
                self.best_epoch, self.best_valid_ll, self.best_params = epoch, valid_ll, params
                self.stale_epochs = 0
            else:
                self.stale_epochs += 1
        self.optimizer = optimizer
        return TrainingState(epoch, params, self.rng.bit_generator.state, method, optimizer, self.best_epoch,
                             self.best_valid_ll, self.stale_epochs)

    @property
    def kept(self) -> dict[str, np.ndarray]:
        """The parameters a stopped run leaves: the best validation epoch's, or the last good."""
        return self.best_params if self.keep_best and self.best_params is not None else self.last_good

    def kept_text(self) -> str:
        if self.keep_best and self.best_params is not None:
            return f"epoch {self.best_epoch} (best valid LL {self.best_valid_ll:.4f})"
        return f"epoch {self.epoch}" if self.epoch else "the initial parameters"

    def diverged(self, epoch: int, problem: str, method: str) -> str:
        knob = "learning_rate" if method == "adam" else "step_size"
        return (f"training diverged in epoch {epoch}: {problem}; the model keeps the parameters of "
                f"{self.kept_text()}. Try a smaller {knob}, dtype float64, or check the data for extreme values")


def divergence(plan: Plan, train_ll: float, valid_ll: float | None, params: dict[str, np.ndarray]) -> str | None:
    """What went non-finite in an epoch, or None. A running train LL is taken before the epoch's
    last update, so the parameters are checked as well (named in the plan's order)."""
    if not all(math.isfinite(v) for v in (train_ll, valid_ll) if v is not None):
        return f"train LL {train_ll}" + ("" if valid_ll is None else f", valid LL {valid_ll}")
    bad = [spec.name for spec in plan.params if not np.all(np.isfinite(params[spec.name]))]
    if bad:
        return f"parameter {bad[0]} is not finite" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
    return None


@dataclass
class Result:
    history: list[EpochRecord]
    state: TrainingState | None  # after the last completed epoch (None: no epoch ran)
    stopped_early: bool = False


def train(plan: Plan, parameters: Parameters, steps: EpochSteps, options: Options, hooks: Hooks,
          run: Run, on_state: Callable[[TrainingState], None] = lambda state: None) -> Result:
    """Run epochs ``run.epoch + 1 .. options.epochs`` of ``steps`` under every rule above.

    ``on_state`` sees the training state after every completed epoch (``Model.fit`` keeps it in
    ``model.training``, so an interrupted run can be saved and resumed).
    """
    history: list[EpochRecord] = []
    state: TrainingState | None = None
    stopped_early = False
    try:
        for epoch in range(run.epoch + 1, options.epochs + 1):
            started = time.perf_counter()
            with _progress_bar(options.progress, steps.steps_per_epoch, epoch, options.epochs) as advance:
                total, rows = steps.run(epoch, run.rng, advance)
            train_ll = hooks.train_ll(total, rows)
            valid_ll = hooks.valid_ll()
            params = parameters.parameters()
            problem = divergence(plan, train_ll, valid_ll, params)
            if problem is not None:
                parameters.set_parameters(run.kept)
                raise TrainingError(run.diverged(epoch, problem, options.method))
            state = run.finish_epoch(epoch, params, valid_ll, steps.optimizer_state(), options.method)
            on_state(state)
            record = EpochRecord(epoch, train_ll, valid_ll, time.perf_counter() - started, hooks.running)
            history.append(record)
            if hooks.on_epoch is not None:
                hooks.on_epoch(record)
            if hooks.checkpoint is not None and options.checkpoint_every and epoch % options.checkpoint_every == 0:
                where = hooks.checkpoint(run.best_params or params)
                if where is not None:
                    what = (f"the parameters of epoch {run.best_epoch}, best valid LL {run.best_valid_ll:.4f}"
                            if run.best_params is not None else f"the parameters of epoch {epoch}")
                    hooks.say(f"checkpoint after epoch {epoch}: wrote {what}, with the training state, to {where}")
            if options.patience is not None and run.stale_epochs >= options.patience:
                stopped_early = epoch < options.epochs
                if stopped_early:
                    hooks.say(f"stopped early after epoch {epoch}: no better valid LL for "
                              f"{counted(run.stale_epochs, 'epoch')} (patience {options.patience}); the best "
                              f"was epoch {run.best_epoch}, valid LL {run.best_valid_ll:.4f}")
                break
    except (KeyboardInterrupt, *hooks.stop_errors):
        parameters.set_parameters(run.kept)
        raise
    if run.keep_best and run.best_params is not None and run.best_epoch != run.epoch:
        parameters.set_parameters(run.best_params)
    return Result(history, state, stopped_early)


class _progress_bar:
    """A tqdm bar over one epoch's steps (nothing when ``show`` is False: ``advance`` is free)."""

    def __init__(self, show: bool, total: int, epoch: int, epochs: int) -> None:
        self.bar: Any = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(total=total or None, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False)

    def __enter__(self) -> Callable[[int], None]:
        return self.bar.update if self.bar is not None else _ignore

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()


def _ignore(steps: int) -> None:
    pass
