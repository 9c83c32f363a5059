"""One training loop (einc/train/loop.py): its callers give the same results and the same messages.

Oracles: ``Model.fit`` in this process for ``einc train`` and ``einc train --nproc 2`` (full-batch EM
in float64 does not depend on the batch order, so the three agree to 1e-10); the one process run
for the messages of patience, checkpoints and divergence; the history table against the epoch
lines printed.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import einc
import einc.train.loop
from einc.errors import ModelFileError
from einc.train.history import history_path, read_history
from test_hardening import TINY, run, tiny_data  # noqa: F401 (a fixture)

TOLERANCE = 1e-10


def _rows(n: int, p: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 4)) < p).astype(float)


@pytest.fixture()
def split(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Training rows that are copies of one bit with 10% noise, validation rows independent coin
    flips: as EM learns the training data's correlation the valid LL falls (after epoch 3), so
    patience stops the run."""
    rng = np.random.default_rng(0)
    train = ((rng.random((300, 1)) < 0.5) ^ (rng.random((300, 4)) < 0.1)).astype(float)
    valid = _rows(100, 0.5, 1)
    np.save(tmp_path / "train.npy", train)
    np.save(tmp_path / "valid.npy", valid)
    return tmp_path / "train.npy", tmp_path / "valid.npy", train, valid


OPTIONS = ["--dtype", "float64", "--update", "epoch", "--step-size", "1", "--epochs", "8", "--batch-size", "64",
           "--patience", "2", "--checkpoint-every", "2"]


def _loop_lines(text: str, output: Path) -> list[str]:
    """The loop's own lines (checkpoints, early stop), with the model path made neutral."""
    lines = [line for line in text.splitlines() if line.startswith(("checkpoint after", "stopped early"))]
    return [line.replace(str(output), "MODEL") for line in lines]


def test_model_fit_einc_train_and_two_workers_agree(split, tmp_path: Path) -> None:
    train_path, valid_path, train, valid = split
    model = einc.compile(TINY, dtype="float64", seed=0)
    messages: list[str] = []
    checkpoint = tmp_path / "api.npz"
    history = model.fit(train, valid=valid, update="epoch", step_size=1.0, epochs=8, batch_size=64, patience=2,
                        checkpoint=checkpoint, checkpoint_every=2, on_message=messages.append)
    assert len(history) < 8, "the split is meant to stop early"
    api_lines = [m.replace(str(checkpoint), "MODEL") for m in messages]
    assert any(m.startswith("stopped early after epoch") for m in api_lines)
    assert any(m.startswith("checkpoint after epoch 2: wrote") for m in api_lines)

    outputs = {}
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        output = tmp_path / f"{name}.npz"
        command = [sys.executable, "-m", "einc", "train", TINY, "--data", str(train_path), "--valid",
                   str(valid_path), *OPTIONS, "-o", str(output), *extra]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        assert _loop_lines(result.stdout, output) == api_lines, result.stdout
        outputs[name] = (output, result.stdout)
    for output, stdout in outputs.values():
        trained = einc.load(output, dtype="float64")
        assert max(float(np.max(np.abs(trained.parameters()[k] - v))) for k, v in model.parameters().items()) < TOLERANCE
        assert trained.training.epoch == model.training.epoch
        assert trained.training.best_epoch == model.training.best_epoch
        # the history table beside the model holds what the epoch lines said
        records = read_history(history_path(output))
        assert [r.epoch for r in records] == [r.epoch for r in history]
        np.testing.assert_allclose([r.valid_ll for r in records], [r.valid_ll for r in history], atol=1e-9)
    # several processes read block by block: their epoch lines say the train LL is a running mean
    assert "running train LL" in outputs["two"][1] and "running train LL" not in outputs["one"][1]
    assert all(r.running for r in read_history(history_path(outputs["two"][0])))


