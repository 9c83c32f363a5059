"""benchmarks/spvae_mnist.py: its smoke run, and runs that survive interruptions (issue 20).

A run stopped after 2 epochs and resumed for 2 more must hold exactly what an uninterrupted
4-epoch run holds: parameters, best parameters, Adam's moments and step counts, generators,
patience counter and epoch table (on examples/data/mnist_small.npz, seconds).
"""

from __future__ import annotations

import json
from itertools import pairwise
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import einc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import spvae_mnist  # noqa: E402
import spvae_report  # noqa: E402
import spvae_training  # noqa: E402

SMOKE = ["--smoke", "--epochs", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(uninterrupted 4 epochs, 2 epochs + resumed to 4) run directories of the smoke run."""
    threads = torch.get_num_threads()
    whole, split = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("split")
    try:
        assert spvae_mnist.main([*SMOKE, "--run-dir", str(whole)]) == 0
        assert spvae_mnist.main([*SMOKE, "--run-dir", str(split), "--sitting-epochs", "2"]) == 0
        state = json.loads((split / "run.json").read_text())
        assert state["final"] == {}  # stopped after 2 epochs: nothing scored yet
        assert spvae_mnist.main(["--resume", str(split), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return whole, split


def _meta(path: Path) -> dict:
    with np.load(path) as archive:
        return json.loads(str(archive["meta"]))


@pytest.mark.parametrize("arm", ["spvae", "vae"])
def test_resumed_run_equals_uninterrupted(runs, arm):
    whole, split = (np.load(run / f"{arm}_checkpoint.npz") for run in runs)
    assert sorted(whole.files) == sorted(split.files)
    assert any(key.startswith("adam/") and key.endswith("exp_avg_sq") for key in whole.files)
    for key in whole.files:
        if key != "meta":
            np.testing.assert_array_equal(whole[key], split[key], err_msg=key)
    meta_whole, meta_split = (_meta(run / f"{arm}_checkpoint.npz") for run in runs)
    assert meta_whole["epoch"] == meta_split["epoch"] == 4
    timeless = [[{k: v for k, v in h.items() if k not in ("seconds", "finished")} for h in meta["history"]]
                for meta in (meta_whole, meta_split)]
    assert timeless[0] == timeless[1]
    assert (meta_whole["rng"], meta_whole["stale"], meta_whole["best_epoch"]) == \
        (meta_split["rng"], meta_split["stale"], meta_split["best_epoch"])


def test_resumed_run_scores_the_same_test(runs):
    finals = [json.loads((run / "run.json").read_text())["final"] for run in runs]
    for arm in ("spvae", "vae"):
        assert finals[0][arm]["test_nats"] == finals[1][arm]["test_nats"]
        assert finals[0][arm]["test_bpd"] > 0
    assert len(json.loads((runs[1] / "run.json").read_text())["sittings"]) == 2


def test_smoke_run_writes_the_report(runs):
    whole = runs[0]
    for name in ("table.md", "results.json", "curve.png", "samples.png", "inpaint.png", "spvae_model.npz"):
        assert (whole / name).stat().st_size > 0, name
    table = (whole / "table.md").read_text()
    assert "| spvae |" in table and "| vae |" in table and "(not yet)" not in table
    state = json.loads((whole / "run.json").read_text())
    assert set(state["chosen"]) == {"spvae", "vae"}
    # the pilot tried every candidate of the smoke grids and chose the best validation bound, the
    # VAE among those at least as large as the chosen SPVAE (all smaller here: then among all)
    spvae = state["pilot"]["spvae"]["x".join(str(v) for v in state["chosen"]["spvae"])]
    for arm, results in state["pilot"].items():
        chosen = "x".join(str(v) for v in state["chosen"][arm])
        allowed = [r for r in results.values() if arm == "spvae" or r["parameters"] >= spvae["parameters"]]
        assert results[chosen]["valid"] == min(r["valid"] for r in allowed or results.values())


def test_the_vae_is_chosen_among_those_at_least_as_large_as_the_spvae():
    """A small VAE that wins the pilot is passed over for the best one with at least the SPVAE's
    parameters; with none that large, or --any-vae-size, the best of all wins."""
    state = {"chosen": {"spvae": [5, 32]},
             "pilot": {"spvae": {"5x32": {"valid": 9.0, "parameters": 200}},
                       "vae": {"1x16": {"valid": 10.0, "parameters": 100}, "2x64": {"valid": 12.0, "parameters": 300},
                               "3x64": {"valid": 11.0, "parameters": 400}}}}
    candidates = [(1, 16), (2, 64), (3, 64)]
    assert spvae_mnist.choose("vae", candidates, state) == (3, 64)
    assert spvae_mnist.choose("vae", candidates, state, any_size=True) == (1, 16)
    assert spvae_mnist.choose("vae", [(1, 16)], state) == (1, 16)
    assert spvae_mnist.choose("spvae", [(5, 32)], state) == (5, 32)


def test_the_best_spvae_is_an_einc_model_file(runs):
    """spvae_model.npz loads with einc.load and scores like the run's own model at the best epoch."""
    model = einc.load(runs[0] / "spvae_model.npz")
    assert not model.exact
    with np.load(ROOT / "examples" / "data" / "mnist_small.npz") as data:
        rows = data["x_test"][:4].astype(np.float32)
    ll = model.log_likelihood(rows, samples=10, seed=0)
    assert ll.shape == (4,) and np.all(np.isfinite(ll)) and np.all(ll < 0)
    state = json.loads((runs[0] / "run.json").read_text())
    n_z, hidden = state["chosen"]["spvae"]
    assert f"latent = {n_z}" in model.source and f"hidden = [{hidden}, {hidden}]" in model.source


def test_a_checkpoint_of_another_configuration_is_refused(runs, tmp_path):
    arm_path = runs[0] / "spvae_checkpoint.npz"
    config = _meta(arm_path)["config"]
    model = spvae_training.spvae_model((ROOT / "examples" / "mnist_spvae.pc").read_text(), config["n_z"],
                                       config["H"], np.zeros(784), "cpu", 0)
    arm = spvae_training.Arm("spvae", model.module(), 0.01, 0)
    with pytest.raises(ValueError, match="configuration"):
        spvae_training.load_checkpoint(arm, arm_path, {"n_z": config["n_z"] + 1, "H": config["H"]})
    with pytest.raises(ValueError, match="not a checkpoint of the vae arm"):
        spvae_training.load_checkpoint(spvae_training.Arm("vae", model.module(), 0.01, 0), arm_path, config)


def test_circuit_text_sets_every_vae_leaf():
    source = (ROOT / "examples" / "mnist_spvae.pc").read_text()
    text = spvae_training.circuit_text(source, 25, 16)
    assert "latent = 25, hidden = [16, 16]" in text and "latent = 5" not in text
    with pytest.raises(ValueError, match="latent"):
        spvae_training.circuit_text("leaf x ~ bernoulli", 5, 8)


def test_scoring_in_blocks_continues_where_it_stopped():
    test = np.arange(10.0)[:, None]
    seen = []

    def score(rows, index):
        seen.append(index)
        return float(rows.sum())

    full = spvae_training.score_blocks(score, test, 4, [], lambda blocks: None)
    assert full == pytest.approx(4.5) and seen == [0, 1, 2]
    seen.clear()
    assert spvae_training.score_blocks(score, test, 4, [6.0], lambda blocks: None) == pytest.approx(4.5)
    assert seen == [1, 2]


def test_resume_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="nothing to resume"):
        spvae_mnist.main(["--resume", str(tmp_path)])


