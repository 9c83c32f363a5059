"""Clamped latent variables as log-masks: one mechanism for every backend and every query.

A latent Z on region R (``ir.plan.LatentSlot``) lives on R's row of the plan: its K entries are
log p(x_R | Z = k). Clamping Z = k adds a log-mask to that row after the op that computes it —
0 on entry k, −inf on the others — so every consumer sees p(x_R | Z = k) at entry k and nothing
elsewhere. Because every induced tree passes through R (``compiler.verify``), the root is linear
in R's entries and then computes log p(x, Z = k); a latent clamped to −1 gets a zero mask
(nothing dropped) and is summed out, as a missing variable is marginalised by zero features.

Every query follows without a rule of its own:

- ``log p(x, z)``: the masked forward pass;
- the EM E-step on log p(x, z): the same statistics of the masked pass (the adjoint of an added
  mask is the identity, so the derived backward plan is unchanged);
- the posterior p(Z = k | x) = ∂ log p(x) / ∂ mask[k]: the adjoint (the gradient) of the mask;
- sampling and MPE given z: top-down backtracking reads the masked values, so no masked state is
  ever chosen.
"""

from __future__ import annotations

from typing import Any


def log_mask(xp: Any, chosen: Any, states: Any, zero: Any, excluded: Any) -> Any:
    """The (R, B, K) log-mask of R latent rows from their (R, B) chosen states (−1: summed out).

    ``states`` is arange(K) and ``zero``/``excluded`` are 0 and −inf as 0-d arrays of the
    backend's dtype and device; written against ``xp`` (NumPy, CuPy or torch).
    """
    column = chosen[..., None]  # (R, B, 1)
    keep = (column < 0) | (column == states)  # (R, B, K)
    return xp.where(keep, zero, excluded)
