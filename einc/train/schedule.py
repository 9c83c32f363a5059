"""Which training rows each worker reads at each step of data-parallel training.

Every worker (rank) owns a *shard*: a row range of one file, or a file of its own. A global batch
of B rows is the union of one *local batch* per worker, of B // W rows (one more on the first
B % W ranks), so every worker computes statistics at every step and a step's statistics are the
all-reduced sum. When einc splits one file itself (``aligned_shard_sizes``) every global batch has
exactly B rows except the last, so an epoch is the same sequence of batches as one process with
batch size B would see if given ``Schedule.global_order`` (the equivalence the tests check).

Within a shard rows are shuffled by blocks: the shard is cut into blocks of ``block_rows``
consecutive rows, the blocks are visited in a random order and the rows of each block in a random
order. A worker therefore reads one block (or two, where a batch straddles them) at a time: disk
reads stay sequential and memory stays bounded however large the shard is. A shard no larger than
one block is an exact random permutation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from einc.ir.diagnostics import EincError

# Cells (rows x columns) per block: 8 MiB of uint8 data, 64 MiB of float64. Counted in cells,
# not bytes, so the order of rows does not depend on how the file stores them.
BLOCK_CELLS = 1 << 23


def default_block_rows(columns: int) -> int:
    return max(1024, BLOCK_CELLS // max(1, columns))


def local_batch_sizes(batch_size: int, world_size: int) -> list[int]:
    """Rows each worker contributes to a global batch of ``batch_size`` rows."""
    if world_size < 1:
        raise EincError(f"the number of workers must be at least 1, not {world_size}")
    if batch_size < world_size:
        raise EincError(f"the batch size ({batch_size}) is smaller than the number of workers ({world_size}); "
                        f"each worker needs at least one row per step")
    return [batch_size // world_size + (rank < batch_size % world_size) for rank in range(world_size)]


def aligned_shard_sizes(total_rows: int, world_size: int, batch_size: int) -> list[int]:
    """Shard sizes for splitting ``total_rows`` rows of one file into ``world_size`` row ranges so
    that every global batch has exactly ``batch_size`` rows except the last (as on one process)."""
    local = local_batch_sizes(batch_size, world_size)
    if total_rows == 0:
        return [0] * world_size
    steps = -(-total_rows // batch_size)
    remainder = total_rows - (steps - 1) * batch_size  # rows of the last global batch
    last = [remainder // world_size + (rank < remainder % world_size) for rank in range(world_size)]
    return [(steps - 1) * local[rank] + last[rank] for rank in range(world_size)]


def shard_starts(shard_sizes: Sequence[int]) -> list[int]:
    """First row of each shard when the shards are consecutive row ranges of one file."""
    return [int(start) for start in np.concatenate([[0], np.cumsum(shard_sizes)[:-1]])]


@dataclass(frozen=True)
class Step:
    """One worker's part of a global batch.

    ``pieces``: (block, row offsets inside that block), in batch order; ``finished``: blocks this
    worker will not read again in this epoch (their memory can be released after the step).
    """

    pieces: tuple[tuple[int, np.ndarray], ...]
    finished: tuple[int, ...]

    @property
    def rows(self) -> int:
        return sum(len(offsets) for _, offsets in self.pieces)


@dataclass(frozen=True)
class Schedule:
    """The batch order of an epoch for every worker; a pure function of its fields and the epoch."""

    shard_sizes: tuple[int, ...]
    batch_size: int
    seed: int
    block_rows: int

    def __post_init__(self) -> None:
        local_batch_sizes(self.batch_size, len(self.shard_sizes))  # checks batch size >= workers
        if self.block_rows < 1:
            raise EincError(f"block_rows must be at least 1, not {self.block_rows}")

    @property
    def world_size(self) -> int:
        return len(self.shard_sizes)

    @property
    def total_rows(self) -> int:
        return sum(self.shard_sizes)

    @property
    def num_steps(self) -> int:
        """Global steps per epoch: every worker takes part in each (possibly with no rows)."""
        local = local_batch_sizes(self.batch_size, self.world_size)
        return max(-(-size // rows) for size, rows in zip(self.shard_sizes, local))

    def block_range(self, rank: int, block: int) -> tuple[int, int]:
        """Rows [start, stop) of ``block`` inside shard ``rank``."""
        start = block * self.block_rows
        return start, min(start + self.block_rows, self.shard_sizes[rank])

    def _blocks_in_order(self, epoch: int, rank: int) -> Iterator[tuple[int, np.ndarray]]:
        """(block, its row offsets shuffled), blocks in shuffled order; one generator per
        (seed, epoch, rank), so every worker can recompute any worker's order."""
        size = self.shard_sizes[rank]
        rng = np.random.default_rng((self.seed, epoch, rank))
        for block in rng.permutation(-(-size // self.block_rows)):
            start, stop = self.block_range(rank, int(block))
            yield int(block), rng.permutation(stop - start)

    def steps(self, epoch: int, rank: int) -> Iterator[Step]:
        """This worker's rows for each of the ``num_steps`` global steps of ``epoch`` (1-based)."""
        local = local_batch_sizes(self.batch_size, self.world_size)[rank]
        blocks = self._blocks_in_order(epoch, rank)
        current: tuple[int, np.ndarray] | None = None
        position = 0
        for _ in range(self.num_steps):
            pieces: list[tuple[int, np.ndarray]] = []
            finished: list[int] = []
            needed = local
            while needed > 0:
                if current is None or position == len(current[1]):
                    current, position = next(blocks, None), 0
                    if current is None:
                        break
                block, offsets = current
                taken = offsets[position : position + needed]
                pieces.append((block, taken))
                position += len(taken)
                needed -= len(taken)
                if position == len(offsets):
                    finished.append(block)
            yield Step(tuple(pieces), tuple(finished))

    def global_order(self, epoch: int) -> np.ndarray:
        """The rows of all shards, laid out as consecutive row ranges of one file, in the order
        the workers process them: global batch b is ``order[b*B : (b+1)*B]`` when the shard sizes
        come from ``aligned_shard_sizes``. One process given this order runs the same batches."""
        starts = shard_starts(self.shard_sizes)
        per_rank = [self.steps(epoch, rank) for rank in range(self.world_size)]
        parts = []
        for _ in range(self.num_steps):
            for rank, steps in enumerate(per_rank):
                for block, offsets in next(steps).pieces:
                    parts.append(starts[rank] + self.block_range(rank, block)[0] + offsets)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
