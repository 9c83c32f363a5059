"""The vae (neural leaf) op on torch: K VAE experts per leaf region as one batched ensemble.

Every MLP layer of all L·K experts of the op is one batched matmul — weights (L, K, in, out),
activations (L·K, rows, in) — not a Python loop over experts (which made the paper's SPVAE about
5x slower than a single VAE, its §5). A leaf region's value is the k-sample IWAE estimate

    log p̂_k(x) = log 1/k Σ_i p(x_obs | z_i) p(z_i) / q(z_i | x),   z_i = μ(x) + σ(x) ε_i,

streamed over the k samples in chunks of bounded memory (a running log-sum-exp). Unobserved
columns drop out of p(x_obs | z) — importance sampling with any proposal is still unbiased for the
marginal p(x_obs), but q was trained on complete regions, so the estimate is looser; a region
with no observed column is exactly 0 (its marginal is 1), so marginalisation stays exact at
region granularity. The decoder's log-density is computed from the unconstrained outputs
(logits, log-rates, mean and log-variance), never through clipped probabilities.

Max-product passes use the same estimate: max over a VAE's unobserved columns is intractable, so
MPE with vae leaves maximises over the circuit's sum choices with each expert's marginal of its
observed columns, then emits the decoder's mode at the best importance-weighted latent. Sampling
is ancestral: z ~ N(0, I) for a region with nothing observed (exact), else sampling-importance-
resampling of the k proposals (consistent as k grows).

EM has no rule here: network weights are trained by gradient (``Model.fit(method="adam")``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from einc.backends.torch_ops import LeafOutput, Noise, PassData, TorchOpRule
from einc.ir.families import FAMILIES
from einc.ir.neural import SAMPLE_CHUNK_ELEMENTS, VaeSpec
from einc.ir.plan import VaeOp
from einc.ir.region_graph import Domain, LeafFamily

_LOG_2PI = math.log(2.0 * math.pi)
# σ of q(z | x) is softplus(s) + this: never 0, so log q stays finite
MIN_STD = 1e-4
# Elements of the per-chunk decoder outputs (L·K·samples·B·D·t) materialised at once (the
# memory checks count with the same budget: VaeSpec.pass_floats).
_CHUNK_ELEMENTS = SAMPLE_CHUNK_ELEMENTS


# ---------------------------------------------------------------- decoder log-densities
def _binomial_log_density(x: torch.Tensor, u: torch.Tensor, decoder: LeafFamily) -> torch.Tensor:
    # log C(n, x) + x·u − n·softplus(u): u the logit; exact for any u (no clipped p)
    n = decoder.arg("n") if decoder.name == "binomial" else 1.0
    logit = u[..., 0]
    log_choose = 0.0
    if n != 1.0:
        xc = x.clamp(0.0, n)
        log_choose = math.lgamma(n + 1.0) - torch.lgamma(xc + 1.0) - torch.lgamma(n - xc + 1.0)
    return log_choose + x * logit - n * F.softplus(logit)


def _categorical_log_density(x: torch.Tensor, u: torch.Tensor, decoder: LeafFamily) -> torch.Tensor:
    # log softmax(u)[x]; x broadcasts against u's leading axes
    index = x.long().clamp(0, u.shape[-1] - 1)
    index = index.expand(u.shape[:-1])[..., None]
    return torch.gather(torch.log_softmax(u, -1), -1, index)[..., 0]


def _normal_log_density(x: torch.Tensor, u: torch.Tensor, decoder: LeafFamily) -> torch.Tensor:
    mean = u[..., 0]
    log_var = u[..., 1].clamp(math.log(decoder.arg("min_var")), math.log(decoder.arg("max_var")))
    return -0.5 * (_LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def _poisson_log_density(x: torch.Tensor, u: torch.Tensor, decoder: LeafFamily) -> torch.Tensor:
    log_rate = u[..., 0]
    return x * log_rate - torch.exp(log_rate) - torch.lgamma(x.clamp(min=0.0) + 1.0)


# log p(x | u) per column from the decoder's unconstrained outputs u (..., t); the same u's
# constrained form (ir.families' `constrained`) is what sampling, means and modes read
DECODER_LOG_DENSITIES = {
    "bernoulli": _binomial_log_density,
    "binomial": _binomial_log_density,
    "categorical": _categorical_log_density,
    "normal": _normal_log_density,
    "poisson": _poisson_log_density,
}


def encoder_input(x: torch.Tensor, observed: torch.Tensor, decoder: LeafFamily, domain: Domain) -> torch.Tensor:
    """What an encoder reads: values scaled to about [0, 1] (counts log1p), 0 where unobserved."""
    if decoder.name == "binomial":
        scaled = x / decoder.arg("n")
    elif decoder.name == "categorical":
        scaled = x / (domain.size - 1)
    elif decoder.name == "poisson":
        scaled = torch.log1p(x.clamp(min=0.0))
    else:  # bernoulli (0/1), normal (as given)
        scaled = x
    return scaled * observed


# ---------------------------------------------------------------- the ensemble
def _layer(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, last: bool) -> torch.Tensor:
    """One layer of every expert: (E, N, in) x (E, in, out) + (E, 1, out) -> (E, N, out)."""
    experts = weight.shape[0] * weight.shape[1]
    fan_in, fan_out = weight.shape[-2:]
    out = torch.baddbmm(bias.reshape(experts, 1, fan_out), h, weight.reshape(experts, fan_in, fan_out))
    return out if last else F.softplus(out)


def encode(op: VaeOp, params: dict[str, torch.Tensor], x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z | x) of every expert: (μ, σ), each (L, K, B, Z), from the regions' inputs (L, B, D)."""
    rows, batch, width = x_in.shape
    # the K experts of a region read the same x: (L, B, D) -> (L·K, B, D)
    h = x_in[:, None].expand(rows, op.k, batch, width).reshape(rows * op.k, batch, width)
    for number, (weight, bias) in enumerate(op.encoder):
        h = _layer(h, params[weight], params[bias], number == len(op.encoder) - 1)
    latent = h.shape[-1] // 2
    out = h.reshape(rows, op.k, batch, 2 * latent)
    return out[..., :latent], F.softplus(out[..., latent:]) + MIN_STD