def test_a_train_fraction_run_and_the_data_efficiency_figure(runs, tmp_path):
    """--train-fraction 0.5 trains on half the smoke's 300 rows; its pilot takes as many Adam steps
    as the full run's (2 passes over 200 pilot rows = 3 epochs of 150); --figure2 draws both runs."""
    half = tmp_path / "half"
    assert spvae_mnist.main(["--smoke", "--epochs", "2", "--threads", "1", "--models", "spvae,vae",
                             "--train-fraction", "0.5", "--run-dir", str(half)]) == 0
    state = json.loads((half / "run.json").read_text())
    for results in state["pilot"].values():
        assert {(r["rows"], r["epochs"]) for r in results.values()} == {(150, 3)}
    assert set(state["final"]) == {"spvae", "vae"}
    assert "on 0.5 of the training images" in (half / "table.md").read_text()
    # an epoch makes at least --min-steps-per-epoch (3 in the smoke) Adam steps: 2 passes of 2 steps
    history = json.loads((half / "results.json").read_text())["history"]
    assert {(h["passes"], h["steps"]) for rows in history.values() for h in rows} == {(2, 4)}
    whole = json.loads((runs[0] / "results.json").read_text())["history"]
    assert {(h["passes"], h["steps"]) for rows in whole.values() for h in rows} == {(1, 3)}
    png = tmp_path / "figure2.png"
    assert spvae_mnist.main(["--figure2", str(png), str(runs[0]), str(half)]) == 0
    from PIL import Image

    with Image.open(png) as image:
        assert image.size == (720, 400)
    # runs of one fraction share a group, each bar labelled by arm and configuration
    groups = spvae_report.figure2_groups([runs[0], half, runs[1]])
    assert sorted(groups) == [0.5, 1.0] and len(groups[0.5]) == 2 and len(groups[1.0]) == 4
    chosen = json.loads((half / "run.json").read_text())["chosen"]
    assert ("vae", "vae " + "x".join(map(str, chosen["vae"])), state_final(half)["vae"]) in groups[0.5]


