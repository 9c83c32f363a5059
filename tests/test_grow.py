"""The growing operator (``compiler.grow``, ``einc.tools.growing``): LVD-PG's Algorithm 1.

By enumeration in float64: before training, a grown circuit computes the same distribution at
every old head, and each copied head the distribution of the head it copies; every head stays
normalised; growing the states of a latent leaves p(x) as it was. Every grown circuit is written
as ``.pc`` text that verifies, compiles back to the same circuit and reloads with its parameters;
per-region K (``sums R = K``, ``inputs R = K``) parses, verifies with located errors, lowers and
runs.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from einc.compiler.grow import Growth, grow_graph, grow_parameters, item_parameters, select_units
from einc.ir.diagnostics import EincError
from oracles import enumerate_states

import einc
from einc.tools.growing import grow, grown_source, scope_text, write_grown

TREE_PC = """\
circuit hclt
var x[5] : categorical(3)
leaf x ~ categorical
product hadamard
sums 3
heads 2
structure tree(parents = [-1, 0, 0, 1, 1])
"""

OUTER_PC = """\
var A, B, C, D : binary
leaf A, B, C, D ~ bernoulli
sums 2
inputs 3
heads 2
region all = {A, B, C, D}
all -> {A, B} * {C, D}        # a mixture at the root
all -> {A, C} * {B, D}
{A, B} -> A * B
{C, D} -> C * D
{A, C} -> A * C
{B, D} -> B * D
"""

PD_LATENT_PC = """\
var img[2, 4] : binary
leaf img ~ bernoulli
sums 2
structure poon_domingos(delta = [2], axes = both, over = img)
latent patches(over = img, size = [2, 2])
"""


def _model(text: str, backend: str = "torch", seed: int = 0):
    return einc.compile(text, backend=backend, dtype="float64", seed=seed)


def _heads_ll(model, states: np.ndarray) -> np.ndarray:
    ll = model.log_likelihood(states)
    return ll[:, None] if ll.ndim == 1 else ll


def _train(model, n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A few EM epochs on random (x, head) pairs, so the parameters are not the initial ones."""
    rng = np.random.default_rng(seed)
    states = enumerate_states(model.graph)
    x = states[rng.integers(0, len(states), n)]
    heads = rng.integers(0, model.graph.heads, n)
    model.fit(x, labels=heads, epochs=2, batch_size=50, step_size=0.5)
    return x, heads


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("text, threshold", [(TREE_PC, 0.3), (OUTER_PC, 0.2)], ids=["hadamard tree", "outer mixture"])
def test_a_grown_circuit_computes_the_same_distribution_per_head(text: str, threshold: float, backend: str) -> None:
    model = _model(text, backend)
    x, heads = _train(model)
    chosen = heads == 1
    flows = model.flows(x[chosen], heads=heads[chosen])
    grown, growth = grow(model, flows, {model.graph.root: [1]}, threshold)
    assert grown.graph.heads == 3
    assert growth.units > 1  # units below the head were copied too
    assert any(r != model.graph.root for r in growth.copies)
    states = enumerate_states(model.graph)
    before, after = _heads_ll(model, states), _heads_ll(grown, states)
    np.testing.assert_allclose(after[:, :2], before, rtol=0, atol=1e-10)  # the old heads
    np.testing.assert_allclose(after[:, 2], before[:, 1], rtol=0, atol=1e-10)  # the copy of head 1
    np.testing.assert_allclose(np.exp(after).sum(0), 1.0, atol=1e-10)  # every head is normalised
    # the copies differ from their originals only in routing: training on the new head's data separates them
    new_x = x[heads == 0]
    grown.fit(np.concatenate([x, new_x]), labels=np.concatenate([heads, np.full(len(new_x), 2)]),
              epochs=3, update="epoch", step_size=1.0, pseudocount=0.01)
    trained = _heads_ll(grown, states)
    assert np.abs(trained[:, 2] - trained[:, 1]).max() > 1e-3


