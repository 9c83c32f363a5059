"""How one epoch updates the parameters: the ``EpochSteps`` the training loop runs.

Each kind is a small class with ``run(epoch, rng, advance) -> (Σ log p, rows)``:

- ``HostEm``: EM from host batches — statistics per batch, an M-step per batch (online EM,
  eqs. 8–9) or per epoch (full-batch EM). The batches come from memory (a permutation of the
  rows) or from this worker's shard; the statistics of several processes are summed by the
  ``all_reduce`` hook (identity in one process).
- ``ResidentEm``: online EM run by the backend itself on data resident on its device
  (``backend.train_epoch``: on CUDA one captured graph per step).
- ``ResidentAdam``: Adam on resident data (the backend's ``GradientTrainer.epoch``).
- ``ShardAdam``: Adam from host batches with gradients summed over processes by a hook.

The backend does the arithmetic of a step; these classes only order the steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from einc.backends.base import Batch, Statistics


def _identity(stats: Statistics) -> Statistics:
    return stats


class HostEm:
    """EM over host batches: ``batches(epoch, rng)`` yields each step's batch (None where this
    process has no rows in a step of several processes)."""

    # ``holder.params``: the backend parameters each step reads and replaces (a ``Model``)
    def __init__(self, holder: Any, backend: Any, batches: Callable[[int, np.random.Generator], Iterable[Batch | None]],
                 steps_per_epoch: int, update: str, step_size: float, pseudocount: float,
                 all_reduce: Callable[[Statistics], Statistics] = _identity,
                 zeros: Statistics | None = None) -> None:
        self.holder, self.backend, self.batches = holder, backend, batches
        self.steps_per_epoch = steps_per_epoch
        self.update, self.step_size, self.pseudocount = update, step_size, pseudocount
        self.all_reduce = all_reduce
        self.zeros = zeros  # the statistics of a step without rows (several processes)
        self.shared = all_reduce is not _identity

    def run(self, epoch: int, rng: np.random.Generator, advance: Callable[[int], None]) -> tuple[float, int]:
        holder, backend = self.holder, self.backend
        total_ll, count = 0.0, 0
        accumulated: Statistics | None = None
        for batch in self.batches(epoch, rng):
            stats = self.zeros if batch is None else backend.statistics(holder.params, batch)
            assert stats is not None
            if self.update == "batch":
                stats = self.all_reduce(stats) if self.shared else stats
                total_ll, count = total_ll + stats.log_likelihood, count + stats.count
                if stats.count:
                    holder.params = backend.em_update(holder.params, stats, self.step_size, self.pseudocount)
            else:
                accumulated = stats if accumulated is None else accumulated + stats
            advance(1)
        if accumulated is not None:
            stats = self.all_reduce(accumulated) if self.shared else accumulated
            total_ll, count = stats.log_likelihood, stats.count
            if stats.count:
                holder.params = backend.em_update(holder.params, stats, self.step_size, self.pseudocount)
        return total_ll, count

    def optimizer_state(self) -> dict[str, np.ndarray] | None:
        return None


def memory_batches(values: np.ndarray, observed: np.ndarray, labels: np.ndarray | None,
                   latents: np.ndarray | None, batch_size: int,
                   order: Callable[[int, np.random.Generator], np.ndarray]
                   ) -> Callable[[int, np.random.Generator], Iterator[Batch]]:
    """Batches of rows held in memory, in ``order(epoch, rng)`` (a permutation of the rows)."""

    def batches(epoch: int, rng: np.random.Generator) -> Iterator[Batch]:
        permutation = order(epoch, rng)
        for start in range(0, len(values), batch_size):
            index = permutation[start : start + batch_size]
            yield Batch(values[index], observed[index], None if labels is None else labels[index],
                        None if latents is None else latents[index])

    return batches


def memory_em(holder: Any, backend: Any, values: np.ndarray, observed: np.ndarray, labels: np.ndarray | None,
              latents: np.ndarray | None, batch_size: int, update: str, step_size: float, pseudocount: float,
              order: Callable[[int, np.random.Generator], np.ndarray], chunks: int = 1) -> HostEm | ResidentEm:
    """EM on rows held in memory: the backend's own resident epoch where it has one (online EM),
    else statistics and M-steps from host batches."""
    if update == "batch" and hasattr(backend, "train_epoch"):
        resident = backend.upload(values, observed, labels, latents)
        return ResidentEm(holder, backend, resident, len(values), batch_size, step_size, pseudocount, order, chunks)
    batches = memory_batches(values, observed, labels, latents, batch_size, order)
    return HostEm(holder, backend, batches, -(-len(values) // batch_size), update, step_size, pseudocount)


class ResidentEm:
    """Online EM on data resident on the backend's device (``backend.train_epoch``)."""

    def __init__(self, holder: Any, backend: Any, resident: Any, rows: int, batch_size: int, step_size: float,
                 pseudocount: float, order: Callable[[int, np.random.Generator], np.ndarray],
                 chunks: int = 1) -> None:
        self.holder, self.backend, self.resident = holder, backend, resident
        self.rows, self.batch_size, self.step_size, self.pseudocount = rows, batch_size, step_size, pseudocount
        self.order = order
        self.steps_per_epoch = -(-rows // batch_size)
        # with a progress bar the epoch runs in pieces of whole batches (the same steps in the
        # same order: the result is unchanged), so that the bar moves
        self.chunk_steps = max(1, -(-self.steps_per_epoch // max(1, chunks)))

    def run(self, epoch: int, rng: np.random.Generator, advance: Callable[[int], None]) -> tuple[float, int]:
        order = self.order(epoch, rng)
        total = 0.0
        piece = self.chunk_steps * self.batch_size
        for start in range(0, len(order), piece):
            self.holder.params, part = self.backend.train_epoch(self.holder.params, self.resident,
                                                                order[start : start + piece], self.batch_size,
                                                                self.step_size, self.pseudocount)
            total += part
            advance(-(-len(order[start : start + piece]) // self.batch_size))
        return total, self.rows

    def optimizer_state(self) -> dict[str, np.ndarray] | None:
        return None


class ResidentAdam:
    """Adam on resident data (the backend's gradient trainer); neural leaves draw their noise from
    a seed taken from the run's generator, so a resumed run draws the same noise."""

    def __init__(self, trainer: Any, resident: Any, rows: int, batch_size: int, noisy: bool,
                 order: Callable[[int, np.random.Generator], np.ndarray]) -> None:
        self.trainer, self.resident, self.rows, self.batch_size = trainer, resident, rows, batch_size
        self.noisy, self.order = noisy, order
        self.steps_per_epoch = -(-rows // batch_size)

    def run(self, epoch: int, rng: np.random.Generator, advance: Callable[[int], None]) -> tuple[float, int]:
        order = self.order(epoch, rng)
        noise_seed = int(rng.integers(2**31)) if self.noisy else None
        total = self.trainer.epoch(self.resident, order, self.batch_size, noise_seed)
        advance(self.steps_per_epoch)
        return total, self.rows

    def optimizer_state(self) -> dict[str, np.ndarray] | None:
        return self.trainer.state()


class ShardAdam:
    """Adam on the mean −log p of each global batch: every process adds the gradients of its part
    of the batch, ``all_reduce(flat)`` sums ``[Σ log p, rows, gradients...]`` over processes in one
    buffer, and every process takes the same step (as DistributedDataParallel does)."""

    def __init__(self, trainer: Any, batches: Callable[[int, np.random.Generator], Iterable[tuple[Batch | None, int]]],
                 steps_per_epoch: int, all_reduce: Callable[[Any], Any], flatten: Callable[[Any], Any]) -> None:
        self.trainer, self.batches = trainer, batches
        self.steps_per_epoch = steps_per_epoch
        self.all_reduce, self.flatten = all_reduce, flatten

    def run(self, epoch: int, rng: np.random.Generator, advance: Callable[[int], None]) -> tuple[float, int]:
        import torch

        trainer = self.trainer
        free = list(trainer.module.parameters())
        total_ll, count = 0.0, 0
        for batch, local_rows in self.batches(epoch, rng):
            trainer.optimizer.zero_grad(set_to_none=False)
            local_ll = 0.0 if batch is None else trainer.accumulate(batch)
            gradients = [torch.zeros_like(p) if p.grad is None else p.grad for p in free]
            flat = self.all_reduce(self.flatten([local_ll, float(local_rows)], gradients))
            rows = float(flat[1])
            total_ll, count = total_ll + float(flat[0]), count + round(rows)
            advance(1)
            if rows == 0:
                continue
            offset = 2
            for p in free:
                size = p.numel()
                p.grad = (flat[offset : offset + size] / rows).reshape(p.shape).to(device=p.device, dtype=p.dtype)
                offset += size
            trainer.optimizer.step()
        return total_ll, count

    def optimizer_state(self) -> dict[str, np.ndarray] | None:
        return self.trainer.state()
