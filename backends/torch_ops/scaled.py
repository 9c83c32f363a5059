"""Values in the linear domain with per-(row, sample) log-scales: what the ops' ``linear`` rules
share (issue 18: inference without a per-element exp or log).

A value ``Scaled(linear, scale)`` stands for ``log(linear) + scale``: ``linear`` (rows, K, B) in
the stored (batch-minor) order, ``scale`` (rows, 1, B) or None for 0. Each op renormalises its
output by its maximum over K, so linear values stay in [0, 1] and a product of parts (a hadamard
or an outer product) multiplies them and adds their scales — one scale per row and sample, 1/K
of the elements. A sum is then a plain matmul on linear values: no shift, exp or log of every
element as in the log domain, only a maximum and a multiply per element, a log per row and
sample.

Float32 cannot hold what a log-domain value can: a product of parts whose entries are all far
below 1 underflows to zero. Every renormalisation checks its maxima: a sample whose maximum fell
below ``UNDERFLOW`` (or is not finite, or 0: a probability-0 sample, an indicator leaf that rules
the sample out) is marked in ``LinearPass.suspect``, and the pass loop recomputes those samples in
the log domain (``backends/torch_linear.py``), so the linear domain never answers what it could
only approximate, and −inf, LOG_ZERO and NaN come out exactly as the log-domain path gives them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from einc.ir.plan import Operand, RowIndex, Segment

# Below this maximum over K a value may have lost entries to underflow (the smallest normal float
# is 2^-126 in float32, 2^-1022 in float64): its samples are recomputed in the log domain. Above
# it, what underflows is below 2^-62 (float32) of the row's largest entry, where the log domain's
# own shifted exponentials drop terms too (backends/base.SHIFTED_LOG_FLOOR: e^-80 ≈ 2^-115).
UNDERFLOW = {torch.float32: 2.0**-64, torch.float64: 2.0**-500}


@dataclass
class Scaled:
    """log(linear) + scale: ``linear`` (rows, K, B) stored order, ``scale`` (rows, 1, B) or None (0)."""

    linear: torch.Tensor
    scale: torch.Tensor | None

    def log(self) -> torch.Tensor:
        """The value in the log domain, (rows, K, B) (log 0 = −inf)."""
        logged = torch.log(self.linear)
        return logged if self.scale is None else logged.add_(self.scale)


def add_scales(first: torch.Tensor | None, second: torch.Tensor | None) -> torch.Tensor | None:
    """The scale of a product of two values (None is 0)."""
    if first is None:
        return second
    if second is None:
        return first
    return first + second


class LinearPass:
    """One linear-domain upward pass: the values so far (op order) and the suspect samples."""

    def __init__(self, backend: Any, batch_size: int) -> None:
        self.backend = backend
        self.values: list[Scaled | None] = []
        self.log_threshold = math.log(UNDERFLOW[backend.dtype])
        # the log of every maximum over K the pass renormalised by, (rows, 1, B) each: checked
        # once at the end (``suspect``), not per op (a deep pass is a few hundred small ops,
        # each costing microseconds of dispatch)
        self.log_tops: list[torch.Tensor] = []
        self.marked = torch.zeros(batch_size, dtype=torch.bool, device=backend.device)

    def check(self, log_top: torch.Tensor) -> None:
        """Note the log of a value's maxima over K, (rows, 1, B), for ``suspect``."""
        self.log_tops.append(log_top)

    def mark(self, samples: torch.Tensor) -> None:
        """Mark samples (B,) for the log domain outright (a leaf of no mass, say)."""
        self.marked |= samples

    @property
    def suspect(self) -> torch.Tensor:
        """(B,): samples whose values may have underflowed (a maximum below ``UNDERFLOW``: 0
        too, log −inf), or are not finite (NaN): their answers come from the log domain. A
        maximum of +inf makes its row NaN (inf/inf), which the root's check finds."""
        if not self.log_tops:
            return self.marked
        least = torch.cat(self.log_tops, 0).amin(0)[0]  # (B,), NaN propagates
        return self.marked | ~(least >= self.log_threshold)

    def normalised(self, mixed: torch.Tensor, scale: torch.Tensor | None) -> Scaled:
        """``mixed`` (rows, K, B), a fresh tensor of the op, divided in place by its maximum over
        K, whose log joins ``scale``: values in [0, 1] again. A row of maximum 0 becomes NaN:
        its samples are suspect (``check``) and recomputed, and no op mixes samples."""
        top = mixed.amax(1, keepdim=True)  # (rows, 1, B)
        mixed.div_(top)
        logged = top.log_()
        self.check(logged)
        return Scaled(mixed, logged if scale is None else logged + scale)

    def read(self, operand: Operand) -> Scaled:
        """The operand's rows (n, K, B): a view where it is one run of one value, else the
        concatenation of its segments' rows."""
        pieces = [self.segment(segment) for segment in operand.segments]
        if len(pieces) == 1:
            return pieces[0]
        linear = torch.cat([piece.linear for piece in pieces], 0)
        if all(piece.scale is None for piece in pieces):
            return Scaled(linear, None)
        scales = [piece.scale if piece.scale is not None else piece.linear.new_zeros((piece.linear.shape[0], 1,
                                                                                       piece.linear.shape[2]))
                  for piece in pieces]
        return Scaled(linear, torch.cat(scales, 0))

    def segment(self, segment: Segment) -> Scaled:
        """One segment's rows (n, K, B): a view of a run, or one gather of its rows."""
        value = self.values[segment.value]
        assert value is not None, "a value read after its last reader"
        if isinstance(segment, RowIndex):
            index = self.backend._index(segment.rows)
            return Scaled(value.linear.index_select(0, index),
                          None if value.scale is None else value.scale.index_select(0, index))
        if segment.start == 0 and segment.stop == value.linear.shape[0]:
            return value
        rows = slice(segment.start, segment.stop)
        return Scaled(value.linear[rows], None if value.scale is None else value.scale[rows])
