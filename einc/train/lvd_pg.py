"""LVD with progressive growing (LVD-PG; Liu et al. 2023, §4 steps 1–4, Algorithm 1, Appendix B).

One-shot LVD clusters the teacher's embeddings once. Progressive growing lets the circuit's own
likelihoods steer the clustering, per latent Z_j (a patch):

0. k-means of the patch embeddings h_j into N₁ *outer* clusters; the patch circuit p(x_j | z_j)
   (``einc.tools.patches``: the sub-circuit below the latent's region) gets N₁ heads;
1. train on (x, z) by EM — log p(x, z) = log p(z) + Σ_j log p(x_j | z_j), so one EM run trains
   every patch circuit on its clusters and the circuit over the latents on z;
2. re-label: z_j ← arg max_i p(x_j | Z_j = i), the patch circuit's own most likely head;
3. select the clusters with the lowest mean log p(x_j | z_j), whole clusters, until they hold
   ``fraction`` (40%) of the samples (Appendix B);
4. re-cluster their embeddings by k-means into twice as many clusters, the first half seeded at
   the selected clusters' centres and each new one at the member farthest from its cluster's
   centre, so new cluster m splits selected cluster m; grow the patch circuit from the flows of
   those samples (``einc.tools.growing``: the selected heads and every unit below with flow ≥
   ``threshold`` per sample are copied; the copy of head i is the head of i's new cluster) and put
   it back into the circuit (``einc.tools.patches.with_patches``, all latents of a round at once:
   the circuit over the latents gets edges to the new states);

until every latent has N₁ × N₂ states; then a last step 1. The result is a grown circuit whose
``source`` is the user's ``.pc`` with a K per grown region (write it with ``einc.tools.growing``).

Deviation from Appendix B: there each outer cluster grows its own single-head HCLT; here the N₁
outer clusters are heads of one patch circuit (sharing its units below the heads), and the
clusters chosen in step 3 come from all of them. k-means is scikit-learn's (``einc.mixture.kmeans``),
which step 4 starts at the given centres.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from einc.backends.em import DEFAULT_PSEUDOCOUNT
from einc.compiler.grow import DEFAULT_SHARE
from einc.errors import DataError, EincError
from einc.io.data import as_rows
from einc.mixture import kmeans
from einc.model import Model
from einc.model import compile as compile_model
from einc.tools.growing import grow, grown_source
from einc.tools.patches import patch_data, patch_model, with_patches
from einc.train.loop import DEFAULT_BATCH_SIZE, DEFAULT_STEP_SIZE, EpochRecord
from einc.train.lvd import per_latent_features

DEFAULT_GROW_THRESHOLD = 0.1  # flow per growing sample from which a unit is copied
DEFAULT_GROW_FRACTION = 0.4  # Appendix B: the clusters chosen per round hold 40% of the samples


def parse_grow(text: str) -> tuple[int, int]:
    """``N1xN2`` → (N1 outer clusters, N2 inner clusters per outer one)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if match is None or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise EincError(f"--grow {text}: expected N1xN2 with whole numbers ≥ 1 (N1 outer clusters, each grown to "
                        f"N2 inner ones), e.g. --grow 4x4")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class GrowRound:
    """One round: the states of every latent after it, the mean log p(x, z) its training reached
    (before its growth), the validation mean log p(x) (latents summed out) and the circuit's
    parameters after its growth, and the time."""

    round: int
    states: tuple[int, ...]
    train_ll: float
    valid_ll: float | None
    parameters: int
    seconds: float


def select_clusters(ll: np.ndarray, z: np.ndarray, fraction: float, most: int) -> list[int]:
    """Step 3: clusters by ascending mean log-likelihood, whole, until they hold ``fraction`` of the
    samples; at most ``most``, and only clusters with two or more samples (one cannot be split)."""
    clusters = np.unique(z)
    counts = np.bincount(z, minlength=int(z.max()) + 1)
    means = {int(c): float(ll[z == c].mean()) for c in clusters if counts[c] >= 2}
    chosen: list[int] = []
    held = 0
    for c in sorted(means, key=lambda c: (means[c], c)):
        if len(chosen) >= most or held >= fraction * len(z):
            break
        chosen.append(c)
        held += int(counts[c])
    return sorted(chosen)


def split_clusters(h: np.ndarray, z: np.ndarray, chosen: list[int], states: int,
                   iterations: int = 50, seed: int = 0) -> np.ndarray:
    """Step 4's re-clustering: the samples of the ``chosen`` clusters into 2·|chosen| clusters by
    k-means started at given centres: centre m < |chosen| at chosen[m]'s mean, centre |chosen| + m
    at the member of chosen[m] farthest from it. Returns the new labels: chosen[m] or states + m.
    (``seed`` draws the batches when the samples are many enough for mini-batch k-means.)"""
    members = np.isin(z, chosen)
    x = h[members]
    labels_before = z[members]
    centres = np.stack([x[labels_before == c].mean(0) for c in chosen])
    far = []
    for m, c in enumerate(chosen):
        own = x[labels_before == c]
        far.append(own[((own - centres[m]) ** 2).sum(1).argmax()])
    centres = np.concatenate([centres, np.stack(far)])
    assignment, _ = kmeans(x, len(centres), seed=seed, iterations=iterations, init=centres)
    label_of = np.array(list(chosen) + [states + m for m in range(len(chosen))])
    out = z.copy()
    out[members] = label_of[assignment]
    return out