def test_divergence_message_is_the_same_on_one_process_and_streaming(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    errors = []
    for extra in ([], ["--stream", "--cache-dir", str(tmp_path / "cache")]):
        calls: list[int] = []

        def nan_from_epoch_3(plan, train_ll, valid_ll, params):
            calls.append(1)
            return "train LL nan" if len(calls) >= 3 else None

        monkeypatch.setattr(einc.train.loop, "divergence", nan_from_epoch_3)
        output = tmp_path / f"m{len(errors)}.npz"
        code, _, err = run(["train", TINY, "--data", str(tiny_data), "--epochs", "5", "-o", str(output), *extra],
                           capsys)
        assert code == 1 and "Traceback" not in err
        errors.append(err.replace(str(output), "MODEL"))
        assert [r.epoch for r in read_history(history_path(output))] == [1, 2]  # written with the model
    assert errors[0] == errors[1]
    assert errors[0].startswith("einc: error: training diverged in epoch 3: train LL nan")


def test_history_table_and_learning_curves(tiny_data: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    output, plot = tmp_path / "m.npz", tmp_path / "curves.png"
    code, out, err = run(["train", TINY, "--data", str(tiny_data), "--valid", str(tiny_data), "--epochs", "3",
                          "-o", str(output), "--plot", str(plot)], capsys)
    assert code == 0, err
    table = tmp_path / "m.history.csv"
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    printed = [float(m) for m in re.findall(r"valid LL (-?\d+\.\d+)  \(", out)]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    np.testing.assert_allclose([float(r["valid_ll"]) for r in rows], printed, atol=5e-5)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {output} and its history table {table} and {plot}" in out
    # a resumed run extends the table of the run it continues
    code, out, err = run(["train", TINY, "--data", str(tiny_data), "--valid", str(tiny_data), "--epochs", "5",
                          "--resume", str(output), "-o", str(output)], capsys)
    assert code == 0, err
    assert [r.epoch for r in read_history(table)] == [1, 2, 3, 4, 5]
    # --plot must name a PNG, checked before any work
    code, _, err = run(["train", TINY, "--data", str(tiny_data), "-o", str(output), "--plot", str(tmp_path / "c.txt")],
                       capsys)
    assert code == 1 and "--plot" in err and "PNG" in err


def test_progress_bar_inside_an_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    model = einc.compile(TINY, dtype="float64", seed=0)
    reference = einc.compile(TINY, dtype="float64", seed=0)
    data = _rows(500, 0.6, 2)
    model.fit(data, epochs=2, batch_size=50, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "/10 [" in err  # a bar per epoch over its 10 steps
    reference.fit(data, epochs=2, batch_size=50)  # the pieces of a resident epoch change nothing
    for name, value in reference.parameters().items():
        np.testing.assert_array_equal(model.parameters()[name], value)


def test_resume_refuses_a_negative_epoch_counter(tmp_path: Path) -> None:
    model = einc.compile(TINY, dtype="float64", seed=0)
    model.fit(_rows(50, 0.5, 3), epochs=1)
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    import json

    meta = json.loads(str(arrays["meta"]))
    meta["training"]["epoch"] = -3
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(ModelFileError, match="epoch count is -3"):
        einc.load(path)


def test_interrupt_message_is_the_same_on_one_process_and_streaming(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from einc.train.steps import HostEm, ResidentEm

    errors = []
    for extra in ([], ["--stream", "--cache-dir", str(tmp_path / "cache")]):
        epochs: list[int] = []
        for kind in (HostEm, ResidentEm):  # one process runs the backend's resident epoch, --stream host batches
            original = kind.run

            def interrupt_in_epoch_3(self, epoch, rng, advance, original=original):
                epochs.append(1)
                if len(epochs) == 3:
                    raise KeyboardInterrupt
                return original(self, epoch, rng, advance)

            monkeypatch.setattr(kind, "run", interrupt_in_epoch_3)
        output = tmp_path / f"m{len(errors)}.npz"
        code, _, err = run(["train", TINY, "--data", str(tiny_data), "--valid", str(tiny_data), "--epochs", "5",
                            "--dtype", "float64", "-o", str(output), *extra], capsys)
        monkeypatch.undo()
        assert code == 130 and "Traceback" not in err
        # the two read rows in different orders (online EM): the best epoch and its LL may differ
        errors.append(re.sub(r"epoch \d+ \(best valid LL -?\d+\.\d+\)", "epoch E (best valid LL X)",
                             err.replace(str(output), "MODEL")))
        assert [r.epoch for r in read_history(history_path(output))] == [1, 2]
    assert errors[0] == errors[1]
    assert errors[0].startswith("einc: interrupted after 2 epochs; wrote the parameters of epoch")
