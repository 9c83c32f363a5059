"""Reading and validating data: CSV (optionally gzip-compressed), .npy and .npz; NaN means missing.

One reader (``read_data``) serves every data file einc opens (training, validation and test data,
labels, evidence), and one check (``prepare``) every array a model is given. Both report a
mistake as an ``EincError`` that names the place: ``train.csv:12:3 (variable C): ...`` for a file
(the line of a CSV file, the 1-based row of an array file, then the column), ``train: row 12,
column 3 (variable C): ...`` for an array passed from Python.

    >>> dataset = read_data("examples/data/nltcs/valid.csv.gz")     # doctest: +SKIP
    >>> dataset.values.shape, dataset.source                         # doctest: +SKIP
    ((2157, 16), 'examples/data/nltcs/valid.csv.gz')

The file's format is recognised from its first bytes, not its name: a ``.npy`` or ``.npz``
archive, a gzip stream (decompressed, then read as CSV) or CSV text. A CSV file may start with a
header line; it is recognised when it holds the circuit's column names (``sample -o out.csv``
writes one) or, when the names are not known, when none of its cells is a number.

The out-of-core reader (``einc.train.rows``) shares these rules through ``find_data_file``,
``array_rows_shape`` and ``einc.io.csv_rows.CsvParser`` (which parses a file in consecutive pieces exactly as in
one), so a file read block by block gets the same messages as one loaded whole.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from einc.errors import DataError
from einc.io.csv_rows import CsvParser
from einc.ir.families import family_rule
from einc.ir.neural import observation_family
from einc.ir.region_graph import RegionGraph

# Cells that mean "not observed" in CSV files (NaN in arrays).

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"  # an archive without entries (np.savez with no arrays)
_GZIP_MAGIC = b"\x1f\x8b"
# Numeric dtype kinds einc reads as numbers: bool, signed and unsigned integers, floats.
_NUMERIC_KINDS = "biuf"
_DTYPE_WORDS = {
    "U": "text",
    "S": "byte strings",
    "O": "Python objects",
    "c": "complex numbers",
    "M": "dates",
    "m": "time spans",
    "V": "raw records",
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A 2-D float array read from a file, with where each row came from.

    Usable wherever einc takes an array (``np.asarray(dataset)`` is ``dataset.values``); errors
    about its values then name the file and line instead of a row of an anonymous array.
    """

    values: np.ndarray  # (N, columns) float64, NaN = missing
    source: str  # the path as the user gave it (with ``:key`` for an .npz member)
    lines: np.ndarray | None = None  # (N,) the CSV line of each row; None for array files
    first_row: int = 0  # array files read in pieces: the file row (0-based) of values[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.values if dtype is None else self.values.astype(dtype, copy=False)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    def head(self, count: int) -> Dataset:
        """The first ``count`` rows, still naming their file and lines."""
        lines = None if self.lines is None else self.lines[:count]
        return Dataset(self.values[:count], self.source, lines, self.first_row)

    def location(self, row: int, column: int) -> str:
        """``file:line:column`` of a cell (0-based ``row`` and ``column``; the result is 1-based)."""
        line = self.first_row + row + 1 if self.lines is None else int(self.lines[row])
        return f"{self.source}:{line}:{column + 1}"


# ---------------------------------------------------------------------------------------------
# Files


def load_array(path: str | Path, key: str | None = None, columns: Sequence[str] | None = None) -> np.ndarray:
    """The (N, columns) float array of a data file; see ``read_data``."""
    return read_data(path, key, columns).values


def read_data(path: str | Path, key: str | None = None, columns: Sequence[str] | None = None) -> Dataset:
    """Read a data file into a ``Dataset`` or raise ``DataError`` naming the file and the problem.

    ``path`` may be ``file.npz:key`` to pick one array of an archive (default: its first array).
    ``columns`` are the expected column names (``model.columns``): a CSV header line holding
    them is skipped, one holding other names is an error. A 1-D array is one row; arrays with
    more dimensions are flattened per row (images of shape (N, 28, 28) become (N, 784)).
    """
    found = find_data_file(path, key)
    text = found.name
    try:
        if found.format == "npy":
            return _array_dataset(np.load(found.file, allow_pickle=False), found.source)
        if found.format == "npz":
            return _npz_dataset(found.file, found.key, found.source)
        raw = found.file.read_bytes()
        if found.format == "gzip":
            raw = gzip.decompress(raw)
        return _read_csv(decode_text(raw, text), text, columns)
    except DataError:
        raise
    except READ_ERRORS as error:
        raise cannot_read(text, error) from None


