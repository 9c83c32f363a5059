"""Fuzzers: mutated .pc files, bad data files and bad command lines never crash einc (issue 11).

- ``.pc`` mutations (seeded): every example, mutated by deleting, duplicating and swapping
  lines, inserting characters and replacing numbers with extremes, goes through the whole front
  end and parameter initialisation. Each case must end normally or with an ``EincError`` (no
  other exception, no ``MemoryError``) within 5 s.
- Data files (hypothesis): CSV text, .npy arrays of any dtype and shape, .npz archives and gzip
  streams, evaluated by ``einc eval``: exit 0, or exit 1 with one ``einc: error:`` line that names
  the file (and ``file:line:column (variable)`` for a bad value); never a traceback.
- Command lines (hypothesis): a valid command with one option replaced by a bad value exits 1
  with one clear message and no traceback.

The three together stay under about 60 s on 2 cores.
"""

from __future__ import annotations

import gzip
import io
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
from einc.compiler.params import init_parameters
from einc.compiler.pipeline import CompileOptions, compile_plan
from einc.ir.diagnostics import EincError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einc
from einc import cli

ROOT = Path(__file__).resolve().parent.parent
SEEDS = sorted((ROOT / "examples").glob("*.pc")) + sorted((ROOT / "examples" / "bad").glob("*.pc"))
# Tighter than the defaults so that the fuzzer never allocates much while still hitting the limits.
FUZZ_LIMITS = CompileOptions(max_bytes=256 * 2**20, max_build_seconds=1.0)
CASE_SECONDS = 5.0
PC_MUTANTS = 300
PC_BUDGET_SECONDS = 25.0

_EXTREMES = ["0", "-1", "1", "2", "7", "100000", "1000000000", "99999999999999999999", "1e300", "0.5", "-0"]
_INSERTS = list("[](){},*:~=->#.0123456789 \t\n") + ["\x00", "é", "->", "**", "[[[[", "]]]]", "var", "leaf"]
_WORDS = ["var", "leaf", "sums", "inputs", "heads", "structure", "region", "circuit", "binary", "count", "real",
          "categorical", "bernoulli", "normal", "poisson", "binomial", "poon_domingos", "random_binary_trees",
          "depth", "replicas", "delta", "over", "axes", "seed", "x", "img"]


