"""Row sources: .npy windows equal the array; CSV and .npz caches equal ``load_array``, hold
values in the narrowest exact dtype, locate errors in later chunks and are rebuilt when the file
changes; a released window gives its memory back."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

import einc.train.rows
from einc.io.data import load_array
from einc.errors import DataError
from einc.train.rows import NpyRows, open_rows


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(einc.train.rows, "CSV_CHUNK_LINES", 50)
    monkeypatch.setattr(einc.train.rows, "COPY_CELLS", 64)


def _write_csv(path: Path, rows: np.ndarray, missing: str = "?") -> None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt") as handle:
        for row in rows:
            handle.write(",".join(missing if np.isnan(v) else repr(float(v)) for v in row) + "\n")


def test_npy_windows_equal_the_array(tmp_path):
    x = np.random.default_rng(0).normal(size=(5000, 13))  # rows straddle the mapping granularity
    np.save(tmp_path / "x.npy", x)
    source = open_rows(tmp_path / "x.npy")
    assert (source.num_rows, source.row_shape, source.dtype) == (5000, (13,), np.float64)
    for start, stop in [(0, 1), (1, 4999), (3000, 3100), (4999, 5000), (7, 7)]:
        window = source.window(start, stop)
        with window as rows:
            assert np.array_equal(rows, x[start:stop])
        assert window.rows is None


def test_released_window_unmaps_even_while_a_view_is_held(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(40000, dtype=np.uint8).reshape(-1, 8))
    window = open_rows(tmp_path / "x.npy").window(100, 4000)
    assert window.rows is not None
    view = window.rows[:10]  # keeps the mapping alive: release must not fail
    window.release()
    assert view.shape == (10, 8)


def test_flat_files_are_one_sample_for_data_and_one_label_per_row_for_labels(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(6.0))
    assert open_rows(tmp_path / "v.npy").row_shape == (6,)
    assert open_rows(tmp_path / "v.npy", one_row_if_flat=False).num_rows == 6


@pytest.mark.parametrize("array, message", [
    (np.asfortranarray(np.ones((4, 3))), "Fortran order"),
    (np.array([["a", "b"]]), "expected numbers"),
    (np.float64(3.0), "single number"),
])
def test_unusable_npy_files_are_refused(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DataError, match=message):
        open_rows(tmp_path / "x.npy")


def test_truncated_npy_file_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((100, 4)))
    with open(tmp_path / "x.npy", "r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(DataError, match="truncated"):
        NpyRows(tmp_path / "x.npy")


@pytest.mark.parametrize("values, dtype", [
    (lambda r: (r.random((300, 5)) < 0.5).astype(float), np.uint8),           # binary
    (lambda r: np.round(r.normal(size=(300, 5)) * 4) / 4, np.float32),       # quarters: exact in float32
    (lambda r: r.normal(size=(300, 5)), np.float64),
])
def test_csv_cache_takes_the_narrowest_exact_dtype(tmp_path, small_chunks, values, dtype):
    x = values(np.random.default_rng(1))
    _write_csv(tmp_path / "x.csv.gz", x)
    source = open_rows(tmp_path / "x.csv.gz", tmp_path / "cache")
    assert source.dtype == dtype
    with source.window(0, source.num_rows) as rows:
        assert np.array_equal(rows.astype(np.float64), load_array(tmp_path / "x.csv.gz"))


def test_csv_cache_widens_when_a_later_chunk_needs_it(tmp_path, small_chunks):
    x = (np.random.default_rng(2).random((400, 3)) < 0.5).astype(float)
    x[170, 1] = np.nan  # float32 from chunk 4 on
    x[390, 2] = 0.1  # float64 in the last chunk
    for missing in ("?", "", "NA"):
        _write_csv(tmp_path / "x.csv", x, missing)
        source = open_rows(tmp_path / "x.csv", tmp_path / f"cache{missing}")
        assert source.dtype == np.float64
        with source.window(0, 400) as rows:
            assert np.array_equal(rows, x, equal_nan=True)


def test_csv_errors_name_the_line_in_a_later_chunk(tmp_path, small_chunks):
    lines = ["0,1,0"] * 200
    lines[137] = "0,x,1"
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad\.csv:138:2: 'x' is not a number"):
        open_rows(tmp_path / "bad.csv", tmp_path / "cache")
    lines[137] = "0,1,0"
    lines[160] = "0,1"
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad\.csv:161: the row has 2 columns; expected 3"):
        open_rows(tmp_path / "bad.csv", tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_cache_is_reused_and_rebuilt_when_the_file_changes(tmp_path):
    np.savetxt(tmp_path / "x.csv", np.zeros((10, 2)), delimiter=",")
    first = open_rows(tmp_path / "x.csv", tmp_path / "cache")
    assert open_rows(tmp_path / "x.csv", tmp_path / "cache").path == first.path
    np.savetxt(tmp_path / "x.csv", np.ones((12, 2)), delimiter=",")
    os.utime(tmp_path / "x.csv", ns=(1, 1))
    second = open_rows(tmp_path / "x.csv", tmp_path / "cache")
    assert second.path != first.path and second.num_rows == 12


def test_npz_arrays_are_streamed_into_the_cache(tmp_path, small_chunks):
    x = np.random.default_rng(3).integers(0, 5, size=(333, 2, 3)).astype(np.int16)
    np.savez_compressed(tmp_path / "d.npz", other=np.zeros(3), x=x)
    source = open_rows(f"{tmp_path / 'd.npz'}:x", tmp_path / "cache")
    assert (source.num_rows, source.row_shape, source.dtype) == (333, (2, 3), np.int16)
    with source.window(0, 333) as rows:
        assert np.array_equal(rows, x)
    with pytest.raises(DataError, match="no array 'y'; the file has other, x"):
        open_rows(f"{tmp_path / 'd.npz'}:y", tmp_path / "cache")
