"""The options of a training run, checked before any work, each with its own message."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from einc.backends.em import DEFAULT_PSEUDOCOUNT
from einc.errors import EincError
from einc.ir.neural import DEFAULT_TRAINING_SAMPLES
from einc.train.loop import DEFAULT_LEARNING_RATE, DEFAULT_STEP_SIZE


def check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise EincError(f"{name} must be a whole number of at least 1, found {value!r}")


def check_non_negative_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise EincError(f"{name} must be a whole number of at least 0, found {value!r}")


def check_label_options(labels: Any, has_valid: bool, valid_labels: Any, flags: bool = False) -> None:
    """Class labels that would be ignored or misused, refused before any work: validation rows
    without labels would all be scored under head 0 while training gives each class its head
    (the best epoch and patience would follow one class); labels of no validation rows do
    nothing. ``flags``: name the command-line options instead of the arguments."""
    name = (lambda arg: f"--{arg.replace('_', '-')}") if flags else (lambda arg: arg)
    if valid_labels is not None and not has_valid:
        raise EincError(f"{name('valid_labels')} label the validation rows: give {name('valid')} too")
    if labels is not None and has_valid and valid_labels is None:
        raise EincError(f"{name('labels')} train each head on its class: give {name('valid_labels')} too, so that "
                        f"each validation row is scored under its class's head (without them every row would be "
                        f"scored under head 0)")


def check_used_options(method: str, exact: bool, step_size: Any, update: Any, learning_rate: Any,
                        pseudocount: Any, samples: Any) -> None:
    """``EincError`` for an option set away from its default that the training ``method`` would
    ignore: a learning rate with EM, EM's step size, update or pseudocount with Adam, importance
    samples without vae leaves (a default given explicitly is harmless). Named for the API and for
    ``einc train``."""
    if method == "em" and learning_rate != DEFAULT_LEARNING_RATE:
        raise EincError(f"learning_rate (--learning-rate) {learning_rate!r} is Adam's; EM does not use it: set EM's "
                        f"step_size (--step-size), or train with method='adam' (--method adam)")
    if method == "adam":
        ignored = [name for name, value, default in (("step_size", step_size, DEFAULT_STEP_SIZE),
                                                     ("update", update, "batch"),
                                                     ("pseudocount", pseudocount, DEFAULT_PSEUDOCOUNT))
                   if value != default]
        if ignored:
            flags = ", ".join(f"{name} (--{name.replace('_', '-')})" for name in ignored)
            raise EincError(f"{flags} {'apply' if len(ignored) > 1 else 'applies'} to EM; Adam does not use "
                            f"{'them' if len(ignored) > 1 else 'it'}: set Adam's learning_rate (--learning-rate), or "
                            f"train by EM (method='em', --method em; not for vae leaves)")
    if exact and samples != DEFAULT_TRAINING_SAMPLES:
        raise EincError(f"samples (--samples) {samples!r} are importance samples of vae leaves; this circuit has "
                        f"none, so its likelihood is exact: leave samples out")


def _real(value: Any) -> bool:
    """A real number, NumPy's too (np.float32 is no Python float), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def checked_order(order: Any, count: int) -> np.ndarray:
    array = np.asarray(order)
    if array.shape != (count,) or not np.array_equal(np.sort(array), np.arange(count)):
        raise EincError(f"batch_order must return a permutation of the {count} training rows")
    return array.astype(np.int64)


@dataclass(frozen=True)
class TrainingOptions:
    method: str  # "em" or "adam", resolved
    patience: int | None
    checkpoint_every: int

    @staticmethod
    def checked(epochs: Any, method: str, batch_size: Any, step_size: Any, update: str, learning_rate: Any,
                patience: Any, checkpoint_every: Any, has_valid: bool, pseudocount: Any = 0.0,
                samples: Any = 1) -> TrainingOptions:
        """Every training option checked before any work, each with its own message (what the
        model can run, EM or Adam, its ``check_training_options`` checks first)."""
        if method not in ("em", "adam"):
            raise EincError(f"unknown training method '{method}'; expected 'em' or 'adam'")
        if update not in ("batch", "epoch"):
            raise EincError(f"update must be 'batch' or 'epoch', not {update!r}")
        check_positive_int(epochs, "epochs")
        check_positive_int(batch_size, "batch_size")
        if method == "em" and not (_real(step_size) and 0.0 < step_size <= 1.0):
            raise EincError(f"step_size must be in (0, 1], found {step_size!r}")
        if method == "adam" and not (_real(learning_rate) and 0.0 < learning_rate < math.inf):
            raise EincError(f"learning_rate must be a positive number, found {learning_rate!r}")
        if patience is not None:
            check_positive_int(patience, "patience")
            if not has_valid:
                raise EincError("patience stops on the validation log-likelihood: give valid data too")
        if checkpoint_every:
            check_positive_int(checkpoint_every, "checkpoint_every")
        check_positive_int(samples, "samples")
        if not _real(pseudocount) or not pseudocount >= 0.0 or not math.isfinite(pseudocount):
            raise EincError(f"pseudocount must be a finite number of at least 0, found {pseudocount!r}")
        return TrainingOptions(method, patience, int(checkpoint_every or 0))
