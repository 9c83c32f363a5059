"""Issue 11's rules on issue 13's paths (the merge of the two).

The out-of-core reader (``einc.train.rows``) and the data-parallel trainer (``einc.train.distributed``,
``einc train --stream/--nproc``) read and check data exactly as ``read_data`` and ``prepare`` do,
with the same messages; they validate everything before the first epoch; and they lose nothing
on Ctrl-C or divergence, with checkpoints, patience and resume as on one process.

Oracles: the message of the whole-file reader for the same file; ``Model.fit``-style bookkeeping
(the epoch kept, the state saved); an uninterrupted run for a resumed one.
"""

from __future__ import annotations

import gzip
import inspect
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from einc.errors import DataError, TrainingError
from test_hardening import (
    BAD_DATA,
    REAL,
    TINY,
    _binary_data,
    _write_bad_data,
    assert_one_clear_error,
    run,
)

import einc
import einc.train.rows
import einc.train.loop
from einc.train import distributed
from einc.io.data import prepare, read_data


def _whole_file_error(model: einc.Model, path: Path) -> str:
    with pytest.raises(DataError) as caught:
        prepare(model.graph, read_data(path, columns=model.columns), None, "train", model.dtype)
    return str(caught.value)


def _streamed_error(model: einc.Model, train: str, cache: Path, **options) -> str:
    with pytest.raises(DataError) as caught:
        distributed.fit(model, train, epochs=1, cache_dir=cache, **options)
    return str(caught.value)


