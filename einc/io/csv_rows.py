"""CSV text to rows of numbers: ``CsvParser`` parses a file whole or in consecutive pieces of whole
lines (``einc.train.rows`` streams a file in chunks) with the same rows and the same located
errors either way; a missing value is one of ``MISSING_MARKERS`` (or an empty cell)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

from einc.errors import DataError
from einc.ir.diagnostics import shorten

MISSING_MARKERS = frozenset({"", "?", "nan", "NaN", "NAN", "NA", "na", "N/A", "n/a"})


def _number(cell: str) -> float | None:
    """The value of a CSV cell (NaN for a missing marker), or None when it is not a number."""
    stripped = cell.strip()
    if stripped in MISSING_MARKERS:
        return float("nan")
    try:
        return float(stripped)
    except ValueError:
        return None


class CsvParser:
    """CSV text to rows of numbers, in one piece or in consecutive pieces of whole lines (a file
    streamed in chunks, ``einc.train.rows``): the row width and the header decision carry over from
    piece to piece, so a file read in pieces gives the same rows and the same errors as read whole.
    """

    def __init__(self, source: str, columns: Sequence[str] | None) -> None:
        self.source = source
        self.columns = columns
        self.width: int | None = None
        self.first = True  # the first non-blank row (maybe a header) is still to come

    def parse(self, text: str, first_line: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(values (N, width) float64 with NaN for missing, the file line of each row) of a piece
        whose first line is line ``first_line`` of the file."""
        source = self.source
        reader = csv.reader(io.StringIO(text))
        rows: list[list[float]] = []
        lines: list[int] = []
        try:
            for cells in reader:
                line = first_line - 1 + reader.line_num
                if not cells or (len(cells) == 1 and not cells[0].strip() and self.width != 1):
                    continue  # a blank line
                if self.first:
                    self.first = False
                    _check_separator(cells, source, line)
                    if _is_header(cells, self.columns, source, line):
                        self.width = len(cells)
                        continue
                if self.width is None:
                    self.width = len(cells)
                elif len(cells) != self.width:
                    _check_separator(cells, source, line)
                    raise DataError(f"{source}:{line}: the row has {len(cells)} columns; expected {self.width}")
                try:
                    row = [float(cell) for cell in cells]  # the common case: every cell a number
                except ValueError:
                    row = []
                    for column, cell in enumerate(cells, start=1):
                        value = _number(cell)
                        if value is None:
                            _check_separator(cells, source, line)
                            raise DataError(
                                f"{source}:{line}:{column}: '{shorten(cell.strip())}' is not a number; "
                                f"expected a number, or one of ?, nan, NA or an empty cell for a missing value"
                            ) from None
                        row.append(value)
                rows.append(row)
                lines.append(line)
        except csv.Error as error:
            raise DataError(f"{source}:{first_line - 1 + reader.line_num}: malformed CSV ({error})") from None
        values = np.asarray(rows, dtype=np.float64).reshape(len(rows), self.width or 0)
        return values, np.asarray(lines, dtype=np.int64)


# Separators other than commas that files of numbers are written with (np.savetxt's default is a
# space), and what messages call them.
_OTHER_SEPARATORS = {"\t": "tabs", ";": "semicolons", " ": "spaces"}


def _check_separator(cells: list[str], source: str, line: int) -> None:
    """``DataError`` when the row is one cell of numbers joined by another separator: otherwise it
    reads as a header that does not match, or as a cell that is not a number."""
    if len(cells) != 1:
        return
    text = cells[0].strip()
    for separator, word in _OTHER_SEPARATORS.items():
        parts = text.split(separator) if separator != " " else text.split()
        if len(parts) > 1 and all(_number(part) is not None for part in parts):
            raise DataError(
                f"{source}:{line}: the values are separated by {word}, not commas; einc reads "
                f"comma-separated values (write them with np.savetxt(path, x, delimiter=\",\"), or "
                f"save a .npy file)"
            )


def _is_header(cells: list[str], columns: Sequence[str] | None, source: str, line: int) -> bool:
    """Whether the first row is a header: the expected column names, or (names unknown) no numbers."""
    names = [cell.strip() for cell in cells]
    if columns is not None and names == [c.strip() for c in columns]:
        return True
    missing = [name in MISSING_MARKERS for name in names]
    if all(missing) or any(_number(cell) is not None and not gap for cell, gap in zip(cells, missing)):
        return False  # a data row (a wrong cell in it is reported as such), or one of missing values
    if names[0] in _INDEX_NAMES and (columns is None or len(names) == len(columns) + 1):
        # what pandas' DataFrame.to_csv writes by default: an unnamed index column first
        raise DataError(f"{source}:{line}: the first column is an index column (no name in the header line), "
                        f"not a variable; drop it (pandas: df.to_csv(path, index=False))")
    if columns is None:
        return True
    raise DataError(
        f"{source}:{line}: the header line does not match the circuit's columns; expected "
        f"{_preview(columns)}, found {_preview(names)}"
    )


# Header names of an index column (pandas writes "" and reads it back as "Unnamed: 0").
_INDEX_NAMES = frozenset({"", "Unnamed: 0"})


def _preview(names: Sequence[str], count: int = 4) -> str:
    shown = ",".join(shorten(n, 30) for n in names[:count])
    return shown + (f",... ({len(names)} columns)" if len(names) > count else f" ({len(names)} columns)")
