"""LVD-PG on MNIST (issue 21, item 5): EM only, one-shot LVD and LVD with progressive growing,
at equal parameter counts, several circuit sizes, three seeds, exact test bpd.

    python benchmarks/lvd_pg_mnist.py                    # the CPU run in the README (resumable)
    python benchmarks/lvd_pg_mnist.py --report-only      # tables, JSON and PNGs from the runs so far

Data (sized for one shared CPU core, about an hour in all; say so wherever the numbers go): MNIST
max-pooled to 14×14 and binarised (a pixel is 1 when its 2×2 block holds a value > 127); the first
``--train-rows`` training images to train on, the last ``--valid-rows`` for early stopping (never
trained on), and all 10,000 test images scored exactly.

Circuit: ``structure patch_trees(size = [7, 7], parents = TREE)`` — a circuit per 7×7 patch (its
Chow–Liu tree over the 49 positions, learned from the training patches, binarised), under a
Poon–Domingos circuit over the 2×2 patches — with a latent per patch (``latent patches``), K
(``--sizes``) sums and Bernoulli components per region, and ``N1·N2`` states per latent.
``--patch-product hadamard`` makes each patch circuit an HCLT over the same tree (element-wise
products, ``patch_trees(patch_product = hadamard)``) under the same outer-product circuit over the
patches; a ``--runs`` folder holds runs of one kind.

Arms, per size K and seed, in this order:

- ``lvd_pg``: k-means of the teacher's patch embeddings into N1 clusters, progressive growing to
  N1·N2 (``einc.train.lvd_pg``: ``--round-epochs`` of EM on (x, z) per round, re-labelling by the
  patch circuits, the clusters with the lowest likelihood up to 40% of samples split, units with
  flow ≥ ``--grow-threshold`` copied), then EM on x (below). The grown circuit's
  ``.pc`` text is written, and it is the architecture of the two other arms: equal parameters.
- ``lvd``: the grown circuit with fresh parameters; one k-means of the teacher's embeddings into
  N1·N2 codes (one codebook for all patches), EM on (x, z) for as many epochs as lvd_pg grew,
  then EM on x (below);
- ``em``: the grown circuit with fresh parameters, EM on x from the start.

Every arm ends with online EM on x, the step size annealed linearly from ``--step-size`` to
``--final-step-size``, for ``--max-epochs`` epochs in all (pair epochs included), and keeps the
parameters of its best validation epoch of that phase (where the architecture is fixed and the
objective is log p(x)). The teacher (one per seed) is a VQ-VAE on the same training rows with a
convolutional encoder (one D-vector per patch) and an independent decoder per patch (49
Bernoulli logits from the patch's code alone; LVD paper §5), its codebook N1·N2 codes; its
continuous pre-quantisation embeddings are what the LVD arms cluster. For both LVD arms the
paper's triple, in bits per dimension, train and test: the teacher's ELBO under the arm's
discretisation (q(z | x) one-hot at the arm's cluster, p(x | z) the decoder at the cluster's
centre, p(z) factorised), the LVD objective (log p(x, z) right after training on pairs) and the
circuit's exact log p(x) at that moment.

Resumable: every (size, seed, arm) result is written atomically to ``--runs/`` when it finishes,
with its model; a restarted run skips what is there. After every run the summary is rewritten
(``--out``, default ``benchmarks/results/lvd_pg_mnist_v2``): ``OUT.json`` (the largest size every
arm and seed finished: exactly ``{"arms": {arm: {"model", "test_bpd", "std", "parameters"}}}``, the
form of the issue's ``benchmarks/results/lvd_pg_mnist.json``, which is a copy of it),
``OUT_runs.json`` (meta, every run, every size), ``OUT.md``, ``OUT.png`` (test bpd against
parameters, the three arms) and ``OUT_curves.png`` (train and validation bpd per epoch at that
size). The first run (``lvd_pg_mnist.md``, ``lvd_pg_mnist_runs/``) used step 0.5 and pseudocount
0.1 (``--step-size 0.5 --pair-step-size 0.5 --pseudocount 0.1``), which made every larger K fit
its own training data worse (``benchmarks/lvd_pg_tuning.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import records  # noqa: E402  benchmarks/records.py

import einc  # noqa: E402
from einc.archive import model_arrays  # noqa: E402
from einc.io.files import atomic_write  # noqa: E402
from einc.mixture import nearest_centre  # noqa: E402
from einc.tools.structure_learning import learn_tree  # noqa: E402
from einc.train import lvd, lvd_pg  # noqa: E402

ARMS = ("lvd_pg", "lvd", "em")
COLOURS = {"em": (200, 40, 40), "lvd": (40, 120, 200), "lvd_pg": (30, 150, 60)}
SIDE, PATCH = 14, 7
PIXELS = SIDE * SIDE
PATCHES = (SIDE // PATCH) ** 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help=records.MNIST_HELP)
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--valid-rows", type=int, default=1000)
    parser.add_argument("--test-rows", type=int, default=None, help="score the first N test images (default all)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16], help="K per region (the model sizes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                        help="the arms to run (lvd and em train lvd_pg's grown circuit: it runs first)")
    parser.add_argument("--grow", default="2x4", help="N1xN2: N1 outer clusters, grown to N1*N2 states per latent")
    parser.add_argument("--grow-threshold", type=float, default=0.5)
    parser.add_argument("--patch-product", choices=["outer", "hadamard"], default="outer",
                        help="the product kind inside the patches: outer (binarised trees) or hadamard (an HCLT per "
                             "patch, under the outer-product circuit over the patches)")
    parser.add_argument("--round-epochs", type=int, default=2, help="EM epochs on (x, z) per growing round")
    parser.add_argument("--max-epochs", type=int, default=40, help="EM epochs of every arm in all, pair epochs included")
    parser.add_argument("--final-step-size", type=float, default=0.02,
                        help="the EM-on-x phase anneals the step size linearly from --step-size to this")
    parser.add_argument("--batch-size", type=int, default=100)
    # the x phase's recipe chosen on validation bpd by benchmarks/lvd_pg_tuning.py (the first run's
    # step 0.5 and pseudocount 0.1 made every larger K fit its own training data worse)
    parser.add_argument("--step-size", type=float, default=1.0, help="online EM step size at the start of the x phase")
    parser.add_argument("--pair-step-size", type=float, default=0.5,
                        help="online EM step size on (x, z) pairs, constant")
    parser.add_argument("--pseudocount", type=float, default=0.0001,
                        help="EM pseudocount per distribution, added to every mini-batch's counts")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--teacher-dims", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "results" / "lvd_pg_mnist_v2_runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lvd_pg_mnist_v2")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    args.outer, args.inner = lvd_pg.parse_grow(args.grow)
    return args


def bits(ll: float) -> float:
    """Mean log-likelihood in nats per image -> bits per dimension."""
    return -float(ll) / PIXELS / math.log(2)


def binarised(images: np.ndarray) -> np.ndarray:
    """(N, 784) grey levels -> (N, 196) 0/1: 2×2 max-pooling, then > 127."""
    return (images.reshape(-1, SIDE, 2, SIDE, 2).max((2, 4)) > 127).reshape(-1, PIXELS).astype(np.float64)


def patches_of(x: np.ndarray) -> np.ndarray:
    """(N, 196) -> (N, 4, 49): patches row-major (the latents' order), pixels row-major."""
    grid = x.reshape(-1, SIDE // PATCH, PATCH, SIDE // PATCH, PATCH)
    return grid.transpose(0, 1, 3, 2, 4).reshape(-1, PATCHES, PATCH * PATCH)


def circuit_text(sums: int, parents: list[int], patch_product: str = "outer") -> str:
    inside = "" if patch_product == "outer" else f", patch_product = {patch_product}"
    return "\n".join([
        "# LVD-PG on 14x14 binarised MNIST (benchmarks/lvd_pg_mnist.py): a learned tree per 7x7 patch,",
        "# a Poon-Domingos circuit over the four patches, a latent per patch",
        "circuit lvd_pg_mnist", f"var img[{SIDE}, {SIDE}] : binary", "leaf img ~ bernoulli",
        f"sums {sums}", f"inputs {sums}",
        f"structure patch_trees(size = [{PATCH}, {PATCH}], parents = [{', '.join(map(str, parents))}]{inside})",
        f"latent patches(size = [{PATCH}, {PATCH}])", ""])


# ---------------------------------------------------------------------------------------------
# The teacher: a VQ-VAE with an independent per-patch Bernoulli decoder


class Teacher(torch.nn.Module):
    def __init__(self, dims: int, codes: int) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, dims, PATCH, stride=PATCH))  # (B, D, 2, 2): one vector per patch
        self.codebook = torch.nn.Parameter(torch.randn(codes, dims) * 0.1)
        self.decoder = torch.nn.Sequential(torch.nn.Linear(dims, 128), torch.nn.ReLU(),
                                           torch.nn.Linear(128, PATCH * PATCH))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 196) -> (B, 4, D) continuous patch embeddings, patches row-major."""
        return self.encoder(x.reshape(-1, 1, SIDE, SIDE) * 2 - 1).flatten(2).transpose(1, 2)

    def log_likelihood_given(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """log p(x | the decoder at each patch's code vector): (B, 196), (B, 4, D) -> (B,)."""
        logits = self.decoder(codes)  # (B, 4, 49)
        target = torch.as_tensor(patches_of(x.numpy()), dtype=logits.dtype)
        return -torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").sum((1, 2))


def train_teacher(x: np.ndarray, dims: int, codes: int, epochs: int, seed: int) -> Teacher:
    torch.manual_seed(seed)
    model = Teacher(dims, codes)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = torch.as_tensor(x, dtype=torch.float32)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(len(data)), max(1, len(data) // 128)):
            h = model.embed(data[batch])
            distance = ((h[..., None, :] - model.codebook) ** 2).sum(-1)  # (B, 4, codes)
            q = model.codebook[distance.argmin(-1)]
            straight = h + (q - h).detach()
            loss = (-model.log_likelihood_given(data[batch], straight).mean() / PIXELS
                    + ((q - h.detach()) ** 2).mean() + 0.25 * ((h - q.detach()) ** 2).mean())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@torch.no_grad()
def features(model: Teacher, x: np.ndarray) -> np.ndarray:
    data = torch.as_tensor(x, dtype=torch.float32)
    return torch.cat([model.embed(data[i:i + 2000]) for i in range(0, len(data), 2000)]).double().numpy()


@torch.no_grad()
def teacher_elbo(model: Teacher, x: np.ndarray, z: np.ndarray, centres: np.ndarray, prior: np.ndarray) -> float:
    """Mean ELBO (nats) under a discretisation: q(z | x) one-hot at z, so ELBO = log p(x | z) +
    log p(z), p(x | z) the decoder at ``centres[j, z_j]`` (latents, states, D), p(z) = Π_j prior[j, z_j]."""
    out = []
    for i in range(0, len(x), 2000):
        codes = torch.as_tensor(centres[np.arange(PATCHES), z[i:i + 2000]], dtype=torch.float32)
        out.append(model.log_likelihood_given(torch.as_tensor(x[i:i + 2000], dtype=torch.float32), codes).double().numpy())
    log_prior = np.log(prior)[np.arange(PATCHES), z].sum(1)
    return float((np.concatenate(out) + log_prior).mean())


def factorised_prior(z: np.ndarray, states: int) -> np.ndarray:
    counts = np.stack([np.bincount(column, minlength=states) for column in z.T]) + 1.0
    return counts / counts.sum(1, keepdims=True)


def cluster_centres(h: np.ndarray, z: np.ndarray, states: int) -> np.ndarray:
    """(latents, states, D): the mean embedding of each latent's each cluster (0 if empty)."""
    out = np.zeros((h.shape[1], states, h.shape[2]))
    for j in range(h.shape[1]):
        for k in range(states):
            members = h[z[:, j] == k, j]
            if len(members):
                out[j, k] = members.mean(0)
    return out


# ---------------------------------------------------------------------------------------------
# One run


class Watch:
    """Per epoch: train bpd (log p(x), or log p(x, z) on pairs: marked), validation bpd (log p(x);
    scored here on pair epochs when ``model`` is set, else only where fit scored it)."""

    def __init__(self, valid: np.ndarray) -> None:
        self.valid = valid
        self.model: einc.Model | None = None
        self.curve: list[dict] = []

    def __call__(self, phase: str, record) -> None:
        valid = None
        if record.valid_ll is not None:
            valid = bits(record.valid_ll)
        elif self.model is not None:
            valid = bits(self.model.log_likelihood(self.valid).mean())
        self.curve.append({"phase": phase, "train_bpd": bits(record.train_ll), "on_pairs": phase != "x",
                           "valid_bpd": valid})


def run_arm(arm: str, size: int, seed: int, args, data: dict, teacher: dict, grown: dict | None) -> tuple[dict, einc.Model]:
    train, valid, test = data["train"], data["valid"], data["test"]
    options = {"batch_size": args.batch_size, "step_size": args.pair_step_size, "pseudocount": args.pseudocount}
    started = time.perf_counter()
    watch = Watch(valid)
    states = args.outer * args.inner
    result: dict = {"arm": arm, "size": size, "seed": seed}
    h_train, h_test = teacher["train"], teacher["test"]
    if arm == "lvd_pg":
        model = einc.compile(circuit_text(size, data["parents"], args.patch_product), dtype="float32", seed=seed)
        model.filename = "lvd_pg_mnist.pc"

        def on_round(r) -> None:
            print(f"  lvd_pg K={size} seed {seed}: round {r.round} states {r.states} valid "
                  f"{bits(r.valid_ll):.4f} bpd, {r.parameters:,} parameters ({r.seconds:.0f} s)", flush=True)

        model, z, rounds = lvd_pg.progressive_growing(
            model, train, h_train, args.outer, args.inner, threshold=args.grow_threshold, epochs=args.round_epochs,
            valid=valid, seed=seed, on_round=on_round, on_epoch=watch, **options)
        centres = cluster_centres(h_train, z, states)
        z_test = np.stack([nearest_centre(h_test[:, j], centres[j]) for j in range(PATCHES)], 1)
        result["rounds"] = [{"states": list(r.states), "train_bpd_xz": bits(r.train_ll), "valid_bpd": bits(r.valid_ll),
                             "parameters": r.parameters} for r in rounds]
        result["pair_epochs"] = len(rounds) * args.round_epochs
        result["grown_pc"] = model.source
    else:
        model = einc.compile(grown["source"], dtype="float32", seed=seed)
        model.filename = "lvd_pg_mnist.pc"
        watch.model = model
        if arm == "lvd":
            distilled = lvd.distill(model, train, features=h_train, epochs=grown["pair_epochs"], finetune_epochs=0,
                                    seed=seed, on_epoch=watch, **options)
            z = distilled.latents
            shared = distilled.codebook.centres
            centres = np.broadcast_to(shared, (PATCHES, *shared.shape))
            z_test = distilled.codebook.assign(h_test, PATCHES)
    if len(watch.curve) >= args.max_epochs:
        # the growing rounds' count depends on the data, so this is known only now
        raise SystemExit(f"lvd_pg_mnist.py: error: --max-epochs {args.max_epochs}: {arm} K={size} seed {seed} spent "
                         f"{len(watch.curve)} epochs on (x, z) pairs, leaving none for EM on x; give more "
                         f"--max-epochs or fewer --round-epochs")
    if arm != "em":
        prior = factorised_prior(z, states)
        result["teacher_elbo_train"] = bits(teacher_elbo(teacher["model"], train, z, centres, prior))
        result["teacher_elbo_test"] = bits(teacher_elbo(teacher["model"], test, z_test, centres, prior))
        result["lvd_objective_train"] = bits(model.log_likelihood(train, latents=z).mean())
        result["lvd_objective_test"] = bits(model.log_likelihood(test, latents=z_test).mean())
        result["pc_after_pairs_train"] = bits(model.log_likelihood(train).mean())
        result["pc_after_pairs_test"] = bits(model.log_likelihood(test).mean())
    # EM on x to --max-epochs in all (pair epochs included), the step size annealed linearly from
    # --step-size to --final-step-size (the paper's Appendix B anneals 0.1 -> 0.01; here a start of
    # 1.0 beats 0.8, 0.5, 0.2 and 0.1 on validation, the more so the larger K, and a constant step
    # either crawls (0.1) or stalls in its own noise (0.5)); the parameters of the best validation
    # epoch of this phase are kept
    first = len(watch.curve)
    watch.model = None
    remaining = args.max_epochs - first
    best = None
    for e in range(remaining):
        fraction = e / max(1, remaining - 1)
        step = args.step_size + fraction * (args.final_step_size - args.step_size)
        model.fit(train, valid=valid, epochs=1, keep_best=False, seed=seed + 1000 + e,
                  on_epoch=lambda record: watch("x", record), **{**options, "step_size": step})
        if best is None or watch.curve[-1]["valid_bpd"] < best[0]:
            best = (watch.curve[-1]["valid_bpd"], len(watch.curve), model.parameters())
    best_valid, best_epoch, best_params = best
    model.set_parameters(best_params)
    result.update({
        "parameters": model.num_parameters, "best_epoch": best_epoch, "epochs": len(watch.curve),
        "valid_bpd": best_valid, "train_bpd": bits(model.log_likelihood(train).mean()),
        "test_bpd": bits(model.log_likelihood(test).mean()), "seconds": time.perf_counter() - started,
        "curve": watch.curve})
    print(f"  {arm:6s} K={size} seed {seed}: test {result['test_bpd']:.4f} bpd (best valid epoch {best_epoch} of "
          f"{len(watch.curve)}), {model.num_parameters:,} parameters, {result['seconds']:.0f} s", flush=True)
    return result, model


# ---------------------------------------------------------------------------------------------
# Driver, resumable


def save_compact(model: einc.Model, path: Path) -> None:
    """The model file without its training state, zip-compressed (``einc.load`` reads it like any
    model file): float32 parameters stored as float64 compress about twofold, which keeps the
    largest size's models under 5 MB."""
    arrays = model_arrays(model.metadata(), model.parameters(), None)
    atomic_write(path, lambda stream: np.savez_compressed(stream, **arrays))


def run_path(args, size: int, seed: int, arm: str) -> Path:
    return args.runs / f"K{size}_seed{seed}_{arm}.json"


def load_runs(args) -> list[dict]:
    """Every finished run in ``--runs`` (any size or seed), in (size, seed, arm) order."""
    runs = [json.loads(path.read_text()) for path in args.runs.glob("K*_seed*_*.json")]
    return sorted(runs, key=lambda r: (r["size"], r["seed"], ARMS.index(r["arm"])))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    meta_path = args.runs / "meta.json"
    if args.report_only:
        write_report(args, json.loads(meta_path.read_text()) if meta_path.exists() else {}, load_runs(args))
        return 0
    before = json.loads(meta_path.read_text()).get("patch_product", "outer") if meta_path.exists() else "outer"
    if before != args.patch_product and load_runs(args):  # a resumed run must not mix circuits
        raise SystemExit(f"{args.runs} holds runs with --patch-product {before}; give another --runs for "
                         f"--patch-product {args.patch_product}")
    torch.set_num_threads(args.threads)
    images, test_images = records.mnist_images(args.data)
    if not 1 <= args.valid_rows < len(images) or not 1 <= args.train_rows <= len(images) - args.valid_rows:
        raise SystemExit(f"--train-rows + --valid-rows must fit in the {len(images)} training images")
    data = {"train": binarised(images[: args.train_rows]), "valid": binarised(images[len(images) - args.valid_rows:]),
            "test": binarised(test_images[: args.test_rows])}
    pooled = patches_of(data["train"]).reshape(-1, PATCH * PATCH)
    data["parents"] = list(learn_tree(pooled, [2] * (PATCH * PATCH)).parents)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update({
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": records.command_line("lvd_pg_mnist.py", argv),
        "machine": records.machine_text() + " (2 cores shared by ~4 jobs; 1 thread)",
        "torch": torch.__version__,
        "data": (f"MNIST max-pooled to 14x14 and binarised (> 127); the first {len(data['train']):,} training images, "
                 f"the last {len(data['valid']):,} for validation, {len(data['test']):,} test images"),
        "circuit": ("patch_trees(size = [7, 7], learned Chow-Liu tree per patch"
                    + (", an HCLT per patch (patch_product = hadamard)" if args.patch_product == "hadamard" else "")
                    + ") + latent patches(size = [7, 7])"),
        "patch_product": args.patch_product,
        "grow": f"{args.outer}x{args.inner}, threshold {args.grow_threshold}, {args.round_epochs} epochs per round",
        "recipe": (f"online EM, batch {args.batch_size}, pseudocount {args.pseudocount}; on pairs step "
                   f"{args.pair_step_size}; then EM on x with the step annealed linearly from {args.step_size} to "
                   f"{args.final_step_size}, {args.max_epochs} epochs "
                   f"in all; parameters of the best validation epoch of the x phase"),
        "teacher": f"VQ-VAE, independent per-patch Bernoulli decoder, D={args.teacher_dims}, "
                   f"{args.outer * args.inner} codes, {args.teacher_epochs} epochs",
        "sizes": args.sizes, "seeds": args.seeds,
    })
    atomic_write(meta_path, lambda s: s.write((json.dumps(meta, indent=1) + "\n").encode()))
    teachers: dict[int, dict] = {}
    for size in args.sizes:
        for seed in args.seeds:
            for arm in [a for a in ARMS if a in args.arms]:
                path = run_path(args, size, seed, arm)
                if path.exists():
                    continue
                if seed not in teachers:
                    net = train_teacher(data["train"], args.teacher_dims, args.outer * args.inner,
                                        args.teacher_epochs, seed)
                    teachers[seed] = {"model": net, "train": features(net, data["train"]),
                                      "test": features(net, data["test"])}
                grown = None
                if arm != "lvd_pg":
                    if not run_path(args, size, seed, "lvd_pg").exists():
                        raise SystemExit(f"{arm} K={size} seed {seed} trains lvd_pg's grown circuit: run lvd_pg first")
                    grown_run = json.loads(run_path(args, size, seed, "lvd_pg").read_text())
                    grown = {"source": grown_run["grown_pc"], "pair_epochs": grown_run["pair_epochs"]}
                result, model = run_arm(arm, size, seed, args, data, teachers[seed], grown)
                model_path = args.runs / f"K{size}_seed{seed}_{arm}.npz"
                save_compact(model, model_path)
                result["model"] = str(model_path.relative_to(ROOT)) if model_path.is_relative_to(ROOT) else str(model_path)
                result["load_average"] = round(os.getloadavg()[0], 2)
                atomic_write(path, lambda s: s.write((json.dumps(result, indent=1) + "\n").encode()))
                write_report(args, meta, load_runs(args))
    return 0


# ---------------------------------------------------------------------------------------------
# Report


def summarise(runs: list[dict]) -> dict:
    """{size: {arm: {key: (mean, std, n)}}} over seeds."""
    out: dict = {}
    for run in runs:
        out.setdefault(run["size"], {}).setdefault(run["arm"], []).append(run)
    summary: dict = {}
    for size, arms in sorted(out.items()):
        summary[size] = {}
        for arm, rows in arms.items():
            entry: dict = {}
            for key, value in rows[0].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("size", "seed"):
                    values = np.array([r[key] for r in rows], dtype=float)
                    entry[key] = {"mean": float(values.mean()),
                                  "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"), "n": len(values)}
            entry["models"] = [r["model"] for r in sorted(rows, key=lambda r: r["seed"])]
            summary[size][arm] = entry
    return summary


def write_report(args, meta: dict, runs: list[dict]) -> None:
    if not runs:
        return
    summary = summarise(runs)
    seeds = len(meta.get("seeds", [])) or 1
    complete = [size for size, arms in summary.items()
                if set(arms) == set(ARMS) and all(arms[a]["test_bpd"]["n"] >= seeds for a in ARMS)]
    largest = max(complete) if complete else max(summary)  # the largest size every arm and seed finished
    arms_json = {}
    for arm, entry in summary[largest].items():
        arms_json[arm] = {"model": entry["models"][0], "test_bpd": entry["test_bpd"]["mean"],
                          "std": entry["test_bpd"]["std"], "parameters": int(entry["parameters"]["mean"])}
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(f"{out}.json"), lambda s: s.write((json.dumps({"arms": arms_json}, indent=1) + "\n").encode()))
    verdict = None
    if {"em", "lvd_pg"} <= set(summary[largest]):
        em, pg = summary[largest]["em"]["test_bpd"], summary[largest]["lvd_pg"]["test_bpd"]
        if em["n"] > 1 and pg["n"] > 1:
            gap = em["mean"] - pg["mean"]
            spread = math.sqrt(em["std"] ** 2 + pg["std"] ** 2)
            verdict = {"size": largest, "gap_bpd": gap, "std_of_difference": spread,
                       "target_met": bool(gap >= 0.03 and gap >= 2 * spread)}
    details = {"meta": meta, "summary": {str(k): v for k, v in summary.items()}, "verdict": verdict,
               "runs": [{k: v for k, v in r.items() if k != "grown_pc"} for r in runs]}
    atomic_write(Path(f"{out}_runs.json"), lambda s: s.write((json.dumps(details, indent=1) + "\n").encode()))
    write_markdown(Path(f"{out}.md"), meta, summary, verdict, out.name, runs)
    size_png(Path(f"{out}.png"), summary)
    curves_png(Path(f"{out}_curves.png"), [r for r in runs if r["size"] == largest], largest)


