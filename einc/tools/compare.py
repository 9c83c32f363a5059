"""Run one circuit on several backends: do they agree, and how fast and big is each?

``compare_backends`` compiles the same source on every backend with the same seed (so the same
initial parameters), runs the same queries on the same data and reports, per backend, the largest
|Δ log p| against the first backend that ran, the best-of-``repeats`` timings and the peak memory
of one E-step batch. Backends that cannot run here are skipped with a one-line reason.

    >>> import einc
    >>> report = einc.compare_backends("examples/tiny.pc", data, backends=("torch", "numpy"))  # doctest: +SKIP
    >>> print(report)                                                                           # doctest: +SKIP

A backend is named ``name`` or ``name:device`` (``torch:cpu``, ``torch:cuda``). Without a device,
``numpy`` runs on the CPU, ``cupy`` on CUDA, and ``torch`` on ``device`` (default: CUDA when torch
sees a GPU, else the CPU).
"""

from __future__ import annotations

import os
import re
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from einc.backends.base import Batch
from einc.io.data import prepare
from einc.ir.diagnostics import EincError
from einc.train.steps import memory_em
from einc.model import Model, compile

# The queries compared, in table order: name -> column title.
QUERIES = {
    "log_likelihood": "Δ ll",
    "marginal": "Δ marginal",
    "mpe": "Δ MPE",
    "em_step": "Δ after EM",
}
# Timings, in table order: name -> column title.
TIMINGS = {
    "forward": "forward ms",
    "statistics": "fwd+stats ms",
    "em_epoch": "EM epoch s",
}
MISSING_FRACTION = 0.3  # marginal query: this fraction of entries hidden, a new mask per sample


@dataclass(frozen=True)
class BackendResult:
    """One backend's agreement with the reference and its cost.

    ``max_abs_diff[query]`` is max over samples of |log p − log p_reference| (0 for the reference):
    ``log_likelihood`` on the data, ``marginal`` with a random 30% of entries missing per sample,
    ``mpe`` the max-product value of this backend's MPE completion (evaluated by the reference, so
    a different but equally good completion counts as agreement), ``em_step`` the log-likelihood
    after one full-batch EM step (λ = 1). ``seconds``: ``forward`` and ``statistics`` (forward +
    backward) for one batch, ``em_epoch`` one epoch of stochastic EM (λ = 0.5) over the data.
    ``peak_bytes`` is the memory allocated at the peak of one E-step batch above what was
    allocated before it (parameters and data excluded); ``memory_method`` says how it was measured.
    """

    backend: str
    device: str
    dtype: str
    max_abs_diff: dict[str, float]
    mpe_mismatch: float  # fraction of samples whose MPE completion differs from the reference's
    seconds: dict[str, float]
    peak_bytes: int | None
    memory_method: str

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.device}"


@dataclass(frozen=True)
class SkippedBackend:
    backend: str
    reason: str


@dataclass(frozen=True)
class BackendReport:
    """What ``compare_backends`` found; ``str(report)`` is the table."""

    source: str
    samples: int
    batch_size: int
    dtype: str
    repeats: int
    results: tuple[BackendResult, ...]
    skipped: tuple[SkippedBackend, ...] = field(default=())

    @property
    def reference(self) -> str | None:
        return self.results[0].label if self.results else None

    def result(self, backend: str) -> BackendResult:
        """The result of ``backend`` ("numpy", or "torch:cuda" when a name ran on two devices)."""
        for result in self.results:
            if backend in (result.label, result.backend):
                return result
        raise KeyError(backend)

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per backend that ran (what ``einc bench --json`` writes)."""
        return [
            {
                "source": self.source,
                "backend": result.backend,
                "device": result.device,
                "gpu": _device_name(result),
                "dtype": result.dtype,
                "samples": self.samples,
                "batch_size": self.batch_size,
                "reference": self.reference,
                "max_abs_diff": result.max_abs_diff,
                "mpe_mismatch": result.mpe_mismatch,
                "forward_s": result.seconds["forward"],
                "statistics_s": result.seconds["statistics"],
                "epoch_s": result.seconds["em_epoch"],
                "peak_bytes": result.peak_bytes,
                "memory_method": result.memory_method,
            }
            for result in self.results
        ]

    def __str__(self) -> str:
        header = ("backend", *QUERIES.values(), *TIMINGS.values(), "peak MB", "memory measured by")
        rows = []
        for result in self.results:
            diffs = [
                _format_diff(result.max_abs_diff[q]) if result.label != self.reference else "ref"
                for q in QUERIES
            ]
            times = [
                f"{result.seconds['forward'] * 1e3:.2f}",
                f"{result.seconds['statistics'] * 1e3:.2f}",
                f"{result.seconds['em_epoch']:.3f}",
            ]
            peak = "n/a" if result.peak_bytes is None else f"{result.peak_bytes / 2**20:.1f}"
            rows.append((result.label, *diffs, *times, peak, result.memory_method))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        title = (
            f"{self.source}: {self.samples} samples, batch {self.batch_size}, {self.dtype}, "
            f"best of {self.repeats}; Δ = max |Δ log p| vs {self.reference or '-'}"
        )
        lines = [title]
        lines.append("  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines += [f"skipped {s.backend}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def _device_name(result: BackendResult) -> str | None:
    """The GPU's name for a CUDA result (None on the CPU)."""
    if not result.device.startswith("cuda"):
        return None
    if result.backend == "cupy":
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    import torch

    return torch.cuda.get_device_name(torch.device(result.device))


