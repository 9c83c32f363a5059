"""Structure learning: mutual information, maximum spanning trees, Chow-Liu trees and HCLTs.

Oracles: the mutual information written out pair by pair; every labelled tree on 6 vertices
(Prüfer sequences) for the spanning tree's optimality; the Bayesian-network formula of a Chow-Liu
tree with its closed-form (Laplace-smoothed) conditional probability tables.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

import einc
from einc import cli
from einc.errors import DataError, EincError
from einc.tools.structure_learning import (
    bin_codes,
    learn_structure,
    learn_tree,
    maximum_spanning_tree,
    mutual_information,
    parents_from_edges,
    tree_centre,
    variables_from_file,
)


def _naive_information(a: np.ndarray, b: np.ndarray, levels_a: int, levels_b: int, alpha: float) -> float:
    both = (a >= 0) & (b >= 0)
    counts = np.zeros((levels_a, levels_b))
    for i, j in zip(a[both], b[both]):
        counts[i, j] += 1
    joint = (counts + alpha) / (counts.sum() + alpha * levels_a * levels_b)
    pa, pb = joint.sum(1), joint.sum(0)
    return sum(joint[i, j] * math.log(joint[i, j] / (pa[i] * pb[j]))
               for i in range(levels_a) for j in range(levels_b) if joint[i, j] > 0)


def test_mutual_information_equals_the_direct_formula_with_missing_values() -> None:
    rng = np.random.default_rng(0)
    levels = np.array([2, 3, 2, 4, 2])
    codes = np.stack([rng.integers(0, n, 300) for n in levels], 1)
    codes[:, 2] = np.where(rng.random(300) < 0.8, codes[:, 0], 1 - codes[:, 0])  # dependent
    codes[rng.random(codes.shape) < 0.1] = -1  # missing
    for alpha in (0.0, 0.5):
        got = mutual_information(codes, levels, alpha)
        for a, b in itertools.combinations(range(len(levels)), 2):
            expected = _naive_information(codes[:, a], codes[:, b], levels[a], levels[b], alpha)
            assert math.isclose(got[a, b], expected, rel_tol=1e-9, abs_tol=1e-12)
            assert math.isclose(got[b, a], expected, rel_tol=1e-9, abs_tol=1e-12)


def _skewed_codes(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-like codes: mostly one value per column (not always code 0), some codes never seen,
    constant columns, uneven numbers of levels, and dependent neighbours."""
    rng = np.random.default_rng(seed)
    levels = np.array([4, 4, 3, 8, 2, 5, 4, 8, 3])
    codes = np.zeros((rows, len(levels)), dtype=np.int64)
    for v, n in enumerate(levels):
        common = (v * 3) % n  # the most frequent code, 0 only for some columns
        rare = rng.integers(0, max(1, n - 1), rows)  # code n − 1 never appears unless common
        codes[:, v] = np.where(rng.random(rows) < 0.8, common, rare)
    codes[:, 5] = np.where(rng.random(rows) < 0.7, codes[:, 3] % 5, codes[:, 5])  # dependent pairs
    codes[:, 8] = np.where(rng.random(rows) < 0.9, codes[:, 0] % 3, codes[:, 8])
    codes[:, 6] = 2  # constant (and column 4: its rare values are its common one)
    return codes, levels


@pytest.mark.parametrize("seed", range(3))
def test_mutual_information_from_implied_reference_codes_equals_the_direct_formula(seed: int) -> None:
    """The fast path (no missing values: the most frequent code's counts are implied) against the
    pair-by-pair formula, entropies on the diagonal, and the same tree as from the direct values."""
    codes, levels = _skewed_codes(400, seed)
    for alpha in (0.0, 1.0):
        got = mutual_information(codes, levels, alpha)
        expected = np.array([[_naive_information(codes[:, a], codes[:, b], levels[a], levels[b], alpha)
                              for b in range(len(levels))] for a in range(len(levels))])
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
        assert np.array_equal(got, got.T)
        # constant columns tie at 0 with everything (rounding decides): the tree's weight under
        # the direct values is the maximum; without them, the very same tree
        best = sum(expected[a, b] for a, b in maximum_spanning_tree(expected))
        assert math.isclose(sum(expected[a, b] for a, b in maximum_spanning_tree(got)), best, rel_tol=1e-9)
        varying = [v for v in range(len(levels)) if len(np.unique(codes[:, v])) > 1]
        assert len(varying) == len(levels) - 2 and maximum_spanning_tree(got[np.ix_(varying, varying)]) == maximum_spanning_tree(
            expected[np.ix_(varying, varying)])
    tree = learn_tree(codes[:, varying].astype(float), list(levels[varying]))
    reference = maximum_spanning_tree(np.array(
        [[_naive_information(codes[:, a], codes[:, b], levels[a], levels[b], 1.0) for b in varying] for a in varying]))
    assert tree.parents == parents_from_edges(reference, len(varying), tree.root)


