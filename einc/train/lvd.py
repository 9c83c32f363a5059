"""Latent variable distillation (LVD): train a circuit on latent assignments from a teacher.

The pipeline of Liu et al. (ICLR 2023; analysed in ICML 2023, ``lvd-distillation-to-pcs.md``):

1. materialise latents in the circuit: ``latent`` statements name the K-state latent of regions
   that every induced tree passes through (e.g. ``latent patches(over = img, size = [7, 7])``);
2. assign every training example a state of each latent: k-means over the teacher's per-latent
   embeddings, with one codebook shared by all positions (the paper ties the patch
   distributions; a VQ-VAE uses one codebook everywhere) — ``assign_latents``;
3. train on (x, z) pairs, maximising Σ log p(x, z) by EM (``model.fit(x, latents=z)``); with
   ``reassign`` rounds, re-assign each example's latents to their most probable states under
   the trained circuit (``reassign_latents``, the paper's step 2 of progressive growing) and train
   again;
4. sum the latents out and fine-tune with EM on x alone (``model.fit(x)``).

Step 3 maximises the circuit's ELBO under the teacher's posterior (paper §3, eq. 3); the circuit's
own posterior is exact, so right after it log p(x) ≥ the LVD objective ("the variational gap
closes for free"). ``distill`` runs steps 2–4 and reports that triple's circuit half.

    >>> model = einc.compile("examples/lvd/mnist_lvd.pc")                  # doctest: +SKIP
    >>> result = distill(model, x, features=teacher_features, epochs=5)    # doctest: +SKIP
    >>> result.objective, result.distilled_ll, result.final_ll             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from einc.backends.em import DEFAULT_PSEUDOCOUNT
from einc.io.data import as_rows, host_array, prepare_latents
from einc.errors import DataError, EincError
from einc.mixture import kmeans, nearest_centre
from einc.model import DEFAULT_BATCH_SIZE, DEFAULT_STEP_SIZE, EpochRecord, Model

DEFAULT_DISTILL_EPOCHS = 5
DEFAULT_FINETUNE_EPOCHS = 5


@dataclass(frozen=True)
class Codebook:
    """k-means centres shared by every latent position: state k of any latent is centre k."""

    centres: np.ndarray  # (K, D)

    def assign(self, features: Any, latents: int | None = None) -> np.ndarray:
        """(N, latents) states: each position's embedding to its nearest centre."""
        embeddings = per_latent_features(features, latents, self.centres.shape[1])
        n, positions, dims = embeddings.shape
        return nearest_centre(embeddings.reshape(n * positions, dims), self.centres).reshape(n, positions)