def test_only_units_whose_flow_reaches_the_threshold_are_copied() -> None:
    model = _model(OUTER_PC)
    x, heads = _train(model)
    flows = model.flows(x, heads=heads)
    low = select_units(model.graph, flows, {model.graph.root: [0]}, 0.0)
    high = select_units(model.graph, flows, {model.graph.root: [0]}, 1.0)
    middle = select_units(model.graph, flows, {model.graph.root: [0]}, 0.25)
    # threshold 0 copies every unit below the root, 1 none but the root's chosen head
    assert all(len(low.copies[r.id]) == model.graph.size(r.id) for r in model.graph.regions if r.id != model.graph.root)
    assert high.copies == {model.graph.root: (0,)}
    for region, units in middle.copies.items():
        if region != model.graph.root:
            assert set(units) == set(np.flatnonzero(flows.region(region) / flows.samples >= 0.25))


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_growing_the_states_of_a_latent_keeps_p_x(backend: str) -> None:
    model = _model(PD_LATENT_PC, backend, seed=3)
    states = enumerate_states(model.graph)
    rng = np.random.default_rng(1)
    z = rng.integers(0, 2, (len(states), 2))
    model.fit(states, latents=z, epochs=2, batch_size=64)
    patch = model.latents[0].region
    flows = model.flows(states, latents=z)
    grown, growth = grow(model, flows, {patch: [0, 1]}, 0.3)
    assert grown.latents[0].states == 4 and grown.latents[1].states == 2
    np.testing.assert_allclose(grown.log_likelihood(states), model.log_likelihood(states), rtol=0, atol=1e-10)
    # p(x, Z = k) splits over k and its copy: (1 − share) and share of it
    for k in (0, 1):
        old = model.log_likelihood(states, latents=np.tile([k, -1], (len(states), 1)))
        kept = grown.log_likelihood(states, latents=np.tile([k, -1], (len(states), 1)))
        copied = grown.log_likelihood(states, latents=np.tile([2 + k, -1], (len(states), 1)))
        np.testing.assert_allclose(np.logaddexp(kept, copied), old, rtol=0, atol=1e-10)


def test_the_grown_pc_file_verifies_reloads_and_grows_again(tmp_path) -> None:
    model = _model(TREE_PC)
    x, heads = _train(model)
    grown, _ = grow(model, model.flows(x, heads=heads), {model.graph.root: [0, 1]}, 0.2)
    assert "inputs {x[3]} = " in grown.source and "heads 4" in grown.source
    assert "structure tree(parents = [-1, 0, 0, 1, 1])" in grown.source  # the user's file, kept
    write_grown(grown, tmp_path / "grown.pc", tmp_path / "grown.npz")
    checked = einc.compile(tmp_path / "grown.pc", dtype="float64")
    assert checked.graph.region_sizes == grown.graph.region_sizes
    loaded = einc.load(tmp_path / "grown.npz", dtype="float64")
    states = enumerate_states(model.graph)
    np.testing.assert_allclose(loaded.log_likelihood(states), grown.log_likelihood(states), atol=1e-12)
    # a second round replaces the size lines instead of adding to them
    again, _ = grow(grown, grown.flows(x, heads=heads), {grown.graph.root: [3]}, 0.2)
    assert again.source.count("heads ") == 1 and again.graph.heads == 5
    assert again.source.count("inputs {x[3]} = ") == 1


def test_growth_errors() -> None:
    hadamard_dag = _model("""\
product hadamard
sums 2
var A, B, C : binary
leaf A, B, C ~ bernoulli
{A, B, C} -> A * {B, C}
{A, B, C} -> {A, B} * C
{A, B} -> A * B
{B, C} -> B * C
""")
    x = enumerate_states(hadamard_dag.graph)
    with pytest.raises(EincError, match="a part of one partition"):
        grow(hadamard_dag, hadamard_dag.flows(x), {hadamard_dag.graph.root: [0]}, 0.1)
    model = _model(OUTER_PC)
    flows = model.flows(enumerate_states(model.graph), heads=0)
    with pytest.raises(EincError, match="in \\[0, 1\\]"):
        grow(model, flows, {model.graph.root: [0]}, 1.5)
    with pytest.raises(EincError, match="share must be in"):
        grow(model, flows, {model.graph.root: [0]}, 0.1, share=0.0)
    with pytest.raises(EincError, match="cannot grow unit 2"):
        grow(model, flows, {model.graph.root: [2]}, 0.1)
    rat = _model("var x[4] : binary\nleaf x ~ bernoulli\nsums 2\nstructure random_binary_trees(depth = 1, replicas = 2)\n")
    with pytest.raises(EincError, match="replicas"):
        grow(rat, rat.flows(enumerate_states(rat.graph)), {rat.graph.root: [0]}, 0.1)


