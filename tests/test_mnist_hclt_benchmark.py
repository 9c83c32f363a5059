"""benchmarks/mnist_hclt.py in smoke mode (examples/data/mnist_small.npz, K=2, a few hundred rows):
the recipe's phases run in order, the best validation point is the one scored, the results name
the machine, command and times, and the last line is the issue's ``Test: X bits per dimension``."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import mnist_hclt  # noqa: E402

SMALL = ROOT / "examples" / "data" / "mnist_small.npz"


def test_annealing_runs_geometrically_from_the_first_to_the_final_step_size() -> None:
    args = mnist_hclt.parse_args(["--step-size", "0.8", "--final-step-size", "0.05"])
    assert mnist_hclt.annealed(args, 0.0) == pytest.approx(0.8)
    assert mnist_hclt.annealed(args, 1.0) == pytest.approx(0.05)
    assert mnist_hclt.annealed(args, 0.5) == pytest.approx(math.sqrt(0.8 * 0.05))
    assert mnist_hclt.annealed(args, 7.0) == pytest.approx(0.05)  # past the end: the final step size


def test_bad_recipes_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        mnist_hclt.parse_args(["--step-size", "0.1", "--final-step-size", "0.5"])
    assert "--final-step-size" in capsys.readouterr().err


def test_smoke_run_trains_keeps_the_best_point_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hclt"
    code = mnist_hclt.main([
        "--data", str(SMALL), "--sums", "2", "--epochs", "2", "--parts", "2", "--batch-size", "100",
        "--train-rows", "300", "--tree-rows", "300", "--valid-rows", "200", "--test-rows", "100",
        "--full-batch-steps", "1", "--clock", "cpu", "--out", str(out),
    ])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"Test: \d+\.\d{4} bits per dimension", lines[-1])
    payload = json.loads(out.with_suffix(".json").read_text())
    history, final, meta = payload["history"], payload["final"], payload["meta"]
    assert [h.get("full_batch_step") for h in history] == [None, None, 1]
    assert [len(h["step_sizes"]) for h in history[:2]] == [2, 2]
    steps = [s for h in history[:2] for s in h["step_sizes"]]
    assert steps == sorted(steps, reverse=True) and steps[0] <= 0.5  # annealed, never above the first
    assert final["valid"] == min(h["valid"] for h in history) and final["stopped_by"] == "epochs"
    assert f"{final['test']:.4f}" in lines[-1] and 0 < final["test"] < 8
    assert meta["command"].startswith("python benchmarks/mnist_hclt.py") and meta["machine"]
    assert meta["cpu_minutes"] > 0 and meta["wall_minutes"] > 0 and meta["tree"]["rows"] == 300
    assert meta["budget_clock"] == "cpu" and final["cpu_minutes"] > 0
    assert out.with_suffix(".pc").read_text().startswith("# A hidden Chow-Liu tree")
