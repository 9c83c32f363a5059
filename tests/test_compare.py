"""compare_backends on the CPU: torch and numpy agree, the report is complete and printable, and
backends that cannot run are skipped with a one-line reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from einc.errors import DataError

from einc.tools.compare import QUERIES, TIMINGS, BackendReport, compare_backends

TINY = Path(__file__).resolve().parent.parent / "examples" / "tiny.pc"

MIXED = """circuit mixed

var a, b : binary
var c : categorical(3)
var r[3] : real
leaf a, b ~ bernoulli
leaf c ~ categorical
leaf r ~ normal

sums 3
inputs 2

structure random_binary_trees(depth = 2, replicas = 2, seed = 1)
"""


def _mixed_data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [
            rng.integers(0, 2, n),
            rng.integers(0, 2, n),
            rng.integers(0, 3, n),
            rng.normal(size=(n, 3)),
        ]
    )
    x[rng.random(x.shape) < 0.05] = np.nan  # some entries missing in the data itself
    return x


def _assert_complete(report: BackendReport, backends: list[str]) -> None:
    assert [r.label for r in report.results] == backends
    for result in report.results:
        assert set(result.max_abs_diff) == set(QUERIES)
        assert set(result.seconds) == set(TIMINGS)
        assert all(seconds > 0 for seconds in result.seconds.values())
        assert result.memory_method
        assert result.peak_bytes is None or result.peak_bytes >= 0


@pytest.mark.parametrize(
    "source, data",
    [
        (str(TINY), np.random.default_rng(0).integers(0, 2, (230, 4)).astype(float)),
        (MIXED, _mixed_data(150, 1)),
    ],
)
def test_torch_and_numpy_agree_in_float64(source: str, data: np.ndarray) -> None:
    report = compare_backends(
        source, data, backends=("torch:cpu", "numpy"), batch_size=64, repeats=1
    )
    _assert_complete(report, ["torch:cpu", "numpy:cpu"])
    assert report.reference == "torch:cpu"
    reference, numpy_result = report.results
    assert all(value == 0.0 for value in reference.max_abs_diff.values())
    for query, value in numpy_result.max_abs_diff.items():
        assert value < 1e-10, query
    assert numpy_result.mpe_mismatch == 0.0
    assert numpy_result.memory_method == "tracemalloc" and numpy_result.peak_bytes is not None
    assert numpy_result.peak_bytes > 0
    assert report.result("numpy") is numpy_result


def test_report_prints_a_table_with_a_row_per_backend_and_skip_reasons() -> None:
    data = np.random.default_rng(0).integers(0, 2, (50, 4)).astype(float)
    report = compare_backends(
        str(TINY),
        data,
        backends=("numpy", "torch:cpu", "cupy", "jax"),
        device="cpu",
        batch_size=25,
        repeats=1,
    )
    _assert_complete(report, ["numpy:cpu", "torch:cpu"])
    assert report.reference == "numpy:cpu"
    skipped = {s.backend: s.reason for s in report.skipped}
    assert set(skipped) == {"cupy", "jax"}
    assert "CUDA device only" in skipped["cupy"]  # device="cpu" asked for the CPU
    assert "unknown backend 'jax'" in skipped["jax"]
    text = str(report)
    lines = text.splitlines()
    assert lines[0].startswith(f"{TINY}: 50 samples, batch 25, float64, best of 1")
    assert all(title in lines[1] for title in (*QUERIES.values(), *TIMINGS.values(), "peak MB"))
    assert lines[3].startswith("numpy:cpu") and " ref " in lines[3] and "tracemalloc" in lines[3]
    assert lines[4].startswith("torch:cpu")
    assert sum(line.startswith("skipped ") for line in lines) == 2
    assert all("\n" not in reason for reason in skipped.values())


def test_an_unavailable_backend_is_skipped_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)  # as on a machine without CuPy
    data = np.random.default_rng(0).integers(0, 2, (20, 4)).astype(float)
    report = compare_backends(str(TINY), data, backends=("cupy", "numpy"), batch_size=10, repeats=1)
    _assert_complete(report, ["numpy:cpu"])
    (skip,) = report.skipped
    assert (
        skip.backend == "cupy"
        and "CuPy is not installed" in skip.reason
        and "numpy, torch" in skip.reason
    )


def test_bad_data_is_an_error_not_a_skipped_backend() -> None:
    with pytest.raises(DataError):
        compare_backends(str(TINY), np.zeros((10, 3)), backends=("numpy", "torch"), repeats=1)
    with pytest.raises(DataError):
        compare_backends(str(TINY), np.full((10, 4), 2.0), backends=("numpy",), repeats=1)


def test_compare_leaves_models_unchanged_between_queries() -> None:
    """The EM step and the timing epochs run on a model whose parameters are restored, so every
    backend answers the queries from the same initial parameters (Δ stays at round-off)."""
    data = _mixed_data(120, 3)
    report = compare_backends(
        MIXED, data, backends=("numpy", "numpy", "torch:cpu"), batch_size=40, repeats=2
    )
    assert [r.label for r in report.results] == ["numpy:cpu", "numpy:cpu", "torch:cpu"]
    assert all(value == 0.0 for value in report.results[1].max_abs_diff.values())
    assert all(value < 1e-10 for value in report.results[2].max_abs_diff.values())
