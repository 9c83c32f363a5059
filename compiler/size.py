"""How big a circuit would be, estimated before anything is built, and the limits it must fit.

The front end builds regions, partitions and parameters in Python and NumPy; a few characters of
``.pc`` text (``replicas = 1000000``, ``sums 100000``, ``var x[100000000]``) can ask for more than
any machine holds. ``estimate_*`` count what a declaration or generator would produce from its
arguments alone (closed formulas, or a 1-D closure per grid axis for Poon–Domingos), and
``limit_problem`` compares the estimate with ``SizeLimits``:

- ``max_bytes`` bounds memory: parameters on the backend at the model's dtype plus the float64
  host copies training keeps (initial values, best-so-far, last good), and the front end's own
  data structures (measured per variable, region, partition and scope entry on the examples);
- ``max_build_seconds`` bounds time: the seconds ``einc check`` (parse, build, verify, layer)
  would take, from per-item costs fitted on RAT and PD circuits of up to 280,000 regions and
  4 million scope entries (benchmarks/README.md). The default, 2 s, is the answer time ``einc
  check`` promises; a loaded or slower machine takes longer than estimated.

    >>> estimate = estimate_random_binary_trees(16, depth=1, replicas=20, dtype="float32")
    >>> estimate.regions, estimate.partitions
    (41, 20)
    >>> limit_problem(estimate, SizeLimits()) is None
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_BYTES = 4 * 2**30  # well under the 24 GiB of the development machines
DEFAULT_MAX_BUILD_SECONDS = 2.0

# Front-end memory per item, measured with tracemalloc over parse → lower on RAT and PD circuits
# (peak bytes / count, rounded up): the IR's Python objects and the plan's index arrays.
BYTES_PER_VARIABLE = 500
BYTES_PER_NODE = 1_000  # a region or a partition
BYTES_PER_SCOPE_ENTRY = 40  # one variable in one region's scope
# Float64 host copies of the parameters besides the backend's: initial values, best-so-far and
# last-good snapshots while training.
HOST_COPIES = 3
# Front-end CPU seconds per item: a least-squares fit of parse+build+verify+layer times on nine
# RAT and PD circuits (scaled to an idle core of the 2-core development VM; see
# benchmarks/README.md, "Front-end size limits").
SECONDS_PER_VARIABLE = 1.2e-5
SECONDS_PER_REGION = 2.0e-5
SECONDS_PER_PARTITION = 2.2e-5
SECONDS_PER_SCOPE_ENTRY = 0.5e-6


@dataclass(frozen=True)
class SizeLimits:
    """The limits a circuit must fit, and the dtype its parameters are counted at."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_build_seconds: float = DEFAULT_MAX_BUILD_SECONDS
    dtype: str = "float32"

    @property
    def partition_budget(self) -> int:
        """More partitions than this alone exceed the time limit (bounds the PD axis counts)."""
        return int(self.max_build_seconds / SECONDS_PER_PARTITION) + 1


@dataclass(frozen=True)
class SizeEstimate:
    """What a circuit would hold: counts, parameters, and bytes at ``dtype``."""

    variables: int
    regions: int
    partitions: int
    scope_entries: int  # Σ |scope| over the regions
    parameters: int
    dtype: str = "float32"
    # floats the vae leaves' networks hold for one data row at the default query IWAE samples
    # (activations, noise and decoder outputs of every sample): a large `latent` or `hidden`
    # that fits as parameters can still not run a single row
    row_floats: int = 0

    @property
    def bytes(self) -> int:
        itemsize = np.dtype(self.dtype).itemsize
        return (
            self.parameters * (itemsize + HOST_COPIES * 8)
            + self.variables * BYTES_PER_VARIABLE
            + (self.regions + self.partitions) * BYTES_PER_NODE
            + self.scope_entries * BYTES_PER_SCOPE_ENTRY
            + self.row_floats * itemsize
        )

    @property
    def build_seconds(self) -> float:
        """Estimated front-end time (parse to layers) on one idle core."""
        return (
            self.variables * SECONDS_PER_VARIABLE
            + self.regions * SECONDS_PER_REGION
            + self.partitions * SECONDS_PER_PARTITION
            + self.scope_entries * SECONDS_PER_SCOPE_ENTRY
        )

    def describe(self) -> str:
        parts = []
        if self.partitions or self.regions:
            parts.append(f"{format_count(self.regions)} regions and {format_count(self.partitions)} partitions")
        else:
            parts.append(f"{format_count(self.variables)} variables")
            if self.scope_entries:
                parts.append(f"{format_count(self.scope_entries)} variables listed in scopes")
        if self.parameters:
            parts.append(f"about {format_count(self.parameters)} parameters")
        if self.row_floats:
            parts.append(f"vae networks holding {format_count(self.row_floats)} values per data row "
                         f"at the default IWAE samples")
        return f"{', '.join(parts)}: about {format_bytes(self.bytes)} at {self.dtype}"


