"""The model file format: an ``.npz`` archive, no pickle, every part checked when read.

A model file holds a JSON ``meta`` entry (format, version, the circuit's source, dtype, seed and,
for a trained model, its training state) and one array per parameter (``param/NAME``), plus the
training state's parameters and optimiser moments (``training/param/NAME``,
``training/optimizer/NAME/SLOT``). A mixture stores each component under ``componentI/``. This
module reads and writes those entries; ``einc.model`` and ``einc.mixture`` build objects from them
and ``einc.loading.load`` opens a file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from einc.compiler.params import parameter_problems
from einc.errors import EincError, ModelFileError
from einc.io.files import atomic_write
from einc.io.data import npz_header
from einc.ir.diagnostics import shorten
from einc.ir.plan import Plan
from einc.train.loop import TrainingState

FORMAT = "einc-model"
# 2: circuits may have neural (vae) leaves, whose network weights are stored as parameters like
# any other; version 1 files (no neural leaves) read unchanged
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def model_arrays(meta: dict[str, Any], params: dict[str, np.ndarray], training: TrainingState | None,
                 prefix: str = "") -> dict[str, np.ndarray]:
    """The arrays of one model under ``prefix``: metadata, parameters and training state."""
    meta = dict(meta)
    arrays = {f"{prefix}param/{k}": v for k, v in params.items()}
    if training is not None:
        meta["training"] = {
            "epoch": training.epoch, "rng": training.rng, "method": training.method,
            "best_epoch": training.best_epoch, "best_valid_ll": training.best_valid_ll,
            "stale_epochs": training.stale_epochs,
        }
        arrays.update({f"{prefix}training/param/{k}": v for k, v in training.params.items()})
        arrays.update({f"{prefix}training/optimizer/{k}": v for k, v in (training.optimizer or {}).items()})
    arrays[f"{prefix}meta"] = np.array(json.dumps(meta))
    return arrays


def file_error(path: Path, problem: str) -> ModelFileError:
    return ModelFileError(f"{path}: not a valid einc model file: {problem}")


def read_meta(archive: Any, prefix: str, path: Path) -> dict[str, Any]:
    key = f"{prefix}meta"
    if key not in archive.files:
        raise ModelFileError(f"{path}: not an einc model file (no '{key}' entry)")
    shape, _, dtype = _header(archive, key, path)
    if shape != () or dtype.kind != "U" or dtype.itemsize > MAX_META_BYTES:
        raise file_error(path, f"'{key}' is not a JSON text of at most {MAX_META_BYTES // 2**20} MiB")
    raw = archive[key]
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as error:
        raise file_error(path, f"'{key}' is not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise file_error(path, f"'{key}' is a JSON {type(meta).__name__}; expected an object")
    return meta


def meta_field(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path, default: Any = None) -> Any:
    value = meta.get(key, default)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise file_error(path, f"metadata '{key}' is {value!r}; expected a {getattr(kind, '__name__', kind)}")
    return value


def read_parameters(archive: Any, prefix: str, plan: Plan, path: Path, what: str) -> dict[str, np.ndarray]:
    """The parameters stored under ``prefix``, checked completely against the plan."""
    stored = {k[len(prefix):]: k for k in archive.files if k.startswith(prefix)}
    wanted = {spec.name for spec in plan.params}
    missing = sorted(wanted - set(stored))
    if missing:
        raise file_error(path, f"{what} '{missing[0]}' is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = sorted(set(stored) - wanted)
    if unexpected:
        raise file_error(path, f"unexpected {what} '{unexpected[0]}': the circuit has no such parameter")
    specs = {spec.name: spec for spec in plan.params}
    params: dict[str, np.ndarray] = {}
    for name in sorted(wanted):
        shape, _, dtype = _header(archive, stored[name], path)
        # refused from the header: a compressed entry declaring a huge shape is never inflated
        if dtype.kind not in "biuf":
            raise file_error(path, f"{what} '{name}' has dtype {dtype}; expected floating-point numbers")
        if shape != specs[name].shape:
            raise file_error(path, f"{what} '{name}' has shape {shape}; expected {specs[name].shape}")
        try:
            params[name] = archive[stored[name]]
        except ValueError as error:
            raise file_error(path, f"{what} '{name}' cannot be read ({first_line(error)})") from None
    problems = parameter_problems(plan, params)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise file_error(path, f"{what} {problems[0]}{more}")
    return params


# Longest metadata text (the JSON with the circuit's source) a model file may declare.
MAX_META_BYTES = 256 * 2**20


def _header(archive: Any, key: str, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """An entry's declared (shape, fortran order, dtype), read without inflating the entry."""
    try:
        return npz_header(archive.zip, f"{key}.npy", str(path))
    except EincError as error:
        raise file_error(path, f"entry '{shorten(key, 60)}': {error.diagnostics[0].message}") from None


def first_line(error: BaseException) -> str:
    text = str(error)
    if "pickle" in text:
        return "it holds Python objects"
    return text.splitlines()[0][:200] if text else type(error).__name__


