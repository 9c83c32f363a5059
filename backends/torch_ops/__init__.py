"""Torch rules of the plan op kinds beyond the EiNet core (input, einsum, mixing), one module per
kind. ``backends.torch_backend.OP_RULES`` maps each op type to its ``TorchOpRule``; the backward
pass is autograd's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TorchOpRule:
    """How the torch backend runs one op kind.

    ``forward(backend, op, params, values, max_product) -> value`` is the upward pass, sum-product
    or max-product. ``backtrack(backend, op, params, values, choice, chosen, sampler, mpe)`` is the
    top-down pass: ``chosen`` (rows, B) is the entry of each output row every sample selected (−1
    where the sample does not reach the row); the rule writes its selections for the rows it
    read into ``choice`` (through ``backend._write``), by arg-max (MPE) or Gumbel-max (sampling).
    """

    forward: Callable[..., Any]
    backtrack: Callable[..., None]
