"""The input layer's coefficient matrix Θ, shared by every backend (written against ``xp``).

A factorised exponential-family leaf region is Σ_{s,f} F[b,l,s,f] · Θ[l,s,f,k] with augmented
features F = [T(x)·obs, obs, log h(x)·obs, (missing)] and Θ = [θ, −A(θ), 1, (max log f)]; the
log h column exists only for families whose log h is not identically 0 (``FamilyBlock.log_base``),
the last only in a max-product (MPE) pass, where an unobserved variable contributes its mode's
log-density instead of 0.
"""

from __future__ import annotations

from typing import Any

from einc.ir.families import family_rule
from einc.ir.plan import FamilyBlock


def leaf_coefficients(xp: Any, block: FamilyBlock, phi: Any, max_product: bool) -> Any:
    """Θ of one family block from its expectation parameters φ (L, S, K, t): shape (L, S, K, f)."""
    rule = family_rule(block.family)
    log_normalizer = rule.log_normalizer(xp, phi, block.family)
    parts = [rule.natural(xp, phi, block.family), -log_normalizer[..., None]]
    if block.log_base:
        parts.append(xp.ones_like(log_normalizer)[..., None])
    if max_product:
        parts.append(rule.max_log_density(xp, phi, block.family, block.domain)[..., None])
    return xp.concatenate(parts, -1)


def leaf_features(xp: Any, block: FamilyBlock, x: Any, observed: Any, missing: Any | None,
                  axis: int = -1) -> Any:
    """F = [T(x)·obs, obs, (log h(x)·obs), (missing)] of x and its mask (...): shape (..., f),
    or with f at ``axis`` of the result.

    ``missing`` (max-product passes only) is 1 where a real factor is unobserved, else None.
    ``axis=1`` for a batch-minor x (n, B) gives (n, f, B): every part is moved there first (views)
    and joined along f before the batch, a cat of whole batch rows, where a join along a last axis
    of 1-wide pieces is an element-by-element copy, ~20x slower on the CPU (230 µs for 154 × 512
    pairs; issue 18, sixth round).
    """
    rule = family_rule(block.family)

    def placed(part: Any) -> Any:  # (..., t) with t moved to ``axis``: a view
        return xp.moveaxis(part, -1, axis)

    mask = placed(observed[..., None])
    parts = [placed(rule.sufficient_statistics(xp, x, block.family, block.domain)) * mask, mask]
    if block.log_base:
        parts.append(placed((rule.log_base_measure(xp, x, block.family) * observed)[..., None]))
    if missing is not None:
        parts.append(placed(missing[..., None]))
    return xp.concatenate(parts, axis)
