"""Multi-headed cluster-conditioned circuits p(x | Z = i) and patch circuits (``einc.tools.patches``).

By enumeration in float64: every head of a multi-headed circuit is a normalised distribution
equal to the recursive oracle; EM on log p(x | z) (``fit(labels=z)``) never decreases it in full
batch and leaves a head no sample names as it was; a circuit with a latent per patch is
p(x, z) = p(z) Π_j p(x_j | z_j) with p(x_j | z_j) the heads of the patch circuit taken out by
``patch_model``; a patch circuit trained or grown on its own goes back into the full circuit
(``with_patch``) with that identity intact and, before training, p(x) unchanged; several grown
patches put back at once (``with_patches``) give the circuit they give one after another.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from einc.compiler.params import init_parameters
from einc.ir.diagnostics import EincError
from oracles import BERNOULLI, CATEGORICAL3, enumerate_states, explicit_graph, oracle_log_density, plan_of, tree_graph

import einc
from einc.tools.growing import grow
from einc.model import Model
from einc.tools.patches import patch_data, patch_model, with_patch, with_patches

TWO_PATCHES = """\
var A, B, C, D, E : binary
leaf A, B, C, D, E ~ bernoulli
sums 3
inputs 2
{A, B, C, D, E} -> {A, B} * {C, D, E}
{A, B} -> A * B
{C, D, E} -> C * {D, E}
{D, E} -> D * E
latent z1 = {A, B}
latent z2 = {C, D, E}
"""


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("graph", [
    tree_graph([BERNOULLI, CATEGORICAL3, BERNOULLI, BERNOULLI], [-1, 0, 0, 1], k=2, heads=3),
    explicit_graph([BERNOULLI, CATEGORICAL3, BERNOULLI, BERNOULLI], k=2, heads=2),
], ids=["hadamard tree, 3 heads", "outer DAG, 2 heads"])
def test_every_head_is_a_normalised_distribution_equal_to_the_oracle(graph, backend: str) -> None:
    plan = plan_of(graph)
    params = init_parameters(plan, seed=4)
    model = Model(plan, "", "<test>", backend, "cpu", "float64", params)
    states = enumerate_states(graph)
    ll = model.log_likelihood(states)  # (N, heads)
    np.testing.assert_allclose(np.exp(ll).sum(0), 1.0, atol=1e-10)
    oracle = np.stack([oracle_log_density(plan, params, x) for x in states])
    np.testing.assert_allclose(ll, oracle, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_em_on_log_p_x_given_z_is_monotone_and_trains_each_samples_head_only(backend: str) -> None:
    graph = tree_graph([BERNOULLI, CATEGORICAL3, BERNOULLI, BERNOULLI, BERNOULLI], [-1, 0, 0, 1, 2], k=3, heads=3)
    plan = plan_of(graph)
    model = Model(plan, "", "<test>", backend, "cpu", "float64", init_parameters(plan, seed=1))
    rng = np.random.default_rng(0)
    states = enumerate_states(graph)
    x = states[rng.integers(0, len(states), 300)]
    z = (x[:, 0] + x[:, 1] > 1).astype(int)  # clusters 0 and 1; head 2 gets no sample
    root_weights = [s.name for s in plan.params if s.kind == "hadamard"][-1]
    before = model.parameters()[root_weights][:, 2].copy()  # the root's weights are (rows, heads, K)
    history = model.fit(x, labels=z, epochs=8, update="epoch", step_size=1.0, pseudocount=0)
    train = [record.train_ll for record in history]
    assert all(b >= a - 1e-10 for a, b in zip(train, train[1:])), train
    assert train[-1] > train[0] + 1e-3
    np.testing.assert_allclose(model.parameters()[root_weights][:, 2], before)
    # the objective is log p(x | z): each sample scored at its own head
    np.testing.assert_allclose(train[-1], model.log_likelihood(x)[np.arange(len(x)), z].mean(), atol=1e-10)


def _decomposition(model, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log p(x, z) − log p(z), Σ_j log p(x_j | z_j) from the patch circuits)."""
    joint = model.log_likelihood(x, latents=z)
    prior = model.log_likelihood(np.full_like(x, np.nan), latents=z)  # x summed out: p(z)
    parts = sum(patch_model(model, j).log_likelihood(patch_data(model, j, x))[np.arange(len(x)), z[:, j]]
                for j in range(len(model.latents)))
    return joint - prior, parts