def decode(op: VaeOp, params: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """The decoders' unconstrained outputs (L, K, N, D, t) at latents z (L, K, N, Z)."""
    rows, k, count, latent = z.shape
    h = z.reshape(rows * k, count, latent)
    for number, (weight, bias) in enumerate(op.decoder):
        h = _layer(h, params[weight], params[bias], number == len(op.decoder) - 1)
    return h.reshape(rows, k, count, op.width, -1)


def log_weights(op: VaeOp, params: dict[str, torch.Tensor], x: torch.Tensor, observed: torch.Tensor,
                mu: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log p(x_obs | z) + log p(z) − log q(z | x) for z = μ + σ ε: (L, K, S, B).

    x, observed (L, B, D); μ, σ (L, K, B, Z); ε (L, K, S, B, Z).
    """
    rows, k, samples, batch, latent = eps.shape
    z = mu[:, :, None] + sigma[:, :, None] * eps  # (L, K, S, B, Z)
    u = decode(op, params, z.reshape(rows, k, samples * batch, latent))  # (L, K, S·B, D, t)
    u = u.reshape(rows, k, samples, batch, op.width, -1)
    decoder = VaeSpec.of(op.family).decoder
    # (L, 1, 1, B, D) against (L, K, S, B, D, t) -> (L, K, S, B, D), summed over observed columns
    log_px = DECODER_LOG_DENSITIES[decoder.name](x[:, None, None], u, decoder)
    log_px = (log_px * observed[:, None, None]).sum(-1)
    log_prior = -0.5 * (z * z).sum(-1)  # the 2π terms of p and q cancel
    log_q = -0.5 * (eps * eps).sum(-1) - torch.log(sigma).sum(-1)[:, :, None]
    return log_px + log_prior - log_q


def iwae(op: VaeOp, params: dict[str, torch.Tensor], x: torch.Tensor, observed: torch.Tensor,
         eps: torch.Tensor) -> torch.Tensor:
    """The IWAE estimate (L, K, B) with the given noise ε (L, K, S, B, Z), in one piece."""
    decoder = VaeSpec.of(op.family).decoder
    mu, sigma = encode(op, params, encoder_input(x, observed, decoder, op.domain))
    weights = log_weights(op, params, x, observed, mu, sigma, eps)
    return torch.logsumexp(weights, 2) - math.log(eps.shape[2])


def region_data(backend: Any, op: VaeOp, data: PassData) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's regions' values and mask, (L, B, D), gathered from the batch (B, C+1)."""
    flat = backend._index(tuple(column for row in op.columns for column in row))  # (L·D,)
    batch = data.x.shape[0]
    x = data.x.index_select(1, flat).reshape(batch, op.rows, op.width).transpose(0, 1)
    observed = data.observed.index_select(1, flat).reshape(batch, op.rows, op.width).transpose(0, 1)
    return x, observed


def _noise(like: torch.Tensor, shape: tuple[int, ...], noise: Noise) -> torch.Tensor:
    if noise.generator is None:
        # no generator argument at all: torch.compile traces this form with symbolic batch sizes
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=noise.generator, device=like.device, dtype=like.dtype)


def _chunk(op: VaeOp, params: dict[str, torch.Tensor], batch: int, samples: int) -> int:
    """IWAE samples per chunk, so that the decoder outputs of a chunk stay under the budget."""
    last_weight = params[op.decoder[-1][0]]
    widest = max(last_weight.shape[-1], *(params[w].shape[-1] for w, _ in op.decoder))
    per_sample = op.rows * op.k * batch * widest
    return max(1, min(samples, _CHUNK_ELEMENTS // max(1, per_sample)))


def forward(backend: Any, op: VaeOp, params: dict[str, torch.Tensor], values: list[torch.Tensor],
            max_product: bool, data: PassData) -> torch.Tensor:
    """(L, B, K): each expert's IWAE estimate (also in max-product passes: see the module doc)."""
    x, observed = region_data(backend, op, data)  # (L, B, D)
    decoder = VaeSpec.of(op.family).decoder
    mu, sigma = encode(op, params, encoder_input(x, observed, decoder, op.domain))  # (L, K, B, Z)
    samples = data.noise.samples
    step = _chunk(op, params, x.shape[1], samples)
    running = None
    for start in range(0, samples, step):
        count = min(step, samples - start)
        eps = _noise(mu, (op.rows, op.k, count, x.shape[1], mu.shape[-1]), data.noise)
        chunk = torch.logsumexp(log_weights(op, params, x, observed, mu, sigma, eps), 2)  # (L, K, B)
        running = chunk if running is None else torch.logaddexp(running, chunk)
    assert running is not None
    estimate = running - math.log(samples)
    # a region with nothing observed has marginal 1: exactly 0, whatever the estimate says
    seen = (observed.sum(-1) > 0)[:, None, :]  # (L, 1, B)
    value = torch.where(seen, estimate, torch.zeros_like(estimate))  # (L, K, B)
    # indexed (L, B, K); stored batch-minor on the CPU, as the contractions there want it
    value = value.transpose(1, 2)
    return value if backend.batch_minor else value.contiguous()


def backtrack(backend: Any, op: VaeOp, params: dict[str, torch.Tensor], values: list[torch.Tensor],
              choice: list[torch.Tensor], chosen: torch.Tensor, sampler: Any, mpe: bool,
              data: PassData, output: LeafOutput) -> None:
    """Emit the chosen expert's values for the unobserved columns of every reached region.

    z: a prior draw where the region has nothing observed; else one of k proposals from
    q(z | x_obs), picked by Gumbel-max (sampling) or arg-max (MPE) of its importance weight.
    Then the decoder at z gives a sample, the mean or the mode of each unobserved column.
    """
    reached = chosen >= 0  # (L, B)
    expert = chosen.clamp(min=0)
    x, observed = region_data(backend, op, data)  # (L, B, D)
    rows, batch, width = x.shape
    spec = VaeSpec.of(op.family)
    decoder = spec.decoder
    noise = Noise(data.noise.samples, sampler.generator)
    mu, sigma = encode(op, params, encoder_input(x, observed, decoder, op.domain))  # (L, K, B, Z)
    eps = _noise(mu, (rows, op.k, noise.samples, batch, spec.latent), noise)
    logits = log_weights(op, params, x, observed, mu, sigma, eps)  # (L, K, S, B)
    if not mpe:
        logits = logits + sampler.gumbel(logits)
    pick = logits.argmax(2)  # (L, K, B)
    proposal = torch.gather(eps, 2, pick[:, :, None, :, None].expand(rows, op.k, 1, batch, spec.latent))[:, :, 0]
    z = mu + sigma * proposal  # (L, K, B, Z)
    prior = _noise(mu, z.shape, noise)
    if mpe:
        prior = torch.zeros_like(prior)  # the prior's mode
    seen = (observed.sum(-1) > 0)[:, None, :, None]  # (L, 1, B, 1)
    z = torch.where(seen, z, prior)
    u = decode(op, params, z)  # (L, K, B, D, t)
    # the reached expert of each (region, sample): (L, K, B, D, t) -> (L, B, D, t)
    index = expert[:, None, :, None, None].expand(rows, 1, batch, width, u.shape[-1])
    u = torch.gather(u, 1, index)[:, 0]
    rule = FAMILIES[decoder.name]
    phi = rule.constrained(torch, u, decoder)
    if output.leaf_value == "sample" and not mpe:
        emitted = rule.sample(sampler, phi, decoder)
    elif output.leaf_value == "mean":
        emitted = rule.mean(torch, phi, decoder)
    else:
        emitted = rule.mode(torch, phi, decoder)
    emitted = emitted.to(output.completed.dtype)  # (L, B, D)
    columns = backend._index(tuple(column for row in op.columns for column in row)).reshape(rows, width)
    write = reached[:, :, None] & (observed == 0)  # (L, B, D)
    region, sample, position = torch.nonzero(write, as_tuple=True)
    output.completed[sample, columns[region, position]] = emitted[region, sample, position]


RULE = TorchOpRule(forward=forward, backtrack=backtrack)
