"""k-means on LVD teacher embeddings (issue 21, item 4): scikit-learn's KMeans and MiniBatchKMeans
(``einc.mixture.kmeans``) beside einc's former hand-written k-means (k-means++ seeding and Lloyd
iterations in NumPy, as in einc/mixture.py before scikit-learn; kept here as the baseline only).

    python benchmarks/kmeans.py                 # the table in benchmarks/results/kmeans.md

Embeddings: the teacher of ``benchmarks/lvd_pg_mnist.py`` at its defaults (a VQ-VAE, D=16, trained
8 epochs on the first 4,000 binarised 14×14 training images, seed 0), one 16-vector per 7×7 patch,
4 patches per image. Problems, each over seeds 0–2:

- ``lvd``: one-shot LVD's shared codebook (``assign_latents``), the 4,000 images' 16,000 embeddings
  into 8 codes (N1·N2 of the benchmark's --grow 2x4);
- ``outer``: LVD-PG's step 0, each patch's 4,000 embeddings into N1 = 2 clusters (a row per patch);
- ``split``: LVD-PG's step 4, both outer clusters of patch 0 split in two, started at the given
  centres (the clusters' means and their farthest members), so both methods start alike;
- ``scale``: every training image embedded, 60,000 or 240,000 embeddings into 8 or 64 codes, where
  ``einc.mixture.MINIBATCH_WORK`` chooses between full batches and mini-batches.

Reported: the k-means objective (inertia: Σ squared distance of each embedding to its nearest
centre; lower is better) relative to the former k-means, and wall seconds, all on ``--threads``
threads (BLAS and OpenMP limited alike). Machine, date, load average and command in the output.

    python benchmarks/kmeans.py --lvd DIR       # end to end: results/kmeans_lvd.md (~15 min)

``--lvd DIR`` instead runs ``benchmarks/lvd_pg_mnist.py``'s ``lvd_pg`` and ``lvd`` arms in a small
setting (``LVD_ARGS``: 4,000 training images, K 4 and 8, seeds 0–2, 16 epochs) twice, with
scikit-learn's k-means and with the former one in its place, into ``DIR/scikit-learn`` and
``DIR/former`` (resumable like lvd_pg_mnist), and tabulates exact test bpd (all 10,000 images).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import records  # noqa: E402
from lvd_pg_mnist import binarised, features, train_teacher  # noqa: E402

from einc.io.files import atomic_write  # noqa: E402
from einc.mixture import kmeans, nearest_centre  # noqa: E402

SEEDS = (0, 1, 2)


def former_kmeans(x: np.ndarray, clusters: int, seed: int = 0, iterations: int = 50,
                  init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """einc's k-means before scikit-learn: k-means++ seeding (or ``init``), then Lloyd's
    iterations until no row moves (an empty cluster keeps its centre)."""
    rng = np.random.default_rng(seed)
    squared = (x**2).sum(1)
    if init is None:
        chosen = [x[rng.integers(len(x))]]
        closest = squared - 2 * x @ chosen[0] + chosen[0] @ chosen[0]
        for _ in range(1, clusters):
            weights = np.clip(closest, 0, None)
            pick = rng.choice(len(x), p=weights / weights.sum()) if weights.sum() > 0 else rng.integers(len(x))
            chosen.append(x[pick])
            closest = np.minimum(closest, squared - 2 * x @ x[pick] + x[pick] @ x[pick])
        centres = np.stack(chosen)
    else:
        centres = init.copy()
    assignment = np.full(len(x), -1)
    for _ in range(iterations):
        new = nearest_centre(x, centres, squared)
        if np.array_equal(new, assignment):
            break
        assignment = new
        for c in range(len(centres)):
            if (assignment == c).any():
                centres[c] = x[assignment == c].mean(0)
    return assignment, centres


def inertia(x: np.ndarray, centres: np.ndarray) -> float:
    """Σ over rows of the squared distance to the nearest centre."""
    nearest = centres[nearest_centre(x, centres)]
    return float(((x - nearest) ** 2).sum())


def split_start(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Step 4's start for splitting every cluster of ``z``: the means, then each one's farthest member."""
    means = np.stack([x[z == c].mean(0) for c in np.unique(z)])
    far = [x[z == c][((x[z == c] - means[m]) ** 2).sum(1).argmax()] for m, c in enumerate(np.unique(z))]
    return np.concatenate([means, np.stack(far)])


def timed(method, x: np.ndarray, clusters: int, seed: int, init: np.ndarray | None = None) -> tuple[float, float]:
    started = time.perf_counter()
    _, centres = method(x, clusters, seed=seed, init=init)
    return inertia(x, centres), time.perf_counter() - started


