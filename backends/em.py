"""The EM M-step as one pure function of parameters and expected statistics (paper eqs. 7–9).

Written against an array namespace ``xp`` so that every backend runs the same update.
A weight vector or leaf component that received no posterior mass keeps its parameters: the
mini-batch estimate is undefined there, and replacing it by 0/0 is how NaNs enter other libraries.

Sum weights of every op kind are updated alike: counts normalised over the axes their
``ParamSpec.normalised_over`` names. A pseudocount α > 0 is Laplace smoothing (a symmetric
Dirichlet prior, MAP-EM) with the convention of Juice.jl and PyJuice: α pseudo-observations per
distribution, spread evenly over its n outcomes — a weight vector gets n + α/n on each entry and
its total n + α, a categorical leaf α/n per category, a Bernoulli α/2 on each side (the family's
``pseudocounts`` rule). So the prior's strength does not grow with the fan-out: an einsum row of
K² weights gets as much as a hadamard row of K. Then nothing is left without mass. Leaf families
with fixed parameters (indicators) are never updated.

The prior is added at *every* M-step, to that step's counts — in online EM (``update="batch"``)
to each mini-batch's (PyJuice's mini-batch convention), so its weight against the data is α per
batch of B rows, α·N/B over an epoch of N rows, not α per data set; and a distribution's counts
in a batch are its unit's flow, about B/K when a region's K units share the batch. The shrinkage
towards uniform, α/(flow + α) per distribution, thus grows with K/B and is paid at every region of
the circuit. On 14×14 binarised MNIST (batch 100, ``benchmarks/lvd_pg_tuning.md``) α = 0.1 cost
0.03 bpd at K = 4 and 0.04 at K = 8 against α = 0.001; keep α well below B/K.
"""

from __future__ import annotations

import math
from typing import Any

from einc.ir.families import family_rule
from einc.ir.plan import Plan

# Posterior mass below this is "no mass" (float32 sums of exact zeros stay exactly zero).
NO_MASS = 1e-30
# Sum weights are kept strictly positive so the log-einsum-exp trick stays finite (paper §3.2).
MIN_WEIGHT = 1e-12
# What Model.fit and `einc train` use: 0.01 pseudo-observations per distribution, spread over its
# outcomes: small enough to leave well-fed estimates as they are, large enough that a weight row
# or category no sample reached in a batch gets no exact zero.
DEFAULT_PSEUDOCOUNT = 0.01
# Leaf parameters are updated in blocks of rows of at most this many entries (``em_update``).
_BLOCK_ENTRIES = 1 << 20
# Sum weights on the CPU in blocks of rows of about this many entries (``_normalise``): 1 MB of
# float32, about a core's L2 cache.
_CACHE_BLOCK_ENTRIES = 1 << 18


