"""The torch executor's reads (backends/torch_reads.py): chunked values, fragmented operands and
hadamard products segment by segment equal the plain definitions, values and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import einc
from einc.backends.torch_reads import PassValues, product_terms
from einc.ir.plan import HadamardOp, Operand, RowIndex, RowRange

from test_executor import CIRCUITS


def _reference(operand: Operand, values: list[torch.Tensor]) -> torch.Tensor:
    """An operand by its definition: its segments' rows, concatenated in order."""
    pieces = []
    for segment in operand.segments:
        source = values[segment.value]
        if isinstance(segment, RowRange):
            pieces.append(source[segment.start : segment.stop])
        else:
            pieces.append(source[list(segment.rows)])
    return torch.cat(pieces, 0)


def _hadamard(owner: tuple[int, ...], rows: int, segments: tuple) -> HadamardOp:
    return HadamardOp("h", tuple(range(rows)), Operand(segments), owner, 2, 2, "h.weights")


def test_product_terms_classify_identity_blocks_and_scatter() -> None:
    op = _hadamard((0, 1, 2, 0, 0, 1, 1, 2, 2, 2, 0, 1), 3,
                   (RowRange(0, 0, 3), RowRange(1, 0, 6), RowIndex(2, (4, 1, 0, 3, 2, 5))))
    kinds = [(term.kind, term.arity) for term in product_terms(op)]
    assert kinds == [("identity", 1), ("blocks", 2), ("scatter", 1)]


@pytest.mark.parametrize("batch_minor", [True, False])
@pytest.mark.parametrize("name", ["pd_dag", "pd_hadamard", "hclt", "tiny_hadamard"])
def test_reads_equal_the_definition_in_values_and_gradients(name: str, batch_minor: bool) -> None:
    model = einc.compile(CIRCUITS[name], dtype="float64", seed=1, batch_minor=batch_minor)
    backend, plan = model.backend, model.plan
    generator = torch.Generator().manual_seed(0)
    sources = [torch.randn((op.rows, 5, op.vector_size), generator=generator, dtype=torch.float64,
                           requires_grad=True) for op in plan.ops]
    stored = [s.transpose(1, 2).contiguous().transpose(1, 2) if batch_minor else s for s in sources]
    values = PassValues(backend.reads, batch_minor)
    for value in stored:
        values.append(value)
    read_any = False
    for op in plan.ops:
        for operand in op.operands():
            got, expected = backend._read(operand, values), _reference(operand, sources)
            assert torch.equal(got, expected)
            weight = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
            grads = torch.autograd.grad((got * weight).sum(), sources, allow_unused=True)
            reference = torch.autograd.grad((expected * weight).sum(), sources, allow_unused=True)
            for a, b in zip(grads, reference):
                assert (a is None and b is None) or torch.equal(
                    torch.zeros_like(sources[0]) if a is None else a, b)
            read_any = True
        if isinstance(op, HadamardOp):
            from einc.backends.torch_ops.hadamard import log_product

            parts = _reference(op.parts, sources)
            owner = torch.as_tensor(op.owner)
            expected = parts.new_zeros((op.rows, parts.shape[1], op.k_in)).index_add(0, owner, parts)
            torch.testing.assert_close(log_product(backend, op, values), expected, rtol=1e-14, atol=1e-14)
    assert read_any