def state_final(run: Path) -> dict:
    return {name: final["test_bpd"] for name, final in json.loads((run / "run.json").read_text())["final"].items()}


def test_a_run_directory_is_not_started_twice(runs):
    """A fresh start into a directory that holds a run, and a resume while another live process on
    this machine holds its lock, are refused (either would overwrite the run's checkpoints)."""
    with pytest.raises(SystemExit, match="already holds a run"):
        spvae_mnist.main([*SMOKE, "--run-dir", str(runs[0])])
    lock = runs[0] / "run.lock"
    assert not lock.exists()  # released when the runs above ended
    import os
    import socket

    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))
    try:
        with pytest.raises(SystemExit, match="in use by process"):
            spvae_mnist.main(["--resume", str(runs[0])])
    finally:
        lock.unlink()


def test_grid_entries_may_name_the_number_of_hidden_layers():
    """n_zxH keeps the default depth (2 hidden layers); n_zxHxL names it, and a named default is
    the same candidate as the pair."""
    assert spvae_mnist.grid_of("5x32,100x600x1,25x32x2") == [(5, 32), (100, 600, 1), (25, 32)]
    assert spvae_mnist.config_parts((100, 600, 1)) == (100, 600, 1)
    assert spvae_mnist.config_parts((5, 32)) == (5, 32, spvae_mnist.DEFAULT_LAYERS)
    assert spvae_mnist.config_key((100, 600, 1)) == "100x600x1"
    assert spvae_mnist.checkpoint_config((5, 32)) == {"n_z": 5, "H": 32}
    assert spvae_mnist.checkpoint_config((5, 32, 3)) == {"n_z": 5, "H": 32, "layers": 3}
    for bad in ("1x2x3x4", "1x2x0", "1"):
        with pytest.raises(SystemExit, match="n_zxHxL"):
            spvae_mnist.grid_of(bad)
    text = spvae_training.circuit_text("leaf img ~ vae(latent = 5, hidden = [32, 32], decoder = binomial)", 2, 8, 3)
    assert "latent = 2" in text and "hidden = [8, 8, 8]" in text


