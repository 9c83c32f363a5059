"""The backend protocol and the registry of backends by name.

A backend interprets an einsum plan. It holds no training state: parameters go in and come out
as explicit dictionaries, so forward, statistics and the EM update are pure functions of them.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import platform
import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from einc.backends.precision import check_precision, with_precision
from einc.errors import BackendError
from einc.ir.plan import Plan

Params = dict[str, Any]  # parameter name -> backend array

# Log-values shifted by their maximum (so ≤ 0) are floored here before exp: below it, vectorised
# exp takes its slow underflow path (15-25x slower on the CPU, measured with torch and NumPy),
# while the terms it would produce are below e^-80 ≈ 2e-35 of the largest term (which is 1) of a
# sum whose weights are ≥ 1e-12 (backends/em.MIN_WEIGHT): 1e-23 relative, under float64's rounding.
SHIFTED_LOG_FLOOR = -80.0


def shifted_exp(xp: Any, values: Any, shift: Any) -> Any:
    """exp(values − shift), with values − shift floored at SHIFTED_LOG_FLOOR (see there)."""
    return xp.exp(xp.clip(values - shift, SHIFTED_LOG_FLOOR, None))


# glibc malloc's settings for CPU runs (see keep_freed_memory). Every forward/backward step allocates
# the same few-MB temporaries; by default glibc serves blocks above its (dynamic) mmap threshold
# with fresh mmap pages and unmaps them on free, so each step page-faults its temporaries in anew:
# measured on a 2-core AMD EPYC, the K=10 RAT epoch of benchmarks/peers.py took 61,000 minor page
# faults and 0.2 s of system time (a quarter of its CPU time), the K=40 epoch 0.8 million and 3 s.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameter numbers from glibc's malloc.h
KEEP_FREED_TOP_BYTES = 1 << 30  # free memory at the heap's top beyond this still goes back to the OS
ALLOCATOR_ENV = "EINC_CPU_ALLOCATOR"  # "system": leave malloc's settings alone
_allocator_tuned = False


def keep_freed_memory() -> bool:
    """Make glibc malloc reuse freed blocks instead of unmapping and page-faulting them again.

    Called by the CPU backends when they are built (once per process). Sets ``M_MMAP_MAX = 0``
    (large blocks come from the heap, where a later step of the same shapes reuses them: zero page
    faults per epoch instead of 61,000 at K=10) and ``M_TRIM_THRESHOLD`` to 1 GiB (freed memory
    at the heap's top is handed back to the OS only beyond that). The cost: memory freed in the
    middle of the heap stays with the process (its peak resident size does not grow). Only on
    glibc; ``EINC_CPU_ALLOCATOR=system`` in the environment leaves malloc's settings alone.
    Returns whether the settings were applied.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if os.environ.get(ALLOCATOR_ENV, "").strip().lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _allocator_tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_TOP_BYTES))
    return _allocator_tuned


@dataclass(frozen=True)
class Batch:
    """One batch of data on the host: values with unobserved entries zeroed, and the mask."""

    values: np.ndarray  # (B, columns) float
    observed: np.ndarray  # (B, columns) bool
    labels: np.ndarray | None = None  # (B,) int head index per sample, or None
    # (B, latents) int: the state each latent is clamped to, −1 where it is summed out; None: all
    # summed out (see backends/latents.py)
    latents: np.ndarray | None = None


@dataclass(frozen=True)
class Statistics:
    """Expected sufficient statistics of one E-step (sums over a batch), as backend arrays.

    ``weights[name]`` are the posterior counts n (paper eq. 6) shaped like the weight tensor;
    ``leaf[name] = (Σ p·T(x), Σ p)`` shaped (L, S, K, t) and (L, S, K).
    """

    log_likelihood: float
    count: int
    weights: dict[str, Any]
    leaf: dict[str, tuple[Any, Any]]

    def __add__(self, other: "Statistics") -> "Statistics":
        """Statistics of the union of two batches (full-batch EM accumulates them)."""
        return Statistics(
            self.log_likelihood + other.log_likelihood,
            self.count + other.count,
            {k: self.weights[k] + other.weights[k] for k in self.weights},
            {k: (self.leaf[k][0] + other.leaf[k][0], self.leaf[k][1] + other.leaf[k][1]) for k in self.leaf},
        )