@pytest.mark.parametrize("name", ["pd_dag", "pd_hadamard", "tiny_hadamard", "hclt", "latents", "rat_heads"])
def test_deferred_leaves_equal_the_materialised_value(name: str) -> None:
    """Leaf rows computed where hadamard ops read them (input.DeferredLeaves, the root-only
    passes: one matmul per output row's leaf parts, torch_reads.LeafParts, ranges and gathered
    rows alike) give the materialised value's root and gradients (float64, 1e-12); values that
    einsum ops read are computed whole (ReadPlan.deferrable)."""
    from einc.backends.torch_ops.input import DeferredLeaves
    from oracles import random_data

    model = einc.compile(CIRCUITS[name], dtype="float64", seed=2)
    backend = model.backend
    x = torch.as_tensor(random_data(model.graph, 9, 4), dtype=torch.float64)
    observed = torch.ones_like(x)
    observed[::2, 0] = 0.0  # some unobserved entries
    pad = torch.zeros((x.shape[0], 1), dtype=torch.float64)
    x, observed = torch.cat([x * observed, pad], 1), torch.cat([observed, pad], 1)
    results = []
    backend.reads.released_after = {}  # keep every value of the root-only pass, to inspect it
    for defer in (False, True):
        params = {k: v.detach().clone().requires_grad_(True) for k, v in model.params.items()}
        values = backend.forward(params, x, observed, defer=defer)
        deferred = [index for index, v in enumerate(values) if isinstance(v, DeferredLeaves)]
        assert deferred == (sorted(backend.reads.deferrable) if defer else [])
        root = backend._root(values)
        grads = torch.autograd.grad(root.sum(), list(params.values()), allow_unused=True)
        results.append((root, grads))
    (root_a, grads_a), (root_b, grads_b) = results
    torch.testing.assert_close(root_b, root_a, rtol=1e-12, atol=1e-12)
    # the hadamard circuits' leaves are deferred, the einsum circuits' are not
    assert bool(backend.reads.deferrable) == (name in ("pd_hadamard", "tiny_hadamard", "hclt"))
    for a, b in zip(grads_a, grads_b):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_leaf_parts_lay_out_each_rows_parts() -> None:
    """LeafParts: output row l's leaf rows at [l·A, (l+1)·A), padded with absent row 0."""
    from einc.backends.torch_reads import leaf_parts

    op = _hadamard((0, 1, 1, 0, 1, 2), 3, (RowRange(0, 4, 7), RowIndex(0, (9, 2, 5))))
    layout = leaf_parts(op, product_terms(op), {0})[0]
    assert layout.arity == 3
    assert layout.rows == (4, 9, 0, 5, 6, 2, 5, 0, 0)
    assert layout.present == (1, 1, 0, 1, 1, 1, 1, 0, 0)
    assert leaf_parts(op, product_terms(op), set()) == {}


