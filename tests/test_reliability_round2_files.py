"""Reliability, round 2 (issue 19): silent wrong answers, lost work and inputs near the limits.

Hangs and tracebacks: ``test_reliability_round2.py``.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from einc.errors import DataError, EincError, ModelFileError, OutputError, ResourceError
from test_hardening import assert_one_clear_error, run

import einc
from einc.cli import launch
from einc.io import data as data_module
from einc.io.files import check_distinct_paths
from einc.train.rows import open_rows

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "examples" / "tiny.pc"
VAE = ("circuit v\nvar x[4] : binary\nleaf x ~ vae(latent = 2, hidden = [4])\nsums 2\ninputs 2\n"
       "structure random_binary_trees(depth = 1, replicas = 1)\n")


@pytest.fixture
def binary_csv(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    np.savetxt(path, np.random.default_rng(0).integers(0, 2, (40, 4)), fmt="%d", delimiter=",")
    return path


# ---------------------------------------------------------------------------------------------
# Silent wrong answers


def test_query_on_a_vae_circuit_is_normalised_over_the_target_and_says_it_is_an_estimate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "v.npz"
    einc.compile(VAE, seed=3).save(path)
    for target in ("x[1]", "x[3]"):
        code, out, err = run(["query", str(path), "--evidence", "x[0]=1", "--target", target], capsys)
        assert code == 0, err
        assert "an estimate: approximate IWAE estimates" in out and "normalised over the values" in out
        probabilities = [float(line.split(":")[1]) for line in out.splitlines()[1:]]
        assert len(probabilities) == 2 and abs(sum(probabilities) - 1) < 2e-6, probabilities


def test_query_on_an_exact_circuit_still_matches_the_ratio_of_marginals(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    model = einc.compile(TINY, dtype="float64", seed=2)
    model.save(tmp_path / "t.npz")
    code, out, _ = run(["query", str(tmp_path / "t.npz"), "--evidence", "A=1,C=0", "--target", "B"], capsys)
    assert code == 0
    shown = [float(line.split(":")[1]) for line in out.splitlines()[1:]]
    nan = np.nan
    joint = model.log_likelihood([[1, 0, 0, nan], [1, 1, 0, nan]])
    np.testing.assert_allclose(shown, np.exp(joint - model.log_likelihood([[1, nan, 0, nan]])), atol=2e-6)


def _absurd_vae_model(path: Path) -> None:
    model = einc.compile(VAE)
    params = model.parameters()
    for name in params:
        if "decoder" in name and name.endswith("weight"):
            params[name] = np.full_like(params[name], 1e30)
    model.set_parameters(params)
    model.save(path)


def test_eval_of_absurd_weights_is_an_error_naming_the_parameter(tmp_path: Path, binary_csv: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    _absurd_vae_model(tmp_path / "a.npz")
    code, out, err = run(["eval", str(tmp_path / "a.npz"), "--data", str(binary_csv)], capsys)
    assert_one_clear_error(code, err, "not finite for 40 of 40 samples", "NaN", "decoder", "1e+30")
    assert "mean LL" not in out


def test_training_with_a_nan_test_ll_writes_the_model_and_exits_1(tmp_path: Path, binary_csv: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    real = einc.Model.log_likelihood

    def nan_on_test(self, x, *args, **kwargs):
        result = real(self, x, *args, **kwargs)
        return np.full_like(result, np.nan) if len(result) == 7 else result

    monkeypatch.setattr(einc.Model, "log_likelihood", nan_on_test)
    test = tmp_path / "test.csv"
    np.savetxt(test, np.zeros((7, 4)), fmt="%d", delimiter=",")
    code, _, err = run(["train", str(TINY), "--data", str(binary_csv), "--test", str(test), "--epochs", "1",
                        "-o", str(tmp_path / "m.npz")], capsys)
    assert code == 1 and "test log-likelihood is nan" in err and "Traceback" not in err
    assert (tmp_path / "m.npz").exists()


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda a: a.update({"extra": np.zeros(2)}), "unknown entry 'extra'"),
    (lambda a: a.update({"training/extra": np.zeros(2)}), "unknown entry 'training/extra'"),
    (lambda a: a.update({"meta": np.array(json.dumps({**json.loads(str(a["meta"])), "comment": "x"}))}),
     "unknown entry 'comment'"),
])
def test_unknown_entries_of_a_model_file_are_refused_by_name(edit, fragment: str, tmp_path: Path) -> None:
    einc.compile(TINY).save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    edit(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ModelFileError) as caught:
        einc.load(tmp_path / "bad.npz")
    assert fragment in str(caught.value), str(caught.value)


def test_unknown_entries_of_a_mixture_file_are_refused(tmp_path: Path) -> None:
    from einc.mixture import fit_mixture

    mixture = fit_mixture(TINY, np.random.default_rng(0).integers(0, 2, (30, 4)), 2, epochs=1)
    mixture.save(tmp_path / "mix.npz")
    with np.load(tmp_path / "mix.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    np.savez(tmp_path / "bad.npz", **arrays, **{"component7/param/x": np.zeros(1)})
    with pytest.raises(ModelFileError, match="unknown entry 'component7/param/x'"):
        einc.load(tmp_path / "bad.npz")


# ---------------------------------------------------------------------------------------------
# Lost work: no output replaces an input or another output; save validates what it writes


def test_distinct_paths_catch_links_relative_spellings_and_files_not_yet_written(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text("0,1\n")
    os.symlink(tmp_path / "data.csv", tmp_path / "link.csv")
    for output in ("data.csv", "./data.csv", str(tmp_path / "sub" / ".." / "data.csv"), "link.csv"):
        with pytest.raises(OutputError, match="is also the --data input"):
            check_distinct_paths({"-o": output}, {"--data": "data.csv"})
    with pytest.raises(OutputError, match="is both the -o and the --write-latents output"):
        check_distinct_paths({"-o": "new.npz", "--write-latents": "./new.npz"}, {})
    with pytest.raises(OutputError, match="input"):
        check_distinct_paths({"-o": "arrays.npz"}, {"--data": "arrays.npz:x"})
    check_distinct_paths({"-o": "m.npz", "--write-latents": "z.npy", "--plot": None}, {"--data": "data.csv"})


def test_learn_structure_never_overwrites_its_data_or_variables(tmp_path: Path, binary_csv: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    before = binary_csv.read_bytes()
    code, _, err = run(["learn-structure", "chow_liu", "--data", str(binary_csv), "-o", str(binary_csv)], capsys)
    assert_one_clear_error(code, err, "is also the --data input")
    assert binary_csv.read_bytes() == before
    spec = tmp_path / "vars.pc"
    spec.write_text(TINY.read_text())
    code, _, err = run(["learn-structure", "chow_liu", "--data", str(binary_csv), "--variables", str(spec),
                        "-o", str(tmp_path / "." / "vars.pc")], capsys)
    assert_one_clear_error(code, err, "is also the --variables input")
    assert spec.read_text() == TINY.read_text()


def test_lvd_refuses_write_latents_onto_the_model_before_any_work(tmp_path: Path, binary_csv: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    circuit = tmp_path / "l.pc"
    circuit.write_text(TINY.read_text() + "latent z = left\n")
    latents = tmp_path / "z.csv"
    np.savetxt(latents, np.zeros((40, 1)), fmt="%d")
    code, out, err = run(["lvd", str(circuit), "--data", str(binary_csv), "--latents", str(latents),
                          "-o", str(tmp_path / "m.npz"), "--write-latents", str(tmp_path / "m.npz")], capsys)
    assert_one_clear_error(code, err, "is both the -o and the --write-latents output")
    assert not (tmp_path / "m.npz").exists() and "epoch" not in out


def test_save_refuses_non_finite_parameters_and_keeps_the_good_file(tmp_path: Path) -> None:
    import torch

    model = einc.compile(TINY, dtype="float64")
    path = tmp_path / "m.npz"
    model.save(path)
    good = path.read_bytes()
    with torch.no_grad():
        next(iter(model.module().parameters())).fill_(float("nan"))
    with pytest.raises(EincError, match="refusing to write the model: .*non-finite"):
        model.save(path)
    assert path.read_bytes() == good


# ---------------------------------------------------------------------------------------------
# Near the limit: workers, caches, compressed entries


def test_workers_are_bounded_by_cores_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "usable_cores", lambda: 2)
    with pytest.raises(ResourceError, match="--nproc 64: this machine has 2 usable cores"):
        launch.check_worker_count(64)
    monkeypatch.setattr(launch, "available_memory", lambda: 200 * 2**20)
    with pytest.raises(ResourceError, match="more than the 200.0 MiB this machine has available"):
        launch.check_worker_count(2, per_worker=10 * 2**20)
    monkeypatch.setattr(launch, "available_memory", lambda: None)
    launch.check_worker_count(2)


def test_nproc_64_is_refused_before_any_worker_starts(tmp_path: Path, binary_csv: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(launch, "usable_cores", lambda: 2)
    monkeypatch.setattr(launch, "launch_local", lambda *a: pytest.fail("workers were started"))
    code, _, err = run(["train", str(TINY), "--data", str(binary_csv), "--nproc", "64", "-o",
                        str(tmp_path / "m.npz")], capsys)
    assert_one_clear_error(code, err, "--nproc 64", "2 usable cores")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "lines"])
def test_a_damaged_stream_cache_entry_is_rebuilt_from_its_source(damage: str, tmp_path: Path, binary_csv: Path) -> None:
    cache = tmp_path / "cache"
    expected = open_rows(binary_csv, cache).window(0, 40).rows.copy()
    entry = next(cache.glob("*.npy"))
    if damage == "truncate":
        with open(entry, "r+b") as handle:
            handle.truncate(entry.stat().st_size - 9)
    elif damage == "garbage":
        entry.write_bytes(b"not a cache")
    else:
        next(cache.glob("*.lines")).write_bytes(b"x")
    rows = open_rows(binary_csv, cache)
    np.testing.assert_array_equal(rows.window(0, 40).rows, expected)


def test_a_cache_that_cannot_be_rebuilt_is_blamed_on_the_cache(tmp_path: Path, binary_csv: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from einc.train import rows as rows_module

    monkeypatch.setattr(rows_module, "_cache_problem", lambda target, lines: "the disk is full")
    with pytest.raises(DataError, match="its cache entry .* is unusable even after rebuilding it"):
        open_rows(binary_csv, tmp_path / "cache")


def _npz_with_declared_shape(path: Path, shape: tuple[int, ...], data: bytes = b"") -> None:
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    buffer = bytearray()
    np.lib.format.write_array_header_1_0(_Sink(buffer), header)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", bytes(buffer) + data)


class _Sink:
    def __init__(self, buffer: bytearray) -> None:
        self.buffer = buffer

    def write(self, data: bytes) -> None:
        self.buffer += data


def test_an_npz_member_declaring_more_than_it_holds_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    _npz_with_declared_shape(path, (10**12, 784))
    with pytest.raises(DataError, match=r"declares shape \(1000000000000, 784\)"):
        einc.io.data.read_data(path)


def test_an_npz_member_over_the_memory_limit_is_refused_before_it_is_decompressed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, x=np.zeros((2000, 100)))
    monkeypatch.setattr(data_module, "MAX_IN_MEMORY_BYTES", 2**20)
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, key: pytest.fail("decompressed"))
    with pytest.raises(DataError, match="more than the limit of .*--stream"):
        data_module.read_data(path)


def test_a_model_entry_declaring_a_huge_shape_is_refused_without_inflating_it(tmp_path: Path) -> None:
    einc.compile(TINY).save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as archive:
        name = next(k for k in archive.files if k.startswith("param/"))
        arrays = {k: archive[k] for k in archive.files if k != name}
    np.savez(tmp_path / "bad.npz", **arrays)
    header = bytearray()
    np.lib.format.write_array_header_1_0(_Sink(header), {"descr": "<f8", "fortran_order": False,
                                                          "shape": (10**6, 10**6)})
    with zipfile.ZipFile(tmp_path / "bad.npz", "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}.npy", bytes(header) + b"\0" * 64)
    with pytest.raises(ModelFileError, match="declares shape"):
        einc.load(tmp_path / "bad.npz")


def test_streaming_an_npz_member_declaring_more_than_it_holds_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    _npz_with_declared_shape(path, (10**9, 4))
    with pytest.raises(DataError, match=r"declares shape \(1000000000, 4\)"):
        open_rows(path, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npy"))
