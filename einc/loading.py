"""``einc.load``: open a model file and rebuild what it holds, a model or a mixture."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from einc.archive import file_error, read_meta
from einc.compiler.pipeline import CompileOptions
from einc.errors import ModelFileError
from einc.mixture import load_mixture
from einc.model import model_from_archive


def load(path: str | os.PathLike, backend: str = "torch", device: str = "cpu", dtype: str | None = None,
         options: CompileOptions | None = None, precision: str = "fp32") -> Any:
    """Load a model (or a mixture) written by ``save``: recompiles the source, restores parameters.

    Every part is checked, and a failed check is a ``ModelFileError`` that says which: the file is
    an einc archive of a known format and version, its circuit source compiles, and every
    parameter is present with the plan's shape, a numeric dtype, finite values and values its
    family allows (normalised non-negative weights; leaf parameters inside their family's range).
    """
    path = Path(path)
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
