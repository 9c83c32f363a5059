"""Mixtures of EiNets (EiNet paper §4.2): cluster the data, train one circuit per cluster, mix.

A mixture of circuits over the same variables is itself a PC: a sum node over the components'
roots. ``MixtureModel`` offers every query of ``Model``, computed exactly from the components:

    log p(x) = logsumexp_c ( log π_c + log p_c(x) )          (weights added in log space)

(the reference EiNet code subtracts the log-weights — a sign bug this avoids).

K-means (here, and for latent variable distillation: ``einc.train.lvd``, ``einc.train.lvd_pg``) is
scikit-learn's: full-batch or mini-batch, started by k-means++ or at given centres, multithreaded.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from einc.compiler.pipeline import CompileOptions
from einc.io.data import as_rows
from einc.backends.em import DEFAULT_PSEUDOCOUNT
from einc.io.files import atomic_write
from einc.progress import Progress, row_progress
from einc.errors import EincError
from einc.model import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_STEP_SIZE,
    EpochRecord,
    Model,
    compile,
    like_input,
)

FORMAT = "einc-mixture"
FORMAT_VERSION = 1

# k-means runs scikit-learn's MiniBatchKMeans (Sculley 2010: centres updated from batches of
# MINIBATCH_SIZE rows) rather than full-batch KMeans (Lloyd's iterations over every row) when
# rows × clusters × features, the work of one Lloyd iteration, exceeds MINIBATCH_WORK. On teacher
# embeddings (benchmarks/kmeans.py, one core of a 2-core Xeon) mini-batches ended 1–4% worse in
# the k-means objective and were no faster up to 240,000 × 8 × 16; at 240,000 × 64 × 16 (2.5e8)
# they took 1.6 s against 4.9 s. 1e9 (a million 16-number embeddings into 64 codes, ~20 s of full
# batches by linear extrapolation) is where the seconds saved start to outweigh the worse clusters.
MINIBATCH_WORK = 1_000_000_000
MINIBATCH_SIZE = 4096


def kmeans(data: np.ndarray, clusters: int, seed: int = 0, iterations: int = 50, init: np.ndarray | None = None,
           minibatch: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(assignments (N,), centres (C, D)) by scikit-learn's k-means: k-means++ seeding from
    ``seed`` (or the given ``init`` centres (C, D), from which the iterations start), then at most
    ``iterations`` Lloyd iterations until no row changes cluster — ``MiniBatchKMeans`` (that many
    passes at most, stopped when the batches' objective stalls) when ``minibatch`` is true, or is
    None and rows × clusters × features exceeds ``MINIBATCH_WORK``. The same data and seed give the
    same clusters; threads as torch's (``--threads``).

    Missing values count as 0, and the data are divided by their largest magnitude first (k-means
    is unchanged by a uniform scale): huge finite values (1e200) would otherwise overflow the
    squared distances to inf. An empty cluster is moved to a far row (scikit-learn's rule); with
    fewer distinct rows than clusters some centres repeat and their clusters stay empty.

    >>> rows = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> kmeans(rows, 2, init=np.array([[0.0], [5.0]]))[0].tolist()
    [0, 0, 1, 1]
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans  # ~1 s to import: only when clustering
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    x = np.nan_to_num(np.asarray(data, dtype=np.float64))
    if x.ndim != 2:
        raise EincError(f"k-means: data of shape {x.shape}; expected (samples, features)")
    if isinstance(clusters, bool) or not 1 <= clusters <= len(x):
        raise EincError(f"k-means: {clusters} clusters for {len(x)} samples")
    centres = None if init is None else np.nan_to_num(np.asarray(init, dtype=np.float64))
    if centres is not None and centres.shape != (clusters, x.shape[1]):
        raise EincError(f"k-means: initial centres of shape {centres.shape}; expected ({clusters}, {x.shape[1]})")
    scale = _scaled(x)[1] if centres is None else max(_scaled(x)[1], _scaled(centres)[1])
    if minibatch is None:
        minibatch = x.shape[0] * clusters * x.shape[1] > MINIBATCH_WORK
    # tol=0: stop when no row changes cluster (or the iterations run out), as Lloyd's algorithm
    # does; scikit-learn takes seeds below 2**32
    options = {"n_clusters": clusters, "init": "k-means++" if centres is None else centres / scale, "n_init": 1,
               "max_iter": iterations, "tol": 0.0, "random_state": int(seed) % 2**32}
    estimator = MiniBatchKMeans(batch_size=MINIBATCH_SIZE, **options) if minibatch else KMeans(**options)
    # einc's --threads sets torch's threads: k-means takes as many, so that a machine doing other
    # work is not oversubscribed (None, scikit-learn's default of all cores, when torch is not in use)
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    with warnings.catch_warnings(), threadpool_limits(threads, user_api="openmp"):
        # "fewer distinct points than clusters" or "did not converge in max_iter": the result stands
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(x / scale)
    return estimator.labels_.astype(np.int64), estimator.cluster_centers_ * scale


def nearest_centre(data: np.ndarray, centres: np.ndarray, squared: np.ndarray | None = None) -> np.ndarray:
    """Index of each row's nearest centre (missing values count as 0, as in ``kmeans``); data
    and centres are scaled together first, so that huge finite values do not overflow.
    ``squared`` (Σ x² per row) is used when the data need no scaling (magnitudes between 1e-100 and 1e100)."""
    x = np.nan_to_num(np.asarray(data, dtype=np.float64))
    centres = np.asarray(centres, dtype=np.float64)
    scale = max(_scaled(x)[1], _scaled(centres)[1])
    if 1 / _SAFE_MAGNITUDE < scale < _SAFE_MAGNITUDE:  # squares neither overflow nor underflow
        return _nearest(x, centres, squared)
    return _nearest(x / scale, centres / scale, None)


# Between 1e-100 and 1e100 squared distances neither overflow nor vanish in float64.
_SAFE_MAGNITUDE = 1e100


def _scaled(x: np.ndarray) -> tuple[np.ndarray, float]:
    """``x / s`` and ``s``, the largest finite magnitude in ``x`` (1 when all are 0)."""
    largest = float(np.abs(x).max()) if x.size else 0.0
    scale = largest if 0.0 < largest < np.inf else 1.0
    return x / scale, scale


def _nearest(x: np.ndarray, centres: np.ndarray, squared: np.ndarray | None) -> np.ndarray:
    squared = (x**2).sum(1) if squared is None else squared
    # squared distances (N, C) without forming (N, C, D)
    distances = squared[:, None] - 2 * x @ centres.T + (centres**2).sum(1)[None, :]
    return distances.argmin(1)


class MixtureModel:
    """A weighted mixture of compiled circuits over the same variables; itself a PC."""

    def __init__(self, components: list[Model], weights: np.ndarray) -> None:
        if not components:
            raise EincError("a mixture needs at least one component")
        columns = components[0].columns
        if any(c.columns != columns for c in components):
            raise EincError("mixture components must have the same variables in the same order")
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(components),) or np.any(weights < 0) or weights.sum() <= 0:
            raise EincError("mixture weights must be non-negative, one per component")
        self.components = components
        self.log_weights = np.log(weights / weights.sum())

    def __repr__(self) -> str:
        first = self.components[0]
        count = len(self.components)
        return (f"<einc.MixtureModel of {count} component{'s' if count != 1 else ''}, {self.num_parameters} "
                f"parameters in all; "
                f"first {first._description()}; {first.backend_name} on {first.device}, {first.dtype}>")

    @property
    def columns(self) -> list[str]:
        return self.components[0].columns

    @property
    def graph(self):
        return self.components[0].graph

    @property
    def dtype(self) -> str:
        return self.components[0].dtype

    @property
    def num_parameters(self) -> int:
        return sum(c.num_parameters for c in self.components) + len(self.components) - 1

    @property
    def exact(self) -> bool:
        """False when the components have neural (vae) leaves: log-likelihoods are then estimates."""
        return all(c.exact for c in self.components)

    def _component_ll(self, x: Any, missing: Any = None, samples: int | None = None,
                      progress: Progress = False) -> np.ndarray:
        """(N, C): log π_c + log p_c(x)."""
        with row_progress(progress, len(x) * len(self.components), "log-likelihood") as advance:
            def component(c: Model) -> np.ndarray:
                ll = c.log_likelihood(x, missing, samples=samples)
                advance(len(x))  # rows of every component in all
                return ll

            return np.stack([component(c) for c in self.components], 1) + self.log_weights

    def log_likelihood(self, x: Any, missing: Any = None, batch_size: int = 1024,
                       samples: int | None = None, progress: Progress = False) -> np.ndarray:
        """log p(x) of the mixture; ``samples``: IWAE samples for components with vae leaves;
        ``progress`` as ``Model.log_likelihood``'s, over the rows of every component.
        A torch tensor in gives a tensor out on its device, as ``Model`` queries do."""
        rows = as_rows(x, "x")
        return like_input(_logsumexp(self._component_ll(rows, missing, samples, progress), 1), x, self.dtype)

    def conditional_log_likelihood(self, x: Any, evidence: Any) -> np.ndarray:
        given = as_rows(evidence, "evidence").astype(bool)
        rows = as_rows(x, "x")
        return like_input(self.log_likelihood(rows) - self.log_likelihood(rows, missing=~given), x, self.dtype)

    def component_posterior(self, evidence: Any) -> np.ndarray:
        """(N, C) p(component | observed part of each row)."""
        joint = self._component_ll(as_rows(evidence, "evidence"))
        return like_input(np.exp(joint - _logsumexp(joint, 1)[:, None]), evidence, self.dtype)

    def sample(self, n: int | None = None, evidence: Any = None, seed: int | None = None,
               leaf_value: str = "sample") -> np.ndarray:
        """Unconditional (pick a component by π, sample it) or conditional samples (pick a
        component by its posterior given each row's evidence, then sample it conditionally)."""
        rng = np.random.default_rng(seed)
        if evidence is None:
            if n is None or isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise EincError(f"give n >= 1 samples, or evidence; found n={n!r}")
            self.components[0].check_memory(n, 32 * len(self.columns), f"{n} samples")
            rows = np.full((n, len(self.columns)), np.nan)
            choice = rng.choice(len(self.components), size=n, p=np.exp(self.log_weights))
        else:
            rows = as_rows(evidence, "evidence")
            posterior = self.component_posterior(rows)
            choice = (posterior.cumsum(1) > rng.random((len(rows), 1))).argmax(1)
        out = rows.copy()
        for c, component in enumerate(self.components):
            members = np.flatnonzero(choice == c)
            if len(members):
                out[members] = component.sample(evidence=rows[members], seed=int(rng.integers(2**31)), leaf_value=leaf_value)
        return like_input(out, evidence, self.dtype)

    def mpe(self, evidence: Any = None, n: int | None = None) -> np.ndarray:
        """Joint arg-max over the unobserved variables, each component's latent choices and the
        component itself: the best component's max-product completion."""
        rows = np.full((n or 1, len(self.columns)), np.nan) if evidence is None else as_rows(evidence, "evidence")
        completions = [c.mpe(evidence=rows) for c in self.components]
        scores = np.stack([c.max_log_likelihood(rows) for c in self.components], 1) + self.log_weights
        best = scores.argmax(1)
        return like_input(np.stack([completions[b][i] for i, b in enumerate(best)]), evidence, self.dtype)

    def save(self, path: str | os.PathLike) -> None:
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "components": len(self.components),
                "weights": np.exp(self.log_weights).tolist()}
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
        for index, component in enumerate(self.components):
            arrays.update(component.archive_arrays(prefix=f"component{index}/"))
        atomic_write(path, lambda stream: np.savez(stream, **arrays))