@pytest.mark.parametrize("kind", sorted(BAD_DATA))
def test_bad_files_get_the_message_the_whole_file_reader_gives(kind: str, tmp_path: Path) -> None:
    path = tmp_path / kind
    _write_bad_data(path, kind)
    model = einc.compile(TINY, dtype="float64")
    expected = _whole_file_error(model, path)
    streamed = _streamed_error(model, str(path), tmp_path / "cache")
    if kind == "object.npy":  # np.load refuses the pickle; the memory map reads the dtype first
        assert "Python objects" in expected and "Python objects" in streamed
    else:
        assert streamed == expected
    assert BAD_DATA[kind] in streamed
    cache = tmp_path / "cache"
    assert not cache.exists() or [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def _csv_text(rows: np.ndarray, header: str | None, blank_every: int) -> str:
    lines = [] if header is None else [header]
    for number, row in enumerate(rows):
        if blank_every and number % blank_every == 0:
            lines.append("")
        lines.append(",".join("?" if np.isnan(v) else f"{v:g}" for v in row))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("header", [None, "A,B,C,D"])
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_a_bad_value_in_a_later_chunk_names_its_csv_line(header: str | None, suffix: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Header and blank lines shift the file lines away from the rows; the cache keeps the map."""
    monkeypatch.setattr(einc.train.rows, "CSV_CHUNK_LINES", 7)
    rows = _binary_data(60)
    rows[3, 1] = np.nan
    rows[41, 2] = 3.0
    text = _csv_text(rows, header, blank_every=5)
    path = tmp_path / f"x{suffix}"
    path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    model = einc.compile(TINY, dtype="float64")
    expected = _whole_file_error(model, path)
    line = 42 + 9 + (header is not None)  # row 42 after 9 blank lines (and the header)
    assert f"{path}:{line}:3 (variable C): value 3 is outside the domain" in expected
    assert _streamed_error(model, str(path), tmp_path / "cache") == expected
    # the same rows read through the cache are the rows read whole
    rows[41, 2] = 1.0
    path.write_bytes(_csv_text(rows, header, 5).encode() if suffix == ".csv"
                     else gzip.compress(_csv_text(rows, header, 5).encode()))
    source = einc.train.rows.open_rows(path, tmp_path / "cache", columns=model.columns)
    with source.window(0, source.num_rows) as cached:
        np.testing.assert_array_equal(cached.astype(float), read_data(path, columns=model.columns).values)
    assert list(source.lines(40, 43)) == list(read_data(path, columns=model.columns).lines[40:43])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_finite_and_overflowing_values_streamed_from_arrays(dtype: str, tmp_path: Path) -> None:
    model = einc.compile(REAL, dtype=dtype)
    data = np.tile([[0.5, 0.1, 2.0]], (50, 1))
    data[31] = [np.inf, 0.0, 1.0]
    np.save(tmp_path / "x.npy", data)
    np.savez(tmp_path / "d.npz", other=np.zeros(3), x=data)
    for path in (tmp_path / "x.npy", f"{tmp_path / 'd.npz'}:x"):
        with pytest.raises(DataError) as whole:
            prepare(model.graph, read_data(path), None, "train", dtype)
        assert _streamed_error(model, str(path), tmp_path / "cache", batch_size=10) == str(whole.value)
        assert ":32:1 (variable v)" in str(whole.value)
    data[31] = [0.0, 0.0, 1e300]  # a count too large for the dtype (float32: also its statistics)
    np.save(tmp_path / "x.npy", data)
    with pytest.raises(DataError) as whole:
        prepare(model.graph, read_data(tmp_path / "x.npy"), None, "train", dtype)
    assert _streamed_error(model, str(tmp_path / "x.npy"), tmp_path / "cache", batch_size=10) == str(whole.value)


def test_bad_labels_and_in_memory_rows_are_located_like_model_fit(tmp_path: Path) -> None:
    model = einc.compile(Path(TINY).read_text().replace("heads 1", "heads 2"), dtype="float64")
    x = _binary_data(300)
    labels = np.zeros(300)
    labels[250] = 2
    np.save(tmp_path / "labels.npy", labels)
    with pytest.raises(DataError) as whole:
        model.fit(x, labels=read_data(tmp_path / "labels.npy"), epochs=1)
    assert "label 2 is not a head" in str(whole.value)
    streamed = _streamed_error(model, x, tmp_path / "cache", labels=str(tmp_path / "labels.npy"))
    assert "labels.npy:251:1: label 2 is not a head of the circuit" in streamed  # one label per row
    # arrays from Python: the messages Model.fit gives, rows counted across windows
    with pytest.raises(DataError) as whole:
        model.fit(x, labels=labels, epochs=1)
    assert _streamed_error(model, x, tmp_path / "cache", labels=labels) == str(whole.value)
    x[280, 0] = 5
    with pytest.raises(DataError) as whole:
        model.fit(x, epochs=1)
    assert "train: row 281, column 1 (variable A)" in str(whole.value)
    assert _streamed_error(model, x, tmp_path / "cache") == str(whole.value)
    with pytest.raises(DataError, match="found a dict"):
        distributed.fit(model, {"A": [0]}, epochs=1)  # a string is a path, as in Model.fit's callers


def test_distributed_fit_checks_every_option_and_shares_the_defaults() -> None:
    model = einc.compile(TINY)
    fit, sharded = inspect.signature(einc.Model.fit).parameters, inspect.signature(distributed.fit).parameters
    for name in ("epochs", "batch_size", "step_size", "learning_rate", "update", "method", "pseudocount"):
        assert sharded[name].default == fit[name].default, name
    x = _binary_data(40)
    for options, fragment in (({"epochs": 0}, "epochs must be"), ({"batch_size": 0}, "batch_size must be"),
                              ({"step_size": 2.0}, "step_size must be in (0, 1]"),
                              ({"method": "adam", "learning_rate": -1.0}, "learning_rate must be"),
                              ({"patience": 2}, "give valid data too"), ({"update": "sometimes"}, "update must be"),
                              ({"pseudocount": -1.0}, "pseudocount must be")):
        with pytest.raises(einc.EincError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
            distributed.fit(model, x, **options)


def test_patience_checkpoints_and_resume_on_the_streaming_trainer(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", _binary_data(300))
    np.save(tmp_path / "v.npy", _binary_data(100, 1))
    common = {"valid": str(tmp_path / "v.npy"), "batch_size": 32, "block_rows": 70, "step_size": 0.3}
    straight = einc.compile(TINY, dtype="float64", seed=4)
    distributed.fit(straight, str(tmp_path / "t.npy"), epochs=5, **common)
    first = einc.compile(TINY, dtype="float64", seed=4)
    distributed.fit(first, str(tmp_path / "t.npy"), epochs=2, checkpoint=tmp_path / "c.npz", checkpoint_every=1,
                    **common)
    resumed = einc.load(tmp_path / "c.npz", dtype="float64")
    assert resumed.training.epoch == 2
    history = distributed.fit(resumed, str(tmp_path / "t.npy"), epochs=5, resume=True, **common)
    assert [record.epoch for record in history] == [3, 4, 5]
    for name, value in straight.parameters().items():
        np.testing.assert_allclose(resumed.parameters()[name], value, rtol=1e-9, atol=1e-12)
    assert resumed.training.best_epoch == straight.training.best_epoch
    patient = einc.compile(TINY, dtype="float64", seed=0)
    history = distributed.fit(patient, str(tmp_path / "t.npy"), epochs=200, update="epoch", step_size=1.0,
                              patience=2, valid=str(tmp_path / "v.npy"))
    best = max(history, key=lambda r: r.valid_ll)
    assert len(history) < 200 and history[-1].epoch - best.epoch == 2
    np.testing.assert_allclose(patient.log_likelihood(np.load(tmp_path / "v.npy")).mean(), best.valid_ll, rtol=1e-9)


def test_divergence_keeps_the_last_good_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    model = einc.compile(TINY, dtype="float64", seed=0)
    backend_class = type(model.backend)
    original = backend_class.em_update
    calls: list[int] = []

    def nan_from_the_third_m_step(self, params, stats, *args):
        calls.append(1)
        updated = original(self, params, stats, *args)
        return {k: v * np.nan for k, v in updated.items()} if len(calls) >= 3 else updated

    monkeypatch.setattr(backend_class, "em_update", nan_from_the_third_m_step)
    with pytest.raises(TrainingError, match=r"training diverged in epoch 3: parameter \S+ is not finite.*"
                                            r"keeps the parameters of epoch 2"):
        distributed.fit(model, _binary_data(100), epochs=5, update="epoch", step_size=1.0)
    assert model.training.epoch == 2
    for name, value in model.parameters().items():  # the parameters after epoch 2, finite
        assert np.isfinite(value).all()
        np.testing.assert_allclose(value, model.training.params[name], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# The command line: --stream (one process) and --nproc (several)


def test_stream_validates_everything_before_the_first_epoch(tiny_data: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("0,1,1,0\n0,1,2,0\n")
    read_only = tmp_path / "ro.npz"
    read_only.write_bytes(b"precious")
    read_only.chmod(0o444)
    base = ["train", TINY, "--data", str(tiny_data), "--epochs", "50", "--stream", "--cache-dir", str(tmp_path / "c")]
    try:
        for extra, fragment in (
            (["--test", str(bad), "-o", str(tmp_path / "m.npz")], f"{bad}:2:3 (variable C)"),
            (["--valid", str(bad), "-o", str(tmp_path / "m.npz")], f"{bad}:2:3 (variable C)"),
            (["--valid", str(tiny_data), "--valid-labels", str(bad), "-o", str(tmp_path / "m.npz")], "labels"),
            (["--patience", "2", "-o", str(tmp_path / "m.npz")], "give --valid too"),
            (["-o", str(tmp_path)], "is a directory"),
            (["-o", "/proc/einc-model.npz"], "cannot write the model in /proc"),
            (["-o", str(read_only)], "is read-only; refusing to replace it"),
            (["-o", str(tiny_data)], "is also the --data input"),
            (["--resume", str(bad), "-o", str(tmp_path / "m.npz")], "not an einc model file"),
        ):
            code, out, err = run(base + extra, capsys)
            assert_one_clear_error(code, err, fragment)
            assert "epoch" not in out
    finally:
        read_only.chmod(0o644)
    assert read_only.read_bytes() == b"precious" and not (tmp_path / "m.npz").exists()
    code, _, err = run(base + ["--nproc", "0", "-o", str(tmp_path / "m.npz")], capsys)
    assert_one_clear_error(code, err, "argument --nproc: must be at least 1")


def test_stream_ctrl_c_saves_the_best_model_so_far(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from einc.train.steps import HostEm  # the EM steps of the one training loop

    original = HostEm.run
    epochs: list[int] = []

    def interrupt_in_epoch_3(self, epoch, rng, advance):
        epochs.append(1)
        if len(epochs) == 3:
            raise KeyboardInterrupt
        return original(self, epoch, rng, advance)

    monkeypatch.setattr(HostEm, "run", interrupt_in_epoch_3)
    output = tmp_path / "m.npz"
    code, _, err = run(["train", TINY, "--data", str(tiny_data), "--valid", str(tiny_data), "--stream", "--epochs", "9",
                        "--dtype", "float64", "-o", str(output)], capsys)
    assert code == 130 and "Traceback" not in err
    assert "interrupted after 2 epochs; wrote the parameters of epoch" in err and f"--resume {output}" in err
    saved = einc.load(output, dtype="float64")
    assert saved.training.epoch == 2
    np.testing.assert_allclose(saved.log_likelihood(read_data(tiny_data)).mean(), saved.training.best_valid_ll,
                               rtol=1e-9)


def test_stream_divergence_writes_the_last_good_model(tiny_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[int] = []

    def nan_from_epoch_3(plan, train_ll, valid_ll, params):
        calls.append(1)
        return "train LL nan" if len(calls) >= 3 else None

    monkeypatch.setattr(einc.train.loop, "divergence", nan_from_epoch_3)  # the one loop's check
    output = tmp_path / "m.npz"
    code, _, err = run(["train", TINY, "--data", str(tiny_data), "--stream", "--epochs", "5", "-o", str(output)], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.startswith("einc: error: training diverged in epoch 3: train LL nan; the model keeps the "
                          "parameters of epoch 2")
    assert "wrote the last good model (epoch 2)" in err
    assert einc.load(output).training.epoch == 2


def test_stream_resume_continues_the_saved_run(tiny_data: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    output, straight = tmp_path / "m.npz", tmp_path / "s.npz"
    common = ["train", TINY, "--data", str(tiny_data), "--valid", str(tiny_data), "--dtype", "float64", "--seed", "3",
              "--batch-size", "16", "--stream"]
    assert run(common + ["--epochs", "2", "-o", str(output)], capsys)[0] == 0
    code, out, err = run(common + ["--epochs", "4", "--resume", str(output), "-o", str(output)], capsys)
    assert code == 0, err
    assert "resuming after epoch 2" in out and "epoch   3" in out and "epoch   1" not in out
    assert run(common + ["--epochs", "4", "-o", str(straight)], capsys)[0] == 0
    a, b = einc.load(output).parameters(), einc.load(straight).parameters()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-9, atol=1e-12)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_on_the_launcher_saves_the_best_model_so_far(tmp_path: Path) -> None:
    """`einc train --nproc 2`: the launcher passes SIGINT on; rank 0 writes what was trained (and
    every epoch's checkpoint, which every worker must agree to)."""
    np.save(tmp_path / "x.npy", _binary_data(2000))
    output = tmp_path / "m.npz"
    launcher = subprocess.Popen([sys.executable, "-m", "einc", "train", TINY, "--data", str(tmp_path / "x.npy"),
                                 "--valid", str(tmp_path / "x.npy"), "--nproc", "2", "--epochs", "100000",
                                 "--checkpoint-every", "1",
                                 "--dtype", "float64", "-o", str(output)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        for line in launcher.stdout:
            if line.startswith("epoch   2"):
                break
        assert einc.load(output).training.epoch >= 1  # a checkpoint
        launcher.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 130, stderr
    assert "Traceback" not in stderr and "wrote the parameters of epoch" in stderr, stderr
    assert time.monotonic() - started < 60
    saved = einc.load(output, dtype="float64")
    assert saved.training is not None and saved.training.epoch >= 2
    np.testing.assert_allclose(saved.log_likelihood(np.load(tmp_path / "x.npy")).mean(),
                               saved.training.best_valid_ll, rtol=1e-9)


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    np.savetxt(path, _binary_data(60).astype(int), fmt="%d", delimiter=",")
    return path
