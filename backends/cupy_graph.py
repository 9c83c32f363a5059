"""The CuPy EM step as one captured CUDA graph: an optional path of the array backend (issue 23).

An eager CuPy EM step launches a few hundred small kernels, each paying Python dispatch and a
launch: on an H200 a step took about 6.5 ms whatever K, 8–12% slower than eager torch, while
torch's captured step took 0.2–0.9 ms. CuPy's graph API (``Stream.begin_capture`` /
``end_capture``, ``Graph.launch``) records the kernels of one step once and replays them with
one launch. ``cupy_backend(plan, capture=True)`` (``einc.compile(..., backend="cupy",
capture=True)``) turns it on; it is off by default until a GPU run has compared it.

A graph replays fixed kernels on fixed memory, so the captured step works on static buffers:

- it gathers its batch through a fixed index array, into which the next batch's rows are
  copied (on the graph's stream) before each launch;
- it reads the parameters from fixed arrays and writes the M-step's result back into them in
  place (the arrays the epoch returns are those static arrays);
- it adds its Σ log p into a fixed 0-d array, read once at the end of the epoch;
- its temporaries come from a memory pool private to the graph, which nothing else allocates
  from, so the memory a replay writes is never handed to other arrays in between.

One uncaptured warm-up step compiles every kernel first (CuPy compiles on first use, which a
capture cannot record) and is then undone. The last, partial batch of an epoch runs uncaptured.
If capturing fails (a host transfer inside the step, a driver without graph support, ...), the
epoch runs uncaptured, a warning says why once, and ``backend.capture_error`` keeps the reason.

The CUDA calls are all in ``CupyGraphs``. Tests put ``ReplayGraphs`` in its place — its "graph"
re-runs the step function and keeps nothing it returns, so only the step's writes to the static
buffers carry over, as with a real graph — to check this module's logic on the CPU with NumPy.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from einc.backends.em import em_update


class CupyGraphs:
    """CuPy's stream capture: every step's work runs on one non-default stream of its own."""

    def __init__(self, cupy: Any) -> None:
        self.cupy = cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def new_pool(self) -> Any:
        return self.cupy.cuda.MemoryPool()

    def capture(self, function: Callable[[], None], pool: Any) -> Any:
        cupy = self.cupy
        with cupy.cuda.using_allocator(pool.malloc), self.stream:
            self.stream.begin_capture()
            try:
                function()
            finally:  # leave capture mode also when the step failed inside it
                graph = self.stream.end_capture()
        return graph

    def launch(self, graph: Any) -> None:
        graph.launch(self.stream)

    def enter(self) -> Any:
        """The epoch's work goes to the graph's stream, after everything queued before it."""
        self.cupy.cuda.Device().synchronize()
        return self.stream

    def leave(self) -> None:
        self.stream.synchronize()


class ReplayGraphs:
    """The same interface on the CPU for tests: a "graph" is its step function, re-run at every
    launch with its return value dropped."""

    def __init__(self) -> None:
        self.captures = 0
        self.launches = 0

    def new_pool(self) -> None:
        return None

    def capture(self, function: Callable[[], None], pool: Any) -> Callable[[], None]:
        self.captures += 1
        return function

    def launch(self, graph: Callable[[], None]) -> None:
        self.launches += 1
        graph()

    def enter(self) -> Any:
        return _Nothing()

    def leave(self) -> None:
        pass


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class CapturedStep:
    """One EM step of ``batch_size`` rows of ``data``, captured over static buffers."""

    def __init__(self, backend: Any, graphs: Any, params: dict[str, Any], data: Any, batch_size: int,
                 step_size: float, pseudocount: float) -> None:
        xp = backend.xp
        self.graphs = graphs
        self.data = data  # the graph reads data's memory: keep it alive with the graph
        self.index = xp.zeros(batch_size, dtype=np.int64)
        self.params = {name: value.copy() for name, value in params.items()}
        self.total = xp.zeros((), dtype=backend.dtype)

        def step() -> None:
            batch_total, weights, leaf = backend.batch_statistics(self.params, data, self.index)
            updated = em_update(xp, backend.plan, self.params, weights, leaf, step_size, pseudocount)
            for name, value in updated.items():
                if value is not self.params[name]:
                    self.params[name][...] = value  # in place: the graph keeps these addresses
            self.total += batch_total

        # warm-up: every kernel compiled before the capture; its update then undone
        saved = {name: value.copy() for name, value in self.params.items()}
        with graphs.enter():
            step()
            for name, value in saved.items():
                self.params[name][...] = value
            self.total[...] = 0
            self.pool = graphs.new_pool()  # the graph's own memory; lives as long as the graph
            self.graph = graphs.capture(step, self.pool)
        graphs.leave()

    def load(self, params: dict[str, Any]) -> None:
        """Start from ``params`` (the static arrays themselves after an earlier epoch)."""
        for name, value in params.items():
            if value is not self.params[name]:
                self.params[name][...] = value

    def run(self, rows: Any) -> None:
        self.index[...] = rows
        self.graphs.launch(self.graph)


def captured_epoch(backend: Any, params: dict[str, Any], data: Any, order: np.ndarray, batch_size: int,
                   step_size: float, pseudocount: float) -> tuple[dict[str, Any], float] | None:
    """One epoch of stochastic EM with every full batch one graph launch; None where there is
    no full batch or capturing failed (the caller then runs its uncaptured epoch)."""
    full = len(order) // batch_size
    if full == 0 or backend.capture_error is not None:
        return None
    key = (batch_size, float(step_size), float(pseudocount), id(data))
    step = backend.captured_steps.get(key)
    if step is None:
        backend.captured_steps.clear()  # one data set and schedule at a time: graphs hold memory
        try:
            step = CapturedStep(backend, backend.graphs, params, data, batch_size, step_size, pseudocount)
        except Exception as error:  # noqa: BLE001 - any capture failure falls back to the eager epoch
            backend.capture_error = f"{type(error).__name__}: {error}"
            warnings.warn(f"einc: capturing the CuPy EM step failed ({backend.capture_error}); "
                          "training uncaptured", stacklevel=3)
            return None
        backend.captured_steps[key] = step
    xp = backend.xp
    order_device = xp.asarray(np.asarray(order, dtype=np.int64))
    with backend.graphs.enter():
        step.load(params)
        step.total[...] = 0
        for start in range(0, full * batch_size, batch_size):
            step.run(order_device[start : start + batch_size])
        params = dict(step.params)
        rest = order_device[full * batch_size :]
        total = step.total
        if len(rest):  # the partial batch, uncaptured, on the same stream
            params, rest_total = backend.eager_step(params, data, rest, step_size, pseudocount)
            total = total + rest_total
            step.load(params)  # the static arrays hold the epoch's result
            params = dict(step.params)
        total = float(total)
    backend.graphs.leave()
    return params, total
