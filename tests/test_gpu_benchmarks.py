"""The GPU benchmarks' plumbing on the CPU (issue 23): MNIST lookup, the CUDA refusal, the PyJuice
harness's tree reading, and benchmarks/hclt_gpu.py end to end on a tiny synthetic MNIST."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "peers_gpu"))
import pyjuice_hclt  # noqa: E402  benchmarks/peers_gpu/pyjuice_hclt.py (imports pyjuice only when building)
import records  # noqa: E402  benchmarks/records.py

HCLT = ROOT / "benchmarks" / "peers_gpu" / "hclt_mnist.pc"


def _fake_mnist(path: Path, rows: int = 512) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (rows, 28, 28), dtype=np.uint8),
             x_test=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8))
    return path


def test_mnist_is_found_where_einc_keeps_it_or_named_and_refused_clearly(tmp_path, monkeypatch) -> None:
    """The benchmarks look where `einc data fetch mnist` writes: $EINC_DATA when set, else
    ~/.cache/einc/data; then the project's sibling shared/data (a developer's convenience)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EINC_DATA", raising=False)
    cache = tmp_path / "home" / ".cache" / "einc" / "data"
    cache.mkdir(parents=True)
    shared = ROOT.parent / "shared" / "data" / "mnist.npz"
    if shared.exists():
        assert records.mnist_path(None) == shared  # the project's sibling data folder, last resort
    _fake_mnist(cache / "mnist.npz", 4)
    assert records.mnist_path(None) == cache / "mnist.npz"
    monkeypatch.setenv("EINC_DATA", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    _fake_mnist(tmp_path / "data" / "mnist.npz", 4)
    assert records.mnist_path(None) == tmp_path / "data" / "mnist.npz"  # $EINC_DATA is the cache
    with pytest.raises(SystemExit, match=r"/no/such.npz: no such file or folder; .*einc data fetch mnist"):
        records.mnist_path("/no/such.npz")  # a named path is never replaced by another


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_runs_are_refused_clearly_without_a_gpu() -> None:
    with pytest.raises(SystemExit, match="mnist_hclt.py --device cuda needs a CUDA device"):
        records.require_device("cuda", "mnist_hclt.py")
    records.require_device("cpu", "mnist_hclt.py")


def test_the_pyjuice_harness_reads_the_tree_einc_compiles() -> None:
    """The parents the harness gives PyJuice are einc's tree: the HCLT parameter count PyJuice's
    builder makes of them (K categorical(256) leaves per pixel, K×K sums at every inner node but
    the root's K) equals einc's count of the same file."""
    import einc
    from einc.compiler.pipeline import CompileOptions

    parents = pyjuice_hclt.read_parents(HCLT)
    assert len(parents) == 784 and (parents == -1).sum() == 1
    inner = len(np.unique(parents[parents >= 0]))
    for k in (3, 16):
        expected = 784 * k * 256 + (inner - 1) * k * k + k
        assert einc.compile(HCLT, options=CompileOptions(sums=k, inputs=k)).num_parameters == expected


def test_the_harness_refuses_a_file_without_a_tree(tmp_path) -> None:
    with pytest.raises(ValueError, match="no `structure tree"):
        pyjuice_hclt.read_parents(ROOT / "examples" / "tiny.pc")


def test_hclt_gpu_runs_einc_side_on_the_cpu(tmp_path, capsys) -> None:
    import hclt_gpu  # benchmarks/hclt_gpu.py

    out = tmp_path / "r.jsonl"
    hclt_gpu.main(["--device", "cpu", "--data", str(_fake_mnist(tmp_path / "m.npz")), "--rows", "600", "--K", "2",
                   "--batch", "256", "--rounds", "2", "--peer", "none", "--out", str(out)])
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["setup"] == "hclt_mnist" and record["K"] == 2 and record["rows"] == 512  # full batches only
    assert len(record["epoch_s_rounds"]) == 2 and record["epoch_s"] > 0 and np.isfinite(record["train_ll"])
    assert record["precision"] == "fp32" and record["peer_error"] == "not run (--peer none)"
    assert "peer_epoch_s" not in record


def test_the_summary_joins_einc_and_pyjuice_rows() -> None:
    import gpu_summary  # benchmarks/gpu_summary.py

    records = [
        {"setup": "rat", "backend": "torch", "variant": "graph", "device": "cuda", "gpu": "G", "K": 10,
         "precision": "fp32", "epoch_s": 0.005, "peak_mb": 240},
        {"setup": "rat", "backend": "torch", "variant": "graph", "device": "cuda", "gpu": "G", "K": 40,
         "precision": "tf32", "epoch_s": 0.009},  # TF32 rows are not the fp32 comparison
        {"setup": "rat", "backend": "cupy", "variant": "cupy", "device": "cuda", "gpu": "G", "K": 10,
         "precision": "fp32", "epoch_s": 0.1},
        {"bench": "pyjuice", "ok": True, "config": {"K": 10}, "em_epoch_s_median": 0.036,
         "peak_mem_train_bytes": 75 * 2**20},
        {"benchmark": "hclt_gpu", "setup": "hclt_mnist", "backend": "torch", "device": "cuda", "gpu": "G", "K": 16,
         "fuse": False, "precision": "fp32", "epoch_s": 0.8, "peer": "pyjuice", "peer_epoch_s": 0.7},
    ]
    rows = gpu_summary.summary_rows(records)
    assert [(r["setup"], r["K"]) for r in rows] == [("rat", 10), ("hclt_mnist", 16)]
    assert rows[0]["peer_epoch_s"] == 0.036 and rows[0]["peer_peak_mb"] == 75.0
    assert rows[1]["peer_epoch_s"] == 0.7 and rows[1]["fuse"] is False
    assert "7.20" in gpu_summary.table(rows)  # PyJuice / einc at K=10
