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
    # a grid of STEP_LEVELS values (one captured CUDA graph each), falling with progress
    values = [mnist_hclt.annealed(args, i / 997) for i in range(998)]
    assert len(set(values)) == mnist_hclt.STEP_LEVELS and values == sorted(values, reverse=True)


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


def test_prototype_leaves_are_distributions_around_distinct_training_images() -> None:
    import einc
    import numpy as np

    source = "\n".join([
        "circuit tiny", "var px[5] : categorical(256)", "leaf px ~ categorical", "product hadamard",
        "sums 3", "inputs 3", "structure tree(parents = [-1, 0, 0, 1, 1])", "",
    ])
    model = einc.compile(source, backend="torch", dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 5)).astype(np.uint8)
    params = mnist_hclt.prototype_leaves(model, pixels, np.random.default_rng(1), mix=1.0, width=0.01)
    name = next(spec.name for spec in model.backend.plan.params if spec.kind == "leaf")
    leaf = params[name].numpy()[:, 0]  # (L, K, 256): with mix 1 and a tiny width, one-hot at the prototype
    assert np.allclose(leaf.sum(2), 1.0) and np.allclose(leaf.max(2), 1.0)
    block = next(b for op in model.backend.plan.ops for b in getattr(op, "blocks", ()))
    columns = [c[0] for c in block.columns]
    prototypes = leaf.argmax(2).T  # (K, L): prototype k's value at leaf l's pixel
    rows = {tuple(row) for row in pixels[:, columns].tolist()}
    assert all(tuple(p) in rows for p in prototypes.tolist()) and len({tuple(p) for p in prototypes.tolist()}) == 3
    mixed = mnist_hclt.prototype_leaves(model, pixels, np.random.default_rng(1))[name].numpy()[:, 0]
    assert np.allclose(mixed.sum(2), 1.0) and (mixed > 0).all()  # the histogram part: every level possible


SMOKE = ["--data", str(SMALL), "--sums", "2", "--epochs", "3", "--parts", "2", "--batch-size", "100",
         "--train-rows", "300", "--tree-rows", "300", "--valid-rows", "200", "--test-rows", "100",
         "--full-batch-steps", "2", "--clock", "cpu", "--budget-minutes", "60"]


