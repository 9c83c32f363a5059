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
from pathlib import Path
from typing import Any

import numpy as np

from einc.compiler.params import parameter_problems
from einc.errors import ModelFileError
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
    raw = archive[key]
    if raw.shape != () or raw.dtype.kind != "U":
        raise file_error(path, f"'{key}' is not a JSON text")
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
    params: dict[str, np.ndarray] = {}
    for name in sorted(wanted):
        try:
            params[name] = archive[stored[name]]
        except ValueError as error:
            raise file_error(path, f"{what} '{name}' cannot be read ({first_line(error)})") from None
    problems = parameter_problems(plan, params)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise file_error(path, f"{what} {problems[0]}{more}")
    return params


def first_line(error: BaseException) -> str:
    text = str(error)
    if "pickle" in text:
        return "it holds Python objects"
    return text.splitlines()[0][:200] if text else type(error).__name__


def read_training_state(archive: Any, prefix: str, meta: Any, plan: Plan, path: Path) -> TrainingState:
    if not isinstance(meta, dict):
        raise file_error(path, "the training state is not a JSON object")
    epoch = meta_field(meta, "epoch", int, path)
    if epoch < 0:  # a tampered counter would make --resume train epochs that never ran
        raise file_error(path, f"the training state's epoch count is {epoch}; expected a whole number of at least 0")
    method = meta_field(meta, "method", str, path, "em")
    rng = meta_field(meta, "rng", dict, path)
    try:
        np.random.default_rng().bit_generator.state = rng
    except (TypeError, ValueError, KeyError):
        raise file_error(path, "the training state's random generator state is not valid") from None
    best_valid = meta.get("best_valid_ll")
    if best_valid is not None and not (isinstance(best_valid, (int, float)) and math.isfinite(best_valid)):
        raise file_error(path, f"the training state's best_valid_ll is {best_valid!r}")
    params = read_parameters(archive, f"{prefix}training/param/", plan, path, "training-state parameter")
    optimizer_prefix = f"{prefix}training/optimizer/"
    optimizer = {k[len(optimizer_prefix):]: archive[k] for k in archive.files if k.startswith(optimizer_prefix)}
    if any(v.dtype.kind not in "biuf" or not np.all(np.isfinite(v)) for v in optimizer.values()):
        raise file_error(path, "the training state's optimiser arrays are not finite numbers")
    return TrainingState(epoch, params, rng, method, optimizer or None, meta.get("best_epoch"), best_valid,
                         int(meta.get("stale_epochs", 0) or 0))
