"""The public API and the run commands of the CLI: files, data errors, end-to-end runs."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import einc
from einc.cli import main

TINY = "examples/tiny.pc"


def test_save_and_load_round_trip(tmp_path):
    model = einc.compile(TINY, dtype="float64", seed=3)
    x = np.array([[0, 1, 1, 0], [1, 1, 0, 0]], dtype=float)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = einc.load(path, dtype="float64")
    np.testing.assert_allclose(loaded.log_likelihood(x), model.log_likelihood(x), atol=1e-12)
    with np.load(path, allow_pickle=False) as archive:  # readable without pickle
        assert json.loads(str(archive["meta"]))["format"] == "einc-model"


HCLT_SMALL = Path("examples/nltcs_hclt.pc").read_text().replace("sums 16", "sums 3").replace("inputs 16", "inputs 3")


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_a_copied_model_answers_the_same_and_trains_on_its_own(backend, how):
    """A trained model, pickled or deep-copied (each backend holds tables keyed by objects a copy
    renews, and NumPy's backend its array module), answers as the original and trains apart."""
    model = einc.compile(HCLT_SMALL, dtype="float64", seed=1, backend=backend)
    x = np.random.default_rng(0).integers(0, 2, (12, 16)).astype(float)
    model.fit(x, epochs=1, batch_size=4)
    before = model.log_likelihood(x)
    twin = pickle.loads(pickle.dumps(model)) if how == "pickle" else copy.deepcopy(model)
    np.testing.assert_allclose(twin.log_likelihood(x), before, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(twin.sample(5, seed=3), model.sample(5, seed=3))
    twin.fit(x, epochs=1, batch_size=4)
    assert not np.allclose(twin.log_likelihood(x), before)
    np.testing.assert_array_equal(model.log_likelihood(x), before)


def test_a_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = einc.compile(TINY, dtype="float64", seed=0)
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()

    def broken_savez(stream, **arrays):
        stream.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary left behind


def test_corrupt_or_foreign_model_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(einc.ModelFileError, match="not an einc model file"):
        einc.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, meta=np.array(json.dumps({"format": "einc-model", "version": 99})))
    with pytest.raises(einc.ModelFileError, match="version 99"):
        einc.load(other)
    with pytest.raises(einc.ModelFileError, match="no such model file"):
        einc.load(tmp_path / "missing.npz")


def test_data_errors_name_row_column_and_domain():
    model = einc.compile(TINY)
    with pytest.raises(einc.DataError, match=r"row 2, column 3 \(variable C\).*expected 0 or 1"):
        model.log_likelihood([[0, 1, 1, 0], [0, 1, 7, 0]])
    with pytest.raises(einc.DataError, match="expected 4 columns"):
        model.log_likelihood([[0, 1, 1]])


def test_missing_values_are_marginalised_per_sample():
    model = einc.compile(TINY, dtype="float64")
    full = model.log_likelihood([[0, 1, 1, 0], [1, 1, 1, 0]])
    nan = model.log_likelihood([[0, 1, np.nan, 0], [1, np.nan, 1, 0]])
    assert nan[0] > full[0] and nan[1] > full[1]
    masked = model.log_likelihood([[0, 1, 1, 0], [1, 1, 1, 0]], missing=[[0, 0, 1, 0], [0, 1, 0, 0]])
    np.testing.assert_allclose(masked, nan)


def test_cli_train_eval_sample_query_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = (rng.random((200, 4)) < [0.2, 0.8, 0.5, 0.3]).astype(int)
    train = tmp_path / "train.csv"
    np.savetxt(train, data, fmt="%d", delimiter=",")
    model_path = tmp_path / "model.npz"
    assert main(["train", TINY, "--data", str(train), "--valid", str(train), "--epochs", "2", "-o", str(model_path)]) == 0
    assert "valid LL" in capsys.readouterr().out
    assert main(["eval", str(model_path), "--data", str(train)]) == 0
    assert "bits per dimension" in capsys.readouterr().out
    samples = tmp_path / "s.csv"
    assert main(["sample", str(model_path), "-n", "7", "-o", str(samples)]) == 0
    lines = samples.read_text().strip().splitlines()
    assert lines[0] == "A,B,C,D" and len(lines) == 8
    capsys.readouterr()
    assert main(["query", str(model_path), "--evidence", "A=1", "--target", "C"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "P(C | A=1):"
    probabilities = [float(line.split(":")[1]) for line in out.splitlines()[1:]]
    assert abs(sum(probabilities) - 1.0) < 1e-9
    assert main(["query", str(model_path), "--target", "C"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "P(C):"  # no evidence: a marginal, said as one
    model = einc.load(model_path, dtype="float64")
    exact = np.exp(model.log_likelihood([[1, np.nan, 1, np.nan]]) - model.log_likelihood([[1, np.nan, np.nan, np.nan]]))
    assert abs(probabilities[1] - exact[0]) < 1e-6


def test_cli_bad_data_exits_non_zero_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("0,1,1,0\n0,1,3,0\n")
    assert main(["train", TINY, "--data", str(bad), "-o", str(tmp_path / "m.npz")]) == 1
    err = capsys.readouterr().err
    assert "bad.csv:2:3 (variable C): value 3 is outside the domain; expected 0 or 1" in err
    assert "Traceback" not in err
    assert not (tmp_path / "m.npz").exists()


def test_npz_key_selects_an_array(tmp_path):
    from einc.io.data import load_array

    path = tmp_path / "d.npz"
    np.savez(path, first=np.zeros((2, 3)), second=np.ones((4, 3)))
    assert load_array(path).shape == (2, 3)
    assert load_array(f"{path}:second").shape == (4, 3)
    with pytest.raises(einc.DataError, match="no array 'third'"):
        load_array(f"{path}:third")


def test_repr_says_what_the_model_is():
    model = einc.compile(TINY, dtype="float64")
    assert repr(model) == ("<einc.Model 'tiny' from examples/tiny.pc: 4 variables (A, B, C, D), "
                           f"{model.num_parameters} parameters; torch on cpu, float64>")
    wide = einc.compile("var x[9] : binary\nleaf x ~ bernoulli\nsums 2\ninputs 2\n"
                        "structure random_binary_trees(depth = 2, replicas = 1, seed = 1)\n", backend="numpy")
    assert repr(wide) == (f"<einc.Model circuit: 9 variables (x[0], x[1], x[2], x[3], x[4], x[5], ...), "
                          f"{wide.num_parameters} parameters; numpy on cpu, float32>")
    model.fit(np.zeros((4, 4)), epochs=2)
    assert ", trained 2 epochs; torch on cpu, float64>" in repr(model)
    assert "\n" not in repr(model)


def test_queries_given_a_tensor_return_tensors_numpy_gives_numpy():
    import torch

    model = einc.compile(TINY, seed=0)  # float32
    x = np.array([[0, 1, 1, 0], [1, np.nan, 0, 0]])
    tensor = torch.as_tensor(x)
    expected = model.log_likelihood(x)
    assert isinstance(expected, np.ndarray)
    for query in (model.log_likelihood, model.max_log_likelihood,
                  lambda v: model.conditional_log_likelihood(v, evidence=np.ones((2, 4))),
                  lambda v: model.sample(evidence=v, seed=1), lambda v: model.mpe(evidence=v)):
        from_numpy, from_tensor = query(x), query(tensor)
        assert isinstance(from_numpy, np.ndarray)
        assert isinstance(from_tensor, torch.Tensor) and from_tensor.device == tensor.device
        assert from_tensor.dtype == torch.float32  # the model's dtype
        np.testing.assert_allclose(from_tensor.numpy(), from_numpy, rtol=1e-6)
    assert isinstance(model.sample(3), np.ndarray)  # no tensor given: NumPy
    latent = einc.compile("var a, b, c : binary\nleaf a, b, c ~ bernoulli\nsums 2\ninputs 2\nlatent z = {a, b}\n"
                          "{a, b, c} -> {a, b} * c\n{a, b} -> a * b\n")
    posterior = latent.latent_posterior(torch.zeros(3, 3))
    assert isinstance(posterior, list) and all(isinstance(p, torch.Tensor) for p in posterior)
    mixture = einc.MixtureModel([model, einc.compile(TINY, seed=1)], np.array([0.3, 0.7]))
    assert isinstance(mixture.log_likelihood(tensor), torch.Tensor)
    assert isinstance(mixture.log_likelihood(x), np.ndarray)
    np.testing.assert_allclose(mixture.log_likelihood(tensor).numpy(), mixture.log_likelihood(x), rtol=1e-6)
    assert repr(mixture).startswith("<einc.MixtureModel of 2 components, ")


def test_train_takes_the_k_options_of_check_and_compile_and_the_file_keeps_them(tmp_path, capsys):
    """`einc train --sums 5` (refused before, though check and compile take it); the model file
    records the overrides, so load, eval and --resume compile the circuit that was trained."""
    from einc.cli import build_parser

    def options(command: str) -> set[str]:
        sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
        return {flag for action in sub._actions for flag in action.option_strings}

    assert {"--sums", "--inputs", "--heads"} <= options("check") & options("compile") & options("train")
    data = (np.random.default_rng(0).random((50, 4)) < 0.5).astype(int)
    np.savetxt(tmp_path / "x.csv", data, fmt="%d", delimiter=",")
    model_path = tmp_path / "m.npz"
    train = ["train", TINY, "--data", str(tmp_path / "x.csv"), "--sums", "5", "--inputs", "2", "--epochs", "1"]
    assert main([*train, "-o", str(model_path)]) == 0
    model = einc.load(model_path)
    assert (model.graph.sums, model.graph.inputs) == (5, 2) and model.overrides == {"sums": 5, "inputs": 2}
    assert model.num_parameters == einc.compile(TINY, options=einc.CompileOptions(sums=5, inputs=2)).num_parameters
    assert main(["eval", str(model_path), "--data", str(tmp_path / "x.csv")]) == 0
    assert main([*train[:-1], "2", "--resume", str(model_path), "-o", str(model_path)]) == 0
    assert einc.load(model_path).training.epoch == 2
    # a damaged record is a clear model-file error
    with np.load(model_path) as archive:
        arrays = dict(archive)
    meta = json.loads(str(arrays["meta"]))
    meta["overrides"] = {"sums": 0}
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(einc.ModelFileError, match="metadata 'overrides' sums is 0"):
        einc.load(tmp_path / "bad.npz")
