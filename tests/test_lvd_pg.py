"""LVD with progressive growing (``einc.train.lvd_pg``, ``einc lvd --grow N1xN2``).

Steps 3 and 4 on hand-made clusters (the lowest-likelihood clusters up to 40% of the samples;
k-means seeded so that new cluster m splits chosen cluster m), and the whole loop on a small
circuit with two patch latents: every latent ends with N1·N2 states, every grown circuit is a
normalised distribution (enumeration), its .pc text compiles back to it, and the command line
prints each round and writes the grown .pc and model.
"""

from __future__ import annotations

import numpy as np
import pytest
from einc.ir.diagnostics import EincError
from oracles import enumerate_states

import einc
from einc.cli import main
from einc.train.lvd_pg import parse_grow, progressive_growing, select_clusters, split_clusters

PC = """\
var x[8] : binary
leaf x ~ bernoulli
sums 3
inputs 2
{x} -> {x[0:4]} * {x[4:8]}
{x[0:4]} -> {x[0:2]} * {x[2:4]}
{x[4:8]} -> {x[4:6]} * {x[6:8]}
{x[0:2]} -> x[0] * x[1]
{x[2:4]} -> x[2] * x[3]
{x[4:6]} -> x[4] * x[5]
{x[6:8]} -> x[6] * x[7]
latent left = {x[0:4]}
latent right = {x[4:8]}
"""


def _data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (rng.random((n, 8)) < rng.random((1, 8))).astype(float)
    noise = 0.1 * rng.standard_normal((n, 2, 4))
    return x, np.stack([x[:, :4], x[:, 4:]], 1) + noise  # a teacher embedding per patch


def test_parse_grow() -> None:
    assert parse_grow("4x3") == (4, 3) and parse_grow(" 2 X 5 ") == (2, 5)
    for bad in ("4", "0x3", "4x", "ax2"):
        with pytest.raises(EincError, match="expected N1xN2"):
            parse_grow(bad)


def test_the_lowest_likelihood_clusters_are_chosen_up_to_the_fraction() -> None:
    z = np.array([0] * 50 + [1] * 30 + [2] * 15 + [3] * 4 + [4])
    ll = np.select([z == 0, z == 1, z == 2, z == 3], [-1.0, -5.0, -3.0, -9.0], -20.0)
    # cluster 4 (one sample) cannot be split; 3 (4 samples), 1 (30) reach 34 ≥ 40% of 100? no: 2 is next
    assert select_clusters(ll, z, 0.4, most=10) == [1, 2, 3]
    assert select_clusters(ll, z, 0.3, most=10) == [1, 3]
    assert select_clusters(ll, z, 0.4, most=1) == [3]


def test_new_cluster_m_splits_chosen_cluster_m() -> None:
    rng = np.random.default_rng(0)
    blobs = [np.array(c) + 0.05 * rng.standard_normal((20, 2)) for c in ([0, 0], [0, 1], [5, 5], [5, 6], [9, 0])]
    h = np.concatenate(blobs)
    z = np.repeat([0, 0, 1, 1, 2], 20)  # clusters 0 and 1 each hold two blobs
    out = split_clusters(h, z, [0, 1], states=3)
    assert (out[80:] == 2).all()  # not chosen: untouched
    for first, second, old, new in ((0, 20, 0, 3), (40, 60, 1, 4)):
        halves = {int(out[first:second][0]), int(out[second:second + 20][0])}
        assert halves == {old, new}  # one blob keeps the old cluster, the other is its new one
        assert len(set(out[first:second])) == 1 and len(set(out[second:second + 20])) == 1


@pytest.mark.parametrize("outer, inner", [(1, 3), (2, 2)])
def test_progressive_growing_reaches_n1_times_n2_states_with_a_normalised_circuit(outer: int, inner: int) -> None:
    x, h = _data()
    model = einc.compile(PC, dtype="float64", seed=1)
    seen = []
    grown, z, rounds = progressive_growing(model, x, h, outer, inner, epochs=1, batch_size=100, valid=x[:50],
                                           on_round=seen.append)
    assert [slot.states for slot in grown.latents] == [outer * inner] * 2
    assert seen == rounds and len(rounds) >= 2 and rounds[-1].states == (outer * inner,) * 2
    assert all(r.valid_ll is not None and np.isfinite(r.train_ll) for r in rounds)
    assert z.shape == (len(x), 2) and z.min() >= 0 and z.max() < outer * inner
    states = enumerate_states(grown.graph)
    np.testing.assert_allclose(np.exp(grown.log_likelihood(states)).sum(), 1.0, atol=1e-10)
    again = einc.compile(grown.source, dtype="float64")
    assert again.graph.region_sizes == grown.graph.region_sizes
    again.set_parameters(grown.parameters())
    np.testing.assert_allclose(again.log_likelihood(x[:20]), grown.log_likelihood(x[:20]), atol=1e-12)