def test_a_one_hidden_layer_vae_arm_trains_and_resumes(tmp_path):
    """A grid entry n_zxHx1 builds encoder and decoder with one hidden layer each (the parameter
    count says so), its checkpoint records the depth, and a resumed run continues it."""
    run = tmp_path / "run"
    argv = ["--smoke", "--models", "vae", "--vae-grid", "2x16x1", "--epochs", "2", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        assert spvae_mnist.main([*argv, "--run-dir", str(run), "--sitting-epochs", "1"]) == 0
        assert _meta(run / "vae_checkpoint.npz")["config"] == {"n_z": 2, "H": 16, "layers": 1}
        assert spvae_mnist.main(["--resume", str(run), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    state = json.loads((run / "run.json").read_text())
    assert state["chosen"]["vae"] == [2, 16, 1]
    one_layer = (784 * 16 + 16) + (16 * 4 + 4) + (2 * 16 + 16) + (16 * 784 + 784)
    assert state["final"]["vae"]["parameters"] == one_layer and state["final"]["vae"]["epochs"] == 2
    assert "| vae | 2 x 16 x 1 |" in (run / "table.md").read_text()


def test_a_retired_arm_stops_training_and_its_best_epoch_is_tested(tmp_path):
    """--retire ARM on a resume ends that arm where it stands (the others go on to their own end);
    its best epoch is scored and run.json and the table say it was retired."""
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        assert spvae_mnist.main([*SMOKE, "--run-dir", str(run), "--sitting-epochs", "1"]) == 0
        with pytest.raises(SystemExit, match="--retire nope: this run trains spvae,vae"):
            spvae_mnist.main(["--resume", str(run), "--retire", "nope"])
        assert spvae_mnist.main(["--resume", str(run), "--threads", "1", "--retire", "vae"]) == 0
    finally:
        torch.set_num_threads(threads)
    state = json.loads((run / "run.json").read_text())
    assert state["retired"]["vae"]["epoch"] == 1
    assert state["final"]["vae"]["epochs"] == 1 and state["final"]["spvae"]["epochs"] == 4
    assert _meta(run / "vae_checkpoint.npz")["done"]
    assert "retired by hand" in (run / "table.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--smoke", "--spvae-grid", "5x"], "n_zxH pairs"),
    (["--smoke", "--vae-grid", "0x30"], "n_zxH pairs"),
    (["--smoke", "--vae-grid", "2x16x0"], "n_zxHxL"),
    (["--smoke", "--train-fraction", "0"], "train-fraction"),
])
def test_bad_options_are_clear_errors(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        spvae_mnist.main([*argv, "--run-dir", str(tmp_path / "run")])


def test_a_resume_keeps_the_options_it_started_with(runs):
    with pytest.raises(SystemExit, match="keeps the options it started with.*--epochs 9"):
        spvae_mnist.main(["--resume", str(runs[0]), "--epochs", "9"])


def test_the_step_size_decays_after_epochs_without_a_better_validation_bound(tmp_path):
    """Arm.record_validation: the step size is multiplied by the factor after every
    ``decay_patience`` epochs without a better bound (not at an improvement, not once early
    stopping ended the arm), and a checkpoint keeps it."""
    module = torch.nn.Linear(2, 1)
    arm = spvae_training.Arm("vae", module, 0.01, seed=0)
    rates = []
    for epoch, valid in enumerate([-5.0, -4.0, -4.5, -4.2, -4.1, -3.0, -3.5, -3.6, -3.7, -3.8], start=1):
        arm.epoch = epoch
        arm.record_validation(valid, patience=4, max_epochs=100, decay_factor=0.5, decay_patience=2)
        rates.append(arm.learning_rate)
        assert all(group["lr"] == arm.learning_rate for group in arm.optimiser.param_groups)
    # stale: 0 0 1 2 3 0 1 2 3 4 -> decays after the 2nd stale epoch (epochs 4 and 8); epoch 10 stops it
    assert rates == [0.01, 0.01, 0.01, 0.005, 0.005, 0.005, 0.005, 0.0025, 0.0025, 0.0025]
    assert arm.done and arm.best_epoch == 6
    path = tmp_path / "vae.npz"
    spvae_training.save_checkpoint(arm, path, {"n_z": 1})
    fresh = spvae_training.Arm("vae", torch.nn.Linear(2, 1), 0.01, seed=0)
    spvae_training.load_checkpoint(fresh, path, {"n_z": 1})
    assert fresh.learning_rate == 0.0025 and fresh.optimiser.param_groups[0]["lr"] == 0.0025
    constant = spvae_training.Arm("vae", torch.nn.Linear(2, 1), 0.01, seed=0)
    for epoch, valid in enumerate([-5.0, -6.0, -6.0, -6.0], start=1):
        constant.epoch = epoch
        constant.record_validation(valid, patience=20, max_epochs=100)
    assert constant.learning_rate == 0.01  # the default: the paper's constant step


def test_a_resumed_run_may_take_a_step_size_schedule_and_keeps_it(tmp_path):
    """--decay-factor/--decay-patience on a resume apply from the next epoch on and replace the
    stored options in run.json, so a later resume without them keeps the schedule; each epoch's
    record holds the step size it ran at. Other options still may not change."""
    run = tmp_path / "run"
    # a step size large enough that the smoke run's validation bound stops improving at times
    argv = ["--smoke", "--models", "vae", "--vae-grid", "2x16x1", "--epochs", "6", "--threads", "1",
            "--vae-learning-rate", "0.3"]
    threads = torch.get_num_threads()
    try:
        assert spvae_mnist.main([*argv, "--run-dir", str(run), "--sitting-epochs", "2"]) == 0
        assert spvae_mnist.main(["--resume", str(run), "--threads", "1", "--sitting-epochs", "2",
                                 "--decay-factor", "0.5", "--decay-patience=1"]) == 0
        state = json.loads((run / "run.json").read_text())
        assert state["argv"][-3:] == ["--decay-factor", "0.5", "--decay-patience=1"]
        assert "--decay-factor 0.5" in state["command"]
        with pytest.raises(SystemExit, match="keeps the options it started with.*--patience 3"):
            spvae_mnist.main(["--resume", str(run), "--decay-factor", "0.25", "--patience", "3"])
        with pytest.raises(SystemExit, match="--decay-factor must be in"):
            spvae_mnist.main(["--resume", str(run), "--decay-factor", "2"])
        assert spvae_mnist.main(["--resume", str(run), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    state = json.loads((run / "run.json").read_text())
    assert state["argv"][-3:] == ["--decay-factor", "0.5", "--decay-patience=1"]
    history = _meta(run / "vae_checkpoint.npz")["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    rate, decays = 0.3, 0
    for before, after in pairwise(history):
        assert before["learning_rate"] == pytest.approx(rate)
        if before["epoch"] > 2 and before["stale"] >= 1:  # the resumed sittings' stale epochs halve it
            rate, decays = rate * 0.5, decays + 1
        assert after["learning_rate"] == pytest.approx(rate)
    assert decays >= 2