@pytest.mark.parametrize("text", [
    # leaves of one factor and of several (S = 3)
    "var x[6] : categorical(5)\nleaf x ~ categorical\nsums 3\ninputs 3\n"
    "region all = {x[0], x[1], x[2], x[3], x[4], x[5]}\nregion a = {x[0], x[1], x[2]}\n"
    "all -> a * {x[3], x[4], x[5]}\na -> x[0] * {x[1], x[2]}\n",
    # every leaf one factor (S = 1, as an HCLT's pixels), hadamard products
    "var x[3] : categorical(4)\nleaf x ~ categorical\nsums 3\ninputs 3\nproduct hadamard\n"
    "region all = {x[0], x[1], x[2]}\nall -> x[0] * x[1] * x[2]\n",
])
def test_categorical_lookup_in_either_layout_gives_the_same_statistics(text: str) -> None:
    """The one-hot lookup (input._lookup, ObservedSum) written in the stored batch-minor order
    and in the batch-major one: the same log-likelihoods and EM statistics (float64, 1e-12),
    with unobserved entries."""
    from einc.backends.base import Batch
    from oracles import random_data

    results = []
    for batch_minor in (True, False):
        model = einc.compile(text, dtype="float64", seed=3, batch_minor=batch_minor)
        x = random_data(model.graph, 11, 5)
        observed = np.ones_like(x, dtype=bool)
        observed[::3, 1] = False
        batch = Batch(np.where(observed, x, 0.0), observed)
        stats = model.backend.statistics(model.params, batch)
        results.append((model.backend.log_likelihood(model.params, batch), stats))
    (ll_a, st_a), (ll_b, st_b) = results
    np.testing.assert_allclose(ll_a, ll_b, rtol=1e-12, atol=1e-12)
    assert st_a.log_likelihood == pytest.approx(st_b.log_likelihood, rel=1e-12)
    for name in st_a.weights:
        np.testing.assert_allclose(st_a.weights[name].numpy(), st_b.weights[name].numpy(), rtol=1e-12, atol=1e-12)
    for name, (pt, p) in st_a.leaf.items():
        np.testing.assert_allclose(pt.numpy(), st_b.leaf[name][0].numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(p.numpy(), st_b.leaf[name][1].numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["pd_dag", "hclt", "latents", "rat_heads"])
def test_root_only_passes_let_values_go_after_their_last_reader(name: str) -> None:
    """A root-only pass (``defer=True``) keeps no value past its last reader (ReadPlan.released_after)
    and gives the same root and gradients as the pass that keeps every value (float64, exact)."""
    from oracles import random_data

    model = einc.compile(CIRCUITS[name], dtype="float64", seed=4)
    backend, plan = model.backend, model.plan
    x = torch.as_tensor(random_data(model.graph, 7, 6), dtype=torch.float64)
    pad = torch.zeros((x.shape[0], 1), dtype=torch.float64)
    x, observed = torch.cat([x, pad], 1), torch.cat([torch.ones_like(x), pad], 1)
    results = []
    for defer in (False, True):
        params = {k: v.detach().clone().requires_grad_(True) for k, v in model.params.items()}
        values = backend.forward(params, x, observed, defer=defer)
        kept = [index for index, value in enumerate(values) if value is not None]
        assert kept == ([plan.root[0]] if defer else list(range(len(plan.ops))))
        root = backend._root(values)
        grads = torch.autograd.grad(root.sum(), list(params.values()), allow_unused=True)
        results.append((root, grads))
    (root_a, grads_a), (root_b, grads_b) = results
    torch.testing.assert_close(root_b, root_a, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_a, grads_b):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


CATEGORICAL_HADAMARD = {
    # an HCLT over categorical variables (one factor per leaf, chained products, rows in runs)
    "hclt": CIRCUITS["hclt"].replace("binary", "categorical(3)").replace("bernoulli", "categorical"),
    "flat": "var x[3] : categorical(4)\nleaf x ~ categorical\nsums 3\ninputs 3\nproduct hadamard\n"
            "region all = {x[0], x[1], x[2]}\nall -> x[0] * x[1] * x[2]\n",
    # several factors per leaf region (S = 2) under hadamard products
    "factors": "var x[6] : categorical(3)\nleaf x ~ categorical\nsums 2\ninputs 2\nproduct hadamard\n"
               "region all = {x[0], x[1], x[2], x[3], x[4], x[5]}\nregion a = {x[0], x[1], x[2], x[3]}\n"
               "all -> a * {x[4], x[5]}\na -> {x[0], x[1]} * {x[2], x[3]}\n",
}


@pytest.mark.parametrize("name", sorted(CATEGORICAL_HADAMARD))
def test_deferred_lookups_equal_the_materialised_value(name: str) -> None:
    """A categorical input value read only by hadamard ops is looked up where each reads its rows
    (input.LookupLeaves, the root-only passes): the same root, weight gradients and leaf
    statistics as the value computed whole (float64, 1e-12), with unobserved entries."""
    from einc.backends.torch_ops.input import LookupLeaves
    from oracles import random_data

    model = einc.compile(CATEGORICAL_HADAMARD[name], dtype="float64", seed=5)
    backend = model.backend
    assert backend.reads.deferrable
    x = torch.as_tensor(random_data(model.graph, 13, 7), dtype=torch.float64)
    observed = torch.ones_like(x)
    observed[::3, 1] = 0.0
    pad = torch.zeros((x.shape[0], 1), dtype=torch.float64)
    x, observed = torch.cat([x * observed, pad], 1), torch.cat([observed, pad], 1)
    backend.reads.released_after = {}  # keep every value, to see which were deferred
    results = []
    for defer in (False, True):
        params = {k: v.detach().clone() for k, v in model.params.items()}
        coefficients = {op.name: [c.detach().requires_grad_(True) for c in backend._leaf_coefficients(op, params, False)]
                        for op in model.plan.ops if type(op).__name__ == "InputOp"}
        weights = [params[spec.name].requires_grad_(True) for spec in model.plan.params if spec.normalised_over]
        values = backend.forward(params, x, observed, coefficients=coefficients, defer=defer)
        assert any(isinstance(v, LookupLeaves) for v in values) == defer
        root = backend._root(values)
        leaves = [c for cs in coefficients.values() for c in cs]
        results.append((root, torch.autograd.grad(root.sum(), weights + leaves)))
    (root_a, grads_a), (root_b, grads_b) = results
    torch.testing.assert_close(root_b, root_a, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
