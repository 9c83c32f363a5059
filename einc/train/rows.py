"""Training rows that need not fit in memory.

A ``RowSource`` hands out *windows* of consecutive rows. A ``.npy`` file is memory-mapped one
window at a time and the mapping is closed when the window is released, so the memory a reader
holds is the windows in use, never the file. CSV files (optionally gzip-compressed) and ``.npz``
arrays are streamed once into a ``.npy`` cache and then read the same way. In-memory arrays are
sources too, so the same training loop serves arrays, files and caches.

Files are recognised and checked as ``einc.io.data.read_data`` does (the same rules and messages):
the format comes from the content, a CSV file is parsed by the same parser piece by piece, and
``dataset`` names a window's rows by their file line (CSV) or row, so that errors found later
read ``train.csv:12:3 (variable C): ...`` as for a file loaded whole.

    >>> source = open_rows("train.npy")                  # doctest: +SKIP
    >>> with source.window(0, 1000) as rows:             # doctest: +SKIP
    ...     first = np.array(rows[:10])
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import itertools
import mmap
import os
import struct
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from einc.io.data import (
    READ_ERRORS,
    DataFile,
    Dataset,
    decode_text,
    array_rows_shape,
    as_rows,
    cannot_read,
    default_npz_key,
    find_data_file,
    npz_header,
)
from einc.io.csv_rows import CsvParser
from einc.io.files import atomic_write, publish
from einc.errors import DataError

# Our caches' .npy header has a fixed size, so the row count can be written after streaming.
HEADER_BYTES = 128
# CSV lines parsed at a time while building a cache (bounded memory whatever the file size).
CSV_CHUNK_LINES = 1 << 16
# Cells converted at a time when a cache is widened or an .npz array is streamed.
COPY_CELLS = 1 << 22
# Cache dtypes from narrowest to widest; a cache takes the narrowest that holds every value exactly.
CACHE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))


class Window:
    """Rows ``[start, stop)`` of a source; ``release()`` (or leaving a ``with``) frees them."""

    def __init__(self, rows: np.ndarray, mapping: mmap.mmap | None = None) -> None:
        self.rows: np.ndarray | None = rows
        self._mapping = mapping

    def __enter__(self) -> np.ndarray:
        assert self.rows is not None
        return self.rows

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        self.rows = None
        if self._mapping is None:
            return
        try:
            self._mapping.close()
        except BufferError:
            # a caller still holds a view of the rows: drop the pages from this process's
            # memory now (the file keeps them), the mapping goes when the view does
            self._mapping.madvise(mmap.MADV_DONTNEED)
        self._mapping = None


class RowSource:
    """Rows of a data set: ``num_rows`` rows of shape ``row_shape``, read window by window."""

    label: str
    num_rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def columns(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64))

    @property
    def row_bytes(self) -> int:
        return self.columns * self.dtype.itemsize

    def window(self, start: int, stop: int) -> Window:
        raise NotImplementedError

    def lines(self, start: int, stop: int) -> np.ndarray | None:
        """The file line of each of rows [start, stop) (CSV caches), or None: rows are numbered."""
        return None

    def dataset(self, rows: np.ndarray, start: int) -> Dataset:
        """Rows read from ``window(start, ...)`` as a ``Dataset`` that names them by their place in
        the file (``file:line:column``), for ``prepare`` and ``prepare_labels`` messages."""
        values = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
        return Dataset(values, self.label, self.lines(start, start + len(rows)), start)


class ArrayRows(RowSource):
    """An in-memory array as a row source (windows are views)."""

    def __init__(self, array: Any, label: str = "data") -> None:
        self.array = np.asarray(array)
        if self.array.ndim == 0:
            raise DataError(f"{label}: a single number; expected an array of shape (N, columns)")
        self.label = label
        self.num_rows = len(self.array)
        self.row_shape = tuple(self.array.shape[1:])
        self.dtype = self.array.dtype

    def window(self, start: int, stop: int) -> Window:
        return Window(self.array[start:stop])

    def dataset(self, rows: np.ndarray, start: int) -> Any:
        # an array from Python: its rows are named "train: row 12, column 3" (prepare's first_row)
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)


class NpyRows(RowSource):
    """A C-ordered ``.npy`` file, memory-mapped one window at a time."""

    def __init__(self, path: str | Path, label: str | None = None, one_row_if_flat: bool = False,
                 line_map: np.ndarray | None = None) -> None:
        self.path = Path(path)
        self.label = label or str(path)
        self.line_map = line_map  # CSV caches: see _LineMap
        try:
            with open(self.path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
                elif version == (2, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
                else:
                    raise DataError(f"{self.label}: .npy format version {version} is not supported; "
                                    f"save it with numpy.save")
                self.offset = handle.tell()
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise DataError(f"{self.label}: no such data file") from None
        except READ_ERRORS as error:
            raise cannot_read(self.label, error) from None
        array_rows_shape(dtype, shape, self.label, one_row_if_flat)  # the checks read_data makes
        if fortran_order and len(shape) > 1:
            raise DataError(f"{self.label}: stored in Fortran order; rows must be contiguous "
                            f"(save it with numpy.save(path, numpy.ascontiguousarray(x)))")
        if one_row_if_flat and len(shape) == 1:
            shape = (1, shape[0])  # as load_array reads a flat array: one sample
        self.dtype = dtype
        self.num_rows = int(shape[0])
        self.row_shape = tuple(int(n) for n in shape[1:])
        if size < self.offset + self.num_rows * self.row_bytes:
            raise DataError(f"{self.label}: the file is truncated ({size} bytes; the header promises "
                            f"{self.num_rows} rows of {self.row_bytes} bytes)")

    def window(self, start: int, stop: int) -> Window:
        count = stop - start
        if count <= 0:
            return Window(np.zeros((0, *self.row_shape), dtype=self.dtype))
        begin = self.offset + start * self.row_bytes
        aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
        with open(self.path, "rb") as handle:
            mapping = mmap.mmap(handle.fileno(), begin - aligned + count * self.row_bytes,
                                access=mmap.ACCESS_READ, offset=aligned)
        # the window is read soon and mostly whole: let the kernel read it ahead in large requests
        mapping.madvise(mmap.MADV_WILLNEED)
        rows = np.frombuffer(mapping, dtype=self.dtype, count=count * self.columns, offset=begin - aligned)
        return Window(rows.reshape((count, *self.row_shape)), mapping)

    def lines(self, start: int, stop: int) -> np.ndarray | None:
        return None if self.line_map is None else _LineMap.lookup(self.line_map, start, stop)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "einc"


def open_rows(data: Any, cache_dir: str | Path | None = None, label: str | None = None,
              one_row_if_flat: bool = True, columns: Sequence[str] | None = None) -> RowSource:
    """A row source for an array, a ``.npy`` file (memory-mapped), or a CSV (``.csv``, ``.csv.gz``)
    or ``.npz`` file (``file.npz:key`` names an array) streamed once into a ``.npy`` cache in
    ``cache_dir`` (default ``~/.cache/einc``) and memory-mapped from there. A file's format is
    recognised from its content, as ``read_data`` does, and checked by the same rules.

    A flat array or file is one sample (as ``read_data`` reads it) unless ``one_row_if_flat`` is
    False (label files: one label per row). ``label`` names an in-memory array in messages.
    ``columns`` (``model.columns``) are the expected CSV header names, as for ``read_data``.
    """
    if isinstance(data, RowSource):
        return data
    if isinstance(data, Dataset) or not isinstance(data, (str, os.PathLike)):
        name = label or "data"
        array = as_rows(data, name)  # strings, dicts, ragged lists are refused as read_data does
        return ArrayRows(array if one_row_if_flat else array.reshape(-1), name)
    found = find_data_file(data)
    if found.format == "npy":
        return NpyRows(found.file, found.source, one_row_if_flat)
    cache, line_map = cached_npy(found, Path(cache_dir) if cache_dir else default_cache_dir(), columns)
    return NpyRows(cache, found.source, one_row_if_flat, line_map)


def cached_npy(found: DataFile, cache_dir: Path, columns: Sequence[str] | None = None) -> tuple[Path, np.ndarray | None]:
    """The ``.npy`` cache of a CSV or ``.npz`` file, built on first use by streaming the file once,
    and for CSV the map from cache rows to file lines (stored beside it, ``.lines``).

    The cache name hashes the file's path, size and modification time (and, for CSV, the column
    names its header is matched against), so an edited file gets a new cache. Concurrent builders
    (workers of one machine) take turns on a lock file; the cache appears atomically, complete or
    not at all.
    """
    path, label = found.file, found.source
    stat = path.stat()
    header = "|".join(columns) if columns is not None and found.format != "npz" else ""
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{found.key}|{header}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    stem = path.name.split(".")[0] + (f"-{found.key}" if found.key else "")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"{label}: cannot create the cache directory {cache_dir} ({error.strerror or error}); "
                        f"choose another with --cache-dir") from None
    target = cache_dir / f"{stem}-{digest}.npy"
    lines = target.with_name(target.name + ".lines") if found.format != "npz" else None
    with _exclusive(cache_dir / f".{target.name}.lock"):
        present = target.exists() and (lines is None or lines.exists())
        if not present or _cache_problem(target, lines) is not None:
            # missing, or damaged since it was written (truncated, a bad header, a bad line map):
            # the source is fine, so build the entry again from it rather than blame the source
            for stale in (target, lines):
                if stale is not None:
                    stale.unlink(missing_ok=True)
            if found.format == "npz":
                _stream_npz(found, target)
            else:
                _stream_csv(found, target, lines, columns)
            problem = _cache_problem(target, lines)
            if problem is not None:
                raise DataError(f"{label}: its cache entry {target} is unusable even after rebuilding it "
                                f"({problem}); delete it, or choose another --cache-dir")
    return target, None if lines is None else np.load(lines, allow_pickle=False)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if need be) and remove it afterwards.

    The file is removed while still locked; a process that was waiting on it then holds a lock
    on a file no longer at ``path``, sees that, and locks whatever is at ``path`` now, so two
    holders never overlap and no lock file is left behind.
    """
    while True:
        handle = open(path, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:  # removed by the holder we waited for
            pass
        handle.close()
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        handle.close()


def _cache_problem(target: Path, lines: Path | None) -> str | None:
    """Why a cache entry cannot be used (its .npy header, its size, its line map), or None."""
    try:
        with open(target, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(handle)
            expected = handle.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = target.stat().st_size
        if size != expected:
            return f"{size} bytes; its header promises {expected}"
        if lines is not None:
            line_map = np.load(lines, allow_pickle=False)
            if line_map.dtype.kind not in "iu":
                return f"its line map {lines.name} holds {line_map.dtype} values"
    except (OSError, ValueError, EOFError) as error:
        return str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    return None


def _stream_csv(found: DataFile, target: Path, lines_path: Path, columns: Sequence[str] | None) -> None:
    """Parse a CSV file (gzip-compressed or not) chunk by chunk into a ``.npy`` cache, with the
    same parser, rules and messages as ``read_data``."""
    label = found.source
    parser = CsvParser(label, columns)
    line_map = _LineMap()
    writer = _NpyWriter(target)
    opener = gzip.open if found.format == "gzip" else open
    try:
        with opener(found.file, "rb") as handle:  # type: ignore[operator]
            line_number, offset = 1, 0
            while True:
                raw_lines = list(itertools.islice(handle, CSV_CHUNK_LINES))
                if not raw_lines:
                    break
                raw = b"".join(raw_lines)
                values, lines = _parse_chunk(parser, decode_text(raw, label, offset), line_number)
                if len(values):
                    line_map.add(lines, writer.rows)
                    writer.append(values)
                line_number += len(raw_lines)
                offset += len(raw)
        if writer.rows == 0:
            raise DataError(f"{label}: the file holds no data rows")
        atomic_write(lines_path, lambda stream: np.save(stream, line_map.finish()))
        writer.finish()
    except DataError:
        writer.abort()
        raise
    except READ_ERRORS as error:
        writer.abort()
        raise cannot_read(label, error) from None
    except BaseException:
        writer.abort()
        raise


def _parse_chunk(parser: CsvParser, text: str, first_line: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse a chunk of CSV lines: NumPy's C parser when the chunk is plain numbers on non-blank
    lines (after the header decision; the rows and values ``CsvParser`` would give), else
    ``CsvParser`` itself (quotes, missing-value markers, blank lines, located errors)."""
    if not parser.first and parser.width is not None and '"' not in text:
        lines = text.split("\n")
        if lines and not lines[-1]:
            lines.pop()
        if all(line.strip() for line in lines):
            try:
                values = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2, comments=None)
            except ValueError:
                pass
            else:
                if values.shape == (len(lines), parser.width):
                    return values, first_line + np.arange(len(lines), dtype=np.int64)
    return parser.parse(text, first_line)


class _LineMap:
    """Cache row -> CSV line as breakpoints ``(row, line)`` where the two stop advancing together
    (a header, blank lines): one breakpoint for most files, whatever their length."""

    def __init__(self) -> None:
        self.points: list[np.ndarray] = []
        self.offset: int | None = None  # line - row at the last row seen

    def add(self, lines: np.ndarray, first_row: int) -> None:
        rows = first_row + np.arange(len(lines), dtype=np.int64)
        offsets = lines - rows
        previous = np.concatenate([[offsets[0] - 1 if self.offset is None else self.offset], offsets[:-1]])
        changed = offsets != previous
        self.points.append(np.stack([rows[changed], lines[changed]], axis=1))
        self.offset = int(offsets[-1])

    def finish(self) -> np.ndarray:
        return np.concatenate(self.points) if self.points else np.zeros((0, 2), dtype=np.int64)

    @staticmethod
    def lookup(points: np.ndarray, start: int, stop: int) -> np.ndarray:
        rows = np.arange(start, stop, dtype=np.int64)
        index = np.maximum(np.searchsorted(points[:, 0], rows, side="right") - 1, 0)
        return points[index, 1] + rows - points[index, 0]


def _stream_npz(found: DataFile, target: Path) -> None:
    label = found.source
    try:
        with zipfile.ZipFile(found.file) as archive:
            names = [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
            if not names:
                raise DataError(f"{found.file}: the .npz archive holds no arrays")
            key = default_npz_key(archive, names, found.file) if found.key is None else found.key
            if key not in names:
                raise DataError(f"{found.file}: no array '{key}'; the file has {', '.join(names)}")
            npz_header(archive, f"{key}.npy", label)  # a header declaring more than the entry holds
            with archive.open(f"{key}.npy") as member:
                _copy_npy_stream(member, target, label)
    except DataError:
        raise
    except READ_ERRORS as error:
        raise cannot_read(label, error) from None


def _copy_npy_stream(stream: IO[bytes], target: Path, label: str) -> None:
    """Copy a .npy stream (an .npz member) into ``target`` in pieces, as C-ordered rows."""
    version = np.lib.format.read_magic(stream)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = reader(stream)
    array_rows_shape(dtype, shape, label)  # the checks read_data makes
    if fortran_order and len(shape) > 1:
        raise DataError(f"{label}: stored in Fortran order; save it C-ordered with numpy.savez")
    row_cells = int(np.prod(shape[1:], dtype=np.int64))
    rows_per_piece = max(1, COPY_CELLS // max(1, row_cells))
    writer = _NpyWriter(target, dtype=dtype)
    try:
        for start in range(0, shape[0], rows_per_piece):
            count = min(rows_per_piece, shape[0] - start)
            raw = stream.read(count * row_cells * dtype.itemsize)
            if len(raw) != count * row_cells * dtype.itemsize:
                raise DataError(f"{label}: the array is truncated")
            writer.append(np.frombuffer(raw, dtype=dtype).reshape((count, *shape[1:])))
        writer.finish(shape)
    except BaseException:
        writer.abort()
        raise


def _narrowest_dtype(chunk: np.ndarray) -> np.dtype:
    """The narrowest cache dtype that holds every value of a float64 chunk exactly."""
    if not np.isnan(chunk).any() and np.all((chunk >= 0) & (chunk <= 255) & (chunk == np.floor(chunk))):
        return CACHE_DTYPES[0]
    with np.errstate(over="ignore"):
        narrowed = chunk.astype(np.float32)
    if np.array_equal(narrowed, chunk, equal_nan=True):
        return CACHE_DTYPES[1]
    return CACHE_DTYPES[2]


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header padded to exactly HEADER_BYTES (a multiple of 64, as NumPy aligns)."""
    text = f"{{'descr': {np.lib.format.dtype_to_descr(dtype)!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    magic = b"\x93NUMPY\x01\x00"
    length = HEADER_BYTES - len(magic) - 2
    if len(text) >= length:
        raise DataError(f"array shape {shape} is too large for a cache file")
    return magic + struct.pack("<H", length) + (text.ljust(length - 1) + "\n").encode("latin1")


class _NpyWriter:
    """Write rows to a ``.npy`` file of unknown final length: a placeholder header, the rows, then
    the real header; renamed into place only when complete.

    Without a fixed ``dtype`` the file takes the narrowest of ``CACHE_DTYPES`` that holds every
    value so far, and is rewritten wider (in pieces) when a later chunk needs it; binary data stays
    one byte per value.
    """

    def __init__(self, target: Path, dtype: np.dtype | None = None) -> None:
        self.target = target
        self.adaptive = dtype is None
        self.dtype = CACHE_DTYPES[0] if dtype is None else np.dtype(dtype)
        self.rows = 0
        self.row_shape: tuple[int, ...] | None = None
        self.stream, self.temporary = self._new_file()

    def _new_file(self) -> tuple[IO[bytes], str]:
        handle, temporary = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent)
        stream = os.fdopen(handle, "w+b")
        stream.write(b"\0" * HEADER_BYTES)
        return stream, temporary

    def append(self, chunk: np.ndarray) -> None:
        if self.row_shape is None:
            self.row_shape = tuple(chunk.shape[1:])
        if self.adaptive:
            needed = _narrowest_dtype(chunk)
            if CACHE_DTYPES.index(needed) > CACHE_DTYPES.index(self.dtype):
                self._widen(needed)
        self.stream.write(np.ascontiguousarray(chunk, dtype=self.dtype).tobytes())
        self.rows += len(chunk)

    def _widen(self, dtype: np.dtype) -> None:
        old_stream, old_path, old_dtype = self.stream, self.temporary, self.dtype
        self.stream, self.temporary = self._new_file()
        self.dtype = dtype
        old_stream.seek(HEADER_BYTES)
        while piece := old_stream.read(COPY_CELLS * old_dtype.itemsize):
            self.stream.write(np.frombuffer(piece, dtype=old_dtype).astype(dtype).tobytes())
        old_stream.close()
        os.unlink(old_path)

    def finish(self, shape: tuple[int, ...] | None = None) -> None:
        shape = shape if shape is not None else (self.rows, *(self.row_shape or ()))
        self.stream.seek(0)
        self.stream.write(_npy_header(self.dtype, shape))
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        publish(self.temporary, self.target)

    def abort(self) -> None:
        self.stream.close()
        if os.path.exists(self.temporary):
            os.unlink(self.temporary)


def iter_windows(source: RowSource, start: int, stop: int, rows_per_window: int) -> Iterator[tuple[int, Window]]:
    """(first row, window) over rows [start, stop), ``rows_per_window`` at a time."""
    for begin in range(start, stop, rows_per_window):
        yield begin, source.window(begin, min(begin + rows_per_window, stop))
