"""Torch rules of the plan op kinds (input, einsum, mixing, hadamard, vae), one module per kind.
``backends.torch_backend.OP_RULES`` maps each op type to its ``TorchOpRule``; the backward pass
is autograd's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Noise:
    """How stochastic ops (neural leaves) draw in one pass: ``samples`` importance samples per
    leaf (the IWAE k) from ``generator`` (None: torch's global generator, as ``torch.randn``)."""

    samples: int
    generator: Any = None  # torch.Generator | None


@dataclass(frozen=True)
class PassData:
    """What an upward pass reads besides earlier values: the batch, and its noise."""

    x: Any  # (B, columns + 1): values, unobserved entries 0, then the all-zero pad column
    observed: Any  # (B, columns + 1): 1 where observed
    noise: Noise
    # the statistics pass: each input op's Θ per block (by op name), the tensors it differentiates
    coefficients: Any = None  # dict[str, list[torch.Tensor]] | None


@dataclass(frozen=True)
class LeafOutput:
    """Where a top-down pass writes what the leaves it reaches emit for unobserved columns."""

    completed: Any  # (B, columns + 1): the evidence, completed in place
    leaf_value: str  # "sample", "mean" or "mode"


@dataclass(frozen=True)
class TorchOpRule:
    """How the torch backend runs one op kind.

    ``forward(backend, op, params, values, max_product, data) -> value`` is the upward pass,
    sum-product or max-product; ``data`` (``PassData``) is the batch, for ops that read it.
    ``backtrack(backend, op, params, values, choice, chosen, sampler, mpe, data, output)`` is the
    top-down pass: ``chosen`` (rows, B) is the entry of each output row every sample selected (−1
    where the sample does not reach the row); the rule writes its selections for the rows it
    read into ``choice`` (through ``backend._write``), by arg-max (MPE) or Gumbel-max (sampling),
    and a leaf op writes its values for unobserved columns into ``output`` (``LeafOutput``).
    """

    forward: Callable[..., Any]
    backtrack: Callable[..., None]
    # ``defer(backend, op, params, max_product, data)``: the value as an object whose rows are
    # computed where they are read (``range(start, stop)``, ``gather(rows)``), or None to
    # compute it whole; used by the passes that need only the root (backends/torch_backend.py)
    defer: Callable[..., Any] | None = None


def log_sum_exp_shift(values: Any, dim: int) -> tuple[Any, Any]:
    """(shift, empty) for a log-sum-exp over ``dim`` (kept): the detached maximum, 0 where every
    entry is −inf (so no NaN appears), and a mask of those slices, which carry no mass."""
    import torch

    top = values.detach().amax(dim, keepdim=True)
    empty = top == float("-inf")
    return torch.where(empty, torch.zeros_like(top), top), empty


def log_of_mass(mixed: Any, shift: Any, empty: Any) -> Any:
    """log(mixed) + shift, and −inf exactly where the inputs carried no mass (``empty``).

    An empty slice arises when clamped latents rule out every state (a hadamard product of two
    latents that are one hidden variable, clamped to different states). There the floored
    shifted exponentials would leave a spurious e^-80 (or an underflowed 0, whose log has an
    infinite gradient): the mixture is set to 1 before the log and the result to −inf after, so
    the value is exact and no NaN enters the gradients of the other samples.
    """
    import torch

    if mixed.device.type == "cpu" and not bool(empty.any()):
        # the common case, checked where a host sync is free: two full passes fewer (a CUDA
        # pass stays sync-free so that it can be captured as a graph)
        # in place on log's fresh output (its backward needs its input, not its output)
        return torch.log(mixed).add_(shift)
    return (torch.log(mixed.masked_fill(empty, 1.0)) + shift).masked_fill(empty, float("-inf"))
