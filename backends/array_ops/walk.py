"""The state the array backend's passes hand every op's rule: ``Sweep`` for the backward pass
(EM statistics), ``Walk`` for the top-down pass (sampling or MPE)."""

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


@dataclass(frozen=True)
class Sweep:
    """One backward pass over the plan's steps: the forward pass it differentiates (``values`` and
    what each op ``saved``), the adjoints ∂J/∂values it fills (None: not reached yet), and the
    weight counts and leaf statistics (sufficient statistics, observation count) the rules write."""

    forward: Any
    adjoints: list[Any]
    weights: dict[str, Any]
    leaf: dict[str, tuple[Any, Any]]