def read_training_state(archive: Any, prefix: str, meta: Any, plan: Plan, path: Path) -> TrainingState:
    if not isinstance(meta, dict):
        raise file_error(path, "the training state is not a JSON object")
    unknown = sorted(set(meta) - TRAINING_META_KEYS)
    if unknown:
        raise file_error(path, f"the training state has an unknown entry '{shorten(str(unknown[0]), 60)}'; "
                               f"expected {', '.join(sorted(TRAINING_META_KEYS))}")
    epoch = meta_field(meta, "epoch", int, path)
    if epoch < 0:  # a tampered counter would make --resume train epochs that never ran
        raise file_error(path, f"the training state's epoch count is {epoch}; expected a whole number of at least 0")
    method = meta_field(meta, "method", str, path, "em")
    if method not in ("em", "adam"):
        raise file_error(path, f"the training state's method is {shorten(method, 60)!r}; expected 'em' or 'adam'")
    best_epoch = meta.get("best_epoch")
    if best_epoch is not None and (isinstance(best_epoch, bool) or not isinstance(best_epoch, int)
                                   or not 1 <= best_epoch <= epoch):
        raise file_error(path, f"the training state's best_epoch is {best_epoch!r}; expected an epoch in "
                               f"1..{epoch} (the epochs done) or none")
    stale = meta.get("stale_epochs", 0) or 0
    if isinstance(stale, bool) or not isinstance(stale, int) or not 0 <= stale <= epoch:
        raise file_error(path, f"the training state's stale_epochs is {stale!r}; expected 0..{epoch}")
    rng = meta_field(meta, "rng", dict, path)
    try:
        np.random.default_rng().bit_generator.state = rng
    except (TypeError, ValueError, KeyError, OverflowError):
        raise file_error(path, "the training state's random generator state is not valid") from None
    best_valid = meta.get("best_valid_ll")
    if best_valid is not None and (isinstance(best_valid, bool) or not isinstance(best_valid, (int, float))
                                   or not math.isfinite(best_valid)):
        raise file_error(path, f"the training state's best_valid_ll is {best_valid!r}")
    params = read_parameters(archive, f"{prefix}training/param/", plan, path, "training-state parameter")
    optimizer = read_optimizer_state(archive, f"{prefix}training/optimizer/", plan, path)
    return TrainingState(epoch, params, rng, method, optimizer or None, best_epoch, best_valid, stale)


# What a model file's JSON metadata and archive may hold; anything else is refused, by name (a file
# einc did not write, or one of a newer einc, is not half-read in silence).
MODEL_META_KEYS = frozenset({"format", "version", "source", "filename", "dtype", "seed", "training", "overrides"})
# CompileOptions that change the circuit the stored source compiles to (the CLI's --sums,
# --inputs, --heads): a model file records the ones given ('overrides'), and load applies them
OVERRIDES = ("sums", "inputs", "heads")


def read_overrides(meta: dict[str, Any], path: Path) -> dict[str, int]:
    """The K overrides a model was compiled with (``Model.overrides``), checked."""
    overrides = meta_field(meta, "overrides", dict, path, {})
    for key, value in overrides.items():
        if key not in OVERRIDES:
            raise file_error(path, f"metadata 'overrides' has {shorten(str(key), 60)!r}; expected only "
                                   f"{', '.join(OVERRIDES)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise file_error(path, f"metadata 'overrides' {key} is {shorten(repr(value), 60)}; expected a whole "
                                   f"number >= 1")
    return overrides
TRAINING_META_KEYS = frozenset({"epoch", "rng", "method", "best_epoch", "best_valid_ll", "stale_epochs"})
MODEL_ENTRY_PREFIXES = ("param/", "training/param/", "training/optimizer/")
MIXTURE_META_KEYS = frozenset({"format", "version", "components", "weights"})
# Adam's per-parameter state (torch.optim.Adam without amsgrad): a step count and two moments.
ADAM_SLOTS = ("exp_avg", "exp_avg_sq", "step")


def check_entries(archive: Any, meta: dict[str, Any], prefix: str, path: Path) -> None:
    """``ModelFileError`` naming the first metadata key, or archive entry under ``prefix``, that a
    model file does not have (a mixture's own entries: ``check_mixture_entries``)."""
    unknown_keys = sorted(set(meta) - MODEL_META_KEYS)
    if unknown_keys:
        raise file_error(path, f"metadata has an unknown entry '{shorten(str(unknown_keys[0]), 60)}'; "
                               f"expected only {', '.join(sorted(MODEL_META_KEYS))}")
    for name in archive.files:
        entry = name[len(prefix):]
        if name.startswith(prefix) and entry != "meta" and not entry.startswith(MODEL_ENTRY_PREFIXES):
            raise file_error(path, f"unknown entry '{shorten(name, 60)}' in the archive; a model file holds "
                                   f"'{prefix}meta', '{prefix}param/...' and its training state")