def format_count(count: int) -> str:
    """``1,234,567``; numbers too long to read as digits in scientific notation."""
    digits = str(count)
    if len(digits) <= 15:
        return f"{count:,}"
    return f"{digits[0]}.{digits[1:3]}e+{len(digits) - 1}"


def format_bytes(count: int) -> str:
    unit_index = 0
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")
    while count >= 1024 * 1024 and unit_index < len(units) - 2:
        count //= 1024
        unit_index += 1
    if count < 1024 and unit_index == 0:
        return f"{count:,} bytes"
    value = count / 1024 if count < 2**60 else count // 1024
    if value < 10**15:
        return f"{value:,.1f} {units[unit_index + 1]}"
    return f"{format_count(int(value))} {units[unit_index + 1]}"


def limit_problem(estimate: SizeEstimate, limits: SizeLimits, what: str = "the circuit") -> str | None:
    """Why ``estimate`` does not fit ``limits`` (a message with the numbers), or None."""
    if estimate.build_seconds > limits.max_build_seconds:
        return (
            f"{what} would have {estimate.describe()}; building it would take about "
            f"{_seconds(estimate.build_seconds)}, more than the limit of "
            f"{limits.max_build_seconds:g} s; raise it with --max-build-seconds or "
            f"CompileOptions(max_build_seconds=...) if you mean it"
        )
    if estimate.bytes > limits.max_bytes:
        return (
            f"{what} would need {estimate.describe()}; that is more than the limit of "
            f"{format_bytes(limits.max_bytes)}; raise it with --max-memory or "
            f"CompileOptions(max_bytes=...) if the machine has the memory"
        )
    return None


def _seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} hours"
    return f"{format_count(int(seconds / 86400))} days"


def estimate_random_binary_trees(num_variables: int, depth: int, replicas: int, dtype: str) -> SizeEstimate:
    """RAT-SPN structure (exact): regions 1 + R(2^(D+1) − 2), partitions R(2^D − 1); every level
    of every replica covers each variable once."""
    leaves_per_replica = 2**depth
    regions = 1 + replicas * (2 * leaves_per_replica - 2)
    partitions = replicas * (leaves_per_replica - 1)
    scope_entries = num_variables * (1 + replicas * depth)
    return SizeEstimate(num_variables, regions, partitions, scope_entries, 0, dtype)


@dataclass(frozen=True)
class AxisCount:
    """The reachable intervals of one grid axis (Poon–Domingos), counted without building them."""

    intervals: int
    cuts: int  # Σ over intervals of their cut positions (partitions along this axis)
    length_sum: int  # Σ interval lengths
    complete: bool  # False when counting stopped at the budget (the counts are lower bounds)


def count_axis(length: int, steps: Sequence[int], budget: int) -> AxisCount:
    """Count the intervals of [0, length) reachable by cutting at multiples of ``steps`` from an
    interval's start (the 1-D closure the PD generator takes per axis). Work stops once ``budget``
    intervals or cut positions have been seen, so an absurd grid costs no more than the budget;
    the counts are then lower bounds (``complete`` is False)."""
    seen: set[tuple[int, int]] = set()
    pending = [(0, length)]
    cuts = length_sum = 0
    steps = sorted({int(s) for s in steps if s >= 1})
    while pending:
        start, stop = pending.pop()
        if (start, stop) in seen:
            continue
        # count before enumerating: one interval of a huge axis can hold millions of cuts
        upper = sum((stop - start - 1) // s for s in steps)
        if len(seen) + cuts + upper >= budget:
            return AxisCount(len(seen) + 1, cuts + upper, length_sum, False)
        seen.add((start, stop))
        length_sum += stop - start
        positions = {p for s in steps for p in range(start + s, stop, s)}
        cuts += len(positions)
        for position in positions:
            pending.append((start, position))
            pending.append((position, stop))
    return AxisCount(len(seen), cuts, length_sum, True)


def estimate_poon_domingos(height: int, width: int, row_steps: Sequence[int], column_steps: Sequence[int],
                           dtype: str, budget: int) -> SizeEstimate:
    """PD structure from the two axes: regions = row intervals × column intervals, partitions =
    each axis's cuts × the other axis's intervals. When an axis has more than ``budget`` intervals
    or cuts the counts are lower bounds (and already far over any sensible limit)."""
    rows = count_axis(height, row_steps, budget)
    columns = count_axis(width, column_steps, budget)
    regions = rows.intervals * columns.intervals
    partitions = rows.cuts * columns.intervals + columns.cuts * rows.intervals
    scope_entries = rows.length_sum * columns.length_sum
    return SizeEstimate(height * width, regions, partitions, scope_entries, 0, dtype)
