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
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from einc.ir.diagnostics import DataError, shorten
from einc.ir.families import family_rule
from einc.ir.neural import observation_family
from einc.ir.region_graph import RegionGraph

# Cells that mean "not observed" in CSV files (NaN in arrays).
MISSING_MARKERS = frozenset({"", "?", "nan", "NaN", "NAN", "NA", "na", "N/A", "n/a"})

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
        return Dataset(self.values[:count], self.source, lines)

    def location(self, row: int, column: int) -> str:
        """``file:line:column`` of a cell (0-based ``row`` and ``column``; the result is 1-based)."""
        line = row + 1 if self.lines is None else int(self.lines[row])
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
    text = str(path)
    if key is None and ".npz:" in text:
        text, key = text.rsplit(":", 1)
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
    try:
        if head.startswith(_NPY_MAGIC):
            if key is not None:
                raise DataError(f"{text}: a .npy file holds one array; ':{key}' names an .npz member")
            return _array_dataset(np.load(file, allow_pickle=False), source)
        if head.startswith((_ZIP_MAGIC, _EMPTY_ZIP_MAGIC)):
            return _npz_dataset(file, key, source)
        if key is not None:
            raise DataError(f"{text}: not an .npz archive, so ':{key}' cannot name an array in it")
        raw = file.read_bytes()
        if head.startswith(_GZIP_MAGIC):
            raw = gzip.decompress(raw)
        return _read_csv(_decode(raw, text), text, columns)
    except DataError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{text}: cannot read data ({_reason(error)}); expected .csv, .csv.gz, .npy or .npz") from None


def _reason(error: BaseException) -> str:
    message = str(error).strip() or type(error).__name__
    if "pickle" in message:
        return "it holds Python objects, which einc does not unpickle"
    return message.splitlines()[0][:200]


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{source}: not a text file (byte {error.start} is not UTF-8); expected CSV text, "
            f".csv.gz, .npy or .npz"
        ) from None


def _npz_dataset(file: Path, key: str | None, source: str) -> Dataset:
    with np.load(file, allow_pickle=False) as archive:
        names = list(archive.files)
        if not names:
            raise DataError(f"{file}: the .npz archive holds no arrays")
        if key is None:
            key = names[0]
            source = str(file)
        if key not in names:
            raise DataError(f"{file}: no array '{key}'; the file has {', '.join(names)}")
        return _array_dataset(archive[key], source)


def _array_dataset(array: np.ndarray, source: str) -> Dataset:
    """Check an array read from a file: numbers, at least one row and column; rows flattened."""
    kind = array.dtype.kind
    if array.dtype.names:
        raise DataError(
            f"{source}: a structured array with fields {', '.join(array.dtype.names)}; "
            f"expected a plain numeric array (N, columns)"
        )
    if kind not in _NUMERIC_KINDS:
        raise DataError(
            f"{source}: the array holds {_DTYPE_WORDS.get(kind, str(array.dtype))} "
            f"(dtype {array.dtype}); expected numbers"
        )
    if array.ndim == 0:
        raise DataError(f"{source}: a single number; expected an array of rows (N, columns)")
    if array.ndim == 1:
        array = array[None, :]
    elif array.ndim > 2:
        array = array.reshape(array.shape[0], -1)
    if array.shape[0] == 0:
        raise DataError(f"{source}: the array holds no rows (shape {array.shape})")
    if array.shape[1] == 0:
        raise DataError(f"{source}: the array holds no columns (shape {array.shape})")
    return Dataset(np.asarray(array, dtype=np.float64), source)


def _number(cell: str) -> float | None:
    """The value of a CSV cell (NaN for a missing marker), or None when it is not a number."""
    stripped = cell.strip()
    if stripped in MISSING_MARKERS:
        return float("nan")
    try:
        return float(stripped)
    except ValueError:
        return None


def _read_csv(text: str, source: str, columns: Sequence[str] | None) -> Dataset:
    reader = csv.reader(io.StringIO(text))
    rows: list[list[float]] = []
    lines: list[int] = []
    width: int | None = None
    first = True
    try:
        for cells in reader:
            line = reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip() and width != 1):
                continue  # a blank line
            if first:
                first = False
                if _is_header(cells, columns, source, line):
                    width = len(cells)
                    continue
            if width is None:
                width = len(cells)
            elif len(cells) != width:
                raise DataError(f"{source}:{line}: the row has {len(cells)} columns; expected {width}")
            try:
                row = [float(cell) for cell in cells]  # the common case: every cell a number
            except ValueError:
                row = []
                for column, cell in enumerate(cells, start=1):
                    value = _number(cell)
                    if value is None:
                        raise DataError(
                            f"{source}:{line}:{column}: '{shorten(cell.strip())}' is not a number; "
                            f"expected a number, or one of ?, nan, NA or an empty cell for a missing value"
                        ) from None
                    row.append(value)
            rows.append(row)
            lines.append(line)
    except csv.Error as error:
        raise DataError(f"{source}:{reader.line_num}: malformed CSV ({error})") from None
    if not rows:
        raise DataError(f"{source}: the file holds no data rows")
    return Dataset(np.asarray(rows, dtype=np.float64), source, np.asarray(lines, dtype=np.int64))


