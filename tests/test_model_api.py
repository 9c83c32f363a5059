"""The public API and the run commands of the CLI: files, data errors, end-to-end runs."""

from __future__ import annotations

import json

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
    probabilities = [float(line.split(":")[1]) for line in out.splitlines()[1:]]
    assert abs(sum(probabilities) - 1.0) < 1e-9
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