def _mutate(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(7)
        if kind == 0 and lines:  # delete a line
            del lines[rng.randrange(len(lines))]
        elif kind == 1 and lines:  # duplicate a line
            index = rng.randrange(len(lines))
            lines.insert(rng.randrange(len(lines) + 1), lines[index])
        elif kind == 2 and len(lines) > 1:  # swap two lines
            a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[a], lines[b] = lines[b], lines[a]
        elif kind == 3:  # replace a number by an extreme
            joined = "\n".join(lines)
            numbers = list(re.finditer(r"\d+(\.\d+)?", joined))
            if numbers:
                match = rng.choice(numbers)
                joined = joined[: match.start()] + rng.choice(_EXTREMES) + joined[match.end():]
            lines = joined.split("\n")
        elif kind == 4:  # replace a word by another
            joined = "\n".join(lines)
            words = list(re.finditer(r"[A-Za-z_]+", joined))
            if words:
                match = rng.choice(words)
                joined = joined[: match.start()] + rng.choice(_WORDS) + joined[match.end():]
            lines = joined.split("\n")
        else:  # insert or delete characters
            joined = "\n".join(lines)
            position = rng.randrange(len(joined) + 1)
            if kind == 5:
                joined = joined[:position] + rng.choice(_INSERTS) + joined[position:]
            else:
                joined = joined[:position] + joined[position + rng.randint(1, 5):]
            lines = joined.split("\n")
    return "\n".join(lines)


def test_mutated_pc_files_end_in_a_result_or_an_einc_error() -> None:
    rng = random.Random(20261130)
    sources = [path.read_text(encoding="utf-8") for path in SEEDS]
    started = time.perf_counter()
    outcomes = {"ok": 0, "error": 0}
    slowest = (0.0, "")
    for case in range(PC_MUTANTS):
        if time.perf_counter() - started > PC_BUDGET_SECONDS:
            break
        text = _mutate(rng.choice(sources), rng)
        began = time.perf_counter()
        try:
            plan = compile_plan(text, f"mutant{case}.pc", FUZZ_LIMITS)
            init_parameters(plan, 0)
            outcomes["ok"] += 1
        except EincError as error:
            assert str(error), text
            outcomes["error"] += 1
        except BaseException as error:  # noqa: BLE001 - what the fuzzer is looking for
            pytest.fail(f"mutant {case} raised {type(error).__name__}: {error}\n--- source ---\n{text}")
        seconds = time.perf_counter() - began
        slowest = max(slowest, (seconds, text))
        assert seconds < CASE_SECONDS, f"mutant {case} took {seconds:.1f} s:\n{text}"
    assert outcomes["ok"] >= 10 and outcomes["error"] >= 50, outcomes  # both paths were exercised


# ---------------------------------------------------------------------------------------------
# Data files


COLUMNS = ["A", "B", "C", "D"]

_cells = st.one_of(
    st.sampled_from(["0", "1", "", "?", "nan", "NA", "2", "-1", "0.5", "inf", "-inf", "1e300", "x", " 1 ", '"1"',
                     "1,0", "A", "B", "\x00", "é", "1e999"]),
    st.integers(-3, 3).map(str),
    st.text(max_size=4),
)
_csv_text = st.lists(st.lists(_cells, min_size=0, max_size=6), min_size=0, max_size=6).map(
    lambda rows: "\n".join(",".join(row) for row in rows)
)
_dtypes = st.sampled_from(["f8", "f4", "i4", "u1", "bool", "U2", "c16", "f2", "M8[D]"])
_shapes = st.one_of(st.tuples(), st.tuples(st.integers(0, 4)), st.tuples(st.integers(0, 4), st.integers(0, 6)),
                    st.tuples(st.integers(0, 3), st.integers(1, 2), st.integers(1, 2)))
_values = st.sampled_from([0.0, 1.0, 2.0, -1.0, 0.5, np.nan, np.inf, 1e300])


@st.composite
def data_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, bytes) of a data file that may be anything from valid to garbage."""
    kind = draw(st.sampled_from(["csv", "csv", "npy", "npz", "gz", "bytes"]))
    if kind == "csv":
        header = draw(st.sampled_from(["", "A,B,C,D\n", "P,Q,R,S\n", '"A","B","C","D"\n']))
        return ".csv", (header + draw(_csv_text)).encode("utf-8")
    if kind == "bytes":
        return draw(st.sampled_from([".csv", ".npy", ".npz", ".bin"])), draw(st.binary(max_size=64))
    shape, dtype = draw(_shapes), np.dtype(draw(_dtypes))
    size = int(np.prod(shape)) if shape else 1
    values = np.array(draw(st.lists(_values, min_size=size, max_size=size)), dtype=np.float64).reshape(shape)
    with np.errstate(all="ignore"):
        array = values.astype(dtype) if dtype.kind not in "UM" else values.astype(str).astype(dtype) if dtype.kind == "U" \
            else np.zeros(shape, dtype=dtype)
    buffer = io.BytesIO()
    if kind == "npy":
        np.save(buffer, array)
        return ".npy", buffer.getvalue()
    if kind == "npz":
        keys = draw(st.lists(st.sampled_from(["data", "x", "y"]), max_size=2, unique=True))
        np.savez(buffer, **{key: array for key in keys})
        return ".npz", buffer.getvalue()
    return ".csv.gz", gzip.compress(draw(_csv_text).encode("utf-8"))


@pytest.fixture(scope="module")
def fuzz_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "tiny.npz"
    einc.compile(str(ROOT / "examples" / "tiny.pc"), dtype="float64").save(path)
    return path


@settings(max_examples=150, deadline=CASE_SECONDS * 1000, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(file=data_files())
def test_bad_data_files_never_crash_einc_eval(file: tuple[str, bytes], fuzz_model: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    suffix, content = file
    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    capsys.readouterr()
    code = cli.main(["eval", str(fuzz_model), "--data", str(path)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if code == 0:
        assert "mean LL" in captured.out
        return
    assert code == 1, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"einc: error: {path}"), captured.err
    if "(variable " in lines[0]:  # a bad value names its place: file:line:column (variable)
        assert re.match(rf"einc: error: {re.escape(str(path))}:\d+:\d+ \(variable [A-D]\): ", lines[0]), lines[0]


# ---------------------------------------------------------------------------------------------
# Command lines


_BAD_NUMBERS = st.one_of(st.integers(-10**6, 0).map(str), st.sampled_from(["", "x", "1.5e", "nan", "inf", "--", "0x10"]))
_BAD_OPTIONS = {
    "--epochs": _BAD_NUMBERS,
    "--batch-size": _BAD_NUMBERS,
    "--mixture": _BAD_NUMBERS,
    "--patience": _BAD_NUMBERS,
    "--checkpoint-every": _BAD_NUMBERS,
    "--threads": _BAD_NUMBERS,
    "--seed": st.one_of(st.integers(-10**6, -1).map(str), st.sampled_from(["x", "1.5"])),
    "--step-size": st.one_of(st.floats(1.0001, 1e9).map(str), st.floats(-1e9, 0).map(str), st.just("nan")),
    "--learning-rate": st.one_of(st.floats(-1e9, 0).map(str), st.sampled_from(["inf", "x"])),
    "--device": st.sampled_from(["tpu", "gpu", "cuda:", "cuda:x", "CPU", ""]),
    "--dtype": st.sampled_from(["float16", "double", ""]),
    "--method": st.sampled_from(["sgd", ""]),
    "--update": st.sampled_from(["step", ""]),
    "--max-memory": st.sampled_from(["0", "-1G", "lots", "4X"]),
    "--max-build-seconds": st.sampled_from(["0", "-1", "x", "nan", "inf"]),
    "--data": st.sampled_from(["missing.csv", ".", "/proc/self/mem"]),
    "--valid": st.sampled_from(["missing.csv", "."]),
    "--test": st.sampled_from(["missing.csv", "."]),
    "--resume": st.sampled_from(["missing.npz", "train.csv"]),
    "-o": st.sampled_from([".", "/proc/x.npz", "train.csv/x.npz", ""]),
}


@settings(max_examples=60, deadline=CASE_SECONDS * 1000, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(option=st.sampled_from(sorted(_BAD_OPTIONS)), data=st.data())
def test_a_bad_option_exits_1_with_one_message(option: str, data: st.DataObject, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.csv").write_text("0,1,1,0\n1,1,0,0\n")
    (tmp_path / "m.npz").unlink(missing_ok=True)
    value = data.draw(_BAD_OPTIONS[option])
    options = {"--data": "train.csv", "--epochs": "1", "-o": "m.npz", option: value}
    argv = ["train", str(ROOT / "examples" / "tiny.pc")]
    for flag, text in options.items():
        argv += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
    capsys.readouterr()
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 1, (argv, captured.out, captured.err)
    assert "Traceback" not in captured.err
    message = captured.err.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("einc: error: "), captured.err
    assert "epoch" not in captured.out
    assert not (tmp_path / "m.npz").exists()