# What reading a data file may raise besides DataError (a damaged or truncated file).
READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def cannot_read(path: str, error: BaseException) -> DataError:
    return DataError(f"{path}: cannot read data ({_reason(error)}); expected .csv, .csv.gz, .npy or .npz")


@dataclass(frozen=True)
class DataFile:
    """A data file that exists, with its format recognised from its first bytes."""

    file: Path
    name: str  # the path as the user gave it (without ``:key``)
    key: str | None  # the .npz member named by ``file.npz:key``
    source: str  # how messages name it: the path, with ``:key`` when one was given
    format: str  # "npy", "npz", "gzip" (CSV inside) or "csv"


def _split_key(text: str) -> tuple[str, str | None]:
    """``file.npz:key`` -> (``file.npz``, ``key``); also a key on any other file that is there
    (``find_data_file`` refuses it as not an .npz), unless the whole text names a file (a path
    with a colon in it). Otherwise (``text``, None)."""
    if ":" not in text:
        return text, None
    name, key = text.rsplit(":", 1)
    if ".npz:" in text or (not Path(text).exists() and Path(name).is_file()):
        return name, key
    return text, None


def find_data_file(path: str | Path, key: str | None = None) -> DataFile:
    """Check that ``path`` (``file.npz:key`` names an array) is a readable, non-empty file and
    recognise its format from its content; ``DataError`` naming the path otherwise."""
    text = str(path)
    if key is None:
        text, key = _split_key(text)
    source = text if key is None else f"{text}:{key}"
    file = Path(text)
    if not file.exists():
        raise DataError(f"{text}: no such data file")
    if file.is_dir():
        raise DataError(f"{text}: is a directory; expected a data file (.csv, .csv.gz, .npy or .npz)")
    try:
        with open(file, "rb") as handle:
            head = handle.read(8)
    except OSError as error:
        raise DataError(f"{text}: cannot read data ({error.strerror or error})") from None
    if not head:
        raise DataError(f"{text}: the file is empty; expected data rows")
    if head.startswith(_NPY_MAGIC):
        if key is not None:
            raise DataError(f"{text}: a .npy file holds one array; ':{key}' names an .npz member")
        return DataFile(file, text, None, source, "npy")
    if head.startswith((_ZIP_MAGIC, _EMPTY_ZIP_MAGIC)):
        return DataFile(file, text, key, source, "npz")
    if key is not None:
        raise DataError(f"{text}: not an .npz archive, so ':{key}' cannot name an array in it")
    return DataFile(file, text, None, source, "gzip" if head.startswith(_GZIP_MAGIC) else "csv")


def _reason(error: BaseException) -> str:
    message = str(error).strip() or type(error).__name__
    if "pickle" in message:
        return "it holds Python objects, which einc does not unpickle"
    return message.splitlines()[0][:200]


def decode_text(raw: bytes, source: str, first_byte: int = 0) -> str:
    """UTF-8 text (a leading byte-order mark dropped); ``first_byte`` is the file offset of
    ``raw`` (for a file decoded piece by piece), so the message names the byte in the file."""
    try:
        return raw.decode("utf-8-sig" if first_byte == 0 else "utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{source}: not a text file (byte {first_byte + error.start} is not UTF-8); expected CSV text, "
            f".csv.gz, .npy or .npz"
        ) from None


def _npz_dataset(file: Path, key: str | None, source: str) -> Dataset:
    with np.load(file, allow_pickle=False) as archive:
        names = list(archive.files)
        if not names:
            raise DataError(f"{file}: the .npz archive holds no arrays")
        if key is None:
            key = default_npz_key(archive.zip, names, file)
            source = str(file)
        if key not in names:
            raise DataError(f"{file}: no array '{key}'; the file has {', '.join(names)}")
        # the member's declared shape and dtype, checked before it is decompressed: a few bytes of
        # a compressed member can declare gigabytes of zeros
        shape, _, dtype = npz_header(archive.zip, f"{key}.npy", source)
        rows, columns = array_rows_shape(dtype, shape, source)
        needed = rows * columns * (dtype.itemsize + 8)  # the array as stored, and its float64 copy
        if needed > MAX_IN_MEMORY_BYTES:
            raise DataError(f"{source}: the array declares shape {tuple(shape)} ({dtype}): about "
                            f"{needed / 2**30:.1f} GiB to read into memory, more than the limit of "
                            f"{MAX_IN_MEMORY_BYTES / 2**30:.0f} GiB; stream it instead (einc train --stream)")
        return _array_dataset(archive[key], source)