def _is_header(cells: list[str], columns: Sequence[str] | None, source: str, line: int) -> bool:
    """Whether the first row is a header: the expected column names, or (names unknown) no numbers."""
    names = [cell.strip() for cell in cells]
    if columns is not None and names == [c.strip() for c in columns]:
        return True
    if any(_number(cell) is not None for cell in cells):
        return False  # a data row (a wrong cell in it is reported as such)
    if columns is None:
        return True
    raise DataError(
        f"{source}:{line}: the header line does not match the circuit's columns; expected "
        f"{_preview(columns)}, found {_preview(names)}"
    )


def _preview(names: Sequence[str], count: int = 4) -> str:
    shown = ",".join(shorten(n, 30) for n in names[:count])
    return shown + (f",... ({len(names)} columns)" if len(names) > count else f" ({len(names)} columns)")


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
            f"read a file first with einc.data.read_data(path)"
        )
    if isinstance(data, (dict, set, frozenset)) or hasattr(data, "keys"):
        raise DataError(f"{label}: expected an array of shape (N, columns), found a {type(data).__name__}")
    if type(data).__module__.startswith("torch") and hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
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


def _locator(data: Any, label: str) -> Callable[[int, int], str]:
    if isinstance(data, Dataset):
        return data.location
    return lambda row, column: f"{label}: row {row + 1}, column {column + 1}"


def prepare(graph: RegionGraph, data: Any, missing: Any = None, label: str = "data",
            dtype: str = "float64") -> tuple[np.ndarray, np.ndarray]:
    """Check data against the circuit's variables; return (values with missing zeroed, observed).

    Missing entries are NaN or True in ``missing`` (per sample and column). An observed value
    must lie in its variable's domain, be finite, and be one the model can compute with at
    ``dtype``: an integer count is exact at that precision, and the family's sufficient
    statistics stay below √(largest float), so that multiplying them by parameters cannot
    overflow. A violation is a ``DataError`` naming the row, the column, the variable and what was
    expected.
    """
    x = np.array(as_rows(data, label), dtype=np.float64, copy=True)
    where = _locator(data, label)
    source = data.source if isinstance(data, Dataset) else label
    if x.ndim != 2 or x.shape[1] != graph.num_columns:
        raise DataError(
            f"{source}: expected {graph.num_columns} columns (one per variable column, in declaration "
            f"order), found shape {tuple(x.shape)}"
        )
    observed = ~np.isnan(x)
    if missing is not None:
        mask = np.asarray(missing, dtype=bool)
        if mask.shape != x.shape:
            raise DataError(f"{source}: missing mask has shape {mask.shape}; expected {x.shape}")
        observed &= ~mask
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

    bad = seen & ~rule.valid_values(block, group.family, group.domain)
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
    fail(bad, f"is too large for a {group.family.name} leaf in {limits.dtype}: its sufficient "
              f"statistics exceed {limits.largest_statistic:.2g}; rescale the data or use float64")


def prepare_labels(labels: Any, count: int, heads: int, label: str = "labels") -> np.ndarray:
    """Class labels as an int64 (count,) array: one per sample, each a head index 0..heads-1."""
    array = as_rows(labels, label).reshape(-1)
    source = labels.source if isinstance(labels, Dataset) else label
    if len(array) != count:
        raise DataError(f"{source}: {len(array)} labels for {count} samples; expected one label per sample")
    bad = ~(np.isfinite(array) & (array >= 0) & (array < heads) & (np.floor(array) == array))
    if bad.any():
        row = int(np.argmax(bad))
        place = labels.location(row, 0) if isinstance(labels, Dataset) and labels.shape[1] == 1 else f"{source}: label {row + 1}"
        raise DataError(f"{place}: label {array[row]:g} is not a head of the circuit; expected an "
                        f"integer in 0..{heads - 1} (the circuit has {heads} head{'s' if heads != 1 else ''})")
    return array.astype(np.int64)
