"""Bad input never gets a traceback, finished work is never lost, NaN is never silent (issue 11).

One section per category of the issue: the CLI's one error path, data and model files read
through validating readers, output paths checked before work, non-finite values, training
interrupted or diverging, resuming, round trips, and the defaults. The fuzzers are in
tests/test_fuzz.py, the front end's size limits in tests/test_size_limits.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from einc.errors import DataError, EincError, ModelFileError, TrainingError

import einc
from einc import cli
from einc.io.data import read_data

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "examples" / "tiny.pc")
REAL = "var v : real(2)\nvar c : count\nleaf v ~ normal\nleaf c ~ poisson\nsums 2\n{v, c} -> v * c\n"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_clear_error(code: int, err: str, *fragments: str) -> None:
    """Exit 1, no traceback, an `einc: error:` (or located) message holding every fragment."""
    assert code == 1, err
    assert "Traceback" not in err
    message = err.strip()
    assert message.startswith("einc: error: ") or ": error: " in message.splitlines()[0], err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    data = (rng.random((60, 4)) < [0.2, 0.8, 0.5, 0.3]).astype(int)
    path = tmp_path / "train.csv"
    np.savetxt(path, data, fmt="%d", delimiter=",")
    return path


@pytest.fixture
def tiny_model(tmp_path: Path, tiny_data: Path) -> Path:
    model = einc.compile(TINY, dtype="float64", seed=1)
    model.fit(read_data(tiny_data), epochs=1)
    path = tmp_path / "model.npz"
    model.save(path)
    return path


# ---------------------------------------------------------------------------------------------
# One error path


def test_debug_anywhere_on_the_line_adds_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    bad = str(ROOT / "examples/bad/not_smooth.pc")
    for argv in (["--debug", "check", bad], ["check", bad, "--debug"], ["check", "--debug", bad]):
        code, _, err = run(argv, capsys)
        assert code == 1 and "Traceback" in err and "error: partition" in err


def test_an_unexpected_exception_is_an_internal_error_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: object) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli.entry, "COMMANDS", (cli.Command("check", "check", broken, (cli.FILE,)),))  # the table main reads
    code, _, err = run(["check", TINY], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("einc: internal error: ZeroDivisionError: a bug")
    code, _, err = run(["check", TINY, "--debug"], capsys)
    assert code == 2 and "Traceback" in err


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["train", "--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    for text in ("(default: 10)", "(default: 100)", "(default: 0.05)", "(default: auto)", "(default: 4G)"):
        assert text in flat


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", TINY, "--data", "x", "-o", "m.npz", "--batch-size", "0"], "--batch-size: must be at least 1"),
        (["train", TINY, "--data", "x", "-o", "m.npz", "--batch-size", "-5"], "--batch-size: must be at least 1"),
        (["train", TINY, "--data", "x", "-o", "m.npz", "--threads", "-1"], "--threads"),
        (["train", TINY, "--data", "x", "-o", "m.npz", "--threads", "0"], "--threads"),
        (["train", TINY, "--data", "x", "-o", "m.npz", "--device", "tpu"], "--device: expected cpu, cuda or cuda:N"),
        (["train", TINY, "--data", "x", "-o", "m.npz", "--learning-rate", "-1"], "--learning-rate: must be positive"),
        (["train", TINY, "--data", "x", "-o", "m.npz", "--step-size", "1.5"], "--step-size: must be in (0, 1]"),
        (["train", TINY, "--data", "x", "-o", "m.npz", "--step-size", "nan"], "--step-size: expected a finite number"),
        (["train", TINY, "--data", "x", "-o", "m.npz", "--mixture", "0"], "--mixture: must be at least 1"),
        (["train", TINY, "--data", "x", "-o", "m.npz", "--patience", "2"], "--patience stops on the validation"),
        (["train", TINY, "--data", "x", "-o", "m.npz", "--max-memory", "lots"], "--max-memory"),
        (["inpaint", "m.npz", "--data", "x", "-o", "x.png", "-n", "0"], "-n: must be at least 1"),
        (["sample", "m.npz", "-n", "-3", "-o", "x.csv"], "-n: must be at least 1"),
        (["check", TINY, "--sums", "0"], "--sums: must be at least 1"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_options_are_refused_by_the_parser(argv: list[str], fragment: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert_one_clear_error(code, err, fragment)
    assert not (tmp_path / "m.npz").exists()


def test_query_with_an_empty_target_is_refused(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["query", str(tiny_model), "--target", ""], capsys)
    assert_one_clear_error(code, err, "--target names no variable")
    code, _, err = run(["query", str(tiny_model), "--target", "C", "--evidence", "A=7"], capsys)
    assert_one_clear_error(code, err, "--evidence: row 1, column 1 (variable A): value 7 is outside the domain")


# ---------------------------------------------------------------------------------------------
# Data files: one validated reader


def _write_bad_data(path: Path, kind: str) -> None:
    if kind == "strings.npy":
        np.save(path, np.array([["a", "b", "c", "d"]]))
    elif kind == "empty.npy":
        np.save(path, np.zeros((0, 4)))
    elif kind == "structured.npy":
        np.save(path, np.zeros(3, dtype=[("a", "f4"), ("b", "i4")]))
    elif kind == "object.npy":
        np.save(path, np.array([[1, "x"]], dtype=object), allow_pickle=True)
    elif kind == "complex.npy":
        np.save(path, np.ones((2, 4), dtype=complex))
    elif kind == "scalar.npy":
        np.save(path, np.float64(3.0))
    elif kind == "noarrays.npz":
        np.savez(path)
    elif kind == "truncated.npz":
        buffer = path.with_suffix(".full.npz")
        np.savez(buffer, data=np.zeros((10, 4)))
        path.write_bytes(buffer.read_bytes()[:60])
    elif kind == "empty.csv":
        path.write_bytes(b"")
    elif kind == "binary.csv":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "ragged.csv":
        path.write_text("0,1,1,0\n0,1\n")
    elif kind == "word.csv":
        path.write_text("0,1,1,0\n0,1,yes,0\n")
    elif kind == "header_only.csv":
        path.write_text("A,B,C,D\n")
    elif kind == "wrong_header.csv":
        path.write_text("P,Q,R,S\n0,1,1,0\n")
    elif kind == "bad_gzip.csv.gz":
        path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    elif kind == "nul.csv":
        path.write_bytes(b"0,1,\x00,0\n")
    elif kind == "directory":
        path.mkdir()
    else:
        raise AssertionError(kind)


BAD_DATA = {
    "strings.npy": "holds text",
    "empty.npy": "holds no rows",
    "structured.npy": "structured array",
    "object.npy": "Python objects",
    "complex.npy": "complex numbers",
    "scalar.npy": "a single number",
    "noarrays.npz": "holds no arrays",
    "truncated.npz": "cannot read data",
    "empty.csv": "the file is empty",
    "binary.csv": "not a text file",
    "ragged.csv": ":2: the row has 2 columns; expected 4",
    "word.csv": ":2:3: 'yes' is not a number",
    "header_only.csv": "holds no data rows",
    "wrong_header.csv": ":1: the header line does not match the circuit's columns; expected A,B,C,D",
    "bad_gzip.csv.gz": "cannot read data",
    "nul.csv": ":1:",
    "directory": "is a directory",
}


@pytest.mark.parametrize("kind", sorted(BAD_DATA))
def test_bad_data_files_get_one_message_naming_the_file(kind: str, tmp_path: Path, tiny_model: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / kind
    _write_bad_data(path, kind)
    code, _, err = run(["eval", str(tiny_model), "--data", str(path)], capsys)
    assert_one_clear_error(code, err, str(path), BAD_DATA[kind])
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(DataError):
        read_data(path, columns=["A", "B", "C", "D"])


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"A": [0]}, "found a dict"),
        ("0,1,1,0", "found a str"),
        ([[0, 1, 1, 0], [0, 1]], "rows of different lengths"),
        ([["a", "b", "c", "d"]], "holds text"),
        ([[0, 1, 1, 0]] * 0 + [[]], "expected 4 columns"),
        (np.float64(1.0), "a single number"),
    ],
)
def test_api_data_of_the_wrong_kind_is_a_data_error(data: object, fragment: str) -> None:
    model = einc.compile(TINY)
    with pytest.raises(DataError, match=fragment.replace("(", r"\(")):
        model.log_likelihood(data)


def test_api_accepts_tensors_that_require_grad_and_empty_batches() -> None:
    import torch

    model = einc.compile(TINY, dtype="float64")
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0]], requires_grad=True)
    np.testing.assert_allclose(model.log_likelihood(x), model.log_likelihood([[0, 1, 1, 0]]))
    assert model.log_likelihood(np.zeros((0, 4))).shape == (0,)


def test_csv_header_written_by_sample_is_read_back_also_with_commas_in_names(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    grid = "var img[2, 2] : binary\nleaf img ~ bernoulli\nsums 2\nstructure poon_domingos(delta = 1, over = img)\n"
    source = tmp_path / "grid.pc"
    source.write_text(grid)
    model = einc.compile(str(source), dtype="float64")
    model_path = tmp_path / "grid.npz"
    model.save(model_path)
    samples = tmp_path / "s.csv"
    assert run(["sample", str(model_path), "-n", "5", "-o", str(samples)], capsys)[0] == 0
    assert samples.read_text().splitlines()[0] == '"img[0, 0]","img[0, 1]","img[1, 0]","img[1, 1]"'
    per_sample = tmp_path / "ll.csv"
    code, _, err = run(["eval", str(model_path), "--data", str(samples), "--per-sample", str(per_sample)], capsys)
    assert code == 0, err
    written = read_data(per_sample).values[:, 0]
    np.testing.assert_allclose(written, model.log_likelihood(read_data(samples, columns=model.columns)), rtol=1e-8)
    assert per_sample.read_text().splitlines()[0] == "log_likelihood"


# ---------------------------------------------------------------------------------------------
# Silent NaN: non-finite and overflowing values


@pytest.mark.parametrize(
    ("row", "column", "fragment"),
    [
        ([np.inf, 0.0, 1.0], 1, "value inf is outside the domain; expected a finite real number"),
        ([1e308, 0.0, 1.0], 1, "is too large for a normal leaf in float32"),
        ([0.0, 0.0, 1e300], 3, "float32 represents integers exactly only up to 16777216"),
        ([0.0, -np.inf, 1.0], 2, "outside the domain"),
    ],
)
def test_non_finite_or_overflowing_values_are_rejected_with_their_place(
    row: list[float], column: int, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "real.pc"
    source.write_text(REAL)
    data = np.array([[0.5, 0.1, 2.0], row])
    path = tmp_path / "bad.npy"
    np.save(path, data)
    code, _, err = run(["train", str(source), "--data", str(path), "-o", str(tmp_path / "m.npz")], capsys)
    assert_one_clear_error(code, err, f"{path}:2:{column} (variable ", fragment)
    assert not (tmp_path / "m.npz").exists()
    # float64 computes with larger values: 1e300 and 1e308 are still refused, 1e30 is fine there
    model = einc.compile(str(source), dtype="float64")
    assert np.isfinite(model.log_likelihood([[1e30, 0.0, 1.0]])).all()


def test_training_that_diverges_stops_and_keeps_the_last_good_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    model = einc.compile(TINY, dtype="float64", backend="numpy", seed=0)
    data = (np.random.default_rng(0).random((50, 4)) < 0.5).astype(float)
    model.fit(data, epochs=1)
    good = model.parameters()
    from einc.backends import array_backend

    original = array_backend.em_update

    def poisoned(*args):  # the M-step of the host loop and of the resident epoch alike
        updated = original(*args)
        return {k: np.full_like(v, np.nan) for k, v in updated.items()}

    monkeypatch.setattr(array_backend, "em_update", poisoned)
    with pytest.raises(TrainingError, match="training diverged in epoch 2: train LL nan; the model keeps "
                                            "the parameters of epoch 1"):
        model.fit(data, epochs=3, resume=True)
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(value, good[name])


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda a: a.update({"param/" + _first_weight(a): np.full_like(a["param/" + _first_weight(a)], np.nan)}),
         "holds a non-finite value"),
        (lambda a: a.update({"param/" + _first_weight(a): -a["param/" + _first_weight(a)]}), "holds a negative weight"),
        (lambda a: a.update({"param/" + _first_weight(a): 2 * a["param/" + _first_weight(a)]}), "is not normalised"),
        (lambda a: a.update({"param/" + _first_leaf(a): a["param/" + _first_leaf(a)] + 3}), "outside the bernoulli"),
        (lambda a: a.update({"param/" + _first_weight(a): np.zeros(3)}), "has shape (3,)"),
        (lambda a: a.update({"param/" + _first_weight(a): np.full(a["param/" + _first_weight(a)].shape, "x")}),
         "has dtype <U1"),
        (lambda a: a.pop("param/" + _first_weight(a)), "is missing"),
        (lambda a: a.update({"param/extra": np.zeros(2)}), "unexpected parameter 'extra'"),
        (lambda a: a.update({"meta": np.array("[1, 2]")}), "'meta' is a JSON list"),
        (lambda a: a.update({"meta": np.array("{not json")}), "'meta' is not valid JSON"),
        (lambda a: a.update({"meta": np.array(1.5)}), "'meta' is not a JSON text"),
        (lambda a: a.pop("meta"), "no 'meta' entry"),
        (lambda a: _edit_meta(a, version=7), "model format version 7"),
        (lambda a: _edit_meta(a, source="var A : binary\n"), "does not compile"),
        (lambda a: _edit_meta(a, dtype="float16"), "metadata 'dtype' is 'float16'"),
        (lambda a: _edit_meta(a, source=5), "metadata 'source' is 5"),
    ],
)
def test_model_files_are_validated_completely_on_load(edit, fragment: str, tiny_model: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with np.load(tiny_model, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    edit(arrays)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ModelFileError, match=None) as caught:
        einc.load(bad)
    assert fragment in str(caught.value), str(caught.value)
    data = tmp_path / "d.csv"
    data.write_text("0,1,1,0\n")
    code, _, err = run(["eval", str(bad), "--data", str(data)], capsys)
    assert_one_clear_error(code, err, str(bad), fragment)


def _first_weight(arrays: dict) -> str:
    return next(k[len("param/"):] for k in sorted(arrays) if k.startswith("param/") and arrays[k].ndim == 4)


def _first_leaf(arrays: dict) -> str:
    meta = json.loads(str(arrays["meta"]))
    plan = einc.compile(meta["source"]).plan
    return next(spec.name for spec in plan.params if spec.kind == "leaf")


def _edit_meta(arrays: dict, **changes: object) -> None:
    meta = json.loads(str(arrays["meta"]))
    meta.update(changes)
    arrays["meta"] = np.array(json.dumps(meta))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04trunc", b"circuit tiny\nvar A : binary\n"])
def test_truncated_empty_or_source_files_are_not_models(content: bytes, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.npz"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="not an einc model file|not a valid einc model file"):
        einc.load(path)
    code, _, err = run(["sample", str(path), "-o", str(tmp_path / "s.csv")], capsys)
    assert_one_clear_error(code, err, str(path))
    code, _, err = run(["eval", TINY, "--data", str(path)], capsys)
    assert_one_clear_error(code, err, "it looks like a .pc circuit: train it first")


# ---------------------------------------------------------------------------------------------
# Validate before work: nothing is trained that cannot be written or tested


def test_bad_test_or_valid_files_and_unwritable_outputs_are_found_before_training(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("0,1,1,0\n0,1,2,0\n")
    base = ["train", TINY, "--data", str(tiny_data), "--epochs", "50"]
    for extra, fragment in (
        (["--test", str(bad), "-o", str(tmp_path / "m.npz")], f"{bad}:2:3 (variable C)"),
        (["--valid", str(bad), "-o", str(tmp_path / "m.npz")], f"{bad}:2:3 (variable C)"),
        (["--valid", str(tiny_data), "--valid-labels", str(bad), "-o", str(tmp_path / "m.npz")], "labels"),
        (["-o", str(tmp_path)], "is a directory"),
        (["-o", "."], "names a folder"),
        (["-o", "/proc/einc-model.npz"], "cannot write the model in /proc"),
        (["-o", str(tiny_data / "m.npz")], "is not a folder"),
    ):
        code, out, err = run(base + extra, capsys)
        assert_one_clear_error(code, err, fragment)
        assert "epoch" not in out
    assert not (tmp_path / "m.npz").exists()


def test_a_read_only_file_is_never_replaced(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "model.npz"
    target.write_bytes(b"precious")
    target.chmod(0o444)
    try:
        code, out, err = run(["train", TINY, "--data", str(tiny_data), "-o", str(target)], capsys)
        assert_one_clear_error(code, err, "is read-only; refusing to replace it")
        assert "epoch" not in out
        with pytest.raises(EincError, match="read-only"):
            einc.compile(TINY).save(target)
        assert target.read_bytes() == b"precious"
    finally:
        target.chmod(0o644)


def test_compile_output_in_a_missing_or_impossible_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nested = tmp_path / "new" / "dir" / "tiny.txt"
    assert run(["compile", TINY, "-o", str(nested)], capsys)[0] == 0  # missing folders are created
    assert nested.read_text().startswith("circuit tiny")
    code, _, err = run(["compile", TINY, "-o", str(nested / "x.txt")], capsys)
    assert_one_clear_error(code, err, "is not a folder")


# ---------------------------------------------------------------------------------------------
# Nothing lost: checkpoints, interrupts, resume, patience


def _binary_data(rows: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((rows, 4)) < [0.2, 0.8, 0.5, 0.3]).astype(float)


@pytest.mark.parametrize("method", ["em", "adam"])
def test_resuming_equals_training_without_a_stop(method: str, tmp_path: Path) -> None:
    train, valid = _binary_data(80), _binary_data(40, seed=1)
    options = {"valid": valid, "method": method, "batch_size": 16}
    straight = einc.compile(TINY, dtype="float64", seed=2)
    straight.fit(train, epochs=4, **options)
    first = einc.compile(TINY, dtype="float64", seed=2)
    first.fit(train, epochs=2, **options)
    first.save(tmp_path / "half.npz")
    resumed = einc.load(tmp_path / "half.npz")
    assert resumed.training is not None and resumed.training.epoch == 2
    history = resumed.fit(train, epochs=4, resume=True, **options)
    assert [record.epoch for record in history] == [3, 4]
    for name, value in straight.parameters().items():
        np.testing.assert_allclose(resumed.parameters()[name], value, rtol=1e-9, atol=1e-12)
    assert resumed.training.best_epoch == straight.training.best_epoch


def test_patience_stops_early_and_checkpoints_are_written(tmp_path: Path) -> None:
    model = einc.compile(TINY, dtype="float64", seed=0)
    checkpoint = tmp_path / "ckpt.npz"
    history = model.fit(_binary_data(200), valid=_binary_data(100, 1), epochs=200, step_size=1.0,
                        update="epoch", patience=2, checkpoint=checkpoint, checkpoint_every=1)
    assert len(history) < 200
    best = max(history, key=lambda r: r.valid_ll)
    assert history[-1].epoch - best.epoch == 2
    saved = einc.load(checkpoint, dtype="float64")
    assert saved.training.epoch == history[-1].epoch and saved.training.best_epoch == best.epoch
    np.testing.assert_allclose(saved.log_likelihood(_binary_data(100, 1)).mean(), best.valid_ll, rtol=1e-9)


def test_ctrl_c_keeps_the_best_parameters_and_the_cli_saves_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    train = tmp_path / "t.csv"
    np.savetxt(train, _binary_data(100), fmt="%d", delimiter=",")
    seen: list[int] = []
    original = einc.Model.mean_ll

    def interrupt_in_epoch_3(self, *args):
        if len(seen) >= 4:  # train + valid LL of two epochs done
            raise KeyboardInterrupt
        seen.append(1)
        return original(self, *args)

    monkeypatch.setattr(einc.Model, "mean_ll", interrupt_in_epoch_3)
    output = tmp_path / "m.npz"
    code, _, err = run(["train", TINY, "--data", str(train), "--valid", str(train), "--epochs", "9",
                          "-o", str(output)], capsys)
    assert code == 130 and "Traceback" not in err
    assert "interrupted after 2 epochs; wrote the parameters of epoch" in err and f"--resume {output}" in err
    assert einc.load(output).training.epoch == 2


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_cli_training_saves_the_best_model_so_far(sig: int, code: int, tmp_path: Path) -> None:
    train = tmp_path / "t.csv"
    np.savetxt(train, _binary_data(600), fmt="%d", delimiter=",")
    output = tmp_path / "m.npz"
    process = subprocess.Popen(
        [sys.executable, "-m", "einc", "train", TINY, "--data", str(train), "--valid", str(train),
         "--epochs", "100000", "--batch-size", "20", "-o", str(output)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        # a test run started in the background (`cmd &` in a script) ignores SIGINT, and children
        # inherit that: Python then installs no KeyboardInterrupt handler. Give the child the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("epoch   2"):
            process.send_signal(sig)
            break
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert "Traceback" not in err and "wrote the parameters of epoch" in err
    model = einc.load(output, dtype="float64")
    assert model.training is not None and model.training.epoch >= 2
    valid = read_data(train).values
    np.testing.assert_allclose(model.log_likelihood(valid).mean(), model.training.best_valid_ll, rtol=1e-5)


def test_cli_resume_continues_the_saved_run(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "m.npz"
    common = ["train", TINY, "--data", str(tiny_data), "--valid", str(tiny_data), "--dtype", "float64", "--seed", "3"]
    assert run(common + ["--epochs", "2", "-o", str(output)], capsys)[0] == 0
    code, out, err = run(common + ["--epochs", "4", "--resume", str(output), "-o", str(output)], capsys)
    assert code == 0, err
    assert "resuming after epoch 2" in out and "epoch   3" in out and "epoch   1" not in out
    straight = tmp_path / "s.npz"
    assert run(common + ["--epochs", "4", "-o", str(straight)], capsys)[0] == 0
    a, b = einc.load(output).parameters(), einc.load(straight).parameters()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-9, atol=1e-12)
    other = tmp_path / "other.pc"
    other.write_text(Path(TINY).read_text().replace("sums 4", "sums 5"))
    code, _, err = run(["train", str(other), "--data", str(tiny_data), "--resume", str(output), "-o",
                        str(tmp_path / "x.npz")], capsys)
    assert_one_clear_error(code, err, "trained from another circuit")


# ---------------------------------------------------------------------------------------------
# Rough edges and defaults


def test_a_path_without_the_pc_suffix_is_a_path_not_source() -> None:
    with pytest.raises(EincError, match="cannot read path/without_suffix"):
        einc.compile("path/without_suffix")


def test_eval_honours_dtype(tiny_model: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    original = einc.model.Model.__init__

    def spy(self, plan, source, filename, backend, device, dtype, *args, **kwargs):
        seen.append(dtype)
        original(self, plan, source, filename, backend, device, dtype, *args, **kwargs)

    monkeypatch.setattr(einc.model.Model, "__init__", spy)
    assert run(["eval", str(tiny_model), "--data", str(tiny_data), "--dtype", "float32"], capsys)[0] == 0
    assert run(["eval", str(tiny_model), "--data", str(tiny_data)], capsys)[0] == 0
    assert seen == ["float32", "float64"]  # the saved model is float64


def test_api_and_cli_share_the_training_defaults() -> None:
    import inspect

    from einc.mixture import fit_mixture

    fit = inspect.signature(einc.Model.fit).parameters
    mixture = inspect.signature(fit_mixture).parameters
    args = cli.build_parser().parse_args(["train", TINY, "--data", "d", "-o", "m"])
    for name in ("epochs", "batch_size", "step_size", "learning_rate"):
        assert fit[name].default == mixture[name].default == getattr(args, name), name
    assert (args.epochs, args.batch_size, args.step_size) == (10, 100, 0.05)  # the DEBD recipe


def test_auto_threads_is_one_for_small_circuits_and_bounded_otherwise() -> None:
    from einc.cli.session import MAX_AUTO_THREADS, choose_threads

    assert choose_threads(3) == 3
    assert choose_threads("auto", einc.compile(TINY).plan) == 1
    count = choose_threads("auto", None)
    assert 1 <= count <= min(MAX_AUTO_THREADS, os.cpu_count() or 1)


def test_cli_training_that_diverges_writes_the_last_good_model(tiny_data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[int] = []
    original = einc.Model.mean_ll

    def nan_from_epoch_3(self, *args):
        calls.append(1)
        return float("nan") if len(calls) > 2 else original(self, *args)

    monkeypatch.setattr(einc.Model, "mean_ll", nan_from_epoch_3)
    output = tmp_path / "m.npz"
    code, _, err = run(["train", TINY, "--data", str(tiny_data), "--epochs", "5", "-o", str(output)], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.startswith("einc: error: training diverged in epoch 3: train LL nan; the model keeps the "
                          "parameters of epoch 2")
    assert "wrote the last good model (epoch 2)" in err
    assert einc.load(output).training.epoch == 2


def test_an_output_that_is_also_an_input_is_refused(tiny_model: Path, tiny_data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    before = tiny_model.read_bytes()
    data = tmp_path / "d.npz"
    np.savez(data, x=read_data(tiny_data).values)
    for argv, option in (
        (["sample", str(tiny_model), "-o", str(tiny_model.with_suffix(".npz"))], "MODEL"),
        (["eval", str(tiny_model), "--data", str(tiny_data), "--per-sample", str(tiny_data)], "--data"),
        (["train", TINY, "--data", str(tiny_data), "-o", str(tiny_data)], "--data"),
        (["train", TINY, "--data", f"{data}:x", "-o", str(data)], "--data"),
        (["compile", TINY, "-o", TINY], "FILE.pc"),
    ):
        code, _, err = run(argv, capsys)
        assert_one_clear_error(code, err, f"is also the {option} input")
    assert tiny_model.read_bytes() == before
    assert read_data(tiny_data).values.shape == (60, 4)
