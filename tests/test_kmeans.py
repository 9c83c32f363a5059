"""k-means (``einc.mixture.kmeans``, scikit-learn's KMeans / MiniBatchKMeans behind einc's contract):
well-separated blobs recovered exactly by both, iterations started at given centres (one Lloyd
step from them computed by hand; a fixed point stays put), the same clusters for the same seed,
mini-batches above the documented work, and clear errors for impossible requests."""

from __future__ import annotations

import doctest
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import einc.mixture
from einc.errors import EincError
from einc.mixture import kmeans, nearest_centre

ROOT = Path(__file__).resolve().parent.parent

MEANS = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0], [10.0, 10.0, 10.0]])
SIZES = (40, 25, 60, 10, 30)  # unequal on purpose: k-means++ must still find the small one


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(MEANS)), SIZES)
    return MEANS[labels] + 0.3 * rng.standard_normal((len(labels), 3)), labels


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to a relabelling: each label of one maps to exactly one of the other."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("minibatch", [False, True])
def test_well_separated_blobs_are_recovered_exactly(minibatch: bool) -> None:
    x, truth = _blobs()
    for seed in range(3):
        assignment, centres = kmeans(x, len(MEANS), seed=seed, minibatch=minibatch)
        assert assignment.dtype == np.int64 and assignment.shape == (len(x),) and centres.shape == MEANS.shape
        assert _same_partition(assignment, truth)
        # each centre is its members' mean, and every row's nearest centre is its own
        for c in range(len(MEANS)):
            np.testing.assert_allclose(centres[c], x[assignment == c].mean(0), atol=1e-9 if not minibatch else 0.05)
        np.testing.assert_array_equal(nearest_centre(x, centres), assignment)


def test_given_centres_start_the_iterations() -> None:
    x, truth = _blobs()
    # one Lloyd step from deliberately poor centres, by hand: rows to the nearest start, then means
    start = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.1], [5.0, 5.0, 0.0], [0.0, 0.0, 10.0], [10.0, 10.0, 10.0]])
    first = nearest_centre(x, start)
    expected = np.stack([x[first == c].mean(0) for c in range(len(start))])
    _, centres = kmeans(x, len(start), init=start, iterations=1)
    np.testing.assert_allclose(centres, expected, atol=1e-12)
    # the blob means are a fixed point: started there, nothing moves and cluster c is blob c
    means = np.stack([x[truth == c].mean(0) for c in range(len(MEANS))])
    assignment, centres = kmeans(x, len(MEANS), init=means)
    np.testing.assert_array_equal(assignment, truth)
    np.testing.assert_allclose(centres, means, atol=1e-12)
    # scale-free: huge data started at huge centres give the same clusters
    assignment, centres = kmeans(x * 1e300, len(MEANS), init=means * 1e300)
    np.testing.assert_array_equal(assignment, truth)
    assert np.isfinite(centres).all()


@pytest.mark.parametrize("minibatch", [False, True])
def test_the_same_seed_gives_the_same_clusters(minibatch: bool) -> None:
    x = np.random.default_rng(1).random((400, 4))  # no clear clusters: the seed decides
    runs = [kmeans(x, 6, seed=seed, minibatch=minibatch) for seed in (3, 3, 4)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][1], runs[2][1])  # another seed, another start


def test_mini_batches_above_the_documented_work(monkeypatch) -> None:
    x, _ = _blobs()  # 165 rows × 5 clusters × 3 features
    monkeypatch.setattr(einc.mixture, "MINIBATCH_WORK", x.size * 5 - 1)
    automatic = kmeans(x, 5, seed=2)
    for got, want in zip(automatic, kmeans(x, 5, seed=2, minibatch=True)):
        np.testing.assert_array_equal(got, want)
    monkeypatch.setattr(einc.mixture, "MINIBATCH_WORK", x.size * 5)
    for got, want in zip(kmeans(x, 5, seed=2), kmeans(x, 5, seed=2, minibatch=False)):
        np.testing.assert_array_equal(got, want)


def test_fewer_distinct_rows_than_clusters_is_quiet_and_valid() -> None:
    x = np.repeat([[0.0, 1.0], [3.0, 3.0]], 5, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's ConvergenceWarning is no news to the user
        assignment, centres = kmeans(x, 3, seed=0)
    assert set(assignment[:5].tolist()) != set(assignment[5:].tolist())
    np.testing.assert_array_equal(centres[assignment], x)


def test_impossible_requests_are_clear_errors() -> None:
    x, _ = _blobs()
    with pytest.raises(EincError, match="k-means: 4 clusters for 3 samples"):
        kmeans(x[:3], 4)
    with pytest.raises(EincError, match="k-means: 0 clusters"):
        kmeans(x, 0)
    with pytest.raises(EincError, match=r"initial centres of shape \(2, 3\); expected \(5, 3\)"):
        kmeans(x, 5, init=MEANS[:2])
    with pytest.raises(EincError, match=r"data of shape \(165,\)"):
        kmeans(x[:, 0], 2)


def test_docstring_example_runs() -> None:
    result = doctest.testmod(einc.mixture)
    assert result.attempted > 0 and result.failed == 0


def test_the_benchmark_runs_and_matches_the_former_kmeans_from_the_same_start(tmp_path) -> None:
    """benchmarks/kmeans.py in seconds on the shipped MNIST subset: every problem and method is
    reported, and step 4's split (both run Lloyd's iterations from the same given centres to
    convergence) reaches the former hand-written k-means's objective."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kmeans as benchmark  # benchmarks/kmeans.py

    out = tmp_path / "kmeans"
    argv = ["--data", str(ROOT / "examples" / "data" / "mnist_small.npz"), "--train-rows", "300",
            "--teacher-epochs", "1", "--skip-scale", "--out", str(out)]
    assert benchmark.main(argv) == 0
    runs = json.loads(Path(f"{out}.json").read_text())["runs"]
    problems = {"lvd", "split", *(f"outer patch {j}" for j in range(4))}
    assert {(r["problem"], r["method"]) for r in runs} == {(p, m) for p in problems for m in benchmark.METHODS}
    assert all(np.isfinite(r["inertia"]) and r["inertia"] > 0 for r in runs)
    split = {r["method"]: r["inertia"] for r in runs if r["problem"] == "split" and r["seed"] == 0}
    assert split["KMeans"] == pytest.approx(split["former"], rel=1e-9)
    assert "| split | 300 | 4 | KMeans |" in Path(f"{out}.md").read_text()
