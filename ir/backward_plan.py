"""The backward plan: the reverse-mode rules of an einsum plan, as data (EM without autograd).

EM needs, for one batch, J = Σ_b log p(x_b) differentiated with respect to every sum weight and
every leaf coefficient (paper §3.5, eq. 6): the counts n = W · ∂J/∂W and the leaf statistics
∂J/∂Θ = Σ_b p_L · F (posterior-weighted features [T(x), obs, log h(x)]). Frameworks with autograd
get these from their tape; NumPy and CuPy have none, so the compiler derives them instead.

The plan lists, in reverse op order, one step per forward op. A step reads the adjoint
``∂J/∂S`` of the op's value (complete by then: every consumer of a value comes later in the
forward order), computes the adjoints of the op's operands and adds them, segment by segment,
into the adjoints of the values they were read from (a ``RowRange`` adds into a slice, a
``RowIndex`` gather becomes a scatter-add), and computes the gradient of its parameters.
Every contraction is an einsum derived from the forward equation — the gradient of
``A1,…,An->O`` with respect to operand m is ``O,A1,…(without Am)…,An->Am`` — with an opt-einsum
path chosen at compile time, like the forward path.

Log-domain stabilisation (paper eq. 4) holds backwards too. The forward einsum computes
S = log P + a + a' with P = Σ W exp(N − a) exp(N' − a'); its backward never exponentiates an
unshifted log value:

    G           = ∂J/∂S · exp(−(S − a − a'))                       (= ∂J/∂S / P, P ≥ min W > 0)
    ∂J/∂N[i]    = exp(N[i] − a) · Σ_kj G[k] W[k,i,j] exp(N'[j] − a')
    ∂J/∂W[kij]  = Σ_b G[k] exp(N[i] − a) exp(N'[j] − a')

and the mixing op likewise with its shift ``top = max_c S_c``, the hadamard op with its shift
``top = max_j P`` of the log-product P (whose adjoint is gathered to every part of its row).
Adjoints of log values are posterior flows in [0, 1], so nothing overflows in float32.

Each step type lists its own contractions for the printed table (``contractions()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .plan import Operand, RowRange, format_table


@dataclass(frozen=True)
class Contraction:
    """One einsum with its opt-einsum path, optimised at compile time for ``sizes``.

    ``path`` follows opt-einsum: each step names positions in the current operand list; those
    operands are removed and their contraction appended at the end.
    """

    equation: str
    path: tuple[tuple[int, ...], ...]
    sizes: tuple[tuple[str, int], ...]  # index letter -> size the path was chosen for
    flops: int  # opt-einsum's FLOP count of the path at ``sizes``
    largest: int  # elements of the largest intermediate at ``sizes``

    def describe_path(self) -> str:
        return " ".join("(" + ",".join(str(p) for p in step) + ")" for step in self.path)


@dataclass(frozen=True)
class LeafGradient:
    """∂J/∂Θ for one family block of an input op: Σ_b ∂J/∂log L · F, then split into
    (Σ p·T, Σ p·obs) for the M-step."""

    param: str
    stat_dim: int
    # (L, batch, K) x (batch, L, S, f) -> (L, S, f, K)
    coefficients: Contraction


@dataclass(frozen=True)
class InputBackward:
    op: int  # index of the forward op (= the value whose adjoint is read)
    name: str
    leaves: tuple[LeafGradient, ...]

    def contractions(self) -> list[tuple[str, Contraction, str]]:
        return [("Σp·F", leaf.coefficients, leaf.param) for leaf in self.leaves]


@dataclass(frozen=True)
class WeightedBackward:
    """The step of an op with sum weights: the adjoints of the operands it read and the gradient
    of its weights (its equation's last operand). Each kind lists its adjoints once in
    ``adjoints``: (label, the Contraction field, the Operand field the adjoint is added into)."""

    op: int  # index of the forward op (= the value whose adjoint is read)
    name: str
    param: str
    # (L, batch, k) x (the other operands) -> the weights' shape   then n = W · grad
    weight_gradient: Contraction
    adjoints: ClassVar[tuple[tuple[str, str, str], ...]]
    weight_label: ClassVar[str] = "n=W·∂W"

    def contractions(self) -> list[tuple[str, Contraction, str]]:
        reads = [(label, getattr(self, field), _writes(getattr(self, target)))
                 for label, field, target in self.adjoints]
        return [*reads, (self.weight_label, self.weight_gradient, self.param)]


@dataclass(frozen=True)
class EinsumBackward(WeightedBackward):
    left: Operand  # where the left operand's adjoint is added (the forward reads, reversed)
    right: Operand
    # (L, batch, k) x (L, batch, j) x (L, k, i, j) -> (L, batch, i)   then · exp(N − a)
    left_adjoint: Contraction
    # (L, batch, k) x (L, batch, i) x (L, k, i, j) -> (L, batch, j)   then · exp(N' − a')
    right_adjoint: Contraction
    adjoints: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("∂left", "left_adjoint", "left"), ("∂right", "right_adjoint", "right"))


@dataclass(frozen=True)
class MixingBackward(WeightedBackward):
    input: Operand
    components: int
    # (M, batch, K) x (M, C, K) -> (M, C, batch, K)   then · exp(S_c − top)
    input_adjoint: Contraction
    adjoints: ClassVar[tuple[tuple[str, str, str], ...]] = (("∂input", "input_adjoint", "input"),)
    weight_label: ClassVar[str] = "n=V·∂V"


@dataclass(frozen=True)
class HadamardBackward(WeightedBackward):
    parts: Operand  # where every part's adjoint is added
    owner: tuple[int, ...]  # the output row of each part row: ∂part[r] = ∂P[owner[r]]
    # (L, batch, k) x (L, k, j) -> (L, batch, j)   then · exp(P − top), gathered to the parts
    product_adjoint: Contraction
    adjoints: ClassVar[tuple[tuple[str, str, str], ...]] = (("∂P→parts", "product_adjoint", "parts"),)


BackwardStep = InputBackward | EinsumBackward | MixingBackward | HadamardBackward


@dataclass(frozen=True)
class BackwardPlan:
    """Reverse-mode steps of a plan. The adjoint of the root value is 1 at each sample's head
    (head 0, or the sample's label) and 0 elsewhere; every other adjoint starts at 0."""

    root: tuple[int, int]
    heads: int
    steps: tuple[BackwardStep, ...]  # reverse op order
    batch_hint: int

    def contractions(self, step: BackwardStep) -> list[tuple[str, Contraction, str]]:
        """(what is computed, the contraction, where the result goes) for one step."""
        return step.contractions()

    def table(self, batch: int | None = None, itemsize: int = 4) -> str:
        """The backward plan as a text table: step, equation, path, FLOPs, writes."""
        batch = self.batch_hint if batch is None else batch
        header = (
            "#",
            "op",
            "computes",
            "equation",
            "path",
            "MFLOP/batch",
            "largest KB",
            "adds into",
        )
        rows: list[tuple[str, ...]] = []
        total = 0.0
        for step in self.steps:
            for what, contraction, target in self.contractions(step):
                # FLOPs and intermediates scale linearly with the batch in every equation here
                scale = batch / self.batch_hint
                flops = contraction.flops * scale
                total += flops
                rows.append(
                    (
                        str(step.op),
                        step.name,
                        what,
                        contraction.equation,
                        contraction.describe_path(),
                        f"{flops / 1e6:.3f}",
                        f"{contraction.largest * scale * itemsize / 1024:.1f}",
                        target,
                    )
                )
        return format_table(header, rows) + (
            f"\nseed: ∂v{self.root[0]}[{self.root[1]}, b, head_b] = 1  heads: {self.heads}  "
            f"MFLOP/batch({batch}): {total / 1e6:.3f}  "
            "stabilised: G = ∂S·exp(−(S−a−a')), operands exp(N−a) ≤ 1"
        )


def _writes(operand: Operand, shown: int = 4) -> str:
    """Where an operand's adjoint goes: slices add in place, gathers become scatter-adds."""
    parts = operand.segment_texts("∂", "scatter-add")
    if len(parts) > shown:
        scatters = sum(not isinstance(segment, RowRange) for segment in operand.segments)
        rest = len(parts) - shown
        parts = parts[:shown] + [f"… {rest} more ({len(parts)} segments, {scatters} scatter-adds)"]
    return " + ".join(parts)
