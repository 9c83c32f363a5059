"""benchmarks/lvd_pg_mnist.py in seconds, on the MNIST subset shipped in examples/data: the three
arms run at equal parameter counts, the results JSON has exactly the issue's shape, the report
has the paper's triple for the LVD arms, and a stopped run resumes — only the missing (size,
seed, arm) runs again, with the same numbers as an uninterrupted run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import einc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import lvd_mnist  # noqa: E402
import lvd_pg_mnist  # noqa: E402

SMALL = ["--data", str(ROOT / "examples" / "data" / "mnist_small.npz"), "--train-rows", "120", "--valid-rows", "40",
         "--test-rows", "40", "--sizes", "2", "--seeds", "0", "--grow", "1x2", "--round-epochs", "1",
         "--max-epochs", "3", "--teacher-epochs", "1"]


def test_the_experiment_runs_resumes_and_writes_the_issue_json(tmp_path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out" / "lvd_pg_mnist"
    argv = [*SMALL, "--runs", str(runs), "--out", str(out)]
    assert lvd_pg_mnist.main(argv) == 0
    summary = json.loads(Path(f"{out}.json").read_text())
    assert set(summary) == {"arms"} and set(summary["arms"]) == {"em", "lvd", "lvd_pg"}
    for arm, entry in summary["arms"].items():
        assert set(entry) == {"model", "test_bpd", "std", "parameters"}
        assert Path(entry["model"]).exists() and 0 < entry["test_bpd"] < 1
        assert einc.load(entry["model"]).num_parameters == entry["parameters"]  # the compact file loads
    assert len({entry["parameters"] for entry in summary["arms"].values()}) == 1  # equal parameter counts
    first = {arm: json.loads((runs / f"K2_seed0_{arm}.json").read_text()) for arm in lvd_pg_mnist.ARMS}
    for arm in ("lvd", "lvd_pg"):  # the paper's triple, train and test
        assert all(np.isfinite(first[arm][f"{key}_{split}"]) for split in ("train", "test")
                   for key in ("teacher_elbo", "lvd_objective", "pc_after_pairs"))
        assert first[arm]["pc_after_pairs_train"] <= first[arm]["lvd_objective_train"] + 1e-9  # p(x) ≥ p(x, z)
    assert [r["states"] for r in first["lvd_pg"]["rounds"]][-1] == [2, 2, 2, 2]
    assert "| 2 | lvd_pg | 1 |" in Path(f"{out}.md").read_text()
    assert Path(f"{out}.png").stat().st_size > 0 and Path(f"{out}_curves.png").stat().st_size > 0

    kept = {arm: (runs / f"K2_seed0_{arm}.json").stat().st_mtime_ns for arm in ("lvd_pg", "lvd")}
    (runs / "K2_seed0_em.json").unlink()  # as if stopped before the em run finished
    assert lvd_pg_mnist.main(argv) == 0
    assert {arm: (runs / f"K2_seed0_{arm}.json").stat().st_mtime_ns for arm in ("lvd_pg", "lvd")} == kept
    again = json.loads((runs / "K2_seed0_em.json").read_text())
    assert again["test_bpd"] == first["em"]["test_bpd"] and again["curve"] == first["em"]["curve"]


def test_hclt_patches_are_an_option_and_a_runs_folder_holds_one_kind(tmp_path) -> None:
    parents = [-1, *range(48)]  # a chain over the 49 positions of a 7x7 patch
    model = einc.compile(lvd_pg_mnist.circuit_text(2, parents, "hadamard"))
    graph = model.graph
    inside = [p for p in graph.partitions if graph.product_of(p) == "hadamard"]
    assert len(inside) == 4 * 48 and graph.product_kinds == ("hadamard", "outer")  # an HCLT per patch, PD above
    assert lvd_pg_mnist.circuit_text(2, parents) == lvd_pg_mnist.circuit_text(2, parents, "outer")
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "meta.json").write_text(json.dumps({"patch_product": "outer"}))
    (runs / "K2_seed0_em.json").write_text(json.dumps({"size": 2, "seed": 0, "arm": "em"}))
    with pytest.raises(SystemExit, match="holds runs with --patch-product outer"):
        lvd_pg_mnist.main([*SMALL, "--runs", str(runs), "--out", str(tmp_path / "out"), "--patch-product", "hadamard"])


def test_too_few_epochs_for_the_growing_rounds_is_a_clear_error(tmp_path) -> None:
    """The growing rounds' epochs count toward --max-epochs; when they use them all, the run says
    so instead of failing later with nothing to keep."""
    argv = [*SMALL, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--arms", "lvd_pg"]
    argv[argv.index("--max-epochs") + 1] = "2"
    with pytest.raises(SystemExit, match="--max-epochs 2: lvd_pg K=2 seed 0 spent 2 epochs on .x, z. pairs"):
        lvd_pg_mnist.main(argv)


def test_the_issue_s_script_runs_the_experiment_as_an_arm_set(tmp_path, capsys) -> None:
    """``benchmarks/lvd_mnist.py --arm-set pg`` (the file the issue names) runs this experiment
    with its options and writes the same results; its --help lists the arm sets."""
    out = tmp_path / "out" / "lvd_pg_mnist"
    argv = [*SMALL, "--sizes", "2", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    assert lvd_mnist.main(["--arm-set", "pg", *argv]) == 0
    summary = json.loads(Path(f"{out}.json").read_text())
    assert set(summary["arms"]) == {"em", "lvd", "lvd_pg"}
    with pytest.raises(SystemExit) as stopped:
        lvd_mnist.main(["--help"])
    assert stopped.value.code == 0 and "pg: em, lvd, lvd_pg" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        lvd_mnist.main(["--arm-set", "nope"])