def test_copies_route_their_weight_to_the_copied_children() -> None:
    """Algorithm 1's edges: a copied sum puts 1 − share on copied children, an original share."""
    model = _model(TREE_PC)
    graph = model.graph
    partition = graph.partitions_of[graph.root][0]
    child = graph.partitions[partition].parts[0]
    growth = Growth({graph.root: (0,), **{part: (1,) for part in graph.partitions[partition].parts}})
    items = grow_parameters(graph, item_parameters(model.plan, model.parameters()), growth, share=0.25)
    old = item_parameters(model.plan, model.parameters())[("partition", partition)]  # (2 heads, 3)
    new = items[("partition", partition)]  # (3 heads, 4): product unit 3 is the copy of 1
    np.testing.assert_allclose(new[0, [0, 2]], old[0, [0, 2]])
    np.testing.assert_allclose(new[0, [1, 3]], old[0, 1] * np.array([0.75, 0.25]))
    np.testing.assert_allclose(new[2, [1, 3]], old[0, 1] * np.array([0.25, 0.75]))
    np.testing.assert_allclose(new.sum(1), 1.0)
    assert grow_graph(graph, growth).size(child) == graph.size(child) + 1


# ---------------------------------------------------------------- per-region K in the language
def test_region_sizes_parse_verify_and_run() -> None:
    text = OUTER_PC + "sums {A, B} = 5\ninputs C = 4\ninputs {B} = 1\n"
    model = _model(text)
    graph = model.graph
    assert graph.size(((0, 1), 0)) == 5 and graph.size(((2,), 0)) == 4 and graph.size(((1,), 0)) == 1
    assert graph.size(((2, 3), 0)) == 2 and graph.size(((3,), 0)) == 3
    states = enumerate_states(graph)
    np.testing.assert_allclose(np.exp(model.log_likelihood(states)).sum(0), 1.0, atol=1e-10)
    numpy_model = einc.compile(text, backend="numpy", dtype="float64")
    numpy_model.set_parameters(model.parameters())
    np.testing.assert_allclose(numpy_model.log_likelihood(states), model.log_likelihood(states), atol=1e-12)
    assert scope_text(graph, (0, 1)) == "{A, B}"


@pytest.mark.parametrize("line, message", [
    ("sums {A, B} = 0", "sums of {A, B} (its K) must be a whole number of at least 1, found 0"),
    ("sums A = 3", "{A} is a leaf region: its K is given by `inputs REGION = K`"),
    ("inputs {A, B} = 3", "{A, B} is an internal region: its K is given by `sums REGION = K`"),
    ("sums all = 4", "sums names the root, whose K is the number of heads; write `heads 4`"),
    ("sums {A, D} = 4", "sums names {A, D}, which is not a region of the circuit"),
    ("inputs C = 2\ninputs {C} = 3", "the K of {C} is given twice"),
])
def test_region_size_errors_are_located(line: str, message: str, tmp_path) -> None:
    path = tmp_path / "bad.pc"
    path.write_text(OUTER_PC + line + "\n")
    with pytest.raises(EincError) as error:
        einc.compile(path)
    assert message in str(error.value)
    assert f"bad.pc:{OUTER_PC.count(chr(10)) + 1 + line.count(chr(10))}:" in str(error.value)


def test_hadamard_parts_of_different_own_sizes_are_refused() -> None:
    with pytest.raises(EincError, match="expected one K for every part"):
        _model(TREE_PC + "inputs {x[3]} = 4\n")


def test_scope_text_writes_rectangles_of_arrays() -> None:
    model = _model(PD_LATENT_PC)
    graph = model.graph
    assert scope_text(graph, (0, 1, 4, 5)) == "{img[0:2, 0:2]}"
    assert scope_text(graph, (0, 5)) == "{img[0, 0], img[1, 1]}"
    source = grown_source(PD_LATENT_PC, "<string>", replace(graph, region_sizes=((((0, 1, 4, 5), 0), 3),)))
    assert source.endswith("sums 2\ninputs 2\nheads 1\ninputs {img[0:2, 0:2]} = 3\n")
    assert einc.compile(source).graph.size(((0, 1, 4, 5), 0)) == 3


def test_latent_states_follow_a_grown_region() -> None:
    graph = _model(PD_LATENT_PC).graph
    grown = grow_graph(graph, Growth({graph.latents[1].region: (0,)}))
    assert grown.size(graph.latents[1].region) == 3
    assert einc.compile(grown_source(PD_LATENT_PC, "<string>", grown)).latents[1].states == 3



def test_a_region_of_its_own_large_k_counts_against_the_size_limits() -> None:
    small = einc.CompileOptions(max_bytes=1 << 20)
    einc.compile(OUTER_PC + "sums {A, B} = 10\n", options=small)
    with pytest.raises(einc.ResourceError, match="parameters"):
        einc.compile(OUTER_PC + "sums {A, B} = 200000\n", options=small)  # 200000 x 3 x 3 weights below it
