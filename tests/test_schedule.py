"""Which rows each worker reads at each step: every row once per epoch, global batches of exactly
B rows (except the last) for shards einc splits itself, and bounded blocks held per worker."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from einc.ir.diagnostics import EincError
from einc.train.schedule import Schedule, aligned_shard_sizes, local_batch_sizes, shard_starts


def _global_batches(schedule: Schedule, epoch: int) -> list[np.ndarray]:
    """Each global step's rows (file row ids, shards laid out consecutively)."""
    starts = shard_starts(schedule.shard_sizes)
    per_rank = [list(schedule.steps(epoch, rank)) for rank in range(schedule.world_size)]
    assert all(len(steps) == schedule.num_steps for steps in per_rank)
    batches = []
    for number in range(schedule.num_steps):
        rows = [starts[rank] + schedule.block_range(rank, block)[0] + offsets
                for rank in range(schedule.world_size) for block, offsets in per_rank[rank][number].pieces]
        batches.append(np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64))
    return batches


@settings(max_examples=60, deadline=None)
@given(total=st.integers(0, 400), world=st.integers(1, 4), extra=st.integers(0, 60),
       block_rows=st.integers(1, 120), seed=st.integers(0, 3), epoch=st.integers(1, 3))
def test_aligned_shards_give_global_batches_of_exactly_b_rows(total, world, extra, block_rows, seed, epoch):
    batch_size = world + extra
    sizes = aligned_shard_sizes(total, world, batch_size)
    assert sum(sizes) == total
    schedule = Schedule(tuple(sizes), batch_size, seed, block_rows)
    batches = _global_batches(schedule, epoch)
    order = schedule.global_order(epoch)
    assert np.array_equal(np.sort(order), np.arange(total))  # every row once
    assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    # one process slicing the global order by B sees the same batches
    for number, rows in enumerate(batches):
        assert np.array_equal(rows, order[number * batch_size : (number + 1) * batch_size])


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 150), min_size=1, max_size=4), extra=st.integers(0, 40),
       block_rows=st.integers(1, 60))
def test_files_of_any_size_are_each_read_once_holding_only_the_blocks_of_one_batch(sizes, extra, block_rows):
    schedule = Schedule(tuple(sizes), len(sizes) + extra, 0, block_rows)
    local = local_batch_sizes(schedule.batch_size, len(sizes))
    for rank, size in enumerate(sizes):
        seen, held = [], set()
        for step in schedule.steps(1, rank):
            assert step.rows <= local[rank]
            for block, offsets in step.pieces:
                start, stop = schedule.block_range(rank, block)
                assert np.all((offsets >= 0) & (offsets < stop - start))
                seen.append(start + offsets)
                held.add(block)
            # the blocks one batch can span (one of them may be the short last block)
            assert len(held) <= 3 + local[rank] // block_rows
            held -= set(step.finished)
        assert not held  # every block released by the end
        rows = np.concatenate(seen) if seen else np.zeros(0, dtype=np.int64)
        assert np.array_equal(np.sort(rows), np.arange(size))


def test_orders_differ_between_epochs_and_seeds_but_are_reproducible():
    schedule = Schedule((50, 50), 10, 0, 20)
    assert np.array_equal(schedule.global_order(1), schedule.global_order(1))
    assert not np.array_equal(schedule.global_order(1), schedule.global_order(2))
    assert not np.array_equal(schedule.global_order(1), Schedule((50, 50), 10, 1, 20).global_order(1))


def test_a_shard_within_one_block_is_a_full_permutation():
    order = Schedule((1000,), 1000, 0, 1000).global_order(1)
    # a block shuffle of several blocks would keep rows of a block together
    assert np.corrcoef(order, np.arange(1000))[0, 1] < 0.2


def test_batch_smaller_than_the_number_of_workers_is_refused():
    with pytest.raises(EincError, match="smaller than the number of workers"):
        aligned_shard_sizes(100, 4, 3)
