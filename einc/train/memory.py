"""``Model.fit``: training on rows held in memory, in the one training loop.

The rows (and labels, latents, validation rows) are checked and prepared once; the epoch steps
are the backend's resident epoch where it has one (online EM, Adam) or EM over host batches; the
train LL is measured after each epoch over all rows (``Model.mean_ll``), so that epochs compare
exactly. Everything else (resume, divergence, interrupts, patience, checkpoints) is the loop's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from einc.errors import DataError, EincError
from einc.io.data import prepare, prepare_labels, prepare_latents
from einc.io.files import check_writable
from einc.train.loop import EpochRecord, Hooks, Options, Run, TrainingState
from einc.train.loop import train as train_epochs
from einc.train.options import checked_order
from einc.train.steps import ResidentAdam, memory_em

if TYPE_CHECKING:  # the model imports this module
    from einc.model import Model

# With a progress bar, an epoch the backend runs itself is run in this many pieces (of whole
# batches: the same steps), so that the bar moves.
PROGRESS_CHUNKS = 50


def _silent(line: str) -> None:
    pass


def fit_in_memory(model: Model, train: Any, valid: Any, *, epochs: int, method: str | None, batch_size: int,
                  step_size: float, update: str, learning_rate: float, labels: Any, valid_labels: Any,
                  keep_best: bool, seed: int | None, progress: bool, on_epoch: Callable[[EpochRecord], None] | None,
                  patience: int | None, checkpoint: str | os.PathLike | None, checkpoint_every: int, resume: bool,
                  pseudocount: float, latents: Any, valid_latents: Any, samples: int,
                  batch_order: Callable[[int], np.ndarray] | None,
                  on_message: Callable[[str], None] | None) -> list[EpochRecord]:
    """What ``Model.fit`` documents (see there)."""
    options = model.check_training_options(method, update, step_size, epochs=epochs, batch_size=batch_size,
                                          learning_rate=learning_rate, patience=patience,
                                          checkpoint_every=checkpoint_every, has_valid=valid is not None,
                                          pseudocount=pseudocount, samples=samples, labels=labels,
                                          valid_labels=valid_labels)
    method = options.method
    values, observed = prepare(model.graph, train, None, "train", model.dtype)
    if len(values) == 0:
        raise DataError("train: no training samples")
    rows = min(batch_size, len(values))
    model.check_batch(rows, f"a training batch of {rows} samples", samples, training=True)
    label_array = None if labels is None else prepare_labels(labels, len(values), model.plan.heads)
    latent_array = None if latents is None else prepare_latents(model.plan.latents, latents, len(values))
    if valid_latents is not None and valid is None:
        raise EincError("valid_latents clamp the latents of the validation rows: give valid too")
    validation = None
    if valid is not None:
        valid_values, valid_observed = prepare(model.graph, valid, None, "valid", model.dtype)
        if len(valid_values) == 0:
            raise DataError("valid: no validation samples")
        valid_label_array = None if valid_labels is None else prepare_labels(
            valid_labels, len(valid_values), model.plan.heads, "valid labels")
        valid_latent_array = None if valid_latents is None else prepare_latents(
            model.plan.latents, valid_latents, len(valid_values), "valid latents")
        validation = (valid_values, valid_observed, valid_label_array, valid_latent_array)
    if checkpoint is not None:
        check_writable(checkpoint, "checkpoint")
    if resume and model.training is None:
        raise EincError("nothing to resume: this model holds no training state (train it with fit first)")
    run = Run.start(model, model.training if resume else None, method, model.seed if seed is None else seed,
                    validation is not None and keep_best)

    def order(epoch: int, rng: np.random.Generator) -> np.ndarray:
        if batch_order is None:
            return rng.permutation(len(values))
        return checked_order(batch_order(epoch), len(values))

    steps: Any
    if method == "adam":
        # the module holds the parameters: the model sees every step
        trainer = model.backend.gradient_trainer(model.module(samples), learning_rate)
        if run.optimizer is not None:
            trainer.load_state(run.optimizer)
        resident = model.backend.upload(values, observed, label_array, latent_array)
        steps = ResidentAdam(trainer, resident, len(values), batch_size, not model.exact, order)
    else:
        steps = memory_em(model, model.backend, values, observed, label_array, latent_array, batch_size, update,
                          step_size, pseudocount, order, chunks=PROGRESS_CHUNKS if progress else 1)
    # neural leaves: every epoch's train/valid estimates use the same noise (and k)
    evaluation = {} if model.exact else {"samples": samples, "seed": int(model.seed)}

    def checkpoint_to(params: dict[str, np.ndarray]) -> str:
        model.write(checkpoint, params)  # type: ignore[arg-type]
        return str(checkpoint)

    hooks = Hooks(
        train_ll=lambda total, rows: model.mean_ll(values, observed, label_array, latent_array, **evaluation),
        valid_ll=lambda: None if validation is None else model.mean_ll(*validation, **evaluation),
        checkpoint=None if checkpoint is None else checkpoint_to,
        on_epoch=on_epoch, say=on_message or _silent)
    loop_options = Options(epochs, method, keep_best, options.patience, options.checkpoint_every, progress)

    def keep(state: TrainingState) -> None:
        model.training = state

    return train_epochs(model.plan, model, steps, loop_options, hooks, run, keep).history