def _format_diff(value: float) -> str:
    return "0" if value == 0.0 else f"{value:.1e}"


def compare_backends(
    source_or_path: str | os.PathLike,
    data: Any,
    backends: Sequence[str] = ("torch", "numpy", "cupy"),
    device: str | None = None,
    dtype: str = "float64",
    batch_size: int = 100,
    seed: int = 0,
    repeats: int = 3,
) -> BackendReport:
    """Compile ``source_or_path`` on each backend and compare answers, speed and memory.

    ``data`` is (N, columns) with NaN for missing entries. The first backend that runs is the
    reference for the Δ columns. See ``BackendResult`` for what each number means.
    """
    if batch_size < 1 or repeats < 1:
        raise EincError(
            f"batch_size and repeats must be at least 1, found {batch_size} and {repeats}"
        )
    x = np.asarray(data, dtype=np.float64)
    missing = np.random.default_rng(seed).random(x.shape) < MISSING_FRACTION
    results: list[BackendResult] = []
    skipped: list[SkippedBackend] = []
    reference: Model | None = None
    reference_answers: dict[str, np.ndarray] = {}
    source = str(source_or_path) if "\n" not in str(source_or_path) else "<string>"
    for spec in backends:
        name, backend_device, reason = _resolve(spec, device)
        if reason is not None:
            skipped.append(SkippedBackend(spec, reason))
            continue
        try:
            model = compile(
                source_or_path, backend=name, device=backend_device, dtype=dtype, seed=seed
            )
        except EincError as error:
            if reference is None and not _is_backend_error(error):
                raise  # the source or data is wrong, not the backend: say so once, loudly
            skipped.append(SkippedBackend(spec, _one_line(error)))
            continue
        answers = _answers(model, x, missing, batch_size, reference)
        if reference is None:
            reference, reference_answers = model, answers
        diffs = {
            query: float(np.max(np.abs(answers[query] - reference_answers[query]), initial=0.0))
            for query in QUERIES
        }
        mismatch = float(
            np.mean(np.any(answers["completion"] != reference_answers["completion"], axis=1))
        )
        seconds = _timings(model, x, batch_size, seed, repeats)
        peak, method = _peak_memory(model, x, batch_size)
        results.append(
            BackendResult(name, backend_device, dtype, diffs, mismatch, seconds, peak, method)
        )
    return BackendReport(source, len(x), batch_size, dtype, repeats, tuple(results), tuple(skipped))


# ---------------------------------------------------------------- backends and devices
def _resolve(spec: str, device: str | None) -> tuple[str, str, str | None]:
    """(backend name, device, reason to skip or None) for ``name`` or ``name:device``."""
    name, _, named_device = spec.partition(":")
    wanted = named_device or device
    if name == "numpy":
        return name, "cpu", None  # the CPU array backend, also in a --device cuda comparison
    if name == "cupy":
        if wanted is not None and not wanted.startswith("cuda"):
            return name, wanted, f"cupy runs on a CUDA device only, not '{wanted}'"
        return name, wanted or "cuda", None
    if name == "torch" and wanted is None:
        return name, _torch_default_device(), None
    return name, wanted or "cpu", None


def _torch_default_device() -> str:
    try:
        import torch
    except ImportError:
        return "cpu"  # compile() then reports that torch is missing
    return "cuda" if torch.cuda.is_available() else "cpu"


def _is_backend_error(error: EincError) -> bool:
    from einc.errors import BackendError

    return isinstance(error, BackendError)


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return re.sub(r"^error:\s*", "", text)


# ---------------------------------------------------------------- queries
def _answers(
    model: Model, x: np.ndarray, missing: np.ndarray, batch_size: int, reference: Model | None
) -> dict[str, np.ndarray]:
    """Every compared quantity for one model (on a copy of its parameters: it is left unchanged)."""
    judge = reference or model
    initial = model.parameters()
    answers = {
        "log_likelihood": model.log_likelihood(x, batch_size=batch_size),
        "marginal": model.log_likelihood(x, missing=missing, batch_size=batch_size),
    }
    completion = model.mpe(evidence=np.where(missing, np.nan, x), batch_size=batch_size)
    answers["completion"] = completion
    # the max-product value of the completion (its best latent path), judged by the reference
    answers["mpe"] = _max_product(judge, completion, batch_size)
    model.fit(
        x, epochs=1, batch_size=batch_size, update="epoch", step_size=1.0, keep_best=False, seed=0
    )
    answers["em_step"] = model.log_likelihood(x, batch_size=batch_size)
    model.set_parameters(initial)
    return answers


