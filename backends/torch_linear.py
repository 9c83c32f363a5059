"""The torch backend's upward pass in the linear domain, for queries that differentiate nothing.

In the log domain every sum of a deep circuit exponentiates its inputs and takes the log of its
output: at K=32 each hadamard op made about ten passes over its (rows, K, B) values (sum of the
parts, max, shift, exp, log, add) against one K×K matmul, and an HCLT's inference stayed at 9-15×
its FLOP floor (README, issue 18). Here values are linear with a log-scale per row and sample
(``torch_ops/scaled.py``): a product multiplies, a sum is one matmul, and each op renormalises
by its maximum over K (one max and one multiply per element, one log per row and sample).

Every op kind brings its ``linear`` rule (``TorchOpRule.linear``, in its module); a plan with a
kind that has none (vae leaves), a max-product pass, clamped latents (log-masks) or a layout other
than batch-minor runs in the log domain (``applies``). Samples whose values may have underflowed
(``LinearPass.suspect``), or whose result is not finite (probability 0, LOG_ZERO), are recomputed
in the log domain, so the answers are the log domain's to rounding.
"""

from __future__ import annotations

from typing import Any

import torch

from einc.backends.torch_ops import Noise, PassData
from einc.backends.torch_ops.scaled import LinearPass

DOMAINS = ("log", "linear")


def applies(backend: Any, max_product: bool, masks: Any) -> bool:
    """Whether a no-grad sum-product pass of this backend runs in the linear domain."""
    return (backend.domain == "linear" and not max_product and masks is None and backend.batch_minor
            and backend.plan.exact and not backend.fuse
            and all(backend._rule(op).linear is not None for op in backend.plan.ops))


def linear_root(backend: Any, params: dict[str, torch.Tensor], x: torch.Tensor, observed: torch.Tensor,
                noise: Noise) -> torch.Tensor:
    """The root's log-values (B, heads) of the batch ``x`` (B, C+1) with mask ``observed``."""
    plan = backend.plan
    state = LinearPass(backend, x.shape[0])
    data = PassData(x, observed, noise)
    root_value, root_row = plan.root
    for index, op in enumerate(plan.ops):
        state.values.append(backend._rule(op).linear(backend, op, params, state, data, index == root_value))
        for read in backend.reads.released_after.get(index, ()):
            state.values[read] = None  # no later op reads it
    root = state.values[root_value]
    assert root is not None
    # (heads, B) -> (B, heads)
    logged = torch.log(root.linear[root_row])
    if root.scale is not None:
        logged = logged.add_(root.scale[root_row])
    logged = logged.t()
    suspect = state.suspect | ~torch.isfinite(logged).all(1)
    if bool(suspect.any()):
        # what the linear domain may have lost to underflow (or has no finite answer for): the
        # log domain's answer, for those samples only
        rows = suspect.nonzero()[:, 0]
        logged = logged.clone()
        logged[rows] = backend._root(backend.forward(params, x.index_select(0, rows), observed.index_select(0, rows),
                                                     noise=noise, defer=True))
    return logged