# The JSON text entry every einc model (and mixture) file holds (einc/archive.py).
_MODEL_META = "meta"


def default_npz_key(archive: zipfile.ZipFile, names: Sequence[str], file: Path) -> str:
    """The array an ``.npz`` data file given without ``:key`` is read from: its first; an einc
    model file is refused (its first array is a parameter tensor, "data" of the wrong width)."""
    if _MODEL_META in names and npz_header(archive, f"{_MODEL_META}.npy", str(file))[2].kind == "U":
        raise DataError(f"{file}: an einc model file, not data; it is the MODEL of eval, sample, inpaint and "
                        f"query (data: .csv, .csv.gz, .npy or .npz arrays of rows)")
    return names[0]


# Largest data array read whole into memory (as stored plus its float64 copy); bigger data is
# streamed window by window (einc.train.rows). The default --max-memory.
MAX_IN_MEMORY_BYTES = 4 * 2**30


def npz_header(archive: zipfile.ZipFile, member: str, source: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the ``.npy`` member of an ``.npz`` archive, read from its
    first bytes without decompressing the rest; ``DataError`` when the header is not readable or
    declares more bytes than the zip entry holds uncompressed."""
    try:
        info = archive.getinfo(member)
        with archive.open(member) as stream:
            version = np.lib.format.read_magic(stream)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = reader(stream)
            header_bytes = stream.tell()
    except READ_ERRORS as error:
        raise cannot_read(source, error) from None
    except KeyError:
        raise DataError(f"{source}: no member {member} in the archive") from None
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize if dtype.itemsize else 0
    if header_bytes + declared > info.file_size:
        raise DataError(f"{source}: the array's header declares shape {tuple(shape)} ({dtype}, {declared:,} bytes) "
                        f"but the archive entry holds {info.file_size:,} bytes; the file is damaged")
    return tuple(int(n) for n in shape), bool(fortran_order), dtype


def _array_dataset(array: np.ndarray, source: str) -> Dataset:
    """Check an array read from a file: numbers, at least one row and column; rows flattened."""
    shape = array_rows_shape(array.dtype, array.shape, source)
    return Dataset(np.asarray(array.reshape(shape), dtype=np.float64), source)


def array_rows_shape(dtype: np.dtype, shape: tuple[int, ...], source: str, flat_is_one_row: bool = True) -> tuple[int, int]:
    """The (rows, columns) an array file of this dtype and shape is read as, or ``DataError``:
    numbers only, at least one row and one column; a flat array is one row (or, without
    ``flat_is_one_row``, one value per row: label files), more dimensions are flattened per row.
    One rule for arrays loaded whole and for files read window by window (``einc.train.rows``)."""
    kind = dtype.kind
    if dtype.names:
        raise DataError(
            f"{source}: a structured array with fields {', '.join(dtype.names)}; "
            f"expected a plain numeric array (N, columns)"
        )
    if kind not in _NUMERIC_KINDS:
        raise DataError(
            f"{source}: the array holds {_DTYPE_WORDS.get(kind, str(dtype))} "
            f"(dtype {dtype}); expected numbers"
        )
    if len(shape) == 0:
        raise DataError(f"{source}: a single number; expected an array of rows (N, columns)")
    if len(shape) == 1:
        rows, columns = (1, shape[0]) if flat_is_one_row else (shape[0], 1)
    else:
        rows, columns = shape[0], int(np.prod(shape[1:], dtype=np.int64))
    if rows == 0:
        raise DataError(f"{source}: the array holds no rows (shape {tuple(shape)})")
    if columns == 0:
        raise DataError(f"{source}: the array holds no columns (shape {tuple(shape)})")
    return rows, columns


def _read_csv(text: str, source: str, columns: Sequence[str] | None) -> Dataset:
    parser = CsvParser(source, columns)
    values, lines = parser.parse(text)
    if not len(values):
        raise DataError(f"{source}: the file holds no data rows")
    return Dataset(values, source, lines)



# ---------------------------------------------------------------------------------------------
# Arrays handed to a model


def as_rows(data: Any, label: str = "data") -> np.ndarray:
    """Any array-like as a float64 (N, columns) array (a 1-D one is one row), or ``DataError``.

    Accepts NumPy arrays, nested lists, torch tensors (also ones that require grad) and
    ``Dataset``; rejects strings, mappings, ragged lists and non-numeric arrays with a message.
    """
    if isinstance(data, Dataset):
        return data.values
    if isinstance(data, (str, bytes, Path)):
        raise DataError(
            f"{label}: expected an array of shape (N, columns), found a {type(data).__name__}; "
            f"read a file first with einc.io.data.read_data(path)"
        )
    if isinstance(data, (dict, set, frozenset)) or hasattr(data, "keys"):
        raise DataError(f"{label}: expected an array of shape (N, columns), found a {type(data).__name__}")
    data = host_array(data, label)
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as error:
        detail = "rows of different lengths" if "inhomogeneous" in str(error) else _reason(error)
        raise DataError(f"{label}: cannot read it as an array of numbers ({detail})") from None
    kind = array.dtype.kind
    if kind == "O":
        try:
            array = array.astype(np.float64)
        except (ValueError, TypeError):
            raise DataError(f"{label}: holds values that are not numbers (dtype object)") from None
    elif kind not in _NUMERIC_KINDS or array.dtype.names:
        raise DataError(f"{label}: holds {_DTYPE_WORDS.get(kind, str(array.dtype))} (dtype {array.dtype}); expected numbers")
    if array.ndim == 0:
        raise DataError(f"{label}: a single number; expected an array of shape (N, columns)")
    return np.asarray(array[None, :] if array.ndim == 1 else array, dtype=np.float64)


def host_array(data: Any, label: str = "data") -> Any:
    """A torch tensor as a NumPy array (anything else unchanged): detached, on the host, and in
    float32 where NumPy has no such dtype (bfloat16; float16 too, whose values float32 holds
    exactly). Complex and other non-real tensors stay what they are, for the caller to refuse."""
    if not (type(data).__module__.startswith("torch") and hasattr(data, "detach")):
        return data
    tensor = data.detach().cpu()
    if tensor.is_floating_point() and str(tensor.dtype) in _TORCH_WIDENED:
        tensor = tensor.float()
    try:
        return tensor.numpy()
    except (TypeError, RuntimeError) as error:
        raise DataError(f"{label}: a torch tensor of dtype {str(tensor.dtype).replace('torch.', '')} cannot be read "
                        f"({_reason(error)}); expected real numbers (convert it with .float())") from None


# torch float dtypes NumPy lacks (or that einc widens on the host): read as float32, exactly
_TORCH_WIDENED = ("torch.bfloat16", "torch.float16", "torch.float8_e4m3fn", "torch.float8_e5m2",
                  "torch.float8_e4m3fnuz", "torch.float8_e5m2fnuz")


def missing_mask(missing: Any, shape: tuple[int, ...], source: str) -> np.ndarray:
    """A ``missing`` argument as a boolean (N, columns) mask, or ``DataError``: booleans, or
    numbers that are all 0 or 1; of the data's shape. Ragged lists, text, NaN and other numbers
    are refused (``np.asarray(mask, dtype=bool)`` took 0.5, 2, NaN and any text as "missing")."""
    label = f"{source}: missing mask"
    if isinstance(missing, (str, bytes, dict, set, frozenset)) or hasattr(missing, "keys"):
        raise DataError(f"{label}: expected an array of booleans of shape {shape}, found a {type(missing).__name__}")
    try:
        array = np.asarray(host_array(missing, label))
    except (ValueError, TypeError) as error:
        detail = "rows of different lengths" if "inhomogeneous" in str(error) else _reason(error)
        raise DataError(f"{label}: cannot read it as an array of booleans ({detail}); expected shape {shape}") from None
    if array.shape != shape:
        raise DataError(f"{label} has shape {array.shape}; expected {shape}")
    if array.dtype.kind == "b":
        return array
    if array.dtype.kind == "O":
        if all(isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1))
               for v in array.reshape(-1)):
            return array.astype(bool)
        raise DataError(f"{label}: holds values that are not booleans (dtype object); expected True/False or 0/1")
    if array.dtype.kind not in "iuf":
        raise DataError(f"{label}: holds {_DTYPE_WORDS.get(array.dtype.kind, str(array.dtype))} "
                        f"(dtype {array.dtype}); expected True/False or 0/1")
    bad = ~((array == 0) | (array == 1))
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{label}: row {row + 1}, column {column + 1} is {array[row, column].item()!r}; "
                        f"expected True/False or 0/1 (True: missing)")
    return array.astype(bool)


def _locator(data: Any, label: str, first_row: int = 0) -> Callable[[int, int], str]:
    if isinstance(data, Dataset):
        return data.location
    return lambda row, column: f"{label}: row {first_row + row + 1}, column {column + 1}"


def prepare(graph: RegionGraph, data: Any, missing: Any = None, label: str = "data",
            dtype: str = "float64", first_row: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Check data against the circuit's variables; return (values with missing zeroed, observed).

    Missing entries are NaN or True in ``missing`` (per sample and column). An observed value
    must lie in its variable's domain, be finite, and be one the model can compute with at
    ``dtype``: an integer count is exact at that precision, and the family's sufficient
    statistics stay below √(largest float), so that multiplying them by parameters cannot
    overflow. A violation is a ``DataError`` naming the row, the column, the variable and what was
    expected. ``first_row`` is the row number of ``data[0]`` when an array is checked in pieces
    (a ``Dataset`` carries its own lines or ``first_row``).
    """
    x = np.array(as_rows(data, label), dtype=np.float64, copy=True)
    where = _locator(data, label, first_row)
    source = data.source if isinstance(data, Dataset) else label
    if x.ndim != 2 or x.shape[1] != graph.num_columns:
        raise DataError(
            f"{source}: expected {graph.num_columns} columns (one per variable column, in declaration "
            f"order), found shape {tuple(x.shape)}"
        )
    observed = ~np.isnan(x)
    if missing is not None:
        observed &= ~missing_mask(missing, x.shape, source)
    values = np.where(observed, x, 0.0)
    limits = _Limits.of(dtype)
    for group in _column_groups(graph):
        _check_group(group, values, observed, where, limits)
    return values, observed


@dataclass(frozen=True)
class _Limits:
    dtype: str
    largest_statistic: float  # √(largest finite float): products with parameters stay finite
    largest_integer: float  # integers above this are not exact at the dtype

    @staticmethod
    def of(dtype: str) -> _Limits:
        info = np.finfo(np.dtype(dtype))
        return _Limits(str(np.dtype(dtype)), float(np.sqrt(info.max)), float(2.0 ** (info.nmant + 1)))


@dataclass(frozen=True)
class _ColumnGroup:
    """All data columns of one (family, domain): checked with one vectorised pass."""

    columns: np.ndarray  # data column indices
    names: tuple[str, ...]  # the variable of each column
    family: Any
    domain: Any


def _column_groups(graph: RegionGraph) -> list[_ColumnGroup]:
    groups: dict[tuple, tuple[list[int], list[str], Any, Any]] = {}
    for variable in graph.variables:
        # a neural leaf's columns are checked against its decoder's family
        family = observation_family(variable.family)
        key = (family, variable.domain)
        entry = groups.setdefault(key, ([], [], family, variable.domain))
        for offset in range(variable.domain.columns):
            entry[0].append(variable.column + offset)
            entry[1].append(variable.name)
    return [_ColumnGroup(np.asarray(c, dtype=np.int64), tuple(n), f, d) for c, n, f, d in groups.values()]


def _check_group(group: _ColumnGroup, values: np.ndarray, observed: np.ndarray,
                 where: Callable[[int, int], str], limits: _Limits) -> None:
    block = values[:, group.columns]
    seen = observed[:, group.columns]
    rule = family_rule(group.family)

    def fail(bad: np.ndarray, problem: str) -> None:
        row, offset = np.argwhere(bad)[0]
        column = int(group.columns[offset])
        raise DataError(f"{where(int(row), column)} (variable {group.names[offset]}): value "
                        f"{block[row, offset]:g} {problem}")

    bad = seen & ~rule.valid_values(np, block, group.family, group.domain)
    if bad.any():
        fail(bad, f"is outside the domain; expected {rule.domain_text(group.family, group.domain)}")
    if group.domain.kind != "real":
        bad = seen & (np.abs(block) > limits.largest_integer)
        if bad.any():
            fail(bad, f"is too large: {limits.dtype} represents integers exactly only up to "
                      f"{limits.largest_integer:.0f}")
    if rule.one_hot_statistics or not seen.any():
        return  # one-hot statistics are 0 or 1
    # Sufficient statistics grow monotonically with |x| for every family: check the extremes
    # first, and look for the culprit only when one of them is too large.
    extremes = np.array([block[seen].min(), block[seen].max()])
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is what is looked for
        if np.all(np.abs(rule.sufficient_statistics(np, extremes, group.family, group.domain)) <= limits.largest_statistic):
            return
        statistics = rule.sufficient_statistics(np, block, group.family, group.domain)
        bad = seen & ~np.all(np.abs(statistics) <= limits.largest_statistic, axis=-1)
    remedy = "rescale the data or use float64" if limits.dtype == "float32" else "rescale the data"
    fail(bad, f"is too large for a {group.family.name} leaf in {limits.dtype}: its sufficient "
              f"statistics exceed {limits.largest_statistic:.2g}; {remedy}")


def prepare_labels(labels: Any, count: int, heads: int, label: str = "labels", first_row: int = 0) -> np.ndarray:
    """Class labels as an int64 (count,) array: one per sample, each a head index 0..heads-1.
    ``first_row`` numbers ``labels[0]`` when an array is checked in pieces."""
    rows = as_rows(labels, label)  # a 1-D array is one row: (1, N), as is a file of one line
    source = labels.source if isinstance(labels, Dataset) else label
    if rows.ndim != 2 or min(rows.shape) > 1:
        one_hot = rows.ndim == 2 and np.isin(rows, (0, 1)).all() and (rows.sum(axis=1) == 1).all()
        raise DataError(f"{source}: the labels have shape {tuple(rows.shape)}; expected one integer label per row, (N,) or "
                        f"(N, 1)" + ("; these look one-hot: give their argmax(axis=1)" if one_hot else ""))
    array = rows.reshape(-1)
    if len(array) != count:
        raise DataError(f"{source}: {len(array)} labels for {count} samples; expected one label per sample")
    bad = ~(np.isfinite(array) & (array >= 0) & (array < heads) & (np.floor(array) == array))
    if bad.any():
        row = int(np.argmax(bad))
        place = labels.location(row, 0) if isinstance(labels, Dataset) and labels.shape[1] == 1 else f"{source}: label {first_row + row + 1}"
        finite = array[np.isfinite(array)]
        classes = int(finite.max()) + 1 if len(finite) else 0
        hint = ""
        if heads < classes and (finite >= 0).all():  # class numbers, more of them than the circuit has heads
            hint = f"; a class-conditional circuit needs a head per class: `heads {classes}` in the .pc file or --heads {classes}"
        raise DataError(f"{place}: label {array[row]:g} is not a head of the circuit; expected an "
                        f"integer in 0..{heads - 1} (the circuit has {heads} head{'s' if heads != 1 else ''}){hint}")
    return array.astype(np.int64)


def prepare_latents(slots: Sequence[Any], latents: Any, count: int, label: str = "latents") -> np.ndarray:
    """Clamped latent states as an int64 (count, len(slots)) array, or ``DataError``.

    One row per sample and one column per latent in declaration order (``Model.latents``); an
    entry is a state 0..K-1 of its latent, or −1 (or NaN) to sum that latent out. With a single
    latent a 1-D array of states is accepted too.
    """
    if not slots:
        raise DataError(f"{label}: the circuit declares no latent variables; declare one with "
                        f"`latent NAME = SCOPE` (e.g. `latent z = {{A, B}}`)")
    source = latents.source if isinstance(latents, Dataset) else label
    raw = latents.values if isinstance(latents, Dataset) else host_array(latents, label)
    if len(slots) == 1 and isinstance(raw, np.ndarray) and raw.ndim == 1:
        raw = raw[:, None]
    elif len(slots) == 1 and isinstance(raw, (list, tuple)) and all(np.isscalar(v) for v in raw):
        raw = np.asarray(raw)[:, None]
    array = as_rows(raw, label)
    if array.shape != (count, len(slots)):
        names = ", ".join(slot.name for slot in slots[:4]) + (", ..." if len(slots) > 4 else "")
        raise DataError(f"{source}: shape {tuple(array.shape)}; expected ({count}, {len(slots)}): one row per "
                        f"sample and one column per latent ({names}), −1 to sum one out")
    array = np.where(np.isnan(array), -1.0, array)
    states = np.array([slot.states for slot in slots], dtype=np.float64)
    bad = ~(np.isfinite(array) & (array >= -1) & (array < states) & (np.floor(array) == array))
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        place = latents.location(row, column) if isinstance(latents, Dataset) else f"{source}: row {row + 1}, column {column + 1}"
        raise DataError(f"{place} (latent {slots[column].name}): {array[row, column]:g} is not a state; expected an "
                        f"integer in 0..{int(states[column]) - 1}, or -1 to sum the latent out")
    return array.astype(np.int64)
