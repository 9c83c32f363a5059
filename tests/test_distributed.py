"""Data-parallel and out-of-core training (issue 13).

Oracle: one process running ``Model.fit`` on the same rows, with the same global batch order
(``Schedule.global_order``), in float64. Equal within 1e-10 for full-batch EM, online EM and Adam,
for 2 gloo workers (under torchrun and via ``einc train --nproc 2``) and for one process reading
memory-mapped, cached or in-memory data. A killed worker ends the run with an error and no model.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import einc
from einc.train import distributed
from einc.cli import build_parser, command_line, main
from einc.train.schedule import Schedule, aligned_shard_sizes, default_block_rows

import distributed_worker as worker
from distributed_worker import CASES, CIRCUIT, WORKERS, make_rows

TOLERANCE = 1e-10
HERE = Path(__file__).parent


def _max_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def _reference(case: dict, directory: Path, world_size: int) -> tuple[dict[str, np.ndarray], list]:
    """One process, ``Model.fit``, the batches the workers ran (full-batch EM: any order)."""
    model = einc.compile(CIRCUIT, dtype="float64", seed=0)
    if "{rank}" in case["data"]:
        parts = [np.load(directory / case["data"].replace("{rank}", str(r))) for r in range(world_size)]
        train, sizes = np.concatenate(parts), tuple(len(part) for part in parts)
    else:
        train = np.load(directory / case["data"])
        sizes = tuple(aligned_shard_sizes(len(train), world_size, case["batch_size"]))
    labels = None
    if "labels" in case:
        labels = np.concatenate([np.load(directory / case["labels"].replace("{rank}", str(r)))
                                 for r in range(world_size if "{rank}" in case["labels"] else 1)])
    schedule = Schedule(sizes, case["batch_size"], 0, case.get("block_rows") or default_block_rows(train.shape[1]))
    options = {k: v for k, v in worker.fit_options(case, directory).items()
               if k not in ("block_rows", "labels", "valid")}
    valid = np.load(directory / case["valid"]) if "valid" in case else None
    order = None if case.get("update") == "epoch" else schedule.global_order
    history = model.fit(train, valid=valid, labels=labels, batch_order=order, **options)
    return model.parameters(), [np.nan if r.valid_ll is None else r.valid_ll for r in history]


def _run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


# ---------------------------------------------------------------------------------------------
# one process, out of core


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    worker.write_data(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", ["full_batch", "online", "adam", "files_labels"])
def test_one_process_reading_from_disk_equals_model_fit(data_dir, name):
    """The streaming trainer on one process (several blocks, memory-mapped files) is Model.fit."""
    case = dict(CASES[name])
    if "{rank}" in case["data"]:  # one process: one file holding every worker's rows
        np.save(data_dir / "all.npy", np.concatenate([np.load(data_dir / f"part{r}.npy") for r in range(WORKERS)]))
        case.update(data="all.npy", labels="labels.npy", block_rows=90)
    expected, expected_valid = _reference(case, data_dir, 1)
    model = einc.compile(CIRCUIT, dtype="float64", seed=0)
    history = distributed.fit(model, str(data_dir / case["data"]), **worker.fit_options(case, data_dir))
    assert _max_difference(model.parameters(), expected) < TOLERANCE
    np.testing.assert_allclose([np.nan if r.valid_ll is None else r.valid_ll for r in history],
                               expected_valid, atol=TOLERANCE)


def test_memory_mapped_equals_in_memory(tmp_path):
    """Binary rows stored as uint8 .npy (read through windows of a few blocks) train exactly as the
    same rows held in memory as float64."""
    x = (np.random.default_rng(0).random((700, 16)) < 0.3).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    results = []
    for train in (str(tmp_path / "x.npy"), x.astype(np.float64)):
        model = einc.compile(_binary_circuit(16), dtype="float64")
        distributed.fit(model, train, epochs=2, batch_size=64, step_size=0.2, block_rows=100)
        results.append(model.parameters())
    assert _max_difference(*results) == 0.0


def _binary_circuit(variables: int) -> str:
    return (f"var x[{variables}] : binary\nleaf x ~ bernoulli\nsums 4\ninputs 4\n"
            f"structure random_binary_trees(depth = 2, replicas = 3, seed = 1)\n")


def test_compressed_csv_is_streamed_into_a_cache_and_trains_like_the_array(tmp_path, monkeypatch):
    import einc.train.rows

    monkeypatch.setattr(einc.train.rows, "CSV_CHUNK_LINES", 64)  # several chunks
    x = make_rows(300, 5)
    with gzip.open(tmp_path / "x.csv.gz", "wt") as handle:
        for row in x:
            handle.write(",".join("?" if np.isnan(v) else repr(float(v)) for v in row) + "\n")
    results = []
    for train in (str(tmp_path / "x.csv.gz"), x):
        model = einc.compile(CIRCUIT, dtype="float64", seed=0)
        distributed.fit(model, train, epochs=2, batch_size=40, step_size=0.3, block_rows=50,
                        cache_dir=tmp_path / "cache")
        results.append(model.parameters())
    assert _max_difference(*results) == 0.0
    assert len(list((tmp_path / "cache").glob("x-*.npy"))) == 1


def test_cli_stream_trains_from_a_csv_cache_like_model_fit(tmp_path):
    x = make_rows(200, 6)
    np.savetxt(tmp_path / "x.csv", x, delimiter=",")
    (tmp_path / "mixed.pc").write_text(CIRCUIT)
    code = main(["train", str(tmp_path / "mixed.pc"), "--data", str(tmp_path / "x.csv"), "--stream",
                 "--cache-dir", str(tmp_path / "cache"), "--dtype", "float64", "--update", "epoch",
                 "--step-size", "1", "--epochs", "2", "--batch-size", "64", "-o", str(tmp_path / "m.npz")])
    assert code == 0
    reference = einc.compile(CIRCUIT, dtype="float64", seed=0)
    reference.fit(x, update="epoch", step_size=1.0, epochs=2, batch_size=64)
    assert _max_difference(einc.load(tmp_path / "m.npz", dtype="float64").parameters(), reference.parameters()) < TOLERANCE


def test_bad_row_is_reported_with_its_file_row_before_training(tmp_path, capsys):
    x = (np.random.default_rng(0).random((500, 16)) < 0.5).astype(np.float64)
    x[321, 4] = 3
    np.save(tmp_path / "x.npy", x)
    model = einc.compile(_binary_circuit(16))
    with pytest.raises(einc.DataError, match=r"x\.npy:322:5 \(variable x\[4\]\)"):
        distributed.fit(model, str(tmp_path / "x.npy"), epochs=1)


def test_command_line_round_trips_through_the_parser():
    argv = ["--debug", "train", "c.pc", "--data", "t{rank}.npy", "--epochs", "3", "--step-size", "0.25",
            "--stream", "--nproc", "2", "-o", "m.npz"]
    args = build_parser().parse_args(argv)
    assert vars(build_parser().parse_args(command_line(args))) == vars(args)


# ---------------------------------------------------------------------------------------------
# two processes (gloo)


@pytest.fixture(scope="module")
def torchrun_results(tmp_path_factory) -> Path:
    """Every case of distributed_worker.py, once, on 2 workers started by torchrun."""
    directory = tmp_path_factory.mktemp("torchrun")
    worker.write_data(directory)
    result = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORKERS),
                   str(HERE / "distributed_worker.py"), str(directory)])
    assert result.returncode == 0, result.stderr[-3000:]
    return directory


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_workers_equal_one_process(torchrun_results, name):
    """2 workers: full-batch EM equals one process; online EM and Adam with the same global batch
    order equal one process; per-worker files with labels; every rank ends with the same model."""
    ranks = [np.load(torchrun_results / f"{name}-rank{r}.npz") for r in range(WORKERS)]
    params = [{k[len("param/"):]: archive[k] for k in archive.files if k.startswith("param/")} for archive in ranks]
    assert _max_difference(params[0], params[1]) == 0.0
    expected, expected_valid = _reference(CASES[name], torchrun_results, WORKERS)
    assert _max_difference(params[0], expected) < TOLERANCE
    np.testing.assert_allclose(ranks[0]["valid_ll"], expected_valid, atol=TOLERANCE)


@pytest.mark.parametrize("launcher", ["--nproc", "torchrun"])
def test_cli_full_batch_on_two_workers_equals_one_process(tmp_path, launcher):
    """`einc train … --nproc 2`, and the same command under torchrun without --nproc."""
    x = make_rows(300, 7)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "mixed.pc").write_text(CIRCUIT)
    train = ["train", str(tmp_path / "mixed.pc"), "--data", str(tmp_path / "x.npy"), "--dtype", "float64",
             "--update", "epoch", "--step-size", "1", "--epochs", "3", "--batch-size", "64", "-o", str(tmp_path / "m.npz")]
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "einc", *train]
    else:
        command = [sys.executable, "-m", "einc", *train, "--nproc", "2"]
    result = _run(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch ") == 3, result.stdout  # progress from rank 0 only
    reference = einc.compile(CIRCUIT, dtype="float64", seed=0)
    reference.fit(x, update="epoch", step_size=1.0, epochs=3, batch_size=64)
    trained = einc.load(tmp_path / "m.npz", dtype="float64")
    assert _max_difference(trained.parameters(), reference.parameters()) < TOLERANCE


def test_bad_row_in_one_shard_stops_all_workers_with_one_message(tmp_path):
    x = (np.random.default_rng(0).random((400, 16)) < 0.5).astype(np.float64)
    x[350, 2] = 7  # in the second worker's half
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "c.pc").write_text(_binary_circuit(16))
    result = _run([sys.executable, "-m", "einc", "train", str(tmp_path / "c.pc"), "--data", str(tmp_path / "x.npy"),
                   "--nproc", "2", "-o", str(tmp_path / "m.npz")])
    assert result.returncode == 1
    assert result.stderr.count("x.npy:351:3 (variable x[2])") == 1, result.stderr
    assert "worker 1:" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m.npz").exists()


def _worker_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker of ``rank`` among the launcher's children (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != launcher:
                continue
            items = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError, IndexError):
            continue
        environment = dict(item.split("=", 1) for item in items if "=" in item)
        if environment.get("RANK") == str(rank):
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker through /proc (Linux)")
def test_killed_worker_ends_the_run_with_an_error_and_no_model(tmp_path):
    x = (np.random.default_rng(0).random((2000, 16)) < 0.5).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "c.pc").write_text(_binary_circuit(16))
    launcher = subprocess.Popen([sys.executable, "-m", "einc", "train", str(tmp_path / "c.pc"), "--data",
                                 str(tmp_path / "x.npy"), "--nproc", "2", "--epochs", "100000", "-o",
                                 str(tmp_path / "m.npz")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        for line in launcher.stdout:  # training has started once rank 0 reports an epoch
            if line.startswith("epoch"):
                break
        pid = _worker_pid(launcher.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1
    assert "worker 1 of 2 was killed by SIGKILL" in stderr and "m.npz was not written" in stderr, stderr
    assert "Traceback" not in stderr
    assert time.monotonic() - started < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pc", "x.npy"]  # no model, no temporary file