def test_mutual_information_blocks_give_the_same_values_as_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from einc.tools import structure_learning

    codes, levels = _skewed_codes(300, 7)
    codes[np.random.default_rng(1).random(codes.shape) < 0.05] = -1  # and missing entries
    whole = mutual_information(codes, levels, 0.5)
    monkeypatch.setattr(structure_learning, "_BLOCK_ELEMENTS", 1)  # one variable per block
    np.testing.assert_allclose(mutual_information(codes, levels, 0.5), whole, rtol=1e-12, atol=1e-14)


def test_information_is_zero_for_independent_and_the_entropy_for_duplicated_columns() -> None:
    x = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])  # empirically independent of x: p(x, y) = p(x) p(y)
    z = np.array([0, 1, 2, 2, 1, 0, 2, 2])
    codes = np.stack([x, y, z, z], 1)
    info = mutual_information(codes, np.array([2, 2, 3, 3]), pseudocount=0.0)
    assert abs(info[0, 1]) < 1e-12
    p = np.bincount(z) / len(z)
    assert math.isclose(info[2, 3], -(p * np.log(p)).sum(), rel_tol=1e-12)
    assert (info >= 0).all() and np.allclose(info, info.T)


def test_many_valued_variables_are_binned() -> None:
    from oracles import variables
    from einc.ir.region_graph import Domain, LeafFamily

    pixel = (LeafFamily("categorical"), Domain("categorical", 256))
    real = (LeafFamily("normal", (("min_var", 1e-4), ("max_var", 10.0))), Domain("real", 1))
    count = (LeafFamily("poisson"), Domain("count", 1))
    data = np.array([[0, -1.0, 3], [255, 1.0, 5], [128, 0.0, np.nan], [17, 0.5, 4]])
    codes, levels = bin_codes(data, variables([pixel, real, count]), bins=4)
    np.testing.assert_array_equal(levels, [4, 4, 3])
    np.testing.assert_array_equal(codes[:, 0], [0, 3, 2, 0])  # 256 levels in 4 equal bins
    np.testing.assert_array_equal(codes[:, 1], [0, 3, 2, 3])  # [-1, 1] in 4 bins
    np.testing.assert_array_equal(codes[:, 2], [0, 2, -1, 1])  # 3 integer values: their own codes


def _prufer_trees(count: int):
    for sequence in itertools.product(range(count), repeat=count - 2):
        degree = [1] * count
        for v in sequence:
            degree[v] += 1
        edges = []
        for v in sequence:
            leaf = min(u for u in range(count) if degree[u] == 1)
            edges.append((leaf, v))
            degree[leaf] -= 1
            degree[v] -= 1
        u, w = (v for v in range(count) if degree[v] == 1)
        edges.append((u, w))
        yield edges


@pytest.mark.parametrize("seed", range(4))
def test_spanning_tree_is_maximal_against_every_tree_on_6_variables(seed: int) -> None:
    rng = np.random.default_rng(seed)
    weights = rng.random((6, 6)) if seed % 2 else rng.integers(0, 3, (6, 6)).astype(float)  # ties
    weights = np.triu(weights, 1) + np.triu(weights, 1).T
    edges = maximum_spanning_tree(weights)
    assert len(edges) == 5 and len({frozenset(e) for e in edges}) == 5
    parents = parents_from_edges(edges, 6, 0)  # spans every vertex
    assert parents.count(-1) == 1
    best = max(sum(weights[a, b] for a, b in tree) for tree in _prufer_trees(6))
    assert len(list(_prufer_trees(6))) == 6**4
    assert math.isclose(sum(weights[a, b] for a, b in edges), best, rel_tol=1e-12)
    assert maximum_spanning_tree(weights) == edges  # deterministic, ties included


