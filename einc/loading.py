"""``einc.load``: open a model file and rebuild what it holds, a model or a mixture, checking every
part (the format itself is ``einc.archive``)."""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from einc.archive import (
    FORMAT,
    OVERRIDES,
    READABLE_VERSIONS,
    check_entries,
    check_mixture_entries,
    file_error,
    meta_field,
    read_meta,
    read_overrides,
    read_parameters,
    read_training_state,
)
from einc.backends.base import device_name, dtype_name
from einc.compiler.pipeline import CompileOptions, check_options, compile_plan
from einc.errors import EincError, ModelFileError
from einc.mixture import FORMAT_VERSION as MIXTURE_VERSION
from einc.mixture import MixtureModel
from einc.model import Model


def load(path: str | os.PathLike, backend: str = "torch", device: str = "cpu", dtype: str | None = None,
         options: CompileOptions | None = None, precision: str = "fp32") -> Any:
    """Load a model (or a mixture) written by ``save``: recompiles the source, restores parameters.

    Every part is checked, and a failed check is a ``ModelFileError`` that says which: the file is
    an einc archive of a known format and version, its circuit source compiles, and every
    parameter is present with the plan's shape, a numeric dtype, finite values and values its
    family allows (normalised non-negative weights; leaf parameters inside their family's range).
    """
    path = Path(path)
    device = device_name(device)  # also torch.device, torch.float64
    check_options(options)
    dtype = None if dtype is None else dtype_name(dtype)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory; expected a model file written by einc train or Model.save")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head.startswith(b"PK"):
        hint = (" (it looks like a .pc circuit: train it first, e.g. einc train FILE.pc --data DATA -o MODEL.npz)"
                if path.suffix == ".pc" or head[:1].isalpha() or head[:1] == b"#" else "")
        raise ModelFileError(f"{path}: not an einc model file: not an .npz archive{hint}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = read_meta(archive, "", path)
            if meta.get("format") == "einc-mixture":
                if precision != "fp32":
                    raise ModelFileError(f"{path}: a mixture is loaded with fp32 matmuls; precision {precision!r} "
                                         "applies to single models")
                return load_mixture(archive, meta, path, backend, device, dtype, options)
            return model_from_archive(archive, "", path, backend, device, dtype, options, precision)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise file_error(path, f"cannot read it ({str(error).splitlines()[0][:200] or type(error).__name__})") from None


def model_from_archive(archive: Any, prefix: str, path: Path, backend: str, device: str, dtype: str | None,
                       options: CompileOptions | None = None, precision: str = "fp32") -> Model:
    """Rebuild one model from the arrays under ``prefix`` of an open .npz archive, checking everything."""
    meta = read_meta(archive, prefix, path)
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an einc model file (format {meta.get('format')!r})")
    if meta.get("version") not in READABLE_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise ModelFileError(f"{path}: model format version {meta.get('version')}; this einc reads versions {readable}")
    source = meta_field(meta, "source", str, path)
    filename = meta_field(meta, "filename", str, path, "<model>")
    stored_dtype = meta_field(meta, "dtype", str, path, "float32")
    if stored_dtype not in ("float32", "float64"):
        raise file_error(path, f"metadata 'dtype' is {stored_dtype!r}; expected float32 or float64")
    seed = meta_field(meta, "seed", int, path, 0)
    if seed < 0:
        raise file_error(path, f"metadata 'seed' is {seed}; expected a whole number of at least 0")
    check_entries(archive, meta, prefix, path)
    overrides = read_overrides(meta, path)
    dtype = dtype or stored_dtype
    try:
        options = options or CompileOptions()
        # the K the model was compiled with, unless the caller sets it
        options = replace(options, **{k: v for k, v in overrides.items() if getattr(options, k) is None})
        plan = compile_plan(source, filename, replace(options, dtype=dtype, target=options.target or device))
    except EincError as error:
        raise ModelFileError(f"{path}: the circuit stored in the model does not compile:\n{error}") from None
    params = read_parameters(archive, f"{prefix}param/", plan, path, "parameter")
    model = Model(plan, source, filename, backend, device, dtype, params, seed, {"precision": precision})
    model.max_bytes = options.max_bytes
    model.overrides = {key: getattr(options, key) for key in OVERRIDES if getattr(options, key) is not None}
    if "training" in meta:
        model.training = read_training_state(archive, prefix, meta["training"], plan, path)
    return model


def load_mixture(archive: Any, meta: dict, path: Path, backend: str, device: str, dtype: str | None,
                 options: CompileOptions | None = None) -> MixtureModel:
    """The mixture of an open model archive, every component and weight checked (see ``load``)."""
    if meta.get("version") != MIXTURE_VERSION:
        raise ModelFileError(f"{path}: mixture format version {meta.get('version')}; this einc reads version {MIXTURE_VERSION}")
    count, weights = meta.get("components"), meta.get("weights")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ModelFileError(f"{path}: not a valid einc model file: the mixture has {count!r} components")
    if (not isinstance(weights, list) or len(weights) != count
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in weights)
            or sum(weights) <= 0):
        raise ModelFileError(f"{path}: not a valid einc model file: the mixture weights are not {count} "
                             f"non-negative numbers with a positive sum")
    check_mixture_entries(archive, meta, count, path)
    components = [
        model_from_archive(archive, f"component{index}/", path, backend, device, dtype, options)
        for index in range(count)
    ]
    try:
        return MixtureModel(components, np.asarray(weights, dtype=np.float64))
    except EincError as error:
        raise ModelFileError(f"{path}: not a valid einc model file: {error}") from None
