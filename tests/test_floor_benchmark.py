"""benchmarks/floor.py: its record (FLOP floor, ratios) and the --memory measurement, on a tiny
circuit in seconds. Speeds are never asserted; what is checked is that the numbers are the ones
the script says it reports."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import floor  # noqa: E402  benchmarks/floor.py


def test_floor_record_and_peak_memory(tmp_path: Path) -> None:
    import einc

    out = tmp_path / "floor.json"
    args = floor.parse_args([str(ROOT / "examples" / "nltcs_hclt.pc"), "--data",
                             str(ROOT / "examples" / "data" / "nltcs" / "train.csv.gz"), "--rows", "256",
                             "--batch-size", "64", "--epochs", "1", "--inference-repeats", "2", "--memory",
                             "--out", str(out)])
    record = floor.measure(args)
    model = einc.compile(str(ROOT / "examples" / "nltcs_hclt.pc"))
    flops = sum(2 * model.plan.op_cost(op)[0] for op in model.plan.ops)
    assert record["forward_mflop_per_batch"] == pytest.approx(flops * 64 / 1e6)
    assert record["epoch_floor_s"] == pytest.approx(3 * flops * 256 / (record["sgemm_gflops"] * 1e9))
    assert record["epoch_ratio"] == pytest.approx(record["epoch_s"] / record["epoch_floor_s"])
    memory = record["memory"]
    if not Path("/proc/self/clear_refs").exists():
        assert memory == {"measured": False, "why": "needs Linux /proc/self/status and clear_refs"}
        return
    assert memory["measured"]
    parameters = sum(int(np.prod(spec.shape)) for spec in model.plan.params) * 4 / 2**20
    values = sum(op.rows * op.vector_size for op in model.plan.ops) * 64 * 4 / 2**20
    assert memory["parameters_mb"] == pytest.approx(parameters)
    assert memory["batch_values_mb"] == pytest.approx(values)
    assert memory["budget_mb"] == pytest.approx(2 * (2 * parameters + values))
    # the epoch's peak is at least what was resident after it started, and it holds the parameters
    assert memory["epoch_extra_mb"] >= 0
    assert memory["epoch_working_mb"] == pytest.approx(memory["epoch_extra_mb"] + parameters)
