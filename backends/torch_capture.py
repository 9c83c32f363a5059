"""CUDA-graph capture for the torch backend: a stochastic-EM step on resident data and the upward
pass for one batch size, each recorded once and replayed (``TorchBackend`` keeps them keyed by
``storage_key``, so new parameter tensors get a new graph)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from einc.backends.base import Params

if TYPE_CHECKING:
    from einc.backends.torch_backend import DeviceData, TorchBackend


def storage_key(params: Params) -> tuple:
    return tuple((name, value.data_ptr()) for name, value in sorted(params.items()))


def capture_graph(function: Any) -> torch.cuda.CUDAGraph:
    """Warm up on a side stream (as torch requires for autograd), then capture one call."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            function()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        function()
    return graph


class CapturedStep:
    """One stochastic-EM step on a batch of ``data`` rows picked by ``index``, as a CUDA graph.

    Parameters are updated in place, so the graph keeps reading the live values; the warm-up
    runs are undone by restoring a snapshot.
    """

    def __init__(self, backend: TorchBackend, params: Params, data: DeviceData, batch_size: int, step_size: float,
                 pseudocount: float = 0.0) -> None:
        self.index = torch.zeros(batch_size, dtype=torch.long, device=backend.device)
        self.total = torch.zeros((), dtype=backend.dtype, device=backend.device)
        snapshot = {name: value.clone() for name, value in params.items()}

        def step() -> None:
            _, batch_total = backend._em_step(params, data, self.index, step_size, in_place=True, pseudocount=pseudocount)
            with torch.no_grad():
                self.total.add_(batch_total)

        try:
            self.graph = capture_graph(step)
        finally:  # undo the warm-up updates, also when capture fails
            with torch.no_grad():
                for name, value in snapshot.items():
                    params[name].copy_(value)
        self.total.zero_()


class CapturedForward:
    """The upward pass for one batch size as a CUDA graph with static input buffers."""

    def __init__(self, backend: TorchBackend, params: Params, batch_size: int, max_product: bool) -> None:
        columns = backend.num_columns + 1
        self.x = torch.zeros((batch_size, columns), dtype=backend.dtype, device=backend.device)
        self.observed = torch.zeros((batch_size, columns), dtype=backend.dtype, device=backend.device)
        self.root: torch.Tensor | None = None

        def forward() -> None:
            self.root = backend._inference_root(params, self.x, self.observed, max_product)

        with torch.no_grad():
            self.graph = capture_graph(forward)

    def run(self, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """Root values of the first len(x) rows; the rest of the bucket is padding."""
        count = x.shape[0]
        self.x[:count].copy_(x)
        self.observed[:count].copy_(observed)
        if count < self.x.shape[0]:
            self.observed[count:].zero_()
        self.graph.replay()
        assert self.root is not None
        return self.root[:count].clone()


