"""``structure patch_trees(size = [h, w], parents = …)``: a circuit per patch under a circuit over
the patches, the structure a latent per patch needs (LVD, issue 21).

By enumeration in float64 on 4×4 and 2×6 binary images: the circuit's total mass is 1; each
patch region is a circuit of its own whose every head (``patch_model``) is a normalised
distribution over the patch; p(x, z) = p(z) Π_j p(x_j | z_j) with those heads; progressive growing
runs on it and leaves a normalised circuit. The generator's shape (counts, the learned tree's
partitions, determinism), located argument errors, and random grids through the verifier.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import enumerate_states

import einc
from einc.compiler.generators import GeneratorArgumentError
from einc.compiler.patch_generators import check_patch_trees, patch_trees
from einc.compiler.verify import verify
from einc.ir.diagnostics import EincError
from einc.ir.region_graph import Domain, LeafFamily, RegionGraph, Variable
from einc.tools.patches import patch_data, patch_model
from einc.train.lvd_pg import progressive_growing


def source(shape: tuple[int, int], size: tuple[int, int], parents: list[int] | None, sums: int = 2,
           states: int = 3, patch_product: str | None = None) -> str:
    tree = "" if parents is None else f", parents = [{', '.join(map(str, parents))}]"
    tree += "" if patch_product is None else f", patch_product = {patch_product}"
    lines = [f"var img[{shape[0]}, {shape[1]}] : binary", "leaf img ~ bernoulli", f"sums {sums}", "inputs 2",
             f"structure patch_trees(size = [{size[0]}, {size[1]}]{tree})",
             f"latent patches(size = [{size[0]}, {size[1]}])"]
    h, w = size
    for r in range(0, shape[0], h):
        for c in range(0, shape[1], w):
            lines.append(f"sums {{img[{r}:{r + h}, {c}:{c + w}]}} = {states}")
    return "\n".join(lines) + "\n"


CASES = {
    "4x4, 2x2 patches, k-d": ((4, 4), (2, 2), None, None),
    "4x4, 2x2 patches, learned tree": ((4, 4), (2, 2), [1, -1, 1, 2], None),
    "2x6, 2x3 patches, chain": ((2, 6), (2, 3), [-1, 0, 1, 2, 3, 4], None),
    # HCLT patches (element-wise products inside, n-ary) under the outer-product PD: mixed kinds
    "2x6, 2x3 HCLT patches": ((2, 6), (2, 3), [-1, 0, 0, 1, 1, 2], "hadamard"),
    "4x4, 2x2 k-d hadamard patches": ((4, 4), (2, 2), None, "hadamard"),
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def model(request) -> einc.Model:
    shape, size, parents, patch_product = CASES[request.param]
    return einc.compile(source(shape, size, parents, patch_product=patch_product), dtype="float64", seed=7)


def test_the_circuit_has_mass_one(model: einc.Model) -> None:
    states = enumerate_states(model.graph)
    np.testing.assert_allclose(np.exp(model.log_likelihood(states)).sum(), 1.0, atol=1e-10)


def test_every_patch_head_is_a_normalised_distribution(model: einc.Model) -> None:
    for j, slot in enumerate(model.latents):
        patch = patch_model(model, j)
        assert patch.graph.heads == slot.states == 3
        hclt = [p for p in patch.graph.partitions if len(p.parts) > 2]
        # one per pixel but one (binary partitions); an HCLT one per inner tree node
        assert len(patch.graph.partitions) + sum(len(p.parts) - 2 for p in hclt) == patch.graph.num_variables - 1
        inside = "hadamard" if "hadamard" in model.graph.product_kinds else "outer"
        assert patch.graph.product_kinds == (inside,)  # the patch circuit keeps its partitions' kind
        heads = np.exp(patch.log_likelihood(enumerate_states(patch.graph)))  # (states of the patch, heads)
        np.testing.assert_allclose(heads.sum(0), 1.0, atol=1e-10)


def test_the_joint_is_p_z_times_the_patch_heads(model: einc.Model) -> None:
    rng = np.random.default_rng(0)
    states = enumerate_states(model.graph)
    x = states[rng.integers(0, len(states), 40)]
    for z_row in itertools.islice(itertools.product(range(3), repeat=len(model.latents)), 0, None, 7):
        z = np.tile(z_row, (len(x), 1))
        joint = model.log_likelihood(x, latents=z)
        prior = model.log_likelihood(np.full_like(x, np.nan), latents=z)  # x summed out: p(z)
        parts = sum(patch_model(model, j).log_likelihood(patch_data(model, j, x))[:, z_row[j]]
                    for j in range(len(model.latents)))
        np.testing.assert_allclose(joint - prior, parts, rtol=0, atol=1e-10)
    # and summing z out of p(x, z) gives p(x)
    all_z = np.array(list(itertools.product(range(3), repeat=len(model.latents))))
    x0 = np.repeat(x[:3], len(all_z), 0)
    joint = model.log_likelihood(x0, latents=np.tile(all_z, (3, 1))).reshape(3, -1)
    np.testing.assert_allclose(np.logaddexp.reduce(joint, 1), model.log_likelihood(x[:3]), atol=1e-10)


@pytest.mark.parametrize("patch_product", [None, "hadamard"], ids=["outer trees", "HCLT patches"])
def test_progressive_growing_runs_on_patch_trees(patch_product: str | None) -> None:
    model = einc.compile(source((4, 4), (2, 2), [1, -1, 1, 2], states=1, patch_product=patch_product),
                         dtype="float64", seed=1)
    rng = np.random.default_rng(2)
    x = rng.integers(0, 2, (120, 16)).astype(float)
    x[:60, :8] = 1.0  # two kinds of images, so that clusters differ
    h = x.reshape(120, 2, 2, 2, 2).transpose(0, 1, 3, 2, 4).reshape(120, 4, 4) + rng.normal(0, 0.1, (120, 4, 4))
    grown, z, rounds = progressive_growing(model, x, h, 2, 2, threshold=0.3, epochs=1, batch_size=60)
    assert [slot.states for slot in grown.latents] == [4, 4, 4, 4] and z.max() == 3
    assert verify(grown.graph) == []
    np.testing.assert_allclose(np.exp(grown.log_likelihood(enumerate_states(grown.graph))).sum(), 1.0, atol=1e-10)
    again = einc.compile(grown.source, dtype="float64")  # the grown .pc text says the grown circuit
    assert again.graph.region_sizes == grown.graph.region_sizes
    assert again.graph.partitions == grown.graph.partitions  # with each partition's product kind


def test_counts_and_the_learned_tree_partitions() -> None:
    grid = np.arange(16).reshape(4, 4)
    regions, partitions = patch_trees(grid, [2, 2], [1, -1, 1, 2])
    # above: PD over the 2x2 patches (9 rectangles, 6 partitions); below: 3 partitions per patch
    assert len(partitions) == 6 + 4 * 3
    # position 1 is the root with children 0 and 2; 2 has child 3: {1} * ({0} ∪ {2, 3}), then {0} * {2, 3}
    first_patch = [p for p in partitions if set(p.region[0]) <= {0, 1, 4, 5}]
    assert [(p.region[0], [q[0] for q in p.parts]) for p in first_patch] == [
        ((0, 1, 4, 5), [(1,), (0, 4, 5)]), ((0, 4, 5), [(0,), (4, 5)]), ((4, 5), [(4,), (5,)])]
    assert patch_trees(grid, [2, 2]) == patch_trees(grid, [2, 2])  # deterministic
    kd_regions, _ = patch_trees(grid, [2, 2])
    assert {(0, 1), (0,), (1,)} <= {r.scope for r in kd_regions}  # a 2x2 patch halves rows first


@pytest.mark.parametrize(("size", "parents", "argument", "message"), [
    ([3, 2], None, "size", "does not tile"),
    ([4, 4], None, "size", "leaves one patch"),
    ([2, 2], [-1, 0, 1], "parents", "one per variable"),
    ([2, 2], [-1, 0, 3, 2], "parents", "cycle"),
    ([2, 2], [-1, -1, 0, 0], "parents", "exactly one root"),
])
def test_argument_errors(size, parents, argument: str, message: str) -> None:
    errors = check_patch_trees(np.arange(16).reshape(4, 4), size, parents)
    assert errors and errors[0].argument == argument and message in errors[0].message
    with pytest.raises(GeneratorArgumentError):
        patch_trees(np.arange(16).reshape(4, 4), size, parents)


@pytest.mark.parametrize(("statement", "message"), [
    ("structure patch_trees(size = [3, 2])", "4:30: error: patch size [3, 2] does not tile 'img' (4x4)"),
    ("structure patch_trees(size = [2, 2], parents = [-1, 0])",
     "4:48: error: parents has 2 entries; expected one per position of a 2x2 patch (4)"),
    ("structure patch_trees(size = [2, 2], over = pix)", "4:45: error: unknown variable 'pix'"),
    ("structure patch_trees(size = [2, 2], patch_product = elementwise)",
     "4:54: error: unknown product kind 'elementwise'; expected one of outer, hadamard — did you mean hadamard?"),
    # HCLT patches multiply leaf regions (inputs 1) with subtrees (sums 2) element-wise
    ("inputs 1\nstructure patch_trees(size = [2, 2], parents = [-1, 0, 0, 1], patch_product = hadamard)",
     "5:1: error: partition {img[0, 0], img[0, 1], img[1, 0], img[1, 1]} -> {img[0, 0]} * {img[0, 1], img[1, 1]} * "
     "{img[1, 0]} multiplies parts of different sizes"),
])
def test_errors_in_pc_text_are_located(statement: str, message: str) -> None:
    text = f"var img[4, 4] : binary\nleaf img ~ bernoulli\nsums 2\n{statement}\n"
    with pytest.raises(EincError) as caught:
        einc.compile(text)
    assert message in str(caught.value)


def _graph(count: int, regions, partitions, inputs: int = 2) -> RegionGraph:
    variables = tuple(Variable(i, f"x[{i}]", Domain("binary", 2), LeafFamily("bernoulli"), column=i)
                      for i in range(count))
    return RegionGraph("generated", variables, tuple(regions), tuple(partitions), sums=3, inputs=inputs)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.randoms(use_true_random=False))
def test_random_grids_verify(rows: int, columns: int, h: int, w: int, random) -> None:
    if rows * columns < 2:
        rows = 2
    grid = np.arange(rows * h * columns * w).reshape(rows * h, columns * w)
    parents = None
    if h * w >= 2 and random.random() < 0.5:  # a random tree over the positions
        order = list(range(h * w))
        random.shuffle(order)
        parents = [0] * (h * w)
        parents[order[0]] = -1
        for i in range(1, len(order)):
            parents[order[i]] = order[random.randrange(i)]
    hclt = random.random() < 0.5  # element-wise products inside the patches: HCLTs (n-ary) under outer ones
    regions, partitions = patch_trees(grid, [h, w], parents, patch_product="hadamard" if hclt else None)
    assert verify(_graph(grid.size, regions, partitions, inputs=3 if hclt else 2)) == []
    patch_scopes = {tuple(sorted(grid[r:r + h, c:c + w].ravel().tolist()))
                    for r in range(0, rows * h, h) for c in range(0, columns * w, w)}
    assert patch_scopes <= {r.scope for r in regions}
    below = [p for p in partitions if any(set(p.region[0]) <= set(s) for s in patch_scopes)]
    assert len(below) + sum(len(p.parts) - 2 for p in below) == rows * columns * (h * w - 1)
    assert {p.product for p in below} <= {"hadamard" if hclt else None}
    assert {p.product for p in partitions if p not in below} <= {None}  # over the patches: the circuit's kind


def test_an_absurd_patch_grid_is_refused_before_it_is_built() -> None:
    text = "var img[28, 28] : binary\nleaf img ~ bernoulli\nsums 2\nstructure patch_trees(size = [1, 1])\n"
    with pytest.raises(EincError) as caught:
        einc.compile(text)
    assert "4:11: error: patch_trees(size = [1, 1]) over the 28x28 grid would have 166,404 regions" in str(caught.value)