def with_latent_states(model: Model, states: int) -> Model:
    """The model recompiled with every latent region holding ``states`` units (fresh parameters)."""
    from dataclasses import replace

    sizes = dict(model.graph.region_sizes)
    for slot in model.latents:
        sizes[slot.region] = states
    graph = replace(model.graph, region_sizes=tuple(sorted(sizes.items())), _cache={})
    out = compile_model(grown_source(model.source, model.filename, graph), backend=model.backend_name,
                        device=model.device, dtype=model.dtype, seed=model.seed)
    out.filename = model.filename
    return out


def progressive_growing(model: Model, x: Any, features: Any, outer: int, inner: int,
                        threshold: float = DEFAULT_GROW_THRESHOLD, share: float = DEFAULT_SHARE,
                        fraction: float = DEFAULT_GROW_FRACTION, epochs: int = 3, valid: Any = None,
                        batch_size: int = DEFAULT_BATCH_SIZE, step_size: float = DEFAULT_STEP_SIZE,
                        update: str = "batch", pseudocount: float = DEFAULT_PSEUDOCOUNT, seed: int = 0,
                        on_round: Callable[[GrowRound], None] | None = None,
                        on_epoch: Callable[[str, EpochRecord], None] | None = None,
                        on_model: Callable[[Model, np.ndarray], None] | None = None
                        ) -> tuple[Model, np.ndarray, list[GrowRound]]:
    """Steps 0–4 until every latent has ``outer`` × ``inner`` states, then a last training round.
    Returns (the grown model, the latent states (N, latents) it was last trained on, the rounds).
    ``on_model(model, z)`` sees the model after every round's training (before its growth), so a
    caller interrupted later still holds the last trained circuit (``einc lvd --grow`` writes it)."""
    if not model.latents:
        raise EincError("progressive growing needs latents: `latent` statements on the patch regions")
    if not 0 < fraction <= 1:
        raise EincError(f"the fraction of samples to grow per round must be in (0, 1], found {fraction!r}")
    rows = as_rows(x, "train")
    embeddings = per_latent_features(features, len(model.latents))
    if len(embeddings) != len(rows):
        raise DataError(f"teacher features: {len(embeddings)} examples for {len(rows)} training rows")
    target = outer * inner
    if len(rows) < target:
        raise DataError(f"{len(rows)} training rows for {target} clusters per latent; k-means needs more")
    for j in range(len(model.latents)):
        patch_model(model, j)  # raises unless the latent's region is a circuit of its own
    z = np.stack([kmeans(embeddings[:, j], outer, seed=seed + j)[0] for j in range(len(model.latents))], 1)
    model = with_latent_states(model, outer)
    options = {"batch_size": batch_size, "step_size": step_size, "update": update, "pseudocount": pseudocount}
    rounds: list[GrowRound] = []
    number = 0
    while True:
        number += 1
        started = time.perf_counter()

        def record(epoch: EpochRecord, phase: str = f"round {number}") -> None:
            if on_epoch is not None:
                on_epoch(phase, epoch)

        history = model.fit(rows, latents=z, epochs=epochs, seed=seed + number, keep_best=False, on_epoch=record,
                            **options)
        if on_model is not None:
            on_model(model, z.copy())
        states = [slot.states for slot in model.latents]
        grown_patches = []  # (latent, grown patch, growth): put back together, one recompilation
        if min(states) < target:
            for j, k in enumerate(states):
                if k >= target:
                    continue
                patch = patch_model(model, j)
                xj = patch_data(model, j, rows)
                ll = patch.log_likelihood(xj).reshape(len(rows), k)  # (N, k): every head
                z[:, j] = ll.argmax(1)  # step 2: re-label by the circuit's own likelihoods
                own = ll[np.arange(len(rows)), z[:, j]]
                chosen = select_clusters(own, z[:, j], fraction, target - k)
                if not chosen:
                    continue
                members = np.isin(z[:, j], chosen)
                flows = patch.flows(xj[members], heads=z[members, j])
                grown, growth = patch_grow(patch, flows, chosen, threshold, share)
                grown_patches.append((j, grown, growth))
                z[:, j] = split_clusters(embeddings[:, j], z[:, j], chosen, k, seed=seed + j)
            model = with_patches(model, grown_patches, share) if grown_patches else model
        valid_ll = None if valid is None else float(model.log_likelihood(valid).mean())
        rounds.append(GrowRound(number, tuple(slot.states for slot in model.latents), history[-1].train_ll,
                                valid_ll, model.num_parameters, time.perf_counter() - started))
        if on_round is not None:
            on_round(rounds[-1])
        if not grown_patches:
            return model, z, rounds


def patch_grow(patch: Model, flows, chosen: list[int], threshold: float, share: float):
    """Algorithm 1 on a patch circuit: the chosen heads and the units below them with enough flow."""
    return grow(patch, flows, {patch.graph.root: chosen}, threshold, share)