METHODS = {
    "former": former_kmeans,
    "KMeans": lambda x, c, seed, init=None: kmeans(x, c, seed=seed, init=init, minibatch=False),
    "MiniBatchKMeans": lambda x, c, seed, init=None: kmeans(x, c, seed=seed, init=init, minibatch=True),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help=records.MNIST_HELP)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-rows", type=int, default=4000, help="the teacher's training images, and the small problems'")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kmeans")
    parser.add_argument("--skip-scale", action="store_true", help="only the three small problems (seconds)")
    parser.add_argument("--lvd", type=Path, metavar="DIR", help="instead: LVD and LVD-PG end to end with each k-means")
    args = parser.parse_args(argv)
    if args.lvd is not None:
        return lvd_check(args, argv)
    torch.set_num_threads(args.threads)  # einc.mixture.kmeans takes torch's thread count
    images, _ = records.mnist_images(args.data)
    started = time.perf_counter()
    teacher = train_teacher(binarised(images[: args.train_rows]), 16, 8, args.teacher_epochs, seed=0)
    teacher_seconds = time.perf_counter() - started
    h = features(teacher, binarised(images))  # (60000, 4, 16)
    small = h[: args.train_rows]
    problems = [("lvd", small.reshape(-1, 16), 8, None), *[(f"outer patch {j}", small[:, j], 2, None) for j in range(4)]]
    z0 = kmeans(small[:, 0], 2, seed=0)[0]
    problems.append(("split", small[:, 0], 4, split_start(small[:, 0], z0)))
    if not args.skip_scale:
        for rows in (60_000, 240_000):  # MNIST's 60,000 training images, 1 or 4 patches each
            for codes in (8, 64):
                problems.append((f"scale {rows:,} x {codes}", h.reshape(-1, 16)[:rows], codes, None))
    results = []
    with threadpool_limits(args.threads):
        for name, x, clusters, init in problems:
            for method, run in METHODS.items():
                for seed in SEEDS:
                    value, seconds = timed(run, np.ascontiguousarray(x), clusters, seed, init)
                    results.append({"problem": name, "rows": len(x), "clusters": clusters, "method": method,
                                    "seed": seed, "inertia": value, "seconds": seconds})
                    print(json.dumps(results[-1]), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": records.command_line("kmeans.py", argv),
            "machine": records.machine_text(), "load_average": os.getloadavg(), "threads": args.threads,
            "teacher_seconds": teacher_seconds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(f"{args.out}.json"),
                 lambda s: s.write((json.dumps({"meta": meta, "runs": results}, indent=1) + "\n").encode()))
    table = markdown(meta, results)
    atomic_write(Path(f"{args.out}.md"), lambda s: s.write(table.encode()))
    print(table)
    return 0


LVD_ARGS = ["--train-rows", "4000", "--valid-rows", "1000", "--sizes", "4", "8", "--seeds", "0", "1", "2",
            "--grow", "2x4", "--round-epochs", "2", "--max-epochs", "16", "--arms", "lvd_pg", "lvd"]


def lvd_check(args: argparse.Namespace, argv: list[str] | None) -> int:
    """lvd_pg_mnist's lvd_pg and lvd arms with scikit-learn's k-means, then with the former one."""
    import lvd_pg_mnist

    from einc.train import lvd, lvd_pg

    data = [] if args.data is None else ["--data", str(args.data)]
    current = (lvd.kmeans, lvd_pg.kmeans)
    runs: dict[str, list[dict]] = {}
    for variant in ("scikit-learn", "former"):
        folder = args.lvd / variant
        if variant == "former":  # every k-means of one-shot LVD and LVD-PG (steps 0 and 4)
            lvd.kmeans = lvd_pg.kmeans = former_kmeans
        try:
            lvd_pg_mnist.main([*data, *LVD_ARGS, "--runs", str(folder / "runs"), "--out", str(folder / "out")])
        finally:
            lvd.kmeans, lvd_pg.kmeans = current
        runs[variant] = [json.loads(path.read_text()) for path in sorted((folder / "runs").glob("K*_seed*_*.json"))]
    lines = [f"# LVD and LVD-PG with scikit-learn's k-means and einc's former one "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"`{records.command_line('kmeans.py', argv)}` on {records.machine_text()}, 1 thread, load average "
             f"{', '.join(f'{v:.2f}' for v in os.getloadavg())} at the end (machine shared with other jobs). "
             f"benchmarks/lvd_pg_mnist.py {' '.join(LVD_ARGS)}; exact test bpd on all 10,000 test images, "
             "mean ± standard deviation over the seeds; last column: scikit-learn − former per seed.", "",
             "| K | arm | scikit-learn | former | difference per seed |", "|---:|---|---:|---:|---|"]
    for size in sorted({r["size"] for r in runs["former"]}):
        for arm in ("lvd_pg", "lvd"):
            picked = {v: {r["seed"]: r["test_bpd"] for r in rs if r["size"] == size and r["arm"] == arm}
                      for v, rs in runs.items()}
            cells = [f"{np.mean(list(p.values())):.4f} ± {np.std(list(p.values()), ddof=1):.4f}" for p in picked.values()]
            seeds = sorted(set(picked["former"]) & set(picked["scikit-learn"]))
            differences = ", ".join(f"{picked['scikit-learn'][s] - picked['former'][s]:+.4f}" for s in seeds)
            lines.append(f"| {size} | {arm} | {cells[0]} | {cells[1]} | {differences} |")
    table = "\n".join(lines) + "\n"
    atomic_write(Path(f"{args.out}_lvd.md"), lambda s: s.write(table.encode()))
    print(table)
    return 0


def markdown(meta: dict, results: list[dict]) -> str:
    """Per problem and method: mean inertia over the seeds relative to the former k-means, and seconds."""
    lines = [f"# k-means on LVD teacher embeddings ({meta['date']})", "",
             f"`{meta['command']}` on {meta['machine']}, {meta['threads']} thread(s), load average "
             f"{', '.join(f'{v:.2f}' for v in meta['load_average'])} at the end (machine shared with other jobs).", "",
             "| problem | rows | clusters | method | inertia (mean of 3 seeds) | vs former | seconds (mean) |",
             "|---|---:|---:|---|---:|---:|---:|"]
    problems = list(dict.fromkeys(r["problem"] for r in results))
    for problem in problems:
        rows = [r for r in results if r["problem"] == problem]
        base = np.mean([r["inertia"] for r in rows if r["method"] == "former"])
        for method in METHODS:
            mine = [r for r in rows if r["method"] == method]
            value = np.mean([r["inertia"] for r in mine])
            lines.append(f"| {problem} | {mine[0]['rows']:,} | {mine[0]['clusters']} | {method} | {value:.6g} | "
                         f"{value / base - 1:+.2%} | {np.mean([r['seconds'] for r in mine]):.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