def test_progressive_growing_refuses_leaf_patches_and_missing_latents() -> None:
    x, h = _data(50)
    leafy = einc.compile("var x[2, 4] : binary\nleaf x ~ bernoulli\nsums 2\n"
                         "structure poon_domingos(delta = [2], axes = both, over = x)\n"
                         "latent patches(over = x, size = [2, 2])\n")
    with pytest.raises(EincError, match="not a circuit of its own"):
        progressive_growing(leafy, x, h, 2, 2)
    with pytest.raises(EincError, match="needs latents"):
        progressive_growing(einc.compile(PC.replace("latent", "# latent")), x, h, 2, 2)


def test_einc_lvd_grow_writes_the_grown_pc_and_model(tmp_path, capsys) -> None:
    x, h = _data(200)
    (tmp_path / "c.pc").write_text(PC)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "h.npy", h)
    argv = ["lvd", str(tmp_path / "c.pc"), "--data", str(tmp_path / "x.npy"), "--teacher", str(tmp_path / "h.npy"),
            "--grow", "2x2", "--epochs", "1", "--finetune-epochs", "1", "--valid", str(tmp_path / "x.npy"),
            "--threads", "1", "-o", str(tmp_path / "m.npz")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "round 1: states" in out and "valid bpd" in out
    assert f"wrote {tmp_path / 'm.pc'} and {tmp_path / 'm.npz'}" in out
    model = einc.load(tmp_path / "m.npz")
    assert [slot.states for slot in model.latents] == [4, 4]
    assert einc.compile(tmp_path / "m.pc").graph.region_sizes == model.graph.region_sizes
    assert main(argv[:4] + ["--latents", str(tmp_path / "h.npy"), "--grow", "2x2", "-o", str(tmp_path / "n.npz")]) == 1
    assert "--grow clusters teacher embeddings" in capsys.readouterr().err
    assert main(argv[:-2] + ["--grow", "2y2", "-o", str(tmp_path / "n.npz")]) == 1
    assert "expected N1xN2" in capsys.readouterr().err


def test_einc_lvd_grow_replaces_only_its_own_grown_pc(tmp_path, capsys) -> None:
    """The grown circuit's default path (MODEL.pc) is not one the user named: a file of theirs
    there is kept (and nothing is trained); an earlier run's grown circuit is replaced."""
    x, h = _data(120)
    (tmp_path / "c.pc").write_text(PC)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "h.npy", h)
    argv = ["lvd", str(tmp_path / "c.pc"), "--data", str(tmp_path / "x.npy"), "--teacher", str(tmp_path / "h.npy"),
            "--grow", "2x2", "--epochs", "1", "--threads", "1", "-o", str(tmp_path / "m.npz")]
    theirs = "# the user's own circuit\n" + PC
    (tmp_path / "m.pc").write_text(theirs)
    assert main(argv) == 1
    assert "is not a circuit grown by einc lvd --grow" in capsys.readouterr().err
    assert (tmp_path / "m.pc").read_text() == theirs and not (tmp_path / "m.npz").exists()
    assert main(argv + ["--grown-pc", str(tmp_path / "g.pc")]) == 0  # named: written there
    assert (tmp_path / "m.pc").read_text() == theirs
    (tmp_path / "m.pc").unlink()
    assert main(argv) == 0 and main(argv) == 0  # the second run replaces the first run's circuit
    assert einc.compile(tmp_path / "m.pc").graph.region_sizes == einc.load(tmp_path / "m.npz").graph.region_sizes


def test_an_interrupted_einc_lvd_grow_writes_the_circuit_last_trained(tmp_path, capsys, monkeypatch) -> None:
    x, h = _data(200)
    (tmp_path / "c.pc").write_text(PC)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "h.npy", h)
    fit = einc.model.Model.fit
    calls = []

    def interrupted_in_round_two(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(einc.model.Model, "fit", interrupted_in_round_two)
    argv = ["lvd", str(tmp_path / "c.pc"), "--data", str(tmp_path / "x.npy"), "--teacher", str(tmp_path / "h.npy"),
            "--grow", "2x2", "--epochs", "1", "--threads", "1", "-o", str(tmp_path / "m.npz")]
    assert main(argv) == 130
    assert "interrupted; wrote the circuit last trained" in capsys.readouterr().err
    model = einc.load(tmp_path / "m.npz")
    assert [slot.states for slot in model.latents] == [2, 2]  # round 1's circuit, before its growth
    assert einc.compile(tmp_path / "m.pc").graph.region_sizes == model.graph.region_sizes
