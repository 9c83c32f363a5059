"""Circuits that mix product kinds: ``product REGION = KIND`` and ``patch_trees(patch_product = …)``.

By enumeration in float64 on small circuits: a mixed circuit is normalised and its marginals are
sums of its joints on torch and NumPy, which agree to 1e-12; its element-wise partitions compute
exactly what outer partitions with diagonal weights compute, and a circuit whose every region is
``product R = hadamard`` is the ``product hadamard`` circuit; the verifier checks each partition
against its own kind, with located errors; the printers and ``einc check``'s parameter count
follow each partition's kind; save/load round-trips; full-batch EM never lowers the likelihood;
growing with copied parameters keeps every head's distribution, on HCLT patch circuits too. The
graph-level suites (``test_hadamard.py`` "kinds-mixed", ``test_array_backend.py`` "mixed-*") run
a mixed circuit through every query, backward rule, MPE, sampling χ² and EM step against the
naive evaluator and across backends.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from oracles import BACKENDS, enumerate_states

import einc
from einc.backends.base import Batch
from einc.cli.entry import main
from einc.compiler.dump import dump_dot, dump_ir, dump_layers, parameter_count
from einc.compiler.grow import assemble_parameters, item_parameters
from einc.compiler.pipeline import CompileOptions, compile_plan, front_end
from einc.ir.diagnostics import EincError
from einc.tools.growing import grow

ROOT = Path(__file__).resolve().parent.parent

# {A, B} (outer) and {C, D} (hadamard) are in one layer, both read by element-wise and outer
# partitions; {C, D, E} mixes a 3-ary and a binary element-wise partition under an outer root
# mixture; two heads.
MIXED_PC = """\
circuit mixed
var A, B, C, D, E : binary
leaf A, B, C, D, E ~ bernoulli
sums 2
heads 2
{A, B, C, D, E} -> {A, B} * {C, D, E}
{A, B, C, D, E} -> {A, B, C, D} * E
{A, B, C, D} -> {A, B} * {C, D}
{A, B} -> A * B
{C, D, E} -> C * D * E
{C, D, E} -> {C, D} * E
{C, D} -> C * D
product {A, B, C, D} = hadamard
product {C, D, E} = hadamard
product {C, D} = hadamard
"""


def _model(text: str, backend: str = "torch", seed: int = 3) -> einc.Model:
    return einc.compile(text, backend=backend, dtype="float64", seed=seed)


def _heads(model: einc.Model, x: np.ndarray) -> np.ndarray:
    ll = model.log_likelihood(x)
    return ll[:, None] if ll.ndim == 1 else ll


def _hclt_patches(heads: int = 1, latent: bool = False) -> str:
    """2x6 binary images, 2x3 HCLT patches (a tree per patch) under an outer-product PD."""
    return "\n".join([
        "var img[2, 6] : binary", "leaf img ~ bernoulli", "sums 2", f"heads {heads}",
        "structure patch_trees(size = [2, 3], parents = [-1, 0, 0, 1, 1, 2], patch_product = hadamard)",
        *(["latent patches(size = [2, 3])"] if latent else []), ""])


def _kinds(graph) -> list[tuple]:
    return [(p.region, p.parts, graph.product_of(p)) for p in graph.partitions]


def test_region_statements_set_each_partitions_kind() -> None:
    graph = front_end(MIXED_PC, "mixed.pc").graph
    kinds = sorted((graph.scope_names(p.region[0]), len(p.parts), graph.product_of(p)) for p in graph.partitions)
    assert kinds == [
        ("{A, B, C, D, E}", 2, "outer"), ("{A, B, C, D, E}", 2, "outer"), ("{A, B, C, D}", 2, "hadamard"),
        ("{A, B}", 2, "outer"), ("{C, D, E}", 2, "hadamard"), ("{C, D, E}", 3, "hadamard"), ("{C, D}", 2, "hadamard"),
    ]
    assert graph.product == "outer" and graph.product_kinds == ("hadamard", "outer")
    # the other way round: a hadamard circuit with one outer region
    flipped = front_end("var A, B, C : binary\nleaf A, B, C ~ bernoulli\nproduct hadamard\n"
                        "{A, B, C} -> A * B * C\n{A, B, C} -> A * {B, C}\n{B, C} -> B * C\n"
                        "product {B, C} = outer\n", "flipped.pc").graph
    assert [(len(p.parts), flipped.product_of(p), p.product) for p in flipped.partitions] == [
        (3, "hadamard", None), (2, "hadamard", None), (2, "outer", "outer")]


def test_a_kind_equal_to_the_circuits_is_stored_as_the_default() -> None:
    plain = front_end(MIXED_PC, "a.pc").graph
    said_twice = front_end(MIXED_PC + "product {A, B} = outer\nproduct outer\n", "b.pc").graph
    assert [(p.region, p.parts, p.product) for p in said_twice.partitions] == [
        (p.region, p.parts, p.product) for p in plain.partitions]


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_region_hadamard_is_the_hadamard_circuit(backend: str) -> None:
    text = (ROOT / "examples" / "tiny_hadamard.pc").read_text(encoding="utf-8")
    regions = ["{A, B, C, D, E}", "{B, E}", "{A, B}", "{C, D, E}", "{C, D}"]
    per_region = text.replace("product hadamard\n", "") + "".join(f"product {r} = hadamard\n" for r in regions)
    whole, mixed = _model(text, backend), _model(per_region, backend)
    assert mixed.graph.product == "outer" and mixed.graph.product_kinds == ("hadamard",)
    assert [(op.kind, op.name) for op in mixed.plan.ops] == [(op.kind, op.name) for op in whole.plan.ops]
    assert mixed.plan.params == whole.plan.params
    states = enumerate_states(whole.graph)
    np.testing.assert_array_equal(mixed.log_likelihood(states), whole.log_likelihood(states))


def test_mixed_circuit_mass_marginals_and_backends_agree() -> None:
    models = {backend: _model(MIXED_PC, backend) for backend in BACKENDS}
    plan = models["torch"].plan
    assert {op.kind for op in plan.ops} == {"input", "einsum", "hadamard", "mixing"}
    graph = models["torch"].graph
    states = enumerate_states(graph)
    joints = {backend: _heads(model, states) for backend, model in models.items()}
    np.testing.assert_allclose(joints["numpy"], joints["torch"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.exp(joints["torch"]).sum(0), 1.0, atol=1e-12)  # every head
    rng = np.random.default_rng(0)
    for _ in range(8):  # a random subset hidden: the marginal is the sum of the consistent joints
        x = states[rng.integers(len(states))]
        hidden = rng.random(graph.num_columns) < 0.5
        consistent = np.all((states == x) | hidden, 1)
        for backend, model in models.items():
            marginal = _heads(model, np.where(hidden, np.nan, x)[None])[0]
            np.testing.assert_allclose(np.exp(marginal), np.exp(joints[backend][consistent]).sum(0), rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hclt_patch_circuit_mass_and_marginals(backend: str) -> None:
    model = _model(_hclt_patches(), backend)
    other = _model(_hclt_patches(), "numpy" if backend == "torch" else "torch")
    states = enumerate_states(model.graph)
    ll = model.log_likelihood(states)
    np.testing.assert_allclose(np.exp(ll).sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(other.log_likelihood(states), ll, rtol=0, atol=1e-12)
    x = np.where(np.arange(12) % 4 == 1, np.nan, states[::97])  # three pixels hidden in every image
    for row, xi in zip(model.log_likelihood(x), x):
        consistent = np.all((states == xi) | np.isnan(xi), 1)
        np.testing.assert_allclose(np.exp(row), np.exp(ll[consistent]).sum(), rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_element_wise_partitions_are_outer_ones_with_diagonal_weights(backend: str) -> None:
    # binary partitions only: Σ_j W[k,j] L[j] R[j] is Σ_ij W'[k,i,j] L[i] R[j] with W' = W[k,i] δ_ij
    text = MIXED_PC.replace("{C, D, E} -> C * D * E\n", "")
    mixed = _model(text, backend, seed=5)
    outer = _model("\n".join(line for line in text.splitlines() if not line.startswith("product ")) + "\n", backend)
    assert outer.graph.product_kinds == ("outer",)
    items = item_parameters(mixed.plan, mixed.parameters())
    for index, partition in enumerate(mixed.graph.partitions):
        if mixed.graph.product_of(partition) == "hadamard":
            w = items[("partition", index)]  # (K_out, K)
            items[("partition", index)] = w[:, :, None] * np.eye(w.shape[1])[None]  # (K_out, K, K)
    outer.set_parameters(assemble_parameters(outer.plan, items, outer.parameters()))
    states = enumerate_states(mixed.graph)
    np.testing.assert_allclose(outer.log_likelihood(states), mixed.log_likelihood(states), rtol=0, atol=1e-12)
    hidden = np.where(np.arange(5) == 2, np.nan, states)
    np.testing.assert_allclose(outer.log_likelihood(hidden), mixed.log_likelihood(hidden), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("text", "location", "message"), [
    (MIXED_PC.replace("product {C, D, E} = hadamard", "product {C, D, E} = hadamrd"), "14:21",
     "unknown product kind 'hadamrd'; expected one of outer, hadamard — did you mean hadamard?"),
    (MIXED_PC + "product A = hadamard\n", "16:1", "{A} is a leaf region: it has no partitions"),
    (MIXED_PC + "product {A, C} = hadamard\n", "16:1", "product names {A, C}, which is not a region of the circuit"),
    (MIXED_PC + "product {C, D} = outer\n", "16:1", "the product kind of {C, D} is given twice"),
    # C * D * E under the circuit's outer kind once its region no longer says hadamard
    (MIXED_PC.replace("product {C, D, E} = hadamard\n", ""), "10:1",
     "partition {C, D, E} -> {C} * {D} * {E} has 3 parts; `product outer` multiplies exactly 2 children"),
    # an element-wise partition whose parts differ in K, in a circuit that is otherwise outer
    (MIXED_PC + "sums {C, D} = 3\n", "8:1",
     "partition {A, B, C, D} -> {A, B} * {C, D} multiplies parts of different sizes: {A, B} has K = 2 (sums), "
     "{C, D} has K = 3 (sums); `product hadamard` multiplies its parts element-wise"),
])
def test_errors_of_a_mixed_circuit_are_located(tmp_path: Path, capsys, text: str, location: str, message: str) -> None:
    path = tmp_path / "bad.pc"
    path.write_text(text, encoding="utf-8")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:{location}: error: {message}" in err, err
    assert "Traceback" not in err


def test_the_printers_and_the_parameter_count_follow_each_partitions_kind(tmp_path: Path, capsys) -> None:
    layered = front_end(MIXED_PC, "mixed.pc")
    graph = layered.graph
    ir = dump_ir(graph)
    assert "K: sums 2, inputs 2, heads 2; product outer (4 partitions hadamard)" in ir
    rows = [line for line in ir.splitlines() if line.lstrip().startswith("p") and " -> " in line]
    assert [row.endswith("hadamard") for row in rows] == [graph.product_of(p) == "hadamard" for p in graph.partitions]
    assert dump_layers(layered).count("  hadamard\n") == 4
    assert dump_dot(graph).count('label="⊙"') == 4 and dump_dot(graph).count('label="×"') == 3
    count = parameter_count(graph)
    sizes: dict[str, int] = {}
    for spec in compile_plan(MIXED_PC, "mixed.pc").params:
        sizes[spec.kind] = sizes.get(spec.kind, 0) + spec.size
    assert dict(count.product_ops) == {"einsum": sizes["einsum"], "hadamard": sizes["hadamard"]}
    # by hand: einsum: root 2 x (2·2·2) + {A, B} 2·2·2; hadamard: 2·2 for each of four partitions
    assert (sizes["einsum"], sizes["hadamard"], count.product) == (24, 16, 40)
    path = tmp_path / "mixed.pc"
    path.write_text(MIXED_PC, encoding="utf-8")
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"parameters: {count.total} (leaf {count.leaf}, einsum 24, hadamard 16, mixing {count.mixing})" in out
    assert main(["compile", str(path), "--emit", "plan"]) == 0
    plan_text = capsys.readouterr().out
    assert "einsum" in plan_text and "hadamard" in plan_text


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = _model(MIXED_PC)
    states = enumerate_states(model.graph)
    rng = np.random.default_rng(1)
    model.fit(states[rng.integers(0, len(states), 200)], epochs=2, batch_size=50)
    model.save(tmp_path / "mixed.npz")
    loaded = einc.load(tmp_path / "mixed.npz", dtype="float64")
    assert loaded.graph.partitions == model.graph.partitions
    np.testing.assert_allclose(loaded.log_likelihood(states), model.log_likelihood(states), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text", [MIXED_PC, _hclt_patches(latent=True)], ids=["explicit", "HCLT patches"])
def test_full_batch_em_never_decreases_the_likelihood(text: str, backend: str) -> None:
    model = _model(text, backend, seed=5)
    states = enumerate_states(model.graph)
    x = states[np.random.default_rng(6).integers(0, len(states), 300)]
    observed = np.ones_like(x, dtype=bool)
    observed[::5, 2] = False  # missing values: EM stays monotone
    batch = Batch(np.where(observed, x, 0.0), observed)
    params = model.backend.put(model.parameters())
    history = []
    for _ in range(10):
        stats = model.backend.statistics(params, batch)
        history.append(stats.log_likelihood)
        params = model.backend.em_update(params, stats, 1.0)
    assert all(b >= a - 1e-9 * abs(a) for a, b in itertools.pairwise(history)), history
    assert history[-1] > history[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_growing_hclt_patches_keeps_every_heads_distribution(backend: str) -> None:
    model = _model(_hclt_patches(heads=2), backend)
    states = enumerate_states(model.graph)
    rng = np.random.default_rng(0)
    x, heads = states[rng.integers(0, len(states), 300)], rng.integers(0, 2, 300)
    model.fit(x, labels=heads, epochs=2, batch_size=100, step_size=0.5)
    chosen = heads == 1
    grown, growth = grow(model, model.flows(x[chosen], heads=heads[chosen]), {model.graph.root: [1]}, 0.2)
    graph = model.graph
    inside = {part for p in graph.partitions if graph.product_of(p) == "hadamard" for part in p.parts}
    assert grown.graph.heads == 3 and set(growth.copies) & inside and set(growth.copies) - inside - {graph.root}
    before, after = _heads(model, states), _heads(grown, states)
    np.testing.assert_allclose(after[:, :2], before, rtol=0, atol=1e-10)  # the old heads
    np.testing.assert_allclose(after[:, 2], before[:, 1], rtol=0, atol=1e-10)  # the copy of head 1
    np.testing.assert_allclose(np.exp(after).sum(0), 1.0, atol=1e-10)
    assert _kinds(grown.graph) == _kinds(graph)  # the grown .pc keeps every partition's kind


def test_growing_the_states_of_an_hclt_patch_keeps_p_x() -> None:
    model = _model(_hclt_patches(latent=True), seed=4)
    states = enumerate_states(model.graph)
    z = np.random.default_rng(1).integers(0, 2, (len(states), 2))
    model.fit(states, latents=z, epochs=2, batch_size=256)
    patch = model.latents[0].region
    grown, growth = grow(model, model.flows(states, latents=z), {patch: [0, 1]}, 0.3)
    assert grown.latents[0].states == 4 and len(growth.copies) > 1  # units inside the HCLT grew too
    np.testing.assert_allclose(grown.log_likelihood(states), model.log_likelihood(states), rtol=0, atol=1e-10)


def test_growing_refuses_a_hadamard_part_shared_with_another_partition() -> None:
    model = _model(MIXED_PC)  # {C, D} is a part of two element-wise partitions
    states = enumerate_states(model.graph)
    with pytest.raises(EincError, match="a part of one partition"):
        grow(model, model.flows(states, heads=0), {model.graph.root: [0]}, 0.1)


def test_the_hclt_patches_example_verifies_and_is_normalised() -> None:
    path = ROOT / "examples" / "lvd" / "mnist_hclt_patches.pc"
    model = einc.compile(path, dtype="float64", options=CompileOptions(sums=2))  # K 2 keeps it small
    graph = model.graph
    assert len(model.latents) == 16 and graph.product_kinds == ("hadamard", "outer")
    inside = [p for p in graph.partitions if graph.product_of(p) == "hadamard"]
    assert len(inside) == 16 * 42  # one per inner node of the 49-position tree (42: all but the bottom row)
    assert all(len(p.region[0]) <= 49 for p in inside)  # element-wise products only inside the patches
    images = np.load(ROOT / "examples" / "data" / "mnist_small.npz")["x_test"][:3].astype(np.float64)
    assert np.all(np.isfinite(model.log_likelihood(images)))
    hidden = images.copy()
    hidden[:, :] = np.nan
    np.testing.assert_allclose(model.log_likelihood(hidden), 0.0, atol=1e-9)  # every pixel summed out: mass 1
    hidden[:, 200:] = images[:, 200:]  # the marginal of the rest is at least the joint
    assert np.all(model.log_likelihood(hidden) >= model.log_likelihood(images))
