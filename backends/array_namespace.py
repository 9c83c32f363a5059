"""The array namespaces the array backend runs on (NumPy on the CPU, CuPy on a CUDA device): loading
CuPy with a clear error where it cannot run, copying arrays back to the host, and the scatter
updates with repeated rows that the two libraries spell differently."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
from einc.backends.base import BACKENDS
from einc.errors import BackendError


def load_cupy() -> ModuleType:
    """Import CuPy and check that it sees a CUDA device, or raise a BackendError that says so."""
    others = ", ".join(name for name in sorted(BACKENDS) if name != "cupy")
    try:
        import cupy
    except ImportError as error:
        raise BackendError(
            f"backend 'cupy' is not available here: CuPy is not installed ({error}); install it with "
            f"`{BACKENDS['cupy'].install_hint}`; available backends: {others}"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    # no CUDA driver or runtime: CuPy's CUDARuntimeError is a RuntimeError
    except (RuntimeError, OSError) as error:
        raise BackendError(
            f"backend 'cupy' is not available here: CuPy finds no CUDA runtime ({error}); "
            f"available backends: {others}"
        ) from None
    if count < 1:
        raise BackendError(
            f"backend 'cupy' is not available here: no CUDA device; available backends: {others}"
        )
    return cupy


def is_numpy(xp: ModuleType) -> bool:
    return xp is np


def to_host(xp: ModuleType, array: Any) -> np.ndarray:
    """A NumPy copy of a backend array (CuPy arrays come back from the device)."""
    return np.asarray(array) if is_numpy(xp) else xp.asnumpy(array)


def scatter_add(xp: ModuleType, target: Any, rows: Any, update: Any) -> None:
    """target[rows] += update, adding repeated rows (a gathered row read by several partitions).

    ``ufunc.at`` on NumPy and CuPy ≥ 13; ``cupyx.scatter_add`` on older CuPy.
    """
    at = getattr(xp.add, "at", None)
    if at is not None:
        at(target, rows, update)
        return
    import cupyx

    cupyx.scatter_add(target, rows, update)


def scatter_max(xp: ModuleType, target: Any, rows: Any, update: Any) -> None:
    """target[rows] = max(target[rows], update) with repeated rows (CuPy: no int64 kernel)."""
    update = update.astype(target.dtype, copy=False)
    at = getattr(xp.maximum, "at", None)
    if at is not None:
        at(target, rows, update)
        return
    import cupyx

    cupyx.scatter_max(target, rows, update)
