"""Derive the backward plan of an einsum plan: one reverse-mode rule per op type (paper §3.5).

The rules are a table keyed by op type, like the leaf-family table: adding an op type without a
backward rule fails ``derive_backward`` (and a test that walks the table). Each rule turns a
forward einsum into the einsums of its gradients — for ``A1,…,An->O`` the gradient with respect
to operand m is ``O,A1,…(without Am)…,An->Am`` — and picks their opt-einsum paths now, at compile
time, for the sizes the op has (batch = ``batch_hint``), exactly as lowering does for the forward.

    >>> einsum_gradient("lbi,lbj,lkij->lbk", 2)
    'lbk,lbi,lbj->lkij'
"""

from __future__ import annotations

from collections.abc import Callable

import opt_einsum
from einc.ir.backward_plan import (
    BackwardPlan,
    BackwardStep,
    Contraction,
    EinsumBackward,
    HadamardBackward,
    InputBackward,
    LeafGradient,
    MixingBackward,
    WeightedBackward,
)
from einc.errors import BackendError, EincError
from einc.ir.plan import EinsumOp, HadamardOp, InputOp, MixingOp, Op, Plan, VaeOp


def einsum_gradient(equation: str, operand: int) -> str:
    """The einsum of ∂(Σ adjoint·O)/∂A_m for ``A1,…,An->O``: ``O,A1,…(no Am)…,An->Am``.

    Valid when A_m repeats no index and every index of A_m appears in O or another operand
    (otherwise the gradient would need a broadcast, which no einc op has).
    """
    inputs, output = equation.split("->")
    terms = inputs.split(",")
    target = terms[operand]
    others = [output] + [term for index, term in enumerate(terms) if index != operand]
    if len(set(target)) != len(target):
        raise ValueError(f"operand {operand} of '{equation}' repeats an index")
    missing = set(target) - set("".join(others))
    if missing:
        raise ValueError(
            f"index {''.join(sorted(missing))} of operand {operand} in '{equation}' is summed out alone"
        )
    return ",".join(others) + "->" + target


def index_sizes(equation: str, shapes: list[tuple[int, ...]]) -> dict[str, int]:
    """Size of every index letter of ``equation`` given its operand shapes."""
    inputs, _ = equation.split("->")
    sizes: dict[str, int] = {}
    for term, shape in zip(inputs.split(","), shapes):
        if len(term) != len(shape):
            raise ValueError(f"'{term}' does not match shape {shape}")
        for letter, size in zip(term, shape):
            if sizes.setdefault(letter, size) != size:
                raise ValueError(
                    f"index {letter} has sizes {sizes[letter]} and {size} in '{equation}'"
                )
    return sizes


def contraction(equation: str, sizes: dict[str, int]) -> Contraction:
    """An einsum with its optimal opt-einsum path at ``sizes`` (computed once, here)."""
    inputs, _ = equation.split("->")
    shapes = [tuple(sizes[letter] for letter in term) for term in inputs.split(",")]
    path, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="optimal")
    return Contraction(
        equation=equation,
        path=tuple(tuple(int(p) for p in step) for step in path),
        sizes=tuple(sorted(sizes.items())),
        flops=int(info.opt_cost),
        largest=int(info.largest_intermediate),
    )


def _gradient(equation: str, operand: int, sizes: dict[str, int]) -> Contraction:
    return contraction(einsum_gradient(equation, operand), sizes)


# ---------------------------------------------------------------- rules, keyed by op type
def _input_rule(plan: Plan, index: int, op: InputOp, batch: int) -> InputBackward:
    # log L = Σ_sf F[b,l,s,f] Θ[l,s,f,k] summed over blocks: ∂J/∂Θ is the gradient w.r.t.
    # operand 1 of the op's equation; the data (operand 0) needs no adjoint.
    leaves = []
    for block in op.blocks:
        features = block.features  # [T(x), obs, (log h(x))]
        sizes = index_sizes(
            op.equation,
            [(batch, op.rows, block.width, features), (op.rows, block.width, features, op.k)],
        )
        leaves.append(LeafGradient(block.param, block.stat_dim, _gradient(op.equation, 1, sizes)))
    return InputBackward(index, op.name, tuple(leaves))