def _normalise(xp: Any, counts: Any, axes: tuple[int, ...], old: Any, step_size: float,
               pseudocount: float = 0.0, gradients: bool = False) -> Any:
    """w_batch = (n + α/m) / (Σn + α) over ``axes`` (m entries); w ← (1−λ) w + λ w_batch; kept
    ≥ MIN_WEIGHT and normalised. ``gradients``: ``counts`` holds ∂ Σ log p / ∂w, and n = w · ∂
    is made here (on the CPU block by block, in the cache, where it is read anyway).

    On the CPU in blocks of leading rows (a row's weights are normalised within the row) of
    about a core's L2 cache, written in place into the result, so that the update's passes run
    over a block that is still in the cache: a RAT K=40 layer's (80, 40, 40, 40) weights, 20 MB,
    took 20 against 35-67 ms (2-core Xeon, 1 thread). Elsewhere (CUDA, CuPy, a traced
    torch.compile graph) one block of fresh arrays: each block would cost its own kernels, and
    the mass is not checked on the host (a sync)."""
    entries = math.prod(counts.shape[axis] for axis in axes)
    per_entry = pseudocount / entries
    rows = old.shape[0] if old.ndim else 1
    step = max(1, _CACHE_BLOCK_ENTRIES // max(1, math.prod(old.shape[1:])))
    host = _in_host_memory(old)
    if 0 in axes or not host:
        return _normalise_block(xp, counts, axes, old, step_size, per_entry, gradients=gradients, host=host)
    new = xp.empty_like(old)
    for start in range(0, rows, step):
        block = slice(start, start + step)
        _normalise_block(xp, counts[block], axes, old[block], step_size, per_entry, new[block], gradients, host)
    return new


def _normalise_block(xp: Any, counts: Any, axes: tuple[int, ...], old: Any, step_size: float, per_entry: float,
                     out: Any = None, gradients: bool = False, host: bool = False) -> Any:
    """``_normalise`` of a block of rows, in place on its estimate in ``out`` (a fresh array
    where None); ``counts`` (the caller's statistics) stay as they are. The first pass reads the
    counts, or the gradients and the old weights (n = w · ∂ made in ``out``: the pass over every
    weight that ``_counts`` would take, here on a block that the next passes find in the cache).
    In ``host`` memory the mass is checked on the host (free there, and it saves a ``where``
    pass; elsewhere a sync); torch mixes old and new weights in one ``lerp_``. (A form with fewer
    passes, n·f + w·g with per-row factors, was no faster on RAT K=40's 38 MB of weights, which
    memory bounds, and 1.7× slower on an HCLT's small ones, which the number of ops bounds.)"""
    if out is None:
        out = xp.empty_like(old)
    if gradients:
        xp.multiply(counts, old, out=out)  # n = w · ∂ Σ log p / ∂w
        if per_entry:
            out += per_entry
    else:
        xp.add(counts, per_entry, out=out)
    total = out.sum(axis=axes, keepdims=True)
    has_mass = total > NO_MASS
    out /= xp.where(has_mass, total, 1.0)
    if not host or not bool(has_mass.all()):  # rows no sample reached keep their weights
        out[...] = xp.where(has_mass, out, old)
    if hasattr(out, "lerp_"):  # torch: (1−λ) w + λ w_batch in one pass
        out.lerp_(old, 1.0 - step_size)
    else:  # old + λ (estimate − old), in place
        out -= old
        out *= step_size
        out += old
    xp.clip(out, MIN_WEIGHT, None, out=out)
    out /= out.sum(axis=axes, keepdims=True)
    return out


def _in_host_memory(array: Any) -> bool:
    """Whether ``array`` is a NumPy array or a CPU torch tensor outside a torch.compile trace."""
    device = getattr(array, "device", "cpu")
    if isinstance(device, str):  # NumPy (2.x names its device "cpu"; 1.x has none)
        return device == "cpu"
    if getattr(device, "type", None) != "cpu":  # CUDA tensors; a CuPy Device has no type
        return False
    import torch

    return not torch.compiler.is_compiling()


def _leaf_update(xp: Any, rule: Any, family: Any, old: Any, sum_pt: Any, sum_p: Any, per_statistic: Any,
                 pseudocount: float, step_size: float) -> Any:
    """φ ← (1−λ) φ + λ φ_batch for a block of leaf rows (``sum_p`` already smoothed)."""
    if per_statistic is not None:
        sum_pt = sum_pt + pseudocount * per_statistic
    has_mass = (sum_p > NO_MASS)[..., None]
    estimate = xp.where(has_mass, sum_pt / xp.where(has_mass, sum_p[..., None], 1.0), old)
    del sum_pt  # the smoothed copy, if any, is not needed past here
    estimate = rule.project(xp, estimate, family)
    # old + λ (estimate − old), in place on the projection's fresh result: one temporary of the
    # block's size fewer at each step
    estimate -= old
    estimate *= step_size
    estimate += old
    return rule.project(xp, estimate, family)


def em_update(xp: Any, plan: Plan, params: dict[str, Any], weight_counts: dict[str, Any],
              leaf_stats: dict[str, tuple[Any, Any]], step_size: float,
              pseudocount: float = 0.0, weight_gradients: bool = False) -> dict[str, Any]:
    """Return new parameters: w ← (1−λ) w + λ w_batch,  φ ← (1−λ) φ + λ φ_batch.
    ``weight_gradients``: ``weight_counts`` holds the E-step's ∂ Σ log p / ∂w, taken at these
    ``params``, not yet multiplied by w (a pass over every weight fewer; ``_normalise``)."""
    new = dict(params)
    for spec in plan.params:
        if spec.free:
            continue  # network weights have no M-step (gradient training only)
        if spec.kind != "leaf":
            # sum weights of any op kind, e.g. einsum (L, K, i, j) over (i, j), mixing (M, C, K)
            # over C, hadamard (L, K, j) over j
            new[spec.name] = _normalise(
                xp, weight_counts[spec.name], spec.normalised_over, params[spec.name], step_size, pseudocount,
                weight_gradients,
            )
        else:
            assert spec.family is not None and spec.domain is not None
            rule = family_rule(spec.family)
            if rule.fixed:
                continue
            sum_pt, sum_p = leaf_stats[spec.name]  # (L, S, K, t), (L, S, K)
            if pseudocount and rule.pseudocounts is not None:
                per_statistic, per_count = rule.pseudocounts(spec.family, spec.domain)
                sum_p = sum_p + pseudocount * per_count
            else:
                per_statistic = None
            old = params[spec.name]
            rows = old.shape[0]
            # in blocks of leaf rows of at most _BLOCK_ENTRIES parameters: the update makes a few
            # temporaries of its block's size, which a large leaf layer (an MNIST HCLT's
            # categorical leaves: 26 MB at K=32) would otherwise allocate whole, beside the
            # blocks that the E-step just freed and that they do not fit (the process grows)
            step = max(1, _BLOCK_ENTRIES // max(1, math.prod(old.shape[1:])))
            if step >= rows:
                new[spec.name] = _leaf_update(xp, rule, spec.family, old, sum_pt, sum_p, per_statistic,
                                              pseudocount, step_size)
                continue
            updated = xp.empty_like(old)
            for start in range(0, rows, step):
                block = slice(start, start + step)
                updated[block] = _leaf_update(xp, rule, spec.family, old[block], sum_pt[block], sum_p[block],
                                              per_statistic, pseudocount, step_size)
            new[spec.name] = updated
    return new
