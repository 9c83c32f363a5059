"""Einsums for the array backend (NumPy/CuPy): opt-einsum paths run as batched matmuls.

Shared by every op kind's rules; ``contract(xp, equation, path, *operands)`` is what
``opt_einsum.contract`` would do along ``path``, without NumPy's einsum loops.
"""

from __future__ import annotations

import functools
import math
from types import ModuleType
from typing import Any


def finite_max(xp: ModuleType, values: Any, axis: int) -> Any:
    """Max for the log-einsum-exp shift (kept dims); all −inf slices use 0 so no NaN appears."""
    top = xp.max(values, axis=axis, keepdims=True)
    return xp.where(xp.isfinite(top), top, 0.0).astype(values.dtype, copy=False)


# ---------------------------------------------------------------- contraction paths
@functools.cache
def pairwise_steps(
    equation: str, path: tuple[tuple[int, ...], ...]
) -> tuple[tuple[tuple[int, ...], str], ...]:
    """The equations of an opt-einsum path's steps: ((positions, "ab,bc->ac"), …).

    Each step removes the operands at ``positions`` and appends their contraction, which keeps
    the indices still needed by the remaining operands or the output (in order of appearance);
    the last step produces the output in the equation's order.
    """
    inputs, output = equation.split("->")
    terms = inputs.split(",")
    if not path:
        path = tuple((0, 1) for _ in range(len(terms) - 1)) or ((0,),)
    steps = []
    for positions in path:
        picked = [terms[p] for p in positions]
        for p in sorted(positions, reverse=True):
            del terms[p]
        if terms:
            keep = set(output) | set("".join(terms))
            result = "".join(c for c in dict.fromkeys("".join(picked)) if c in keep)
        else:
            result = output
        steps.append((tuple(positions), ",".join(picked) + "->" + result))
        terms.append(result)
    return tuple(steps)


def contract(
    xp: ModuleType, equation: str, path: tuple[tuple[int, ...], ...], *operands: Any
) -> Any:
    """``opt_einsum.contract(equation, *operands, optimize=path)`` with batched-matmul steps."""
    arrays = list(operands)
    for positions, step in pairwise_steps(equation, path):
        picked = [arrays[p] for p in positions]
        for p in sorted(positions, reverse=True):
            del arrays[p]
        arrays.append(
            _pairwise(xp, step, *picked) if len(picked) == 2 else xp.einsum(step, *picked)
        )
    (result,) = arrays
    return result


def _pairwise(xp: ModuleType, equation: str, a: Any, b: Any) -> Any:
    """A two-operand einsum as one batched matmul (batch, left, inner) @ (batch, inner, right).

    Indices are classed as batch (in a, b and the output), left (a and output), right (b and
    output), inner (a and b, summed); an index in one operand only and not in the output is
    summed first. Without inner indices the product is an outer product by broadcasting.
    """
    inputs, out = equation.split("->")
    ta, tb = inputs.split(",")
    alone_a = tuple(i for i, c in enumerate(ta) if c not in tb and c not in out)
    if alone_a:
        a = a.sum(axis=alone_a)
        ta = "".join(c for c in ta if c in tb or c in out)
    alone_b = tuple(i for i, c in enumerate(tb) if c not in ta and c not in out)
    if alone_b:
        b = b.sum(axis=alone_b)
        tb = "".join(c for c in tb if c in ta or c in out)
    inner = [c for c in ta if c in tb and c not in out]
    if not inner:
        # elementwise/outer product: align both operands to the output's index order
        return _aligned(xp, a, ta, out) * _aligned(xp, b, tb, out)
    size = {c: n for c, n in zip(ta, a.shape)} | {c: n for c, n in zip(tb, b.shape)}
    batch = [c for c in out if c in ta and c in tb]
    left = [c for c in out if c in ta and c not in tb]
    right = [c for c in out if c in tb and c not in ta]

    def prod(letters: list[str]) -> int:
        return math.prod(size[c] for c in letters)

    a_mat = a.transpose([ta.index(c) for c in batch + left + inner]).reshape(
        prod(batch), prod(left), prod(inner)
    )
    b_mat = b.transpose([tb.index(c) for c in batch + inner + right]).reshape(
        prod(batch), prod(inner), prod(right)
    )
    # (batch, left, inner) @ (batch, inner, right) -> (batch, left, right)
    result = xp.matmul(a_mat, b_mat).reshape([size[c] for c in batch + left + right])
    order = batch + left + right
    return result.transpose([order.index(c) for c in out])


def _aligned(xp: ModuleType, array: Any, term: str, out: str) -> Any:
    """``array`` (indices ``term``) transposed to ``out``'s order with size-1 axes for the rest."""
    present = [c for c in out if c in term]
    moved = array.transpose([term.index(c) for c in present])
    return moved.reshape([array.shape[term.index(c)] if c in term else 1 for c in out])