def _max_product(model: Model, completion: np.ndarray, batch_size: int) -> np.ndarray:
    values, observed = prepare(model.plan.graph, completion, None, "completion")
    out = []
    for start in range(0, len(values), batch_size):
        batch = Batch(values[start : start + batch_size], observed[start : start + batch_size])
        out.append(model.backend.log_likelihood(model.params, batch, max_product=True)[:, 0])
    return np.concatenate(out) if out else np.zeros(0)


# ---------------------------------------------------------------- timings
def _timings(
    model: Model, x: np.ndarray, batch_size: int, seed: int, repeats: int
) -> dict[str, float]:
    """Best of ``repeats`` after one warm-up run (kernel compilation, CUDA graph capture)."""
    values, observed = prepare(model.plan.graph, x, None, "data")
    batch = Batch(values[:batch_size], observed[:batch_size])
    initial = model.parameters()
    synchronize = _synchronizer(model)
    seconds = {
        "forward": _best(
            lambda: model.backend.log_likelihood(model.params, batch), repeats, synchronize
        ),
        "statistics": _best(
            lambda: model.backend.statistics(model.params, batch), repeats, synchronize
        ),
    }
    epoch = _em_epoch(model, values, observed, batch_size, np.random.default_rng(seed))
    seconds["em_epoch"] = _best(epoch, repeats, synchronize)
    model.set_parameters(initial)
    return seconds


def _best(run: Callable[[], Any], repeats: int, synchronize: Callable[[], None]) -> float:
    run()
    synchronize()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def _em_epoch(
    model: Model,
    values: np.ndarray,
    observed: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
) -> Callable[[], None]:
    """One epoch of stochastic EM (step size 0.5) as ``Model.fit`` runs it — the same
    ``einc.train.steps`` — without fit's train-LL pass. Resident data are uploaded once, outside
    the timing."""
    steps = memory_em(model, model.backend, values, observed, None, None, batch_size, "batch", 0.5, 0.0,
                      lambda epoch, generator: generator.permutation(len(values)))

    def epoch() -> None:
        steps.run(1, rng, _no_progress)

    return epoch


def _no_progress(steps: int) -> None:
    pass


def _synchronizer(model: Model) -> Callable[[], None]:
    """Wait for queued GPU work, so that a timing covers it."""
    if model.backend_name == "cupy":
        import cupy

        return lambda: cupy.cuda.Device().synchronize()
    if model.backend_name == "torch" and model.device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


# ---------------------------------------------------------------- memory
def _peak_memory(model: Model, x: np.ndarray, batch_size: int) -> tuple[int | None, str]:
    """Peak bytes allocated during one E-step batch (forward + statistics) above the baseline."""
    values, observed = prepare(model.plan.graph, x, None, "data")
    batch = Batch(values[:batch_size], observed[:batch_size])

    def run() -> None:
        model.backend.statistics(model.params, batch)

    run()  # warm-up: kernel caches and captured graphs are not part of one batch's peak
    if model.backend_name == "cupy":
        import cupy

        pool = cupy.get_default_memory_pool()
        cupy.cuda.Device().synchronize()
        pool.free_all_blocks()
        before = pool.used_bytes()
        run()
        cupy.cuda.Device().synchronize()
        # freed blocks stay in the pool, so its size is the high-water mark of this batch
        return max(0, pool.total_bytes() - before), "cupy memory pool"
    if model.backend_name == "torch" and model.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - before), "torch.cuda.max_memory_allocated"
    if model.backend_name == "torch":
        # torch's CPU allocator is invisible to tracemalloc: use the process's peak resident set
        return _peak_rss(run)
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    run()
    peak = tracemalloc.get_traced_memory()[1]
    if not was_tracing:
        tracemalloc.stop()
    return max(0, peak - before), "tracemalloc"


def _peak_rss(run: Callable[[], None]) -> tuple[int | None, str]:
    """Peak RSS growth on Linux: reset VmHWM (clear_refs 5), run, read VmHWM − VmRSS before.

    Freed memory that malloc keeps resident would hide the peak (new allocations reuse it
    without growing the RSS), so it is handed back to the system first (malloc_trim).
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the figure may then underestimate
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        before = _status_kib("VmRSS")
        run()
        return max(0, _status_kib("VmHWM") - before) * 1024, "peak RSS (VmHWM)"
    except (OSError, ValueError):
        return None, "n/a: torch CPU memory is untracked here"


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{key}:\s+(\d+)\s+kB", status.read(), re.MULTILINE)
    if match is None:
        raise ValueError(key)
    return int(match.group(1))