def curve_rows(runs: list[dict]) -> list[str]:
    """Validation bpd (seed means) at every tenth epoch, per size and arm: where each arm is still
    improving and where EM saturates."""
    epochs = max(len(r["curve"]) for r in runs)
    marks = [e for e in range(10, epochs + 1, 10)]
    lines = ["| K | arm | " + " | ".join(f"valid @ {e}" for e in marks) + " | train − valid gap at the best epoch |",
             "|---:|---|" + "---:|" * (len(marks) + 1)]
    for size in sorted({r["size"] for r in runs}):
        for arm in ARMS:
            rows = [r for r in runs if r["size"] == size and r["arm"] == arm]
            if not rows:
                continue
            cells = []
            for e in marks:
                values = [r["curve"][e - 1]["valid_bpd"] for r in rows if len(r["curve"]) >= e]
                values = [v for v in values if v is not None]
                cells.append(f"{np.mean(values):.4f}" if values else "–")
            gap = np.mean([r["train_bpd"] - r["valid_bpd"] for r in rows])
            lines.append(f"| {size} | {arm} | " + " | ".join(cells) + f" | {gap:+.4f} |")
    return lines


def write_markdown(path: Path, meta: dict, summary: dict, verdict: dict | None, name: str, runs: list[dict]) -> None:
    def cell(entry: dict, key: str, digits: int = 4) -> str:
        value = entry.get(key)
        if value is None:
            return "–"
        spread = "" if math.isnan(value["std"]) else f" ± {value['std']:.{digits}f}"
        return f"{value['mean']:.{digits}f}{spread}"

    lines = ["# LVD with progressive growing on MNIST (14×14 binarised)", "",
             f"Generated {meta.get('date', '?')} by `{meta.get('command', '?')}` on {meta.get('machine', '?')}.", "",
             f"Data: {meta.get('data', '?')}. Circuit: {meta.get('circuit', '?')}. Growing: {meta.get('grow', '?')}. "
             f"Training: {meta.get('recipe', '?')}. Teacher: {meta.get('teacher', '?')}. Mean ± standard deviation "
             f"over seeds (n = seeds done), bits per dimension.", "",
             "| K | arm | n | parameters | test bpd | valid bpd | train bpd | best epoch / epochs | teacher ELBO (train / test) "
             "| LVD objective (train / test) | exact log p after pairs (train / test) | minutes |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size, arms in summary.items():
        for arm in ARMS:
            if arm not in arms:
                continue
            e = arms[arm]
            lines.append(
                f"| {size} | {arm} | {e['test_bpd']['n']} | {int(e['parameters']['mean']):,} | {cell(e, 'test_bpd')} | "
                f"{cell(e, 'valid_bpd')} | {cell(e, 'train_bpd')} | {e['best_epoch']['mean']:.1f} / {e['epochs']['mean']:.0f} | "
                f"{cell(e, 'teacher_elbo_train', 3)} / {cell(e, 'teacher_elbo_test', 3)} | "
                f"{cell(e, 'lvd_objective_train', 3)} / {cell(e, 'lvd_objective_test', 3)} | "
                f"{cell(e, 'pc_after_pairs_train', 3)} / {cell(e, 'pc_after_pairs_test', 3)} | "
                f"{e['seconds']['mean'] / 60:.1f} |")
    lines.append("")
    if verdict is not None:
        word = "met" if verdict["target_met"] else "not met"
        lines.append(f"At the largest size (K = {verdict['size']}), LVD-PG vs EM only: {verdict['gap_bpd']:+.4f} bpd "
                     f"(EM minus LVD-PG); standard deviation of the difference {verdict['std_of_difference']:.4f}; "
                     f"target (≥ 0.03 bpd and ≥ 2 standard deviations): **{word}**.")
        lines.append("")
    lines += ["Validation bpd by epoch (seed means; lvd_pg's growing epochs have none: its circuit changes "
              "each round):", "", *curve_rows(runs), ""]
    lines += [f"![test bpd against parameters]({name}.png)", "", f"![curves at the largest size]({name}_curves.png)", ""]
    atomic_write(path, lambda s: s.write("\n".join(lines).encode()))


def _frame(title: str, low: float, high: float, xs: list[float], xlabel: str, ylabel: str):
    width, height, margin = 760, 440, 70
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x_low, x_high = min(xs), max(xs)
    span = max(high - low, 1e-6)

    def point(x: float, y: float) -> tuple[float, float]:
        fx = 0.5 if x_high == x_low else (x - x_low) / (x_high - x_low)
        return margin + fx * (width - 2 * margin), height - margin - (y - low) / span * (height - 2 * margin)

    draw.rectangle([margin, margin, width - margin, height - margin], outline="black")
    draw.text((margin, 15), title, fill="black")
    for step in range(5):
        value = low + step * span / 4
        draw.text((5, point(x_low, value)[1] - 6), f"{value:.3f}", fill="black")
    draw.text((width // 2 - 60, height - 25), xlabel, fill="black")
    draw.text((5, margin - 28), ylabel, fill="black")
    return canvas, draw, point


def size_png(path: Path, summary: dict) -> None:
    points = {arm: [(math.log10(a[arm]["parameters"]["mean"]), a[arm]["test_bpd"]["mean"],
                     0.0 if math.isnan(a[arm]["test_bpd"]["std"]) else a[arm]["test_bpd"]["std"], size)
                    for size, a in summary.items() if arm in a] for arm in ARMS}
    values = [y + s * d for ps in points.values() for _, y, d, _ in ps for s in (-1, 1)]
    xs = [x for ps in points.values() for x, *_ in ps]
    low, high = min(values), max(values)
    pad = 0.1 * max(high - low, 1e-3)
    canvas, draw, point = _frame("MNIST 14x14 binarised: exact test bpd against parameters (mean ± std over seeds)",
                                 low - pad, high + pad, xs, "parameters (log scale; labels: K)", "test bpd (lower is better)")
    for offset, arm in enumerate(ARMS):
        ps = sorted(points[arm])
        if not ps:
            continue
        xy = [point(x, y) for x, y, _, _ in ps]
        if len(xy) > 1:
            draw.line(xy, fill=COLOURS[arm], width=2)
        for (x, y, d, size), (px, py) in zip(ps, xy):
            draw.line([point(x, y - d), point(x, y + d)], fill=COLOURS[arm], width=1)
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=COLOURS[arm])
            draw.text((px + 5, py - 12 + 10 * offset), f"K={size}", fill=COLOURS[arm])
            if offset == 0:
                draw.text((px - 20, 440 - 70 + 4), f"{10 ** x:,.0f}", fill="black")
        draw.text((xy[-1][0] - 60, 30 + 12 * offset), arm, fill=COLOURS[arm])
    canvas.save(path)


def curves_png(path: Path, runs: list[dict], size: int) -> None:
    curves = {}
    for arm in ARMS:
        rows = [r["curve"] for r in runs if r["arm"] == arm]
        if rows:
            length = min(len(c) for c in rows)
            curves[arm] = (np.mean([[e["train_bpd"] for e in c[:length]] for c in rows], 0),
                           np.mean([[np.nan if e["valid_bpd"] is None else e["valid_bpd"] for e in c[:length]]
                                    for c in rows], 0))
    if not curves:
        return
    values = np.concatenate([np.concatenate(v) for v in curves.values()])
    values = values[np.isfinite(values)]
    low, high = float(values.min()), float(min(values.max(), values.min() + 0.4))
    epochs = max(len(v[0]) for v in curves.values())
    canvas, draw, point = _frame(f"K={size}: train (thick; log p(x, z) on pair epochs) and validation (thin) bpd, "
                                 f"seed means", low, high, [1, max(2, epochs)], "epoch", "bpd")
    for epoch in range(10, epochs + 1, 10):
        draw.text((point(epoch, low)[0] - 6, 440 - 70 + 4), str(epoch), fill="black")
    for offset, (arm, (train, valid)) in enumerate(curves.items()):
        draw.line([point(e + 1, min(v, high)) for e, v in enumerate(train)], fill=COLOURS[arm], width=3)
        shown = [point(e + 1, min(v, high)) for e, v in enumerate(valid) if np.isfinite(v)]
        if len(shown) > 1:
            draw.line(shown, fill=COLOURS[arm], width=1)
        draw.text((600, 30 + 12 * offset), arm, fill=COLOURS[arm])
    canvas.save(path)


if __name__ == "__main__":
    sys.exit(main())