@pytest.mark.parametrize("interrupt_at", ["epoch 2", "full-batch step 2"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_results(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 interrupt_at: str) -> None:
    """A run stopped mid-epoch (or mid full-batch step) keeps the checkpoint of its last finished
    record; --resume continues it to the same history and test score as a run never stopped
    (with a budget this long the step sizes are the first one, so no timing enters)."""
    whole = tmp_path / "whole"
    assert mnist_hclt.main(SMOKE + ["--out", str(whole)]) == 0
    expected = json.loads(whole.with_suffix(".json").read_text())
    assert not mnist_hclt.checkpoint_path(whole).exists()  # removed once the results are written

    out = tmp_path / "cut"
    calls = {"train": 0, "full": 0}
    train_epoch = mnist_hclt.einc.backends.torch_backend.TorchBackend.train_epoch
    full_batch_step = mnist_hclt.full_batch_step

    def cut_train(self, *args, **kwargs):
        calls["train"] += 1
        if interrupt_at == "epoch 2" and calls["train"] == 4:  # the second piece of epoch 2
            raise KeyboardInterrupt
        return train_epoch(self, *args, **kwargs)

    def cut_full(*args, **kwargs):
        calls["full"] += 1
        if interrupt_at == "full-batch step 2" and calls["full"] == 2:
            raise KeyboardInterrupt
        return full_batch_step(*args, **kwargs)

    monkeypatch.setattr(mnist_hclt.einc.backends.torch_backend.TorchBackend, "train_epoch", cut_train)
    monkeypatch.setattr(mnist_hclt, "full_batch_step", cut_full)
    assert mnist_hclt.main(SMOKE + ["--out", str(out)]) == 130
    assert "--resume --out" in capsys.readouterr().err
    stopped = json.loads(out.with_suffix(".json").read_text())
    assert stopped["final"] is None and len(stopped["history"]) == (1 if interrupt_at == "epoch 2" else 4)
    monkeypatch.setattr(mnist_hclt, "EARLIER", {"wall_minutes": 0.0, "cpu_minutes": 0.0})
    monkeypatch.setattr(mnist_hclt.einc.backends.torch_backend.TorchBackend, "train_epoch", train_epoch)
    monkeypatch.setattr(mnist_hclt, "full_batch_step", full_batch_step)
    assert mnist_hclt.main(["--resume", "--out", str(out)]) == 0
    resumed = json.loads(out.with_suffix(".json").read_text())
    keys = ("epoch", "step_sizes", "full_batch_step")
    assert [[h.get(k) for k in keys] for h in resumed["history"]] == [[h.get(k) for k in keys]
                                                                       for h in expected["history"]]
    for name in ("train", "valid"):
        assert [h[name] for h in resumed["history"]] == pytest.approx([h[name] for h in expected["history"]],
                                                                      rel=1e-9)
    assert resumed["final"]["test"] == pytest.approx(expected["final"]["test"], rel=1e-9)
    assert resumed["meta"]["command"] == expected["meta"]["command"].replace(str(whole), str(out))
    assert not mnist_hclt.checkpoint_path(out).exists()


def test_resume_without_a_checkpoint_or_with_other_options_says_so(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no checkpoint"):
        mnist_hclt.main(["--resume", "--out", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="its own options: leave out --sums, --smooth-leaves"):
        mnist_hclt.main(["--resume", "--out", str(tmp_path / "none"), "--sums", "8", "--smooth-leaves"])


def test_blurred_interior_keeps_the_ends_and_the_mass() -> None:
    import torch

    rng = torch.Generator().manual_seed(0)
    leaf = torch.rand(3, 1, 4, 256, generator=rng, dtype=torch.float64) ** 8  # ragged distributions
    leaf /= leaf.sum(-1, keepdim=True)
    smoothed = mnist_hclt.blurred_interior(leaf, 1.5, 0.5)
    assert torch.allclose(smoothed.sum(-1), torch.ones(3, 1, 4, dtype=torch.float64))
    assert torch.equal(smoothed[..., [0, 255]], leaf[..., [0, 255]])  # background and stroke untouched
    assert torch.allclose(smoothed[..., 1:255].sum(-1), leaf[..., 1:255].sum(-1))
    assert (smoothed > 0).all() and torch.allclose(mnist_hclt.blurred_interior(leaf, 1.0, 0.0), leaf)
    # smoother: the interior's total variation falls
    variation = lambda p: (p[..., 2:255] - p[..., 1:254]).abs().sum()  # noqa: E731
    assert variation(smoothed) < 0.7 * variation(leaf)
    # a point mass at level 100 spreads to its neighbours by the Gaussian's weights
    spike = torch.zeros(256, dtype=torch.float64)
    spike[100] = 1.0
    spread = mnist_hclt.blurred_interior(spike, 1.0, 1.0)
    assert spread[100] > spread[101] > spread[102] > 0 and spread[99] == pytest.approx(spread[101])


def test_leaf_smoothing_is_chosen_on_validation_and_reported(tmp_path: Path) -> None:
    out = tmp_path / "hclt"
    assert mnist_hclt.main(SMOKE + ["--epochs", "1", "--full-batch-steps", "0", "--smooth-leaves", "--out", str(out),
                                    "--save", str(tmp_path / "m.npz")]) == 0
    final = json.loads(out.with_suffix(".json").read_text())["final"]
    scores = final["smoothing"]["valid_by_choice"]
    assert len(scores) == 1 + len(mnist_hclt.SMOOTHING_GRID) and "none" in scores
    assert final["smoothing"]["valid"] == min(scores.values()) == scores[final["smoothing"]["chosen"]]
    assert final["smoothing"]["valid"] <= final["valid"] == scores["none"]
    assert "leaf smoothing chosen on valid" in out.with_suffix(".md").read_text()
    import einc

    import numpy as np

    # the smoothed parameters are the ones saved (and tested): they score the chosen valid bpd
    saved = einc.load(tmp_path / "m.npz")
    with np.load(SMALL) as archive:
        valid = archive["x_train"].reshape(-1, 784)[-200:].astype(np.float64)
    bpd = -float(np.mean(saved.log_likelihood(valid))) / (784 * math.log(2))
    assert bpd == pytest.approx(final["smoothing"]["valid"], rel=1e-5)