def _all_pairs(model) -> tuple[np.ndarray, np.ndarray]:
    states = enumerate_states(model.graph)
    latent_states = list(itertools.product(*[range(slot.states) for slot in model.latents]))
    x = np.repeat(states, len(latent_states), 0)
    z = np.tile(np.array(latent_states), (len(states), 1))
    return x, z


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_a_circuit_with_a_latent_per_patch_is_p_z_times_its_patch_circuits(backend: str) -> None:
    model = einc.compile(TWO_PATCHES, backend=backend, dtype="float64", seed=2)
    patch = patch_model(model, 1)
    assert patch.graph.heads == 3 and patch.graph.num_variables == 3
    np.testing.assert_allclose(np.exp(patch.log_likelihood(enumerate_states(patch.graph))).sum(0), 1.0, atol=1e-10)
    x, z = _all_pairs(model)
    conditional, parts = _decomposition(model, x, z)
    np.testing.assert_allclose(conditional, parts, rtol=0, atol=1e-10)


def test_a_patch_trained_on_its_own_goes_back_into_the_circuit() -> None:
    model = einc.compile(TWO_PATCHES, dtype="float64", seed=2)
    rng = np.random.default_rng(3)
    x = enumerate_states(model.graph)[rng.integers(0, 32, 200)]
    z1 = rng.integers(0, 3, 200)
    patch = patch_model(model, 0)
    patch.fit(patch_data(model, 0, x), labels=z1, epochs=3, update="epoch", step_size=1.0)
    full = with_patch(model, 0, patch)
    assert full is model  # nothing grew: the parameters are written in place
    states = enumerate_states(patch.graph)
    np.testing.assert_allclose(patch_model(full, 0).log_likelihood(states), patch.log_likelihood(states), atol=1e-12)
    conditional, parts = _decomposition(full, *_all_pairs(full))
    np.testing.assert_allclose(conditional, parts, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_a_grown_patch_grows_the_circuit_and_keeps_p_x(backend: str) -> None:
    model = einc.compile(TWO_PATCHES, backend=backend, dtype="float64", seed=5)
    rng = np.random.default_rng(4)
    x = enumerate_states(model.graph)[rng.integers(0, 32, 300)]
    z = rng.integers(0, 3, (300, 2))
    model.fit(x, latents=z, epochs=2, batch_size=100)
    patch = patch_model(model, 1)
    chosen = z[:, 1] == 2
    flows = patch.flows(patch_data(model, 1, x[chosen]), heads=z[chosen, 1])
    grown_patch, growth = grow(patch, flows, {patch.graph.root: [2]}, 0.2)
    full = with_patch(model, 1, grown_patch, growth)
    assert [slot.states for slot in full.latents] == [3, 4]
    assert "sums {C, D, E} = 4" in full.source
    states = enumerate_states(model.graph)
    np.testing.assert_allclose(full.log_likelihood(states), model.log_likelihood(states), rtol=0, atol=1e-10)
    conditional, parts = _decomposition(full, *_all_pairs(full))
    np.testing.assert_allclose(conditional, parts, rtol=0, atol=1e-10)
    # the new state's patch distribution is the one it was copied from
    patch_states = enumerate_states(grown_patch.graph)
    heads = patch_model(full, 1).log_likelihood(patch_states)
    np.testing.assert_allclose(heads[:, 3], heads[:, 2], atol=1e-10)


def test_a_leaf_patch_is_not_a_circuit_of_its_own() -> None:
    model = einc.compile("var img[2, 4] : binary\nleaf img ~ bernoulli\nsums 2\n"
                         "structure poon_domingos(delta = [2], axes = both, over = img)\n"
                         "latent patches(over = img, size = [2, 2])\n")
    with pytest.raises(EincError, match="not a circuit of its own"):
        patch_model(model, 0)
    with pytest.raises(EincError, match="latent must be an index in 0..1"):
        patch_model(model, 2)


def test_patches_grown_together_equal_patches_grown_one_after_another() -> None:
    model = einc.compile(TWO_PATCHES, dtype="float64", seed=6)
    rng = np.random.default_rng(7)
    x = enumerate_states(model.graph)[rng.integers(0, 32, 300)]
    z = rng.integers(0, 3, (300, 2))
    model.fit(x, latents=z, epochs=2, batch_size=100)
    grown = []
    for latent, head in ((0, 1), (1, 2)):  # a sum above both patches splits edges along both axes
        patch = patch_model(model, latent)
        chosen = z[:, latent] == head
        flows = patch.flows(patch_data(model, latent, x[chosen]), heads=z[chosen, latent])
        grown.append((latent, *grow(patch, flows, {patch.graph.root: [head]}, 0.2)))
    together = with_patches(model, grown, share=0.3)
    one_by_one = model
    for latent, patch, growth in grown:
        one_by_one = with_patch(one_by_one, latent, patch, growth, share=0.3)
    assert [slot.states for slot in together.latents] == [4, 4] == [slot.states for slot in one_by_one.latents]
    assert together.source == one_by_one.source
    a, b = together.parameters(), one_by_one.parameters()
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-12, err_msg=name)
    states = enumerate_states(model.graph)
    np.testing.assert_allclose(together.log_likelihood(states), model.log_likelihood(states), rtol=0, atol=1e-10)
    with pytest.raises(EincError, match="given twice"):
        with_patches(model, [grown[0], grown[0]])