def fit_mixture(source_or_path: str | os.PathLike, train: np.ndarray, components: int, valid: np.ndarray | None = None,
                epochs: int = DEFAULT_EPOCHS, batch_size: int = DEFAULT_BATCH_SIZE, step_size: float = DEFAULT_STEP_SIZE,
                seed: int = 0, backend: str = "torch", device: str = "cpu", dtype: str = "float32",
                on_epoch: Callable[[int, EpochRecord], None] | None = None, method: str | None = None,
                learning_rate: float = DEFAULT_LEARNING_RATE, update: str = "batch", patience: int | None = None,
                options: CompileOptions | None = None, pseudocount: float = DEFAULT_PSEUDOCOUNT,
                **backend_options: Any) -> MixtureModel:
    """K-means on ``train`` into ``components`` clusters, one circuit trained per cluster with
    ``Model.fit`` (same options and defaults), mixed with the cluster proportions (EiNet paper §4.2)."""
    train = as_rows(train, "train")
    if isinstance(components, bool) or not isinstance(components, (int, np.integer)) or components < 1:
        raise EincError(f"components must be a whole number of at least 1, found {components!r}")
    assignment, centres = kmeans(train, components, seed)
    valid_array = None if valid is None else as_rows(valid, "valid")
    # each validation row validates the circuit of its nearest cluster
    valid_assignment = None if valid_array is None else nearest_centre(valid_array, centres)
    models, weights = [], []
    for c in range(components):
        members = train[assignment == c]
        if len(members) == 0:
            continue
        valid_members = None
        if valid_array is not None and np.any(valid_assignment == c):
            valid_members = valid_array[valid_assignment == c]
        model = compile(source_or_path, backend=backend, device=device, dtype=dtype, seed=seed + c,
                        options=options, **backend_options)
        model.fit(members, valid=valid_members, epochs=epochs, batch_size=batch_size, step_size=step_size,
                  method=method, learning_rate=learning_rate, update=update, pseudocount=pseudocount,
                  patience=patience if valid_members is not None else None,
                  on_epoch=None if on_epoch is None else (lambda record, c=c: on_epoch(c, record)))
        models.append(model)
        weights.append(len(members))
    return MixtureModel(models, np.asarray(weights, dtype=np.float64))


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(values, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(values - top), axis=axis))
