"""Denormal (subnormal) floats flushed to zero while einc computes on the CPU, scoped.

Why: probabilities far below 1e-38 (float32) or 1e-308 (float64) are denormals, and x86 cores
take a microcode assist for every arithmetic op on one: 10-100x slower per element. Deep
circuits produce them in their weights and shifted exponentials as EM sharpens the model: a PD
MNIST epoch grew from 3.2 to 5.6 s over five epochs on a 2-core Xeon, flat at 1.5 s with them
flushed (issue 18). Flushing changes a value only where it is below the smallest normal float,
which the log-domain passes never rely on (``backends.base.SHIFTED_LOG_FLOOR`` keeps every
shifted exponential above e^-80, a normal float32).

How: x86's MXCSR FTZ/DAZ bits, set through ``torch.set_flush_denormal`` (torch has no getter, so
the caller's setting is probed by an arithmetic whose result is a denormal, and put back on the
way out). The bits are per thread and govern every SSE/AVX instruction the thread runs, NumPy's
loops included: NumPy itself has no switch, so the NumPy backend uses torch's when torch is
importable (it is an einc dependency) and runs unflushed otherwise. Torch's intra-op worker
threads keep their own MXCSR: with more than one thread only the calling thread's share of the
work is flushed (einc's measurements run one thread). Non-x86 CPUs: torch reports no support and
nothing changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

try:
    import torch
except ImportError:  # the NumPy backend without torch: no switch to use
    torch = None  # type: ignore[assignment]


_TINY, _SMALL = np.float32(1e-30), np.float32(1e-10)


def flushing() -> bool:
    """Whether this thread flushes denormals now: 1e-30 · 1e-10 = 1e-40 is a float32 denormal,
    computed by a NumPy float32 scalar multiply (an SSE instruction, so FTZ decides its result;
    a quarter of a microsecond, where a torch tensor probe cost ~20 µs per call)."""
    return bool(_TINY * _SMALL == 0.0)


@contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Flush denormals to zero inside the block and restore the caller's setting after it
    (also when the block raises). Nested blocks leave the outer block's setting alone."""
    if not enabled or torch is None or flushing():
        yield
        return
    if not torch.set_flush_denormal(True):  # the CPU has no FTZ/DAZ (non-x86): nothing to undo
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def flushed(method: F) -> F:
    """A backend entry point that runs with denormals flushed (``flush_denormals``) when its
    backend computes on the CPU (``self.flush_denormals``)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with flush_denormals(getattr(self, "flush_denormals", False)):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