class Backend(Protocol):
    name: str
    plan: Plan

    def put(self, params: dict[str, np.ndarray]) -> Params: ...

    def get(self, params: Params) -> dict[str, np.ndarray]: ...

    def log_likelihood(self, params: Params, batch: Batch, max_product: bool = False) -> np.ndarray:
        """(B, heads) log-densities (max-product values when max_product)."""
        ...

    def statistics(self, params: Params, batch: Batch) -> Statistics: ...

    def em_update(self, params: Params, stats: Statistics, step_size: float, pseudocount: float = 0.0) -> Params:
        """The M-step (backends.em.em_update); ``pseudocount`` α > 0 is Laplace smoothing."""
        ...

    def latent_posterior(self, params: Params, batch: Batch, heads: np.ndarray) -> list[np.ndarray]:
        """p(Z_j = k | x, the clamped latents) per latent j of ``plan.latents``: (B, K_j) each,
        taken at each sample's head (``heads`` (B,))."""
        ...

    def backtrack(
        self, params: Params, batch: Batch, mpe: bool, leaf_value: str, heads: np.ndarray, seed: int
    ) -> np.ndarray:
        """Top-down pass: complete the batch by sampling (mpe=False) or arg-max (mpe=True).

        ``leaf_value`` is "sample", "mode" or "mean" (what a reached leaf emits for unobserved
        variables); ``heads`` (B,) which root output each sample starts from.
        """
        ...


@dataclass(frozen=True)
class BackendEntry:
    module: str
    factory: str
    install_hint: str


# Lazy factories: importing einc never imports torch/cupy backends it does not use.
BACKENDS: dict[str, BackendEntry] = {
    "torch": BackendEntry("einc.backends.torch_backend", "TorchBackend", "pip install torch"),
    # one array backend written against the NumPy API: NumPy on the CPU, CuPy on a CUDA GPU
    "numpy": BackendEntry("einc.backends.array_backend", "numpy_backend", "pip install numpy"),
    "cupy": BackendEntry("einc.backends.array_backend", "cupy_backend", "pip install cupy-cuda12x"),
}


def dtype_name(dtype: Any) -> str:
    """'float32' or 'float64' from that name, a torch dtype (``torch.float64``, ``torch.double``) or
    a NumPy dtype or type (``np.float32``): what a PyTorch or NumPy user writes; ``BackendError``
    for anything else, before a front end or backend is built with it."""
    if isinstance(dtype, str):
        name = dtype
    elif type(dtype).__module__ == "torch":  # torch.dtype, without importing torch here
        name = str(dtype).removeprefix("torch.")
    else:
        try:
            name = np.dtype(dtype).name if dtype is not None else repr(dtype)
        except TypeError:
            name = repr(dtype)
    if name not in ("float32", "float64"):
        raise BackendError(f"unsupported dtype {dtype!r}; expected float32 or float64 (a name, or "
                           "torch.float32, torch.float64)")
    return name


def device_name(device: Any) -> str:
    """'cpu', 'cuda' or 'cuda:N' from that name or a ``torch.device``; ``BackendError`` otherwise."""
    if type(device).__module__ == "torch" and type(device).__name__ == "device":
        device = str(device)  # torch.device("cuda", 1) -> "cuda:1"
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise BackendError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'")
    return device


def available_backends() -> list[str]:
    return sorted(BACKENDS)


def create_backend(name: str, plan: Plan, device: str = "cpu", dtype: str = "float32", precision: str = "fp32",
                   **options: Any) -> Backend:
    """The backend ``name`` for ``plan``; ``precision`` ("fp32" or "tf32": float32 matmuls on CUDA,
    backends/precision.py) and backend-specific ``options`` (torch: fuse, capture)."""
    entry = BACKENDS.get(name)
    if entry is None:
        raise BackendError(
            f"unknown backend '{name}'; expected one of {', '.join(available_backends())}"
        )
    problem = next((p for p in (op.backend_problem(name) for op in plan.ops) if p), None)
    if problem is not None:
        raise BackendError(problem)
    try:
        module = importlib.import_module(entry.module)
    except ImportError as error:
        raise BackendError(
            f"backend '{name}' is not available here ({error}); install it with `{entry.install_hint}`; "
            f"backends: {', '.join(available_backends())}"
        ) from None
    factory: Callable[..., Backend] = getattr(module, entry.factory)
    device, dtype = device_name(device), dtype_name(dtype)
    check_precision(precision, name, device, dtype)
    try:
        return with_precision(factory(plan, device=device, dtype=dtype, **options), precision)
    except (RuntimeError, AssertionError) as error:
        # e.g. torch without CUDA ("Torch not compiled with CUDA enabled"), no GPU, a bad index
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BackendError(f"backend '{name}' cannot run on device '{device}': {reason}") from None
