"""The mixing op on torch: regions with C > 1 partitions mix them with weights (paper eq. 5),
forward and max-product, and the top-down choice of a component.

    S[m,b,k] = log Σ_c V[m,c,k] exp(S_c[m,b,k])      (log-sum-exp over c, shifted by its maximum)

EM statistics come from autograd: n = V · ∂ Σ log p / ∂V.
"""

from __future__ import annotations

from typing import Any

import torch

from einc.backends.base import shifted_exp
from einc.backends.torch_ops import TorchOpRule, log_of_mass, log_sum_exp_shift
from einc.ir.plan import MixingOp


def forward(backend: Any, op: MixingOp, params: dict[str, torch.Tensor], values: list[torch.Tensor],
            max_product: bool, data: Any = None) -> torch.Tensor:
    rows = backend._read(op.input, values)
    m, c = op.rows, op.components
    stacked = rows.reshape(m, c, rows.shape[1], rows.shape[2])  # (M, C, B, K)
    weights = params[op.param]  # (M, C, K)
    if max_product:
        return (torch.log(weights)[:, :, None, :] + stacked).amax(1)
    if backend.batch_minor:  # work in the stored order (M, C, K, B)
        stacked, weights = stacked.transpose(2, 3), weights[..., None]
    else:
        weights = weights[:, :, None, :]
    top, empty = log_sum_exp_shift(stacked, 1)  # (M, 1, B, K)
    # (M, C, B, K) x (M, C, 1, K) -> (M, B, K), or batch-minor (M, C, K, B) x (M, C, K, 1) -> (M, K, B)
    mixed = (shifted_exp(torch, stacked, top) * weights).sum(1)
    value = log_of_mass(mixed, top[:, 0], empty[:, 0])
    return value.transpose(1, 2) if backend.batch_minor else value


def backtrack(backend: Any, op: MixingOp, params: dict[str, torch.Tensor], values: list[torch.Tensor],
              choice: list[torch.Tensor], chosen: torch.Tensor, sampler: Any, mpe: bool,
              data: Any = None, output: Any = None) -> None:
    """Each reached row picks a component c by arg-max (MPE) or Gumbel-max (sampling) of
    log V[m,c,k] + S_c[m,b,k] at its chosen k; the chosen component's row keeps that k."""
    reached = chosen >= 0
    k = chosen.clamp(min=0)
    batch_size = chosen.shape[1]
    rows = backend._read(op.input, values)
    m, c = op.rows, op.components
    stacked = rows.reshape(m, c, batch_size, -1)  # (M, C, B, K)
    log_w = torch.log(params[op.param])  # (M, C, K)
    picked_w = torch.gather(log_w, 2, k[:, None, :].expand(m, c, batch_size))  # (M, C, B)
    picked_v = torch.gather(stacked, 3, k[:, None, :, None].expand(m, c, batch_size, 1))[..., 0]
    logits = picked_w + picked_v
    if not mpe:
        logits = logits + sampler.gumbel(logits)
    component = logits.argmax(1)  # (M, B)
    child = torch.full((m, c, batch_size), -1, dtype=torch.long, device=chosen.device)
    child.scatter_(1, component[:, None, :], k[:, None, :])
    child = torch.where(reached[:, None, :], child, torch.full_like(child, -1))
    backend._write(op.input, child.reshape(m * c, batch_size), choice)


RULE = TorchOpRule(forward=forward, backtrack=backtrack)
