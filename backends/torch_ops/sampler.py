"""Random draws for the torch backend's top-down passes (leaf sampling, Gumbel-max choices)."""

from __future__ import annotations

import torch


class TorchSampler:
    """Random draws for leaf sampling, from one seeded torch.Generator."""

    xp = torch

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def uniform(self, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def standard_normal(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def binomial(self, n: float, p: torch.Tensor) -> torch.Tensor:
        counts = torch.full_like(p, float(n))
        return torch.binomial(counts, p, generator=self.generator)

    def poisson(self, rate: torch.Tensor) -> torch.Tensor:
        return torch.poisson(rate, generator=self.generator)

    def categorical(self, probs: torch.Tensor) -> torch.Tensor:
        flat = probs.reshape(-1, probs.shape[-1])
        draws = torch.multinomial(flat, 1, generator=self.generator).reshape(probs.shape[:-1])
        return draws.to(probs.dtype)

    def gumbel(self, like: torch.Tensor) -> torch.Tensor:
        u = self.uniform(like).clamp_(1e-20, 1.0)
        return -torch.log(-torch.log(u))
