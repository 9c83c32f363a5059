"""Atomic file output: write to a temporary file beside the target, fsync, then rename.

A crash or an error mid-write never leaves a half-written model or result, and never destroys
the previous file of that name.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from einc.ir.diagnostics import DataError


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        publish(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def publish(temporary: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename a complete, synced temporary file onto ``target`` (atomic on one file system)."""
    # mkstemp creates 0600 files; give the result the permissions a plain open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, target)


def save_array(path: str | os.PathLike, array: np.ndarray, header: list[str] | None = None) -> None:
    """Save samples as .npy, .npz or .csv (with a header line of column names when given)."""
    name = str(path).lower()
    if name.endswith(".npy"):
        atomic_write(path, lambda stream: np.save(stream, array))
    elif name.endswith(".npz"):
        atomic_write(path, lambda stream: np.savez(stream, data=array))
    elif name.endswith(".csv"):
        def write_csv(stream: BinaryIO) -> None:
            text = io.StringIO()
            if header:
                text.write(",".join(header) + "\n")
            np.savetxt(text, array, delimiter=",", fmt="%.10g")
            stream.write(text.getvalue().encode())
        atomic_write(path, write_csv)
    else:
        raise DataError(f"{path}: unknown output format; expected .csv, .npy, .npz or .png")
