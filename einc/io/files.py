"""Files einc writes: checked before the work that fills them, written atomically.

``check_writable`` answers, before a long computation, whether its result could be written: the
target is not a folder, an existing file there is not read-only, and the folder exists (or can be
created) and accepts a new file. ``atomic_write`` then writes to a temporary file beside the
target, fsyncs and renames it: a crash or an error mid-write never leaves a half-written file and
never destroys the previous file of that name. Every error is an ``OutputError`` (a ``DataError``)
naming the path.
"""

from __future__ import annotations

import csv
import io
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from einc.errors import OutputError

# What `save_array` writes, by suffix (the suffixes einc reads back, plus .png pictures).
ARRAY_SUFFIXES = (".csv", ".npy", ".npz")


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise ``OutputError`` unless a file could be written at ``path`` now; return it as a Path.

    Nothing is left behind: the folder is probed with a temporary file that is removed at once,
    and missing folders are only checked (their nearest existing ancestor must accept them).
    """
    target = Path(path)
    text = str(path)
    if not text or text.endswith(("/", os.sep)) or target.name in ("", ".", ".."):
        raise OutputError(f"{text or repr(text)}: the {what} path names a folder; expected a file name")
    if target.is_dir():
        raise OutputError(f"{text}: is a directory; expected a file name for the {what}")
    if target.exists() or target.is_symlink():
        _check_replaceable(target, what)
    folder = target.parent if str(target.parent) else Path(".")
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{text}: cannot write the {what}: {existing} is not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=existing)
    except OSError as error:
        raise OutputError(
            f"{text}: cannot write the {what} in {existing}: {error.strerror or error}"
        ) from None
    os.close(handle)
    os.unlink(probe)
    return target


def check_not_an_input(output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None]) -> None:
    """``OutputError`` when ``output`` is one of the command's input files (``inputs``: option
    name -> path), which writing the output would destroy (``einc sample m.npz -o m.npz``)."""
    check_distinct_paths({"output": output}, inputs)


def check_distinct_paths(outputs: dict[str, str | os.PathLike | None],
                         inputs: dict[str, str | os.PathLike | None]) -> None:
    """``OutputError`` when an output of a command is one of its inputs, or another of its
    outputs (option name -> path; None entries are skipped). Every command that writes calls
    this before any work, so that no output destroys a file the command reads (``learn-structure
    -o DATA``) or one it has just written (``lvd -o m.npz --write-latents m.npz``).

    Two paths are the same file when ``os.path.samefile`` says so (links, ``./x`` and ``x``) or,
    for a file not written yet, when they resolve to the same absolute path. ``FILE.npz:key``
    names the archive ``FILE.npz``.
    """
    seen: list[tuple[str, str | os.PathLike]] = []
    for name, output in outputs.items():
        if output is None:
            continue
        for option, path in inputs.items():
            if path is not None and _same_file(output, _archive_path(path)):
                raise OutputError(f"{output}: is also the {option} input; writing it would destroy that file; "
                                  f"choose another output name")
        for other_name, other in seen:
            if _same_file(output, other):
                raise OutputError(f"{output}: is both the {other_name} and the {name} output; the second would "
                                  f"replace the first; choose two names")
        seen.append((name, output))


def _archive_path(path: str | os.PathLike) -> str | os.PathLike:
    text = str(path)
    return text.rsplit(".npz:", 1)[0] + ".npz" if ".npz:" in text else path


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    first, second = Path(a), Path(b)
    try:
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
        return first.resolve() == second.resolve()
    except (OSError, RuntimeError, ValueError):  # unreadable, a symlink loop, a NUL byte
        return False


def _check_replaceable(target: Path, what: str) -> None:
    try:
        mode = target.stat().st_mode
    except OSError as error:
        raise OutputError(f"{target}: cannot replace it: {error.strerror or error}") from None
    if not stat.S_ISREG(mode):
        raise OutputError(f"{target}: exists and is not a regular file; refusing to replace it with the {what}")
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        # the rename in atomic_write would replace it regardless of its permissions
        raise OutputError(
            f"{target}: the file is read-only; refusing to replace it (make it writable or "
            f"choose another name)"
        )


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(stream)`` atomically; refuse to replace a read-only file."""
    target = Path(path)
    if target.exists():
        _check_replaceable(target, "output")
    if target.is_dir():
        raise OutputError(f"{target}: is a directory; expected a file name")
    directory = target.parent if str(target.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise OutputError(f"{target}: cannot write it: {error.strerror or error}") from None
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


def check_array_output(path: str | os.PathLike, pictures: bool = False) -> None:
    """``OutputError`` unless ``path`` has a suffix ``save_array`` (or, with pictures, PNG) writes."""
    suffixes = ARRAY_SUFFIXES + ((".png",) if pictures else ())
    if not str(path).lower().endswith(suffixes):
        raise OutputError(f"{path}: unknown output format; expected {', '.join(suffixes)}")
    check_writable(path)


def save_array(path: str | os.PathLike, array: np.ndarray, header: Sequence[str] | None = None) -> None:
    """Save rows as .npy, .npz (array ``data``) or .csv, with a header line of column names when
    given; names are quoted where CSV needs it (``img[0, 1]``), so ``read_data`` reads them back."""
    name = str(path).lower()
    if name.endswith(".npy"):
        atomic_write(path, lambda stream: np.save(stream, array))
    elif name.endswith(".npz"):
        atomic_write(path, lambda stream: np.savez(stream, data=array))
    elif name.endswith(".csv"):
        def write_csv(stream: BinaryIO) -> None:
            text = io.StringIO()
            if header:
                csv.writer(text, lineterminator="\n").writerow(header)
            np.savetxt(text, np.atleast_2d(array), delimiter=",", fmt="%.10g")
            stream.write(text.getvalue().encode())
        atomic_write(path, write_csv)
    else:
        raise OutputError(f"{path}: unknown output format; expected {', '.join(ARRAY_SUFFIXES)}")
