"""The compiled hadamard kernels (backends/numba_kernels.py, the optional einc[fast] extra) give
the plain torch path's numbers: the kernels against numpy's definitions, and whole circuits with
hadamard products run with kernels="numba" against kernels="torch" (float64 1e-12, float32
1e-5). Skipped where numba is not installed (``make test`` installs it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import einc
from einc.backends.base import Batch
from einc.errors import BackendError

from oracles import random_data
from test_executor import CIRCUITS

numba_kernels = pytest.importorskip("einc.backends.numba_kernels")
if not numba_kernels.available():
    pytest.skip("numba is not installed (pip install 'einc[fast]')", allow_module_level=True)

TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_shift_exp_and_log_shift_equal_their_definitions(dtype: type) -> None:
    rng = np.random.default_rng(0)
    total = (rng.normal(size=(3, 7, 33)) * 40).astype(dtype)
    total[0, :, 5] = -np.inf  # a row of no mass: top 0, every exponential 0
    total[1, 2, 6] = -np.inf
    total[2, :, 7] = -300.0  # far below float32's range, but a finite maximum
    expected_top = total.max(1)
    expected_top[np.isneginf(expected_top)] = 0.0
    expected = np.exp(total.astype(np.float64) - expected_top[:, None, :])
    exps = total.copy()
    top = numba_kernels.shift_exp(exps)
    np.testing.assert_array_equal(top, expected_top)
    np.testing.assert_allclose(exps, expected, rtol=TOLERANCE[dtype], atol=1e-30)
    assert np.all(exps[0, :, 5] == 0.0)

    mixed = (np.abs(rng.normal(size=(3, 7, 33))) * np.exp(rng.uniform(-40, 40, size=(3, 7, 33)))).astype(dtype)
    mixed[1, 3, 4] = 0.0  # no mass: −inf
    shift = rng.normal(size=(3, 33)).astype(dtype)
    logged = mixed.copy()
    numba_kernels.log_shift(logged, shift)
    with np.errstate(divide="ignore"):
        reference = np.log(mixed.astype(np.float64)) + shift[:, None, :]
    assert np.isneginf(logged[1, 3, 4])
    finite = np.isfinite(reference)
    np.testing.assert_allclose(logged[finite], reference[finite], rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def test_add_rows_adds_each_segment_row_into_its_owner() -> None:
    rng = np.random.default_rng(1)
    total = rng.normal(size=(3, 4, 5))
    source = rng.normal(size=(6, 4, 5))
    rows, owner = np.array([5, 0, 2, 2]), np.array([0, 0, 2, 1])
    expected = total.copy()
    np.add.at(expected, owner, source[rows])
    numba_kernels.add_rows(total, source, rows, owner)
    np.testing.assert_allclose(total, expected, rtol=1e-15)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["tiny_hadamard", "hclt", "pd_hadamard", "latents"])
def test_numba_kernels_give_the_torch_paths_values(name: str, dtype: str) -> None:
    """Root values of circuits with hadamard products (deferred leaf parts, chained products,
    scattered parts; clamped and summed-out latents), with missing entries, both kernel choices."""
    models = {kernels: einc.compile(CIRCUITS[name], dtype=dtype, seed=3, kernels=kernels)
              for kernels in ("torch", "numba")}
    assert models["numba"].backend.kernels == "numba"
    x = random_data(models["torch"].graph, 40, 5)
    observed = np.ones_like(x, dtype=bool)
    observed[::3, 0] = False
    batch = Batch(x, observed)
    params = models["torch"].params
    plain = models["torch"].backend.log_likelihood(params, batch)
    fused = models["numba"].backend.log_likelihood(models["numba"].backend.put(models["torch"].backend.get(params)),
                                                   batch)
    tolerance = TOLERANCE[np.dtype(dtype).type]
    np.testing.assert_allclose(fused, plain, rtol=tolerance, atol=tolerance)
    # the E-step differentiates, so it runs the plain rule with either choice: equal statistics
    stats = [m.backend.statistics(m.backend.put(models["torch"].backend.get(params)), batch) for m in models.values()]
    assert stats[0].log_likelihood == pytest.approx(stats[1].log_likelihood, rel=tolerance)


def test_unknown_kernels_are_a_backend_error() -> None:
    with pytest.raises(BackendError, match="unknown kernels 'fortran'"):
        einc.compile(CIRCUITS["tiny_hadamard"], kernels="fortran")