def _weighted_step(step: type[WeightedBackward], index: int, op: EinsumOp | MixingOp | HadamardOp,
                   shapes: list[tuple[int, ...]], **reads: object) -> WeightedBackward:
    """The step of an op with sum weights: the adjoint of forward operand i goes to the i-th of
    ``step.adjoints`` and the weights (the equation's last operand) get their gradient."""
    sizes = index_sizes(op.equation, shapes)
    adjoints = {field: _gradient(op.equation, operand, sizes)
                for operand, (_, field, _) in enumerate(step.adjoints)}
    return step(op=index, name=op.name, param=op.param,
                weight_gradient=_gradient(op.equation, len(shapes) - 1, sizes), **adjoints, **reads)


def _einsum_rule(plan: Plan, index: int, op: EinsumOp, batch: int) -> WeightedBackward:
    # S = log P + a + a',  P = einsum(exp(N − a), exp(N' − a'), W): the adjoint G = ∂J/∂S / P
    # takes the place of the output in each gradient einsum.
    shapes = [(op.rows, batch, op.k_left), (op.rows, batch, op.k_right), (op.rows, op.k_out, op.k_left, op.k_right)]
    return _weighted_step(EinsumBackward, index, op, shapes, left=op.left, right=op.right)


def _mixing_rule(plan: Plan, index: int, op: MixingOp, batch: int) -> WeightedBackward:
    # S = log P + top,  P = einsum(exp(S_c − top), V): as for the einsum op, with G = ∂J/∂S / P.
    shapes = [(op.rows, op.components, batch, op.k), (op.rows, op.components, op.k)]
    return _weighted_step(MixingBackward, index, op, shapes, input=op.input, components=op.components)


def _hadamard_rule(plan: Plan, index: int, op: HadamardOp, batch: int) -> WeightedBackward:
    # S = log Σ_j W exp(P − top) + top with P = Σ parts: G = ∂J/∂S / exp(S − top) as above; the
    # log-product's adjoint exp(P − top) · Σ_k G W goes unchanged to each part of its row.
    shapes = [(op.rows, batch, op.k_in), (op.rows, op.k_out, op.k_in)]
    return _weighted_step(HadamardBackward, index, op, shapes, parts=op.parts, owner=op.owner)


def _vae_rule(plan: Plan, index: int, op: VaeOp, batch: int) -> BackwardStep:
    # networks have no derived backward plan: their gradients are torch autograd's
    raise BackendError(f"the {op.kind} op '{op.name}' has no derived backward steps: {op.backend_reason or 'its gradients come from autograd'}")


BACKWARD_RULES: dict[type, Callable[[Plan, int, Op, int], BackwardStep]] = {
    InputOp: _input_rule,  # type: ignore[dict-item]
    EinsumOp: _einsum_rule,  # type: ignore[dict-item]
    MixingOp: _mixing_rule,  # type: ignore[dict-item]
    HadamardOp: _hadamard_rule,  # type: ignore[dict-item]
    VaeOp: _vae_rule,  # type: ignore[dict-item]
}


def derive_backward(plan: Plan, batch_hint: int = 100) -> BackwardPlan:
    """The backward plan of ``plan``: reverse-mode steps in reverse op order.

    >>> backward = derive_backward(plan)                  # doctest: +SKIP
    >>> print(backward.table())                          # doctest: +SKIP
    """
    steps = []
    for index in range(len(plan.ops) - 1, -1, -1):
        op = plan.ops[index]
        rule = BACKWARD_RULES.get(type(op))
        if rule is None:
            raise EincError(f"no backward rule for plan op {type(op).__name__} ('{op.name}')")
        steps.append(rule(plan, index, op, batch_hint))
    return BackwardPlan(root=plan.root, heads=plan.heads, steps=tuple(steps), batch_hint=batch_hint)
