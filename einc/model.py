"""The public model object: compile a .pc circuit, query it, train it, save and load it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from einc.backends.base import Batch, Params, Statistics, create_backend
from einc.backends.em import DEFAULT_PSEUDOCOUNT
from einc.compiler.params import init_parameters
from einc.compiler.pipeline import CompileOptions, compile_plan
from einc.data import prepare
from einc.files import atomic_write
from einc.ir.diagnostics import DataError, EincError, ModelFileError
from einc.ir.plan import Plan

FORMAT = "einc-model"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_ll: float
    valid_ll: float | None
    seconds: float


def _read_source(source_or_path: str | os.PathLike) -> tuple[str, str]:
    text = str(source_or_path)
    if "\n" not in text and (text.endswith(".pc") or Path(text).exists()):
        path = Path(text)
        if not path.exists():
            raise EincError(f"{path}: no such file")
        return path.read_text(), str(path)
    return text, "<string>"


def compile(source_or_path: str | os.PathLike, backend: str = "torch", device: str = "cpu",
            dtype: str = "float32", seed: int = 0, options: CompileOptions | None = None,
            **backend_options: Any) -> "Model":
    """Compile a .pc file (or its text) into a model with freshly initialised parameters.

    >>> import einc
    >>> model = einc.compile("examples/tiny.pc", dtype="float64")   # doctest: +SKIP
    >>> model.log_likelihood([[0, 1, 1, 0]])                          # doctest: +SKIP
    """
    text, filename = _read_source(source_or_path)
    plan = compile_plan(text, filename, options or CompileOptions())
    return Model(plan, text, filename, backend, device, dtype, init_parameters(plan, seed), seed, backend_options)


class Model:
    """A compiled circuit with parameters on one backend.

    Data are arrays of shape (N, columns): one column per variable (a ``real(d)`` variable has d),
    in declaration order, arrays flattened row-major (see ``model.columns``). NaN means missing.
    """

    def __init__(self, plan: Plan, source: str, filename: str, backend: str, device: str,
                 dtype: str, params: dict[str, np.ndarray], seed: int = 0,
                 backend_options: dict[str, Any] | None = None) -> None:
        self.plan = plan
        self.source = source
        self.filename = filename
        self.backend_name = backend
        self.device = device
        self.dtype = dtype
        self.seed = seed
        self.backend = create_backend(backend, plan, device=device, dtype=dtype, **(backend_options or {}))
        self.params: Params = self.backend.put(params)

    # ------------------------------------------------------------------ description
    @property
    def graph(self):
        return self.plan.graph

    @property
    def columns(self) -> list[str]:
        """Name of each data column, in order."""
        names = []
        for variable in self.graph.variables:
            if variable.domain.columns == 1:
                names.append(variable.name)
            else:
                names += [f"{variable.name}.{c}" for c in range(variable.domain.columns)]
        return names

    @property
    def num_parameters(self) -> int:
        return self.plan.num_parameters

    def parameters(self) -> dict[str, np.ndarray]:
        """A float64 NumPy copy of every parameter."""
        return self.backend.get(self.params)

    def set_parameters(self, params: dict[str, np.ndarray]) -> None:
        for spec in self.plan.params:
            if spec.name not in params or tuple(np.shape(params[spec.name])) != spec.shape:
                raise ModelFileError(f"parameter '{spec.name}' missing or not of shape {spec.shape}")
        self.params = self.backend.put({spec.name: params[spec.name] for spec in self.plan.params})

    # ------------------------------------------------------------------ queries
    def _batches(self, data: Any, missing: Any, batch_size: int, labels: Any = None,
                 label: str = "data") -> Iterator[Batch]:
        values, observed = prepare(self.graph, np.asarray(data, dtype=np.float64), missing, label)
        label_array = None if labels is None else self._labels(labels, len(values))
        for start in range(0, len(values), batch_size):
            stop = start + batch_size
            yield Batch(values[start:stop], observed[start:stop],
                        None if label_array is None else label_array[start:stop])

    def _labels(self, labels: Any, count: int) -> np.ndarray:
        array = np.asarray(labels).reshape(-1)
        if len(array) != count:
            raise DataError(f"labels: {len(array)} labels for {count} samples")
        if not np.all((array >= 0) & (array < self.plan.heads) & (np.floor(array) == array)):
            raise DataError(f"labels: expected integers in 0..{self.plan.heads - 1} (the circuit has {self.plan.heads} heads)")
        return array.astype(np.int64)

    def log_likelihood(self, x: Any, missing: Any = None, batch_size: int = 1024) -> np.ndarray:
        """log p(x) per sample: shape (N,) — or (N, heads) for a multi-head circuit.

        Unobserved entries (NaN in x, or True in ``missing``, per sample) are marginalised exactly.
        """
        result = self._log_likelihood_heads(x, missing, batch_size)
        return result[:, 0] if self.plan.heads == 1 else result

    def _log_likelihood_heads(self, x: Any, missing: Any = None, batch_size: int = 1024) -> np.ndarray:
        out = [self.backend.log_likelihood(self.params, batch) for batch in self._batches(x, missing, batch_size)]
        return np.concatenate(out, 0)

    def max_log_likelihood(self, evidence: Any, batch_size: int = 1024) -> np.ndarray:
        """max over unobserved variables and latent sum choices of log p(x, z): the value of the
        MPE completion (max-product upward pass)."""
        rows = np.atleast_2d(np.asarray(evidence, dtype=np.float64))
        out = [self.backend.log_likelihood(self.params, batch, max_product=True)
               for batch in self._batches(rows, None, batch_size, label="evidence")]
        result = np.concatenate(out, 0)
        return result[:, 0] if self.plan.heads == 1 else result

    def conditional_log_likelihood(self, x: Any, evidence: Any, batch_size: int = 1024) -> np.ndarray:
        """log p(x | evidence) = log p(x) − log p(evidence); ``evidence`` is a mask of given columns."""
        given = np.asarray(evidence, dtype=bool)
        x = np.asarray(x, dtype=np.float64)
        return self.log_likelihood(x, batch_size=batch_size) - self.log_likelihood(x, missing=~given, batch_size=batch_size)

    def sample(self, n: int | None = None, evidence: Any = None, seed: int | None = None,
               head: int = 0, leaf_value: str = "sample", batch_size: int = 4096) -> np.ndarray:
        """Draw samples: ``sample(n)`` unconditionally, or ``sample(evidence=x_with_nans)``
        conditionally (one completion per row; observed entries are kept).

        ``leaf_value="mean"`` emits leaf means instead of leaf samples (paper addendum D).
        """
        if leaf_value not in ("sample", "mean", "mode"):
            raise EincError(f"leaf_value must be sample, mean or mode, not {leaf_value!r}")
        evidence_array = self._evidence(n, evidence)
        return self._backtrack(evidence_array, False, leaf_value, head, seed, batch_size)

    def mpe(self, evidence: Any = None, n: int | None = None, head: int = 0, batch_size: int = 4096) -> np.ndarray:
        """Most probable explanation: max-product upward pass + arg-max backtracking.

        Returns the evidence with unobserved entries completed by the joint arg-max over the
        unobserved variables and the circuit's latent sum choices.
        """
        evidence_array = self._evidence(1 if n is None else n, evidence)  # n is used only without evidence
        return self._backtrack(evidence_array, True, "mode", head, 0, batch_size)

    def _evidence(self, n: int | None, evidence: Any) -> np.ndarray:
        if evidence is None:
            if n is None or n < 1:
                raise EincError("give n >= 1 samples, or evidence")
            return np.full((n, self.graph.num_columns), np.nan)
        array = np.asarray(evidence, dtype=np.float64)
        return array[None, :] if array.ndim == 1 else array

    def _backtrack(self, evidence: np.ndarray, mpe: bool, leaf_value: str, head: int,
                   seed: int | None, batch_size: int) -> np.ndarray:
        if not 0 <= head < self.plan.heads:
            raise EincError(f"head must be in 0..{self.plan.heads - 1}")
        rng = np.random.default_rng(self.seed if seed is None else seed)
        out = []
        for batch in self._batches(evidence, None, batch_size, label="evidence"):
            heads = np.full(len(batch.values), head)
            out.append(self.backend.backtrack(self.params, batch, mpe, leaf_value, heads, int(rng.integers(2**31))))
        return np.concatenate(out, 0)

    # ------------------------------------------------------------------ training
    def fit(self, train: Any, valid: Any = None, epochs: int = 1, method: str = "em",
            batch_size: int = 100, step_size: float = 0.5, update: str = "batch", learning_rate: float = 0.01,
            labels: Any = None, valid_labels: Any = None, keep_best: bool = True, seed: int | None = None,
            progress: bool = False, on_epoch: Callable[[EpochRecord], None] | None = None,
            pseudocount: float = DEFAULT_PSEUDOCOUNT) -> list[EpochRecord]:
        """Train with EM (paper §3.5). Returns one record per epoch (mean train/valid log-likelihood).

        ``update="batch"``: stochastic online EM, an M-step after every mini-batch with step size λ
        (eqs. 8–9). ``update="epoch"``: statistics accumulated over the whole epoch, one M-step per
        epoch (``step_size=1`` is classic full-batch EM, which never decreases the training LL).
        ``method="adam"``: gradient training instead (torch backend), Adam with ``learning_rate`` on
        log-weights and each leaf family's unconstrained parameters, minimising −mean log p.
        ``pseudocount`` α (EM): Laplace smoothing at every M-step — α pseudo-observations per
        sum-weight vector and per categorical/Bernoulli/binomial leaf, spread evenly over its
        outcomes (a Dirichlet/Beta prior, so EM maximises the posterior; ``pseudocount=0`` is
        plain maximum likelihood).
        With ``valid`` and ``keep_best``, the parameters of the best validation epoch are kept.
        """
        import time

        if method not in ("em", "adam"):
            raise EincError(f"unknown training method '{method}'; expected 'em' or 'adam'")
        if method == "adam" and not hasattr(self.backend, "gradient_trainer"):
            raise EincError(f"method='adam' needs autograd: use backend='torch' (this model runs on '{self.backend_name}')")
        if update not in ("batch", "epoch"):
            raise EincError(f"update must be 'batch' or 'epoch', not {update!r}")
        if method == "em" and not 0.0 < step_size <= 1.0:
            raise EincError(f"step_size must be in (0, 1], got {step_size}")
        if not pseudocount >= 0.0:
            raise EincError(f"pseudocount must be at least 0, got {pseudocount}")
        values, observed = prepare(self.graph, np.asarray(train, dtype=np.float64), None, "train")
        label_array = None if labels is None else self._labels(labels, len(values))
        rng = np.random.default_rng(self.seed if seed is None else seed)
        history: list[EpochRecord] = []
        best: tuple[float, dict[str, np.ndarray]] | None = None
        # a backend may run whole epochs of stochastic EM itself (data resident on its device)
        fast = update == "batch" and hasattr(self.backend, "train_epoch")
        resident = self.backend.upload(values, observed, label_array) if fast or method == "adam" else None
        trainer = self.backend.gradient_trainer(self.params, learning_rate) if method == "adam" else None
        epochs_range = range(1, epochs + 1)
        if progress:
            from tqdm import tqdm

            epochs_range = tqdm(epochs_range, desc="training", unit="epoch", leave=False)
        for epoch in epochs_range:
            started = time.perf_counter()
            order = rng.permutation(len(values))
            if trainer is not None:
                self.params, _ = trainer.epoch(resident, order, batch_size)
            elif fast:
                self.params, _ = self.backend.train_epoch(self.params, resident, order, batch_size, step_size,
                                                          pseudocount)
            else:
                self._em_epoch(values, observed, label_array, order, batch_size, step_size, update, pseudocount)
            train_ll = self._mean_ll(values, observed, label_array)
            valid_ll = None
            if valid is not None:
                valid_labels_array = None if valid_labels is None else self._labels(valid_labels, len(valid))
                valid_ll = float(np.mean(self._select(self._log_likelihood_heads(valid), valid_labels_array)))
            record = EpochRecord(epoch, train_ll, valid_ll, time.perf_counter() - started)
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
            if keep_best and valid_ll is not None and (best is None or valid_ll > best[0]):
                best = (valid_ll, self.parameters())
        if keep_best and best is not None:
            self.set_parameters(best[1])
        return history

    def _em_epoch(self, values: np.ndarray, observed: np.ndarray, labels: np.ndarray | None,
                  order: np.ndarray, batch_size: int, step_size: float, update: str,
                  pseudocount: float = DEFAULT_PSEUDOCOUNT) -> None:
        """The backend-independent EM epoch: statistics per batch, M-step per batch or per epoch."""
        accumulated: Statistics | None = None
        for start in range(0, len(values), batch_size):
            index = order[start : start + batch_size]
            batch = Batch(values[index], observed[index], None if labels is None else labels[index])
            stats = self.backend.statistics(self.params, batch)
            if update == "batch":
                self.params = self.backend.em_update(self.params, stats, step_size, pseudocount)
            else:
                accumulated = stats if accumulated is None else accumulated + stats
        if accumulated is not None:
            self.params = self.backend.em_update(self.params, accumulated, step_size, pseudocount)

    def _select(self, ll: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """Per-sample log p from (N, heads): head 0, or each sample's labelled head."""
        if labels is None:
            return ll[:, 0]
        return ll[np.arange(len(ll)), labels]

    def _mean_ll(self, values: np.ndarray, observed: np.ndarray, labels: np.ndarray | None) -> float:
        total = 0.0
        for start in range(0, len(values), 1024):
            batch = Batch(values[start : start + 1024], observed[start : start + 1024])
            ll = self.backend.log_likelihood(self.params, batch)
            total += float(self._select(ll, None if labels is None else labels[start : start + 1024]).sum())
        return total / max(1, len(values))

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict[str, Any]:
        """What a model file records besides the parameters: the circuit source and settings."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "source": self.source,
            "filename": self.filename,
            "dtype": self.dtype,
            "seed": self.seed,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically: a .npz with the circuit source and parameters (no pickle)."""
        arrays = {f"param/{k}": v for k, v in self.parameters().items()}
        arrays["meta"] = np.array(json.dumps(self.metadata()))
        atomic_write(path, lambda stream: np.savez(stream, **arrays))


def load(path: str | os.PathLike, backend: str = "torch", device: str = "cpu", dtype: str | None = None) -> Any:
    """Load a model (or a mixture) written by ``save``: recompiles the source, restores parameters."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            if meta.get("format") == "einc-mixture":
                from einc.mixture import load_mixture

                return load_mixture(archive, meta, path, backend, device, dtype)
            return model_from_archive(archive, "", path, backend, device, dtype)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: not an einc model file ({error})") from None


def model_from_archive(archive: Any, prefix: str, path: Path, backend: str, device: str, dtype: str | None) -> Model:
    """Rebuild one model from the arrays under ``prefix`` of an open .npz archive."""
    meta = json.loads(str(archive[f"{prefix}meta"]))
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an einc model file")
    if meta.get("version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: model format version {meta.get('version')}; this einc reads version {FORMAT_VERSION}")
    params = {k[len(prefix) + len("param/"):]: archive[k] for k in archive.files if k.startswith(f"{prefix}param/")}
    plan = compile_plan(meta["source"], meta["filename"])
    model = Model(plan, meta["source"], meta["filename"], backend, device, dtype or meta["dtype"],
                  init_parameters(plan, 0), int(meta.get("seed", 0)))
    model.set_parameters(params)
    return model

