"""The state one top-down pass (sampling or MPE) of the array backend hands every op's backtrack rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Walk:
    """One backtracking pass: the upward values it reads, the choices it writes, the batch it completes.

    ``choice[v][row, b]`` is the entry of row's K-vector that sample b selected (−1: not reached);
    ``completed`` (B, C+1) receives the leaves' values; ``mpe`` picks by arg-max instead of
    Gumbel-max, ``leaf_value`` says how a leaf fills a column (sample, mean or mode)."""

    values: list[Any]
    choice: list[Any]
    data: Any
    completed: Any
    mpe: bool
    leaf_value: str
    sampler: Any
