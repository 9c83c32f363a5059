"""Float32 matmul precision of the torch backend on CUDA: ``precision="fp32"`` or ``"tf32"``.

``fp32`` (the default) keeps IEEE float32 matmuls. ``tf32`` is an explicit opt-in to TensorFloat-32
tensor-core matmuls on NVIDIA GPUs (Ampere and later): the GEMM inputs are rounded to a 10-bit
mantissa and accumulated in float32, which speeds cuBLAS up at the cost of about 1e-3 relative
error per product — results then differ from fp32 runs, so it is never switched on silently.

The setting is torch's process-wide float32 matmul precision, which torch reads when a kernel
is launched, when ``torch.compile`` traces (it guards on it) and when a CUDA graph is captured.
So that a model's choice neither leaks into the user's other torch code nor is overridden by
it, every call into the backend runs inside ``matmul_precision`` (``Scoped`` wraps a backend's
methods) and the previous setting is restored afterwards. ``model.module()`` hands out a plain
``torch.nn.Module`` whose calls happen outside einc: it follows the caller's own setting.

Where TF32 cannot apply — the CPU, the NumPy/CuPy backends, float64 — ``tf32`` is refused with
a clear error rather than ignored (a user asking for it expects it to take effect).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

from einc.errors import BackendError

PRECISIONS = ("fp32", "tf32")
# objects these backend methods return run einc's passes later (an Adam trainer's steps): their
# methods are scoped too
_SCOPED_RESULTS = ("gradient_trainer",)


def check_precision(precision: str, backend: str, device: str, dtype: str) -> None:
    """Refuse a precision the backend cannot honour, saying why and what to use instead."""
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    if backend != "torch":
        raise BackendError(f"precision 'tf32' is a torch-on-CUDA matmul mode; the {backend} backend computes in "
                           f"IEEE {dtype} (use backend 'torch' with device 'cuda', or precision 'fp32')")
    if not device.startswith("cuda"):
        raise BackendError("precision 'tf32' needs a CUDA device (TF32 is an NVIDIA tensor-core matmul mode); "
                           "on the CPU einc computes in IEEE float32: use precision 'fp32'")
    if dtype != "float32":
        raise BackendError(f"precision 'tf32' applies to float32 matmuls; this model computes in {dtype} "
                           "(use dtype 'float32', or precision 'fp32')")


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """Torch's float32 matmul precision set to ``precision`` inside, the previous one restored.

    Torch refuses to read a setting that was last written through the other of its two APIs
    (``torch.set_float32_matmul_precision`` and ``torch.backends.cuda.matmul.fp32_precision``),
    so the setting is read, written and restored through whichever API the process used."""
    import torch

    tf32 = precision == "tf32"
    try:
        previous = torch.get_float32_matmul_precision()
    except RuntimeError:  # the process set it through the newer per-backend API: keep to that one
        matmul = torch.backends.cuda.matmul
        previous = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if tf32 else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = previous
        return
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class Scoped:
    """``target`` with every method call run under ``matmul_precision(precision)``; attributes
    pass through (reads and writes), so the wrapper stands in for the backend everywhere."""

    def __init__(self, target: Any, precision: str) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "precision", precision)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value) or isinstance(value, type):
            return value
        precision = self.precision

        @functools.wraps(value)
        def scoped(*args: Any, **kwargs: Any) -> Any:
            with matmul_precision(precision):
                result = value(*args, **kwargs)
            return Scoped(result, precision) if name in _SCOPED_RESULTS else result

        return scoped

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)


def with_precision(backend: Any, precision: str) -> Any:
    """The backend as the caller should hold it: scoped when it runs float32 on CUDA with torch
    (where the precision decides cuBLAS's math mode), unchanged elsewhere (no matmul to steer)."""
    device = str(getattr(backend, "device", "cpu"))
    if getattr(backend, "name", None) == "torch" and device.startswith("cuda"):
        return Scoped(backend, precision)
    return backend