def test_ties_and_centres_are_broken_by_the_smallest_index() -> None:
    assert maximum_spanning_tree(np.ones((4, 4))) == [(0, 1), (0, 2), (0, 3)]  # a star at 0
    path = [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert tree_centre(path, 5) == 2
    assert tree_centre(path[:3], 4) == 1  # two centres, 1 and 2
    assert parents_from_edges(path, 5, 2) == (1, 2, -1, 2, 3)


def _tree_data(rows: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Samples of a tree Bayesian network over 7 variables (x6 has 3 values)."""
    rng = np.random.default_rng(seed)
    parents = [-1, 0, 0, 1, 1, 2, 2]
    x = np.zeros((rows, 7))
    x[:, 0] = rng.random(rows) < 0.6
    for v in range(1, 7):
        flip = rng.random(rows) < (0.15 if v % 2 else 0.3)
        x[:, v] = np.where(flip, 1 - x[:, parents[v]], x[:, parents[v]])
    x[:, 6] = np.where(rng.random(rows) < 0.3, 2, x[:, 6])
    return x, parents


def test_learned_tree_recovers_the_generating_tree() -> None:
    x, parents = _tree_data(5000, 0)
    tree = learn_tree(x, [2, 2, 2, 2, 2, 2, 3])
    learned = {frozenset((v, p)) for v, p in enumerate(tree.parents) if p >= 0}
    assert learned == {frozenset((v, p)) for v, p in enumerate(parents) if p >= 0}
    assert tree.root in (0, 1, 2)  # a centre of that tree


@pytest.fixture
def tree_files(tmp_path: Path) -> dict[str, Path]:
    x, _ = _tree_data(400, 1)
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    np.savetxt(train, x, fmt="%d", delimiter=",")
    np.savetxt(test, _tree_data(100, 2)[0], fmt="%d", delimiter=",")
    spec = tmp_path / "spec.pc"
    spec.write_text("var x[6] : binary  # six bits\nvar c : categorical(3)\nleaf x ~ bernoulli\nleaf c ~ categorical\n")
    return {"train": train, "test": test, "spec": spec}


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_chow_liu_tree_is_the_bayesian_network_and_one_em_step_gives_its_cpts(
    tree_files: dict[str, Path], tmp_path: Path, backend: str
) -> None:
    alpha = 0.5
    text, tree = learn_structure("chow_liu", tree_files["train"], tmp_path / "clt.pc", variables=tree_files["spec"])
    model = einc.compile(text, backend=backend, dtype="float64", seed=3)
    train = np.loadtxt(tree_files["train"], delimiter=",")
    test = np.loadtxt(tree_files["test"], delimiter=",")
    model.fit(train, epochs=1, update="epoch", step_size=1.0, batch_size=len(train), pseudocount=alpha)
    levels = [2, 2, 2, 2, 2, 2, 3]

    def cpt(v: int, parent_value: float | None) -> np.ndarray:
        rows = train if parent_value is None else train[train[:, tree.parents[v]] == parent_value]
        counts = np.bincount(rows[:, v].astype(int), minlength=levels[v]) + alpha / levels[v]
        return counts / counts.sum()

    def bayesian_network(x: np.ndarray) -> float:
        return sum(math.log(cpt(v, None if p < 0 else x[p])[int(x[v])]) for v, p in enumerate(tree.parents))

    expected = np.array([bayesian_network(row) for row in test])
    np.testing.assert_allclose(model.log_likelihood(test), expected, atol=1e-10)
    # and the weights themselves are the closed-form tables
    root_weights = next(v for k, v in model.parameters().items() if k.endswith("weights") and v.shape[1] == 1)
    np.testing.assert_allclose(root_weights[0, 0, : levels[tree.root]], cpt(tree.root, None), atol=1e-10)


def test_hclt_file_is_complete_verified_readable_and_deterministic(tree_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "model_hclt.pc"
    text, tree = learn_structure("hclt", tree_files["train"], out, hidden_states=3, variables=tree_files["spec"])
    again, _ = learn_structure("hclt", tree_files["train"], out, hidden_states=3, variables=tree_files["spec"])
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == [line for line in again.splitlines() if not line.startswith("#")]
    assert "circuit model_hclt" in body and "product hadamard" in body and "sums 3" in body
    assert "var x[6] : binary" in body and "leaf c ~ categorical" in body  # the spec's lines, reused
    graph = einc.compile(text).graph
    assert graph.product == "hadamard" and graph.sums == graph.inputs == 3
    assert graph.generator == f"tree(parents=[7 entries], root={graph.variables[tree.root].name})"


def test_learn_structure_cli_end_to_end(tree_files: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "bits.csv"
    np.savetxt(binary, np.loadtxt(tree_files["train"], delimiter=",")[:, :6], fmt="%d", delimiter=",")
    out = tmp_path / "bits.pc"
    assert cli.main(["learn-structure", "hclt", "--data", str(binary), "--sums", "4", "-o", str(out)]) == 0
    assert f"wrote {out}: hclt over 6 variables" in capsys.readouterr().out
    assert "var x[6] : binary" in out.read_text() and "leaf x ~ bernoulli" in out.read_text()
    model_file = tmp_path / "bits.npz"
    assert cli.main(["train", str(out), "--data", str(binary), "--epochs", "2", "-o", str(model_file)]) == 0
    assert model_file.exists()
    clt = tmp_path / "bits_clt.pc"
    assert cli.main(["learn-structure", "chow_liu", "--data", str(binary), "-o", str(clt)]) == 0
    assert "~ indicator" in clt.read_text()


def test_learn_structure_errors_are_clear(tree_files: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.pc"
    # the categorical column is not binary: without --variables every column must be 0/1
    assert cli.main(["learn-structure", "hclt", "--data", str(tree_files["train"]), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert ":7 (variable x[6])" in err and "expected" in err and "--variables" in err and "Traceback" not in err
    assert not out.exists()
    assert cli.main(["learn-structure", "chow_liu", "--data", str(tree_files["train"]), "--sums", "4",
                     "--variables", str(tree_files["spec"]), "-o", str(out)]) == 1
    assert "a Chow-Liu tree's states are its variables' own values" in capsys.readouterr().err
    with pytest.raises(DataError, match="at least 2 data columns"):
        one = tmp_path / "one.csv"
        one.write_text("0\n1\n")
        learn_structure("hclt", one, out)
    real = tmp_path / "real.pc"
    real.write_text("var r[7] : real\nleaf r ~ normal\n")
    with pytest.raises(EincError, match="chow_liu needs variables with finitely many values"):
        learn_structure("chow_liu", tree_files["train"], out, variables=real)
    # a Chow-Liu tree's inner variables are its latents: one K means one number of categories
    rng = np.random.default_rng(0)
    c = rng.integers(0, 3, 500)
    noisy = lambda bits: np.where(rng.random(500) < 0.05, 1 - bits, bits)  # noqa: E731
    x1 = noisy((c == 2).astype(int))
    chain = np.stack([noisy((c > 0).astype(int)), x1, noisy(x1), c], 1)  # x0 - c - x1 - x2
    mixed_data, mixed_spec = tmp_path / "mixed.csv", tmp_path / "mixed.pc"
    np.savetxt(mixed_data, chain, fmt="%d", delimiter=",")
    mixed_spec.write_text("var x[3] : binary\nvar c : categorical(3)\nleaf x ~ bernoulli\nleaf c ~ categorical\n")
    with pytest.raises(EincError, match=r"inner nodes have \[2, 3\]; use `learn-structure hclt`"):
        learn_structure("chow_liu", mixed_data, out, variables=mixed_spec)
    # a broken spec file is reported at its own line and column
    bad = tmp_path / "bad.pc"
    bad.write_text("var x[7] : binary\nleaf x ~ bernouli\n")
    with pytest.raises(EincError, match=r"bad.pc:2:10: error: unknown leaf family 'bernouli'"):
        variables_from_file(bad)


def test_docstring_examples_run() -> None:
    import doctest

    from einc.compiler import generators
    from einc.ir import products
    from einc.tools import structure_learning

    for module in (structure_learning, generators, products):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