def check_mixture_entries(archive: Any, meta: dict[str, Any], count: int, path: Path) -> None:
    """``ModelFileError`` naming the first mixture metadata key or top-level entry that is not
    ``meta`` or under ``component0/`` ... ``component{count-1}/``."""
    unknown = sorted(set(meta) - MIXTURE_META_KEYS)
    if unknown:
        raise file_error(path, f"the mixture's metadata has an unknown entry '{shorten(str(unknown[0]), 60)}'")
    prefixes = tuple(f"component{index}/" for index in range(count))
    for name in archive.files:
        if name != "meta" and not name.startswith(prefixes):
            raise file_error(path, f"unknown entry '{shorten(name, 60)}' in the archive; a mixture holds 'meta' "
                                   f"and component0/ ... component{count - 1}/")


def read_optimizer_state(archive: Any, prefix: str, plan: Plan, path: Path) -> dict[str, np.ndarray]:
    """Adam's saved state, checked against the plan's parameters: every entry is
    ``{parameter}/{slot}`` of a parameter the circuit has and a known slot, with the parameter's
    shape (the step count a scalar), finite, the squared moments and step counts not negative,
    and each parameter with all of its slots or none (only finiteness was checked before: a wrong
    shape failed inside torch on resume)."""
    specs = {spec.name: spec for spec in plan.params}
    state: dict[str, np.ndarray] = {}
    slots_of: dict[str, set[str]] = {}
    for key in archive.files:
        if not key.startswith(prefix):
            continue
        entry = key[len(prefix):]
        name, _, slot = entry.rpartition("/")
        what = f"the training state's optimiser entry '{shorten(entry, 60)}'"
        if name not in specs:
            raise file_error(path, f"{what} names no parameter of the circuit")
        if slot not in ADAM_SLOTS:
            raise file_error(path, f"{what}: unknown slot '{shorten(slot, 30)}'; expected {', '.join(ADAM_SLOTS)}")
        shape = () if slot == "step" else specs[name].shape
        declared, _, dtype = _header(archive, key, path)
        if declared != shape or dtype.kind not in "biuf":
            raise file_error(path, f"{what} has shape {declared} and dtype {dtype}; expected {shape} numbers")
        try:
            value = archive[key]
        except ValueError as error:
            raise file_error(path, f"{what} cannot be read ({first_line(error)})") from None
        if value.shape != shape:
            raise file_error(path, f"{what} has shape {value.shape}; expected {shape}")
        if value.dtype.kind not in "biuf" or not np.all(np.isfinite(value)):
            raise file_error(path, f"{what} is not finite numbers")
        if slot != "exp_avg" and np.any(value < 0):
            raise file_error(path, f"{what} is negative; expected at least 0")
        state[entry] = value
        slots_of.setdefault(name, set()).add(slot)
    for name, slots in sorted(slots_of.items()):
        if len(slots) != len(ADAM_SLOTS):
            missing = sorted(set(ADAM_SLOTS) - slots)[0]
            raise file_error(path, f"the training state's optimiser entry '{shorten(name, 60)}/{missing}' is missing")
    return state


class ModelFileWriter:
    """How a ``Model`` writes its model file (``einc.model.Model`` takes these methods): the
    metadata, the checked archive arrays, ``save`` and ``write``. The model provides ``plan``,
    ``source``, ``filename``, ``dtype``, ``seed``, ``overrides``, ``training`` and ``parameters()``."""

    def metadata(self) -> dict[str, Any]:
        """What a model file records besides the parameters: the circuit source and settings."""
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "source": self.source,
            "filename": self.filename,
            "dtype": self.dtype,
            "seed": self.seed,
        }
        if self.overrides:  # e.g. einc train --sums 5: the source says another K
            meta["overrides"] = dict(self.overrides)
        return meta

    def archive_arrays(self, params: dict[str, np.ndarray] | None = None, prefix: str = "") -> dict[str, np.ndarray]:
        """The arrays of a model file under ``prefix``: metadata, parameters and training state.

        Checked as ``load`` checks them before anything is written: a model whose parameters
        became NaN (an optimiser step on ``module()``, say) is refused, so that ``save`` never
        replaces a good file with one that cannot be loaded."""
        params = params or self.parameters()
        problems = parameter_problems(self.plan, params)
        if self.training is not None:
            problems += [f"training-state parameter {p}" for p in parameter_problems(self.plan, self.training.params)]
            problems += [f"optimiser entry '{k}' holds a non-finite value" for k, v in (self.training.optimizer or {}).items()
                         if not np.all(np.isfinite(np.asarray(v, dtype=np.float64)))]
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise EincError(f"refusing to write the model: {problems[0]}{more}; nothing was written (an existing "
                            f"file is left as it was)")
        return model_arrays(self.metadata(), params, self.training, prefix)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically: a .npz with the circuit source and parameters (no pickle),
        and the training state when the model was trained (so that training can resume).
        An existing read-only file is not replaced."""
        self.write(path, self.parameters())

    def write(self, path: str | os.PathLike, params: dict[str, np.ndarray]) -> None:
        """``save`` with other parameters (a checkpoint's best ones) beside the training state."""
        arrays = self.archive_arrays(params)
        atomic_write(path, lambda stream: np.savez(stream, **arrays))
