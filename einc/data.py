"""Reading and validating data: CSV (optionally .gz), .npy, .npz; NaN means missing."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np

from einc.ir.diagnostics import DataError
from einc.ir.families import family_rule
from einc.ir.region_graph import RegionGraph


def load_array(path: str | Path, key: str | None = None) -> np.ndarray:
    """Load a 2-D float array from .csv, .csv.gz, .npy or .npz (first array, or ``key``;
    ``file.npz:key`` names the array in the path, as the CLI's --data accepts)."""
    text = str(path)
    if key is None and ".npz:" in text:
        text, key = text.rsplit(":", 1)
    path = Path(text)
    if not path.exists():
        raise DataError(f"{path}: no such data file")
    name = path.name.lower()
    try:
        if name.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
        elif name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                if key is None:
                    key = archive.files[0]
                if key not in archive.files:
                    raise DataError(f"{path}: no array '{key}'; the file has {', '.join(archive.files)}")
                array = archive[key]
        else:
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt") as handle:  # type: ignore[operator]
                array = _parse_csv(handle.read(), str(path))
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{path}: cannot read data ({error})") from None
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim > 2:
        array = array.reshape(array.shape[0], -1)
    return array


def _parse_csv(text: str, label: str, first_line: int = 1) -> np.ndarray:
    """Parse CSV text; ``first_line`` numbers its first line in error messages (for chunks of a
    file streamed piece by piece)."""
    rows = []
    width = None
    for line_number, line in enumerate(io.StringIO(text), start=first_line):
        line = line.strip()
        if not line:
            continue
        cells = line.split(",")
        if width is None:
            width = len(cells)
        elif len(cells) != width:
            raise DataError(f"{label}:{line_number}: row has {len(cells)} columns; expected {width}")
        row = []
        for column, cell in enumerate(cells, start=1):
            cell = cell.strip()
            if cell in ("", "?", "nan", "NaN", "NA"):
                row.append(np.nan)
                continue
            try:
                row.append(float(cell))
            except ValueError:
                raise DataError(f"{label}:{line_number}:{column}: '{cell}' is not a number") from None
        rows.append(row)
    if not rows:
        raise DataError(f"{label}: the file holds no rows")
    return np.asarray(rows, dtype=np.float64)


def prepare(graph: RegionGraph, data: np.ndarray, missing: np.ndarray | None = None,
            label: str = "data", first_row: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Check data against the circuit's variables; return (values with missing zeroed, observed).

    Missing entries are NaN or True in ``missing`` (per sample and column). A value outside its
    variable's domain is an error naming the row, the column's variable and the expected domain;
    ``first_row`` is the file row of ``data[0]`` (for data read block by block).
    """
    x = np.array(data, dtype=np.float64, copy=True)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != graph.num_columns:
        raise DataError(
            f"{label}: expected {graph.num_columns} columns (one per variable column, in declaration "
            f"order), found shape {tuple(x.shape)}"
        )
    observed = ~np.isnan(x)
    if missing is not None:
        mask = np.asarray(missing, dtype=bool)
        if mask.shape != x.shape:
            raise DataError(f"{label}: missing mask has shape {mask.shape}; expected {x.shape}")
        observed &= ~mask
    for variable in graph.variables:
        columns = slice(variable.column, variable.column + variable.domain.columns)
        values = x[:, columns]
        rule = family_rule(variable.family)
        bad = observed[:, columns] & ~rule.valid_values(np.nan_to_num(values), variable.family, variable.domain)
        if bad.any():
            row, offset = np.argwhere(bad)[0]
            column = variable.column + offset
            raise DataError(
                f"{label}: row {first_row + row + 1}, column {column + 1} (variable {variable.name}): value "
                f"{values[row, offset]:g} is outside the domain; expected "
                f"{rule.domain_text(variable.family, variable.domain)}"
            )
    x[~observed] = 0.0
    return x, observed
