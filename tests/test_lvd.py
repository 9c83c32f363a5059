"""Latent variable distillation: ``einc.train.lvd`` (shared-codebook k-means, re-assignment, the
distill pipeline) and the ``einc lvd`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from einc.errors import DataError, EincError

import einc
from einc import cli
from einc.train import lvd

PATCHES = """\
var img[4, 6] : binary
leaf img ~ bernoulli
sums 2
inputs 3
structure poon_domingos(delta = [2], over = img)
latent patches(over = img, size = [2, 2])
"""


@pytest.fixture()
def circuit(tmp_path: Path) -> Path:
    path = tmp_path / "patches.pc"
    path.write_text(PATCHES, encoding="utf-8")
    return path


def _patch_data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose six 2x2 patches are each drawn from one of three patch types (the true
    latents): all off, all on, or the left column on."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 3, (n, 6))
    templates = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0]], dtype=float)  # row-major 2x2
    images = np.zeros((n, 4, 6))
    for position in range(6):
        r, c = divmod(position, 3)
        images[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = templates[kinds[:, position]].reshape(n, 2, 2)
    flips = rng.random(images.shape) < 0.05
    return np.where(flips, 1 - images, images).reshape(n, 24), kinds


def test_one_codebook_is_shared_by_every_position() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = rng.integers(0, 3, (200, 6))
    features = centres[truth] + rng.normal(scale=0.1, size=(200, 6, 2))
    z, codebook = lvd.assign_latents(features, 3, seed=1)
    assert z.shape == (200, 6) and codebook.centres.shape == (3, 2)
    # one relabelling of the true clusters, the same at every position
    mapping = {int(t): int(s) for t, s in zip(truth.ravel(), z.ravel())}
    assert len(set(mapping.values())) == 3
    np.testing.assert_array_equal(z, np.vectorize(mapping.get)(truth))
    np.testing.assert_array_equal(codebook.assign(features), z)


def test_reassignment_takes_each_latents_most_probable_state() -> None:
    model = einc.compile(PATCHES, dtype="float64", seed=1)
    x, _ = _patch_data(50)
    z = lvd.reassign_latents(model, x)
    posterior = model.latent_posterior(x)
    np.testing.assert_array_equal(z, np.stack([p.argmax(1) for p in posterior], 1))


def test_distill_trains_on_the_pairs_then_fine_tunes() -> None:
    x, kinds = _patch_data(300)
    model = einc.compile(PATCHES, dtype="float64", seed=2)
    phases = []
    result = lvd.distill(model, x, latents=kinds, epochs=3, finetune_epochs=2, reassign=1,
                         on_epoch=lambda phase, record: phases.append(phase))
    assert phases == ["distill"] * 3 + ["distill 2"] * 3 + ["fine-tune"] * 2
    assert result.latents.shape == (300, 6)
    # the circuit's exact posterior closes the variational gap: log p(x) >= log p(x, z)
    assert result.distilled_ll >= result.objective
    assert result.final_ll == pytest.approx(model.log_likelihood(x).mean(), abs=1e-9)


def test_true_latents_beat_em_from_scratch_with_the_same_epochs() -> None:
    """With the data's true patch types as latents, LVD finds what EM from a random start has to
    search for (the patch types are the circuit's leaf states)."""
    x, kinds = _patch_data(600, seed=3)
    distilled = einc.compile(PATCHES, dtype="float64", seed=0)
    lvd.distill(distilled, x, latents=kinds, epochs=2, finetune_epochs=2)
    scratch = einc.compile(PATCHES, dtype="float64", seed=0)
    scratch.fit(x, epochs=4)
    assert distilled.log_likelihood(x).mean() > scratch.log_likelihood(x).mean() + 0.5


def test_distill_checks_its_inputs() -> None:
    model = einc.compile(PATCHES, dtype="float64")
    x, kinds = _patch_data(20)
    with pytest.raises(EincError, match="either latents"):
        lvd.distill(model, x)
    with pytest.raises(EincError, match="either latents"):
        lvd.distill(model, x, latents=kinds, features=np.zeros((20, 6, 2)))
    with pytest.raises(DataError, match=r"shape \(20, 5, 2\)|5 embeddings per example"):
        lvd.distill(model, x, features=np.zeros((20, 5, 2)))
    with pytest.raises(DataError, match="19 examples for 20 training rows"):
        lvd.distill(model, x, features=np.zeros((19, 6, 2)))
    with pytest.raises(DataError, match="example 2, latent 1 is not finite"):
        lvd.distill(model, x, features=np.where(np.arange(20)[:, None, None] == 1, np.nan, np.zeros((20, 6, 2))))
    mixed = einc.compile("var A, B, C : binary\nleaf A, B, C ~ bernoulli\nsums 2\ninputs 3\n"
                         "{A, B, C} -> A * {B, C}\n{B, C} -> B * C\nlatent a = A\nlatent bc = {B, C}\n")
    with pytest.raises(EincError, match="the latents have 2, 3 states"):
        lvd.distill(mixed, np.zeros((4, 3)), features=np.zeros((4, 2, 1)))
    plain = einc.compile("var A, B : binary\nleaf A, B ~ bernoulli\n{A, B} -> A * B\n")
    with pytest.raises(EincError, match="declares no latent variables"):
        lvd.distill(plain, np.zeros((4, 2)), features=np.zeros((4, 1, 1)))


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_distills_from_teacher_features_or_latents(circuit: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    x, kinds = _patch_data(200)
    rng = np.random.default_rng(0)
    features = np.eye(3)[kinds] + rng.normal(scale=0.05, size=(200, 6, 3))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "f.npy", features)
    np.save(tmp_path / "z.npy", kinds)
    model_path = tmp_path / "m.npz"
    code, out, err = _run(["lvd", str(circuit), "--data", str(tmp_path / "x.npy"), "--teacher",
                           str(tmp_path / "f.npy"), "--epochs", "2", "--finetune-epochs", "1", "--test",
                           str(tmp_path / "x.npy"), "--write-latents", str(tmp_path / "zz.npy"),
                           "-o", str(model_path)], capsys)
    assert code == 0, err
    assert "k-means with 3 shared centres over 1200 teacher embeddings" in out
    assert "LVD objective, mean log p(x, z)" in out and "after fine-tuning" in out and "test LL" in out
    written = np.load(tmp_path / "zz.npy")
    assert written.shape == (200, 6)
    # k-means recovered the patch types up to a relabelling
    assert len({(int(a), int(b)) for a, b in zip(kinds.ravel(), written.ravel())}) == 3
    model = einc.load(model_path)
    assert len(model.latents) == 6

    code, out, err = _run(["lvd", str(circuit), "--data", str(tmp_path / "x.npy"), "--latents",
                           str(tmp_path / "z.npy"), "--epochs", "1", "--finetune-epochs", "0",
                           "-o", str(model_path)], capsys)
    assert code == 0, err
    assert "latents from the states in" in out and "after fine-tuning" not in out


def test_cli_lvd_refuses_bad_input_before_training(circuit: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    x, kinds = _patch_data(30)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "bad_f.npy", np.zeros((30, 4, 2)))
    bad_z = kinds.copy()
    bad_z[4, 2] = 7
    np.save(tmp_path / "bad_z.npy", bad_z)
    out_path = str(tmp_path / "m.npz")
    base = ["lvd", str(circuit), "--data", str(tmp_path / "x.npy"), "-o", out_path]
    code, _, err = _run(base, capsys)
    assert code == 1 and "exactly one of them" in err
    code, _, err = _run(base + ["--teacher", str(tmp_path / "bad_f.npy")], capsys)
    assert code == 1 and "4 embeddings per example; the circuit declares 6 latents" in err
    code, _, err = _run(base + ["--latents", str(tmp_path / "bad_z.npy")], capsys)
    assert code == 1 and "bad_z.npy:5:3 (latent patches[0, 2]): 7 is not a state" in err
    code, _, err = _run(base + ["--teacher", str(tmp_path / "missing.npy")], capsys)
    assert code == 1 and "cannot read" in err
    code, _, err = _run(["lvd", str(circuit), "--data", str(tmp_path / "x.npy"), "--latents",
                         str(tmp_path / "bad_z.npy"), "-o", str(tmp_path / "x.npy")], capsys)
    assert code == 1 and "Traceback" not in err
    assert not Path(out_path).exists()


def test_example_teacher_trains_and_gives_features_and_an_elbo() -> None:
    """examples/lvd/teacher.py on a few random images: the shapes einc lvd reads, a finite ELBO
    (log p(x | z) of a proper distribution over 0..255 is ≤ 0 per pixel, plus log p(z) ≤ 0)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "lvd"))
    import teacher

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 784)).astype(np.float32)
    model = teacher.train(images, teacher.TeacherConfig(dims=4, codes=3, channels=4, hidden=8), epochs=1,
                          batch_size=20, log=lambda line: None)
    embeddings = teacher.features(model, images)
    assert embeddings.shape == (40, 16, 4)
    z, codebook = lvd.assign_latents(embeddings, 3)
    prior = teacher.factorised_prior(z, 3)
    np.testing.assert_allclose(prior.sum(1), 1.0)
    elbo = teacher.elbo(model, images, z, codebook.centres, prior)
    assert elbo.shape == (40,) and np.all(np.isfinite(elbo)) and np.all(elbo < 0)
    # the discretised logistic is a distribution over the 256 grey levels
    import torch

    levels = torch.arange(256.0)
    mass = teacher.discretised_logistic(levels, torch.tensor(100.0), torch.tensor(2.0)).exp().sum()
    assert abs(float(mass) - 1.0) < 1e-5