def per_latent_features(features: Any, latents: int | None = None, dims: int | None = None,
                        label: str = "teacher features") -> np.ndarray:
    """Teacher embeddings as a finite float (N, latents, D) array: one D-vector per example and
    latent, in the circuit's declaration order; (N, D) is accepted for a single latent."""
    array = np.asarray(host_array(features, label))
    if array.dtype.kind not in "biuf":
        raise DataError(f"{label}: holds {array.dtype} values; expected numbers")
    if array.ndim == 2 and latents in (None, 1):
        array = array[:, None, :]
    if array.ndim != 3:
        expected = f"(N, {latents}, D)" if latents else "(N, latents, D)"
        raise DataError(f"{label}: shape {array.shape}; expected {expected}: one embedding per example and latent")
    if latents is not None and array.shape[1] != latents:
        raise DataError(f"{label}: {array.shape[1]} embeddings per example; the circuit declares {latents} "
                        f"latents (shape (N, {latents}, D))")
    if dims is not None and array.shape[2] != dims:
        raise DataError(f"{label}: embeddings of size {array.shape[2]}; the codebook's are {dims}")
    if not np.all(np.isfinite(array)):
        n, position, _ = (int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise DataError(f"{label}: example {n + 1}, latent {position + 1} is not finite; expected finite numbers")
    return array.astype(np.float64, copy=False)


def assign_latents(features: Any, states: int, seed: int = 0, iterations: int = 50,
                   latents: int | None = None) -> tuple[np.ndarray, Codebook]:
    """Step 2: k-means with ``states`` centres over every example's every latent embedding
    together (one codebook shared across positions). Returns (z (N, latents), codebook).

    scikit-learn's k-means (``einc.mixture.kmeans``: k-means++ seeding from ``seed``, at most
    ``iterations`` Lloyd iterations; mini-batches for problems above ``einc.mixture.MINIBATCH_WORK``).
    """
    embeddings = per_latent_features(features, latents)
    n, positions, dims = embeddings.shape
    if n * positions < states:
        raise DataError(f"teacher features: {n * positions} embeddings for {states} latent states; "
                        f"k-means needs at least one embedding per state")
    assignment, centres = kmeans(embeddings.reshape(n * positions, dims), states, seed=seed, iterations=iterations)
    return assignment.reshape(n, positions), Codebook(centres)


def reassign_latents(model: Model, x: Any, batch_size: int = 1024) -> np.ndarray:
    """Each example's latents set to their most probable states under the circuit: the arg-max
    of the exact posterior p(Z_j = k | x) of every latent (one backward pass per batch)."""
    posterior = model.latent_posterior(x, batch_size=batch_size)
    return np.stack([p.argmax(1) for p in posterior], 1).astype(np.int64)


def shared_states(model: Model) -> int:
    """The latents' one number of states (a shared codebook needs one)."""
    if not model.latents:
        raise EincError("the circuit declares no latent variables; latent variable distillation needs "
                        "`latent` statements, e.g. `latent patches(over = img, size = [7, 7])`")
    states = sorted({slot.states for slot in model.latents})
    if len(states) > 1:
        raise EincError(f"the latents have {', '.join(map(str, states))} states; a codebook shared by all "
                        f"positions needs one number (give the latent regions one K)")
    return states[0]


@dataclass(frozen=True)
class DistillationResult:
    """What ``distill`` did and measured (means over the training examples, in nats).

    ``objective`` is the LVD objective, mean log p(x, z) after training on (x, z) (the paper's
    eq. 1); ``distilled_ll`` the mean log p(x) of that same circuit with the latents summed out
    (≥ the objective: the variational gap closed by the exact posterior); ``final_ll`` after
    fine-tuning on x.
    """

    latents: np.ndarray  # (N, latents): the assignments of the last (x, z) training round
    objective: float
    distilled_ll: float
    final_ll: float
    codebook: Codebook | None = None
    history: list[tuple[str, EpochRecord]] = field(default_factory=list)


def distill(model: Model, x: Any, latents: Any = None, features: Any = None,
            epochs: int = DEFAULT_DISTILL_EPOCHS, finetune_epochs: int = DEFAULT_FINETUNE_EPOCHS,
            reassign: int = 0, valid: Any = None, batch_size: int = DEFAULT_BATCH_SIZE,
            step_size: float = DEFAULT_STEP_SIZE, update: str = "batch",
            pseudocount: float = DEFAULT_PSEUDOCOUNT, seed: int = 0,
            on_epoch: Callable[[str, EpochRecord], None] | None = None) -> DistillationResult:
    """Steps 2–4 of LVD on ``model`` (trained in place): latents from ``latents`` (N, latents)
    or k-means over teacher ``features`` (N, latents, D); ``epochs`` of EM on log p(x, z), then
    ``reassign`` rounds of re-assignment and ``epochs`` more each, then ``finetune_epochs`` of EM
    on log p(x) (0: none). ``valid`` keeps the best fine-tuning epoch. ``on_epoch(phase, record)``
    sees every epoch (phase "distill", "distill 2", ..., "fine-tune").
    """
    if (latents is None) == (features is None):
        raise EincError("give either latents (the states of every example's latents) or teacher features "
                        "(embeddings to cluster), not both or neither")
    if isinstance(reassign, bool) or not isinstance(reassign, (int, np.integer)) or reassign < 0:
        raise EincError(f"reassign must be a whole number of at least 0, found {reassign!r}")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, (int, np.integer)) or finetune_epochs < 0:
        raise EincError(f"finetune_epochs must be a whole number of at least 0, found {finetune_epochs!r}")
    rows = len(as_rows(x, "train"))
    codebook = None
    if features is not None:
        states = shared_states(model)
        embeddings = per_latent_features(features, len(model.latents))
        if len(embeddings) != rows:
            raise DataError(f"teacher features: {len(embeddings)} examples for {rows} training rows; "
                            f"expected one (latents, D) block per row")
        z, codebook = assign_latents(embeddings, states, seed=seed, latents=len(model.latents))
    else:
        z = prepare_latents(model.latents, latents, rows)
    history: list[tuple[str, EpochRecord]] = []

    def recorder(phase: str) -> Callable[[EpochRecord], None]:
        def record(epoch: EpochRecord) -> None:
            history.append((phase, epoch))
            if on_epoch is not None:
                on_epoch(phase, epoch)
        return record

    options = {"batch_size": batch_size, "step_size": step_size, "update": update, "pseudocount": pseudocount}
    for round_number in range(reassign + 1):
        if round_number:
            z = reassign_latents(model, x)
        phase = "distill" if round_number == 0 else f"distill {round_number + 1}"
        model.fit(x, latents=z, epochs=epochs, seed=seed + round_number, keep_best=False,
                  on_epoch=recorder(phase), **options)
    objective = float(model.log_likelihood(x, latents=z).mean())
    distilled = float(model.log_likelihood(x).mean())
    final = distilled
    if finetune_epochs:
        model.fit(x, valid=valid, epochs=finetune_epochs, seed=seed + reassign + 1, on_epoch=recorder("fine-tune"),
                  **options)
        final = float(model.log_likelihood(x).mean())
    return DistillationResult(z, objective, distilled, final, codebook, history)
