"""The public model object: compile a .pc circuit, query it, train it, save and load it."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from einc.backends.base import Batch, Params, Statistics, create_backend
from einc.backends.em import DEFAULT_PSEUDOCOUNT
from einc.compiler.params import init_parameters, parameter_problems
from einc.compiler.pipeline import CompileOptions, compile_plan
from einc.compiler.size import DEFAULT_MAX_BYTES, format_bytes
from einc.data import as_rows, prepare, prepare_labels, prepare_latents
from einc.files import atomic_write, check_writable
from einc.ir.diagnostics import DataError, EincError, ModelFileError, ResourceError, TrainingError
from einc.ir.neural import DEFAULT_TRAINING_SAMPLES
from einc.ir.plan import LatentSlot, Plan

FORMAT = "einc-model"
# 2: circuits may have neural (vae) leaves, whose network weights are stored as parameters like
# any other; version 1 files (no neural leaves) read unchanged
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# CompileOptions that change the circuit the stored source compiles to (the CLI's --sums,
# --inputs, --heads): a model file records the ones given, and load applies them again
OVERRIDES = ("sums", "inputs", "heads")

# One training recipe for the API, the CLI and mixtures: the one the DEBD benchmark selected
# (benchmarks/README.md, "Training recipe"): online EM with batch 100 and step size 0.05.
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 100
DEFAULT_STEP_SIZE = 0.05
DEFAULT_LEARNING_RATE = 0.01  # Adam (method="adam")


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_ll: float
    valid_ll: float | None
    seconds: float


@dataclass(frozen=True)
class TrainingState:
    """Where training stands after a completed epoch: enough to continue it exactly.

    ``fit`` keeps it in ``model.training``; ``save`` writes it with the model and ``load`` reads
    it back, so ``fit(..., resume=True)`` (CLI: ``einc train --resume MODEL``) continues with the
    same parameters, batch order and optimiser state as if training had never stopped.
    """

    epoch: int  # epochs completed
    params: dict[str, np.ndarray] = field(repr=False)  # after that epoch (not the best ones)
    rng: dict[str, Any] = field(repr=False)  # the generator that orders each epoch's batches
    method: str = "em"
    optimizer: dict[str, np.ndarray] | None = field(default=None, repr=False)  # Adam's moments
    best_epoch: int | None = None
    best_valid_ll: float | None = None
    stale_epochs: int = 0  # epochs since the best validation LL (for patience)


def _read_source(source_or_path: str | os.PathLike) -> tuple[str, str]:
    """(text, filename) of a .pc file, or of .pc text given directly.

    A string without a line break is always a path: no circuit fits on one line (it needs at
    least a var, a leaf and a structure statement), so a mistyped path is reported as missing
    instead of being parsed as source.
    """
    text = os.fspath(source_or_path) if isinstance(source_or_path, os.PathLike) else source_or_path
    if not isinstance(text, str):
        raise EincError(f"expected a .pc path or .pc text, found a {type(source_or_path).__name__}")
    if "\n" in text and not isinstance(source_or_path, os.PathLike):
        return text, "<string>"
    from einc.compiler.pipeline import load_source

    return load_source(text)


def compile(source_or_path: str | os.PathLike, backend: str = "torch", device: str = "cpu",
            dtype: str = "float32", seed: int = 0, options: CompileOptions | None = None,
            **backend_options: Any) -> Model:
    """Compile a .pc file (or its text) into a model with freshly initialised parameters.

    ``options`` (``CompileOptions``) overrides K and sets the size limits the front end checks
    before building anything (``max_bytes`` at this ``dtype``, ``max_build_seconds``).

    >>> import einc
    >>> model = einc.compile("examples/tiny.pc", dtype="float64")   # doctest: +SKIP
    >>> model.log_likelihood([[0, 1, 1, 0]])                          # doctest: +SKIP
    """
    text, filename = _read_source(source_or_path)
    options = replace(options or CompileOptions(), dtype=dtype)
    options = options if options.target else replace(options, target=device)
    plan = compile_plan(text, filename, options)
    model = Model(plan, text, filename, backend, device, dtype, init_parameters(plan, seed), seed, backend_options)
    model.max_bytes = options.max_bytes
    model.overrides = {key: getattr(options, key) for key in OVERRIDES if getattr(options, key) is not None}
    return model


def _rows(latents: Any) -> int:
    """How many samples a ``latents`` array asks for (its rows; a single row if it is flat)."""
    shape = np.shape(latents)
    return int(shape[0]) if len(shape) >= 1 else 1


def like_input(result: Any, given: Any, dtype: str) -> Any:
    """A query's NumPy result as a torch tensor of the model's ``dtype`` on the device of ``given``
    when the query was given a tensor (a list of results: each), else unchanged: tensor in, tensor
    out; NumPy in, NumPy out. (No autograd: ``Model.module()`` is the differentiable form.)"""
    torch = sys.modules.get("torch")  # a tensor implies torch is imported: no import here
    if torch is None or not isinstance(given, torch.Tensor):
        return result
    if isinstance(result, list):
        return [like_input(part, given, dtype) for part in result]
    return torch.from_numpy(np.ascontiguousarray(result, dtype=dtype)).to(given.device)


def _check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise EincError(f"{name} must be a whole number of at least 1, found {value!r}")


def _check_non_negative_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise EincError(f"{name} must be a whole number of at least 0, found {value!r}")


class Model:
    """A compiled circuit with parameters on one backend.

    Data are arrays of shape (N, columns): one column per variable (a ``real(d)`` variable has d),
    in declaration order, arrays flattened row-major (see ``model.columns``). NaN means missing.
    Data may be NumPy arrays, nested lists or torch tensors; a query given a torch tensor returns
    torch tensors on that tensor's device (``log_likelihood``, ``max_log_likelihood``,
    ``conditional_log_likelihood``, ``latent_posterior``, ``sample``/``mpe`` with ``evidence``),
    otherwise NumPy arrays.
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
        # the torch.nn.Module handed out by module(): once it exists it holds the parameters
        self._module: Any = None
        self._params: Params = self.backend.put(params)
        # how far training has come (fit sets it; save and load carry it): see TrainingState
        self.training: TrainingState | None = None
        # the most memory one call may allocate for its rows (CompileOptions.max_bytes)
        self.max_bytes = DEFAULT_MAX_BYTES
        # K overrides the source was compiled with (OVERRIDES; saved with the model)
        self.overrides: dict[str, int] = {}

    # ------------------------------------------------------------------ description
    def __repr__(self) -> str:
        """What the model is, in one line: circuit, variables, parameters, backend, device, dtype.

        >>> einc.compile("examples/tiny.pc")                               # doctest: +SKIP
        <einc.Model 'tiny' from examples/tiny.pc: 4 variables (A, B, C, D), 27 parameters; torch on cpu, float32>
        """
        return f"<einc.Model {self._description()}; {self.backend_name} on {self.device}, {self.dtype}>"

    def _description(self) -> str:
        names = [variable.name for variable in self.graph.variables]
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        where = "" if self.filename.startswith("<") else f" from {self.filename}"
        extras = [f"{self.plan.heads} heads"] if self.plan.heads > 1 else []
        if self.plan.latents:
            extras.append(f"{len(self.plan.latents)} latent{'s' if len(self.plan.latents) > 1 else ''}")
        if not self.exact:
            extras.append("vae leaves (queries estimate)")
        if self.training is not None:
            extras.append(f"trained {self.training.epoch} epoch{'s' if self.training.epoch != 1 else ''}")
        name = "circuit" if self.graph.name.startswith("<") else f"'{self.graph.name}'"
        return (f"{name}{where}: {len(names)} variable{'s' if len(names) != 1 else ''} ({shown}), "
                f"{self.num_parameters} parameters" + "".join(f", {extra}" for extra in extras))

    @property
    def graph(self):
        return self.plan.graph

    @property
    def exact(self) -> bool:
        """True when queries are exact; False for circuits with neural (vae) leaves, whose
        log-likelihoods are importance-weighted (IWAE) estimates: lower bounds in expectation."""
        return self.plan.exact

    @property
    def params(self) -> Params:
        """The parameters the backend runs on (from the module, once ``module()`` handed it out)."""
        return self._params if self._module is None else self._module.snapshot()

    @params.setter
    def params(self, value: Params) -> None:
        if self._module is None:
            self._params = value
        else:
            self._module.load_params(value)

    def module(self, samples: int | None = None) -> Any:
        """The circuit as a ``torch.nn.Module`` sharing this model's parameters (torch backend).

        ``module(x)`` is log p(x) for a float tensor (N, columns), NaN = missing: shape (N,), or
        (N, heads) for a multi-head circuit; differentiable with respect to every parameter
        (unconstrained: log-weights under a softmax, each leaf family's unconstrained form,
        network weights). The parameters are shared: an optimiser step on the module is seen by
        every query of the model, and ``fit``/``set_parameters`` write into the module. Every
        call returns the same module. Moving it (``.to("cuda")``, ``.double()``, ``.float()``)
        moves the model with it (``model.device``/``model.dtype`` follow); ``.half()`` is refused.
        An observed value outside its variable's domain gives log p = −inf for its row (where
        ``log_likelihood`` raises a ``DataError``). With neural leaves each forward is an IWAE estimate with
        ``samples`` importance samples per leaf (default 5, the paper's training k).

        >>> module = model.module()                                            # doctest: +SKIP
        >>> optimiser = torch.optim.Adam(module.parameters(), lr=1e-2)         # doctest: +SKIP
        >>> loss = -module(torch.as_tensor(batch)).mean()                      # doctest: +SKIP
        >>> loss.backward(); optimiser.step()                                  # doctest: +SKIP
        """
        if not hasattr(self.backend, "module"):
            raise EincError(f"model.module() needs the torch backend; this model runs on '{self.backend_name}' "
                            f"(compile or load it with backend='torch')")
        if samples is not None:
            _check_positive_int(samples, "samples")
        if self._module is None:
            self._module = self.backend.module(self._params, samples or DEFAULT_TRAINING_SAMPLES)
            self._module.on_move = self._follow_module
        elif samples is not None:
            self._module.samples = int(samples)
        return self._module

    def _follow_module(self, backend: Any) -> None:
        """The module moved (``module.to(...)``, ``.double()``, ``.cuda()``): the model runs where its
        parameters now live."""
        self.backend = backend
        self.device = str(backend.device)
        self.dtype = str(backend.dtype).removeprefix("torch.")

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

    @property
    def latents(self) -> tuple[LatentSlot, ...]:
        """The circuit's latent variables (``latent`` statements) in declaration order — the
        columns of every ``latents=z`` argument — each with its ``name``, ``region`` and number of
        ``states`` (its region's K)."""
        return self.plan.latents

    def parameters(self) -> dict[str, np.ndarray]:
        """A float64 NumPy copy of every parameter."""
        return self.backend.get(self.params)

    def set_parameters(self, params: dict[str, np.ndarray]) -> None:
        """Replace every parameter; each must have the plan's shape and a value its family allows."""
        problems = parameter_problems(self.plan, params)
        if problems:
            raise EincError(f"set_parameters: {problems[0]}")
        self.params = self.backend.put({spec.name: params[spec.name] for spec in self.plan.params})

    # ------------------------------------------------------------------ queries
    def check_memory(self, rows: int, per_row: int, what: str) -> None:
        """``ResourceError`` before allocating ``rows`` × ``per_row`` bytes beyond ``max_bytes``
        (set from ``CompileOptions.max_bytes``; the CLI's --max-memory)."""
        needed = rows * per_row
        if needed > self.max_bytes:
            raise ResourceError(
                f"{what} would need about {format_bytes(needed)}, more than the limit of "
                f"{format_bytes(self.max_bytes)}; use fewer rows per call, or raise the limit "
                f"(CompileOptions(max_bytes=...), --max-memory)"
            )

    def _batch_bytes(self) -> int:
        """Bytes one sample occupies while a batch runs: every op's output (forward values,
        their gradients and the autograd copies: about 3 of each) plus the data row."""
        floats = sum(self.plan.op_cost(op)[2] for op in self.plan.ops)
        return 3 * floats * np.dtype(self.dtype).itemsize + 16 * self.graph.num_columns

    def _batches(self, data: Any, missing: Any, batch_size: int, labels: Any = None,
                 label: str = "data", latents: Any = None) -> Iterator[Batch]:
        _check_positive_int(batch_size, "batch_size")
        values, observed = prepare(self.graph, data, missing, label, self.dtype)
        rows = min(batch_size, len(values))
        self.check_memory(rows, self._batch_bytes(), f"a batch of {rows} samples")
        label_array = None if labels is None else prepare_labels(labels, len(values), self.plan.heads)
        latent_array = None if latents is None else prepare_latents(self.plan.latents, latents, len(values))
        for start in range(0, len(values), batch_size):
            stop = start + batch_size
            yield Batch(values[start:stop], observed[start:stop],
                        None if label_array is None else label_array[start:stop],
                        None if latent_array is None else latent_array[start:stop])

    def log_likelihood(self, x: Any, missing: Any = None, batch_size: int = 1024, latents: Any = None,
                       samples: int | None = None, seed: int | None = None) -> np.ndarray:
        """log p(x) per sample: shape (N,) — or (N, heads) for a multi-head circuit.

        Unobserved entries (NaN in x, or True in ``missing``, per sample) are marginalised exactly.
        ``latents`` (N, number of latents), in declaration order (``model.latents``): log p(x, z)
        with each latent clamped to its state, or summed out where its entry is −1.

        >>> model.log_likelihood(x, latents=[[2, -1]])   # log p(x, z1 = 2)  # doctest: +SKIP

        With neural (vae) leaves (``model.exact`` is False) the result is an estimate: each leaf
        region is the IWAE estimate with ``samples`` importance samples (default 100), and the
        circuit's output is a lower bound of log p(x) in expectation that tightens as ``samples``
        grows (SPVAE, Theorem 2). The noise is seeded by ``seed`` (default: the model's seed), so
        a call is repeatable. A leaf region with nothing observed still contributes exactly 0;
        see the README for what is approximate. Exact circuits ignore ``samples`` and ``seed``.
        """
        result = self._log_likelihood_heads(x, missing, batch_size, latents, samples, seed)
        return like_input(result[:, 0] if self.plan.heads == 1 else result, x, self.dtype)

    def _log_likelihood_heads(self, x: Any, missing: Any = None, batch_size: int = 1024, latents: Any = None,
                              samples: int | None = None, seed: int | None = None) -> np.ndarray:
        noise = self._noise_options(samples, seed)
        out = [self.backend.log_likelihood(self.params, batch, **next(noise))
               for batch in self._batches(x, missing, batch_size, latents=latents)]
        return np.concatenate(out, 0) if out else np.zeros((0, self.plan.heads))

    def _noise_options(self, samples: int | None, seed: int | None) -> Iterator[dict[str, Any]]:
        """Per batch, the backend options of a stochastic query (none for exact circuits): the
        IWAE samples and a seed drawn from ``seed`` (default the model's), one per batch."""
        if samples is not None:
            _check_positive_int(samples, "samples")
        if seed is not None:
            _check_non_negative_int(seed, "seed")
        rng = np.random.default_rng(self.seed if seed is None else seed)
        while True:
            yield {} if self.exact else {"samples": samples, "seed": int(rng.integers(2**31))}

    def max_log_likelihood(self, evidence: Any, batch_size: int = 1024, latents: Any = None) -> np.ndarray:
        """max over unobserved variables and latent sum choices of log p(x, z): the value of the
        MPE completion (max-product upward pass); ``latents`` clamps declared latents. With neural
        leaves an approximation: each leaf region contributes its estimated marginal of the
        observed part (README)."""
        noise = self._noise_options(None, None)
        out = [self.backend.log_likelihood(self.params, batch, max_product=True, **next(noise))
               for batch in self._batches(evidence, None, batch_size, label="evidence", latents=latents)]
        result = np.concatenate(out, 0) if out else np.zeros((0, self.plan.heads))
        return like_input(result[:, 0] if self.plan.heads == 1 else result, evidence, self.dtype)

    def latent_posterior(self, x: Any, missing: Any = None, latents: Any = None, head: int = 0,
                         batch_size: int = 1024) -> list[np.ndarray]:
        """The exact posterior p(Z_j = k | x) of every latent: a list, in declaration order, of
        one (N, K_j) array per latent (rows sum to 1).

        Unobserved entries of x are marginalised; ``latents`` conditions on clamped latents too
        (p(Z_j | x, z_clamped); a clamped latent's own posterior is one-hot). Computed as the
        gradient of log p(x) with respect to the latents' log-masks: one backward pass for all.

        >>> posterior = model.latent_posterior(x)          # doctest: +SKIP
        >>> z = np.stack([p.argmax(1) for p in posterior], 1)  # each latent's MAP state  # doctest: +SKIP
        """
        if not self.plan.latents:
            prepare_latents(self.plan.latents, None, 0)  # raises: the circuit has no latents
        self._check_head(head)
        out: list[list[np.ndarray]] = [[] for _ in self.plan.latents]
        for batch in self._batches(x, missing, batch_size, latents=latents):
            heads = np.full(len(batch.values), head)
            for j, posterior in enumerate(self.backend.latent_posterior(self.params, batch, heads)):
                out[j].append(posterior)
        return like_input([np.concatenate(parts, 0) if parts else np.zeros((0, slot.states))
                           for parts, slot in zip(out, self.plan.latents)], x, self.dtype)

    def conditional_log_likelihood(self, x: Any, evidence: Any, batch_size: int = 1024) -> np.ndarray:
        """log p(x | evidence) = log p(x) − log p(evidence); ``evidence`` is a mask of given columns."""
        rows = as_rows(x, "x")
        given = as_rows(evidence, "evidence").astype(bool)
        if given.shape != rows.shape:
            raise DataError(f"evidence: a mask of shape {given.shape}; expected the shape of x, {rows.shape}")
        return like_input(self.log_likelihood(rows, batch_size=batch_size)
                          - self.log_likelihood(rows, missing=~given, batch_size=batch_size), x, self.dtype)

    def sample(self, n: int | None = None, evidence: Any = None, seed: int | None = None,
               head: int = 0, leaf_value: str = "sample", batch_size: int = 4096, latents: Any = None) -> np.ndarray:
        """Draw samples: ``sample(n)`` unconditionally, or ``sample(evidence=x_with_nans)``
        conditionally (one completion per row; observed entries are kept).

        ``leaf_value="mean"`` emits leaf means instead of leaf samples (paper addendum D).
        ``latents`` (one row per sample; without n or evidence, one sample per row) clamps
        declared latents: the samples follow p(x | z).
        """
        if leaf_value not in ("sample", "mean", "mode"):
            raise EincError(f"leaf_value must be sample, mean or mode, not {leaf_value!r}")
        if n is None and evidence is None and latents is not None:
            n = _rows(latents)
        evidence_array = self._evidence(n, evidence)
        return like_input(self._backtrack(evidence_array, False, leaf_value, head, seed, batch_size, latents), evidence,
                          self.dtype)

    def mpe(self, evidence: Any = None, n: int | None = None, head: int = 0, batch_size: int = 4096,
            latents: Any = None) -> np.ndarray:
        """Most probable explanation: max-product upward pass + arg-max backtracking.

        Returns the evidence with unobserved entries completed by the joint arg-max over the
        unobserved variables and the circuit's latent sum choices; ``latents`` clamps declared
        latents (the arg-max is then over the choices consistent with them).
        """
        if n is None and evidence is None and latents is not None:
            n = _rows(latents)
        evidence_array = self._evidence(1 if n is None else n, evidence)  # n is used only without evidence
        return like_input(self._backtrack(evidence_array, True, "mode", head, 0, batch_size, latents), evidence,
                          self.dtype)

    def _evidence(self, n: int | None, evidence: Any) -> np.ndarray:
        if evidence is None:
            if n is None:
                raise EincError("give n >= 1 samples, or evidence")
            _check_positive_int(n, "n")
            # the evidence, the prepared values and mask, and the samples returned
            self.check_memory(n, 32 * self.graph.num_columns, f"{n} samples")
            return np.full((n, self.graph.num_columns), np.nan)
        return as_rows(evidence, "evidence")

    def _check_head(self, head: Any) -> None:
        if not isinstance(head, (int, np.integer)) or not 0 <= head < self.plan.heads:
            raise EincError(f"head must be an integer in 0..{self.plan.heads - 1}, found {head!r}")

    def _backtrack(self, evidence: np.ndarray, mpe: bool, leaf_value: str, head: int,
                   seed: int | None, batch_size: int, latents: Any = None) -> np.ndarray:
        self._check_head(head)
        rng = np.random.default_rng(self.seed if seed is None else seed)
        out = []
        for batch in self._batches(evidence, None, batch_size, label="evidence", latents=latents):
            heads = np.full(len(batch.values), head)
            out.append(self.backend.backtrack(self.params, batch, mpe, leaf_value, heads, int(rng.integers(2**31))))
        return np.concatenate(out, 0) if out else np.zeros((0, self.graph.num_columns))

    # ------------------------------------------------------------------ training
    def fit(self, train: Any, valid: Any = None, epochs: int = DEFAULT_EPOCHS, method: str | None = None,
            batch_size: int = DEFAULT_BATCH_SIZE, step_size: float = DEFAULT_STEP_SIZE, update: str = "batch",
            learning_rate: float = DEFAULT_LEARNING_RATE, labels: Any = None, valid_labels: Any = None,
            keep_best: bool = True, seed: int | None = None, progress: bool = False,
            on_epoch: Callable[[EpochRecord], None] | None = None, patience: int | None = None,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 0,
            resume: bool = False, pseudocount: float = DEFAULT_PSEUDOCOUNT, latents: Any = None,
            valid_latents: Any = None, samples: int = DEFAULT_TRAINING_SAMPLES,
            batch_order: Callable[[int], np.ndarray] | None = None) -> list[EpochRecord]:
        """Train with EM (paper §3.5). Returns one record per epoch (mean train/valid log-likelihood).

        ``update="batch"``: stochastic online EM, an M-step after every mini-batch with step size λ
        (eqs. 8–9). ``update="epoch"``: statistics accumulated over the whole epoch, one M-step per
        epoch (``step_size=1`` is classic full-batch EM, which never decreases the training LL).
        ``method="adam"``: gradient training instead (torch backend), Adam with ``learning_rate`` on
        log-weights and each leaf family's unconstrained parameters, minimising −mean log p.
        The defaults are the DEBD benchmark's recipe (online EM, batch 100, step size 0.05).
        ``method=None`` (the default) is "em", or "adam" for a circuit with neural (vae) leaves:
        those are trained only by gradient, jointly with the sum weights, on the IWAE bound with
        ``samples`` importance samples per leaf (SPVAE, Algorithm 1; the paper used k = 5, Adam,
        batch 128); the epoch records then hold the same estimator on train and valid, with the
        same noise every epoch, so that epochs compare fairly for keep_best and patience.

        ``pseudocount`` α (EM): Laplace smoothing at every M-step — α pseudo-observations per
        sum-weight vector and per categorical/Bernoulli/binomial leaf, spread evenly over its
        outcomes (a Dirichlet/Beta prior, so EM maximises the posterior; ``pseudocount=0`` is
        plain maximum likelihood).

        ``latents`` (N, number of latents; −1 = summed out) trains on (x, z) pairs: EM maximises
        log p(x, z), the first step of latent variable distillation (``einc.lvd``); the records'
        train LL is then the mean log p(x, z). ``valid_latents`` does the same for ``valid``
        (without it the validation LL is log p(x), every latent summed out).

        With ``valid``: ``keep_best`` keeps the parameters of the best validation epoch, and
        ``patience=N`` stops after N epochs without a better one. ``checkpoint=PATH`` with
        ``checkpoint_every=N`` writes the model (best parameters so far, with the training state)
        atomically every N epochs. ``resume=True`` continues a run from ``model.training`` (set by
        an earlier ``fit`` or read by ``load``) up to ``epochs`` epochs in all.

        Nothing done is lost: on KeyboardInterrupt the model keeps the best (or, without
        ``valid``, the last completed) epoch's parameters before the interrupt propagates; if an
        epoch makes the log-likelihood non-finite, the model goes back to the last good
        parameters and ``TrainingError`` is raised.

        ``batch_order(epoch)`` (1-based) may give each epoch's row order instead of a fresh random
        permutation, e.g. ``einc.schedule.Schedule.global_order`` to replay a data-parallel run.
        """
        options = self.check_training_options(method, update, step_size, epochs=epochs, batch_size=batch_size,
                                              learning_rate=learning_rate, patience=patience,
                                              checkpoint_every=checkpoint_every, has_valid=valid is not None,
                                              pseudocount=pseudocount, samples=samples)
        method = options.method
        values, observed = prepare(self.graph, train, None, "train", self.dtype)
        if len(values) == 0:
            raise DataError("train: no training samples")
        rows = min(batch_size, len(values))
        self.check_memory(rows, self._batch_bytes(), f"a training batch of {rows} samples")
        label_array = None if labels is None else prepare_labels(labels, len(values), self.plan.heads)
        latent_array = None if latents is None else prepare_latents(self.plan.latents, latents, len(values))
        if valid_latents is not None and valid is None:
            raise EincError("valid_latents clamp the latents of the validation rows: give valid too")
        validation = None
        if valid is not None:
            valid_values, valid_observed = prepare(self.graph, valid, None, "valid", self.dtype)
            if len(valid_values) == 0:
                raise DataError("valid: no validation samples")
            valid_label_array = None if valid_labels is None else prepare_labels(
                valid_labels, len(valid_values), self.plan.heads, "valid labels")
            valid_latent_array = None if valid_latents is None else prepare_latents(
                self.plan.latents, valid_latents, len(valid_values), "valid latents")
            validation = (valid_values, valid_observed, valid_label_array, valid_latent_array)
        if checkpoint is not None:
            check_writable(checkpoint, "checkpoint")
        run = _Run.start(self, resume, method, seed, validation is not None and keep_best)

        # a backend may run whole epochs of stochastic EM itself (data resident on its device)
        fast = update == "batch" and hasattr(self.backend, "train_epoch")
        resident = (self.backend.upload(values, observed, label_array, latent_array)
                    if fast or method == "adam" else None)
        trainer = None
        if method == "adam":
            trainer = self.backend.gradient_trainer(self.module(samples), learning_rate)
            if run.optimizer is not None:
                trainer.load_state(run.optimizer)
        # neural leaves: every epoch's train/valid estimates use the same noise (and k)
        evaluation = {} if self.exact else {"samples": samples, "seed": int(self.seed)}
        history: list[EpochRecord] = []
        epochs_range: Any = range(run.epoch + 1, epochs + 1)
        if progress:
            from tqdm import tqdm

            epochs_range = tqdm(epochs_range, desc="training", unit="epoch", leave=False)
        try:
            for epoch in epochs_range:
                started = time.perf_counter()
                order = (run.rng.permutation(len(values)) if batch_order is None
                         else _checked_order(batch_order(epoch), len(values)))
                if trainer is not None:
                    # the module holds the parameters: the model sees every step
                    noise_seed = None if self.exact else int(run.rng.integers(2**31))
                    trainer.epoch(resident, order, batch_size, noise_seed)
                elif fast:
                    self.params, _ = self.backend.train_epoch(self.params, resident, order, batch_size, step_size,
                                                              pseudocount)
                else:
                    self._em_epoch(values, observed, label_array, order, batch_size, step_size, update, pseudocount,
                                   latent_array)
                train_ll = self._mean_ll(values, observed, label_array, latent_array, **evaluation)
                valid_ll = None if validation is None else self._mean_ll(*validation, **evaluation)
                if not all(math.isfinite(v) for v in (train_ll, valid_ll) if v is not None):
                    run.restore(self)
                    raise TrainingError(run.diverged(epoch, train_ll, valid_ll, method))
                run.finish_epoch(self, epoch, valid_ll, trainer, method)
                record = EpochRecord(epoch, train_ll, valid_ll, time.perf_counter() - started)
                history.append(record)
                if on_epoch is not None:
                    on_epoch(record)
                if checkpoint is not None and options.checkpoint_every and epoch % options.checkpoint_every == 0:
                    self._write(checkpoint, run.best_params or self.parameters())
                if options.patience is not None and run.stale_epochs >= options.patience:
                    break
        except KeyboardInterrupt:
            run.restore(self)
            raise
        if run.keep_best and run.best_params is not None and run.best_epoch != run.epoch:
            run.restore(self)
        return history

    def check_training_options(self, method: str | None, update: str, step_size: float, *, epochs: int = 1,
                               batch_size: int = DEFAULT_BATCH_SIZE, learning_rate: float = DEFAULT_LEARNING_RATE,
                               patience: int | None = None, checkpoint_every: int = 0,
                               has_valid: bool = False, pseudocount: float = DEFAULT_PSEUDOCOUNT,
                               samples: int = DEFAULT_TRAINING_SAMPLES) -> _TrainingOptions:
        """Raise a clear error for a training option this model cannot use (every option of
        ``fit``, each with its own message), before any work; ``einc.distributed.fit`` checks its
        options here too. ``method=None`` resolves to "em", or "adam" for neural (vae) leaves."""
        method = method or ("em" if self.plan.trained_by_em else "adam")
        options = _TrainingOptions.checked(epochs, method, batch_size, step_size, update, learning_rate,
                                           patience, checkpoint_every, has_valid, self)
        _check_positive_int(samples, "samples")
        if isinstance(pseudocount, bool) or not isinstance(pseudocount, (int, float)) or not pseudocount >= 0.0 \
                or not math.isfinite(pseudocount):
            raise EincError(f"pseudocount must be a finite number of at least 0, found {pseudocount!r}")
        return options

    def _em_epoch(self, values: np.ndarray, observed: np.ndarray, labels: np.ndarray | None,
                  order: np.ndarray, batch_size: int, step_size: float, update: str,
                  pseudocount: float = DEFAULT_PSEUDOCOUNT, latents: np.ndarray | None = None) -> None:
        """The backend-independent EM epoch: statistics per batch, M-step per batch or per epoch."""
        accumulated: Statistics | None = None
        for start in range(0, len(values), batch_size):
            index = order[start : start + batch_size]
            batch = Batch(values[index], observed[index], None if labels is None else labels[index],
                          None if latents is None else latents[index])
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

    def _mean_ll(self, values: np.ndarray, observed: np.ndarray, labels: np.ndarray | None,
                 latents: np.ndarray | None = None, samples: int | None = None, seed: int | None = None) -> float:
        """Mean log p (or, with neural leaves, its estimate with ``samples`` and noise ``seed``)."""
        total = 0.0
        for start in range(0, len(values), 1024):
            batch = Batch(values[start : start + 1024], observed[start : start + 1024], None,
                          None if latents is None else latents[start : start + 1024])
            noise = {} if seed is None else {"samples": samples, "seed": seed + start}
            ll = self.backend.log_likelihood(self.params, batch, **noise)
            total += float(self._select(ll, None if labels is None else labels[start : start + 1024]).sum())
        return total / max(1, len(values))

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict[str, Any]:
        """What a model file records besides the parameters: the circuit source and settings."""
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "source": self.source,
            "filename": self.filename,
            "dtype": self.dtype,
            "seed": self.seed,
        }
        if self.overrides:  # e.g. einc train --sums 5: the source says another K
            meta["overrides"] = dict(self.overrides)
        return meta

    def archive_arrays(self, params: dict[str, np.ndarray] | None = None, prefix: str = "") -> dict[str, np.ndarray]:
        """The arrays of a model file under ``prefix``: metadata, parameters and training state."""
        meta = self.metadata()
        arrays = {f"{prefix}param/{k}": v for k, v in (params or self.parameters()).items()}
        if self.training is not None:
            state = self.training
            meta["training"] = {
                "epoch": state.epoch, "rng": state.rng, "method": state.method, "best_epoch": state.best_epoch,
                "best_valid_ll": state.best_valid_ll, "stale_epochs": state.stale_epochs,
            }
            arrays.update({f"{prefix}training/param/{k}": v for k, v in state.params.items()})
            arrays.update({f"{prefix}training/optimizer/{k}": v for k, v in (state.optimizer or {}).items()})
        arrays[f"{prefix}meta"] = np.array(json.dumps(meta))
        return arrays

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically: a .npz with the circuit source and parameters (no pickle),
        and the training state when the model was trained (so that training can resume).
        An existing read-only file is not replaced."""
        self._write(path, self.parameters())

    def _write(self, path: str | os.PathLike, params: dict[str, np.ndarray]) -> None:
        arrays = self.archive_arrays(params)
        atomic_write(path, lambda stream: np.savez(stream, **arrays))


def _checked_order(order: Any, count: int) -> np.ndarray:
    array = np.asarray(order)
    if array.shape != (count,) or not np.array_equal(np.sort(array), np.arange(count)):
        raise EincError(f"batch_order must return a permutation of the {count} training rows")
    return array.astype(np.int64)


@dataclass(frozen=True)
class _TrainingOptions:
    method: str  # "em" or "adam", resolved
    patience: int | None
    checkpoint_every: int

    @staticmethod
    def checked(epochs: Any, method: str, batch_size: Any, step_size: Any, update: str, learning_rate: Any,
                patience: Any, checkpoint_every: Any, has_valid: bool, model: Model) -> _TrainingOptions:
        """Every training option checked before any work, each with its own message."""
        if method not in ("em", "adam"):
            raise EincError(f"unknown training method '{method}'; expected 'em' or 'adam'")
        if method == "adam" and not hasattr(model.backend, "gradient_trainer"):
            raise EincError(f"method='adam' needs autograd: use backend='torch' (this model runs on '{model.backend_name}')")
        if method == "em" and not model.plan.trained_by_em:
            raise EincError("method='em' cannot train this circuit: its vae leaves are neural networks, trained by "
                            "gradient on the IWAE bound; use method='adam' (or leave method out)")
        if update not in ("batch", "epoch"):
            raise EincError(f"update must be 'batch' or 'epoch', not {update!r}")
        _check_positive_int(epochs, "epochs")
        _check_positive_int(batch_size, "batch_size")
        if method == "em" and not (isinstance(step_size, (int, float)) and 0.0 < step_size <= 1.0):
            raise EincError(f"step_size must be in (0, 1], found {step_size!r}")
        if method == "adam" and not (isinstance(learning_rate, (int, float)) and 0.0 < learning_rate < math.inf):
            raise EincError(f"learning_rate must be a positive number, found {learning_rate!r}")
        if patience is not None:
            _check_positive_int(patience, "patience")
            if not has_valid:
                raise EincError("patience stops on the validation log-likelihood: give valid data too")
        if checkpoint_every:
            _check_positive_int(checkpoint_every, "checkpoint_every")
        return _TrainingOptions(method, patience, int(checkpoint_every or 0))


@dataclass
class _Run:
    """The bookkeeping of one ``fit`` call: epoch count, batch-order generator, best and last good
    parameters (host copies), so that an interrupt or a divergence never loses finished work."""

    epoch: int
    rng: np.random.Generator
    keep_best: bool
    last_good: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] | None = None
    best_epoch: int | None = None
    best_valid_ll: float | None = None
    best_params: dict[str, np.ndarray] | None = None
    stale_epochs: int = 0

    @staticmethod
    def start(model: Model, resume: bool, method: str, seed: int | None, keep_best: bool) -> _Run:
        if not resume:
            rng = np.random.default_rng(model.seed if seed is None else seed)
            return _Run(0, rng, keep_best, model.parameters())
        state = model.training
        if state is None:
            raise EincError("nothing to resume: this model holds no training state (train it with fit first)")
        rng = np.random.default_rng()
        rng.bit_generator.state = state.rng
        # the model's own parameters are the best so far; training continues from the last epoch's
        best = model.parameters() if state.best_valid_ll is not None else None
        model.set_parameters(state.params)
        optimizer = state.optimizer if state.method == method else None
        return _Run(state.epoch, rng, keep_best, dict(state.params), optimizer, state.best_epoch,
                    state.best_valid_ll, best, state.stale_epochs)

    def finish_epoch(self, model: Model, epoch: int, valid_ll: float | None, trainer: Any, method: str) -> None:
        self.epoch = epoch
        self.last_good = model.parameters()
        if valid_ll is not None:
            if self.best_valid_ll is None or valid_ll > self.best_valid_ll:
                self.best_epoch, self.best_valid_ll, self.best_params = epoch, valid_ll, self.last_good
                self.stale_epochs = 0
            else:
                self.stale_epochs += 1
        self.optimizer = None if trainer is None else trainer.state()
        model.training = TrainingState(epoch, self.last_good, self.rng.bit_generator.state, method,
                                       self.optimizer, self.best_epoch, self.best_valid_ll, self.stale_epochs)

    def restore(self, model: Model) -> None:
        """Leave the model at its best validation epoch (with keep_best) or its last good one."""
        model.set_parameters(self.best_params if self.keep_best and self.best_params is not None else self.last_good)

    def diverged(self, epoch: int, train_ll: float, valid_ll: float | None, method: str,
                 problem: str | None = None) -> str:
        which = problem or f"train LL {train_ll}" + ("" if valid_ll is None else f", valid LL {valid_ll}")
        kept = (f"epoch {self.best_epoch} (best valid LL {self.best_valid_ll:.4f})"
                if self.keep_best and self.best_params is not None else
                f"epoch {self.epoch}" if self.epoch else "the initial parameters")
        knob = "learning_rate" if method == "adam" else "step_size"
        return (f"training diverged in epoch {epoch}: {which}; the model keeps the parameters of {kept}. "
                f"Try a smaller {knob}, dtype float64, or check the data for extreme values")


def _model_file_error(path: Path, problem: str) -> ModelFileError:
    return ModelFileError(f"{path}: not a valid einc model file: {problem}")


def load(path: str | os.PathLike, backend: str = "torch", device: str = "cpu", dtype: str | None = None,
         options: CompileOptions | None = None) -> Any:
    """Load a model (or a mixture) written by ``save``: recompiles the source, restores parameters.

    Every part is checked, and a failed check is a ``ModelFileError`` that says which: the file is
    an einc archive of a known format and version, its circuit source compiles, and every
    parameter is present with the plan's shape, a numeric dtype, finite values and values its
    family allows (normalised non-negative weights; leaf parameters inside their family's range).
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory; expected a model file written by einc train or Model.save")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head.startswith(b"PK"):
        hint = (" (it looks like a .pc circuit: train it first, e.g. einc train FILE.pc --data DATA -o MODEL.npz)"
                if path.suffix == ".pc" or head[:1].isalpha() or head[:1] == b"#" else "")
        raise ModelFileError(f"{path}: not an einc model file: not an .npz archive{hint}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = _read_meta(archive, "", path)
            if meta.get("format") == "einc-mixture":
                from einc.mixture import load_mixture

                return load_mixture(archive, meta, path, backend, device, dtype, options)
            return model_from_archive(archive, "", path, backend, device, dtype, options)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise _model_file_error(path, f"cannot read it ({str(error).splitlines()[0][:200] or type(error).__name__})") from None


def _read_meta(archive: Any, prefix: str, path: Path) -> dict[str, Any]:
    key = f"{prefix}meta"
    if key not in archive.files:
        raise ModelFileError(f"{path}: not an einc model file (no '{key}' entry)")
    raw = archive[key]
    if raw.shape != () or raw.dtype.kind != "U":
        raise _model_file_error(path, f"'{key}' is not a JSON text")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as error:
        raise _model_file_error(path, f"'{key}' is not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise _model_file_error(path, f"'{key}' is a JSON {type(meta).__name__}; expected an object")
    return meta


def _meta_field(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path, default: Any = None) -> Any:
    value = meta.get(key, default)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _model_file_error(path, f"metadata '{key}' is {value!r}; expected a {getattr(kind, '__name__', kind)}")
    return value


def _parameters(archive: Any, prefix: str, plan: Plan, path: Path, what: str) -> dict[str, np.ndarray]:
    """The parameters stored under ``prefix``, checked completely against the plan."""
    stored = {k[len(prefix):]: k for k in archive.files if k.startswith(prefix)}
    wanted = {spec.name for spec in plan.params}
    missing = sorted(wanted - set(stored))
    if missing:
        raise _model_file_error(path, f"{what} '{missing[0]}' is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = sorted(set(stored) - wanted)
    if unexpected:
        raise _model_file_error(path, f"unexpected {what} '{unexpected[0]}': the circuit has no such parameter")
    params: dict[str, np.ndarray] = {}
    for name in sorted(wanted):
        try:
            params[name] = archive[stored[name]]
        except ValueError as error:
            raise _model_file_error(path, f"{what} '{name}' cannot be read ({_first_line(error)})") from None
    problems = parameter_problems(plan, params)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise _model_file_error(path, f"{what} {problems[0]}{more}")
    return params


def _first_line(error: BaseException) -> str:
    text = str(error)
    if "pickle" in text:
        return "it holds Python objects"
    return text.splitlines()[0][:200] if text else type(error).__name__


def model_from_archive(archive: Any, prefix: str, path: Path, backend: str, device: str, dtype: str | None,
                       options: CompileOptions | None = None) -> Model:
    """Rebuild one model from the arrays under ``prefix`` of an open .npz archive, checking everything."""
    meta = _read_meta(archive, prefix, path)
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an einc model file (format {meta.get('format')!r})")
    if meta.get("version") not in READABLE_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise ModelFileError(f"{path}: model format version {meta.get('version')}; this einc reads versions {readable}")
    source = _meta_field(meta, "source", str, path)
    filename = _meta_field(meta, "filename", str, path, "<model>")
    stored_dtype = _meta_field(meta, "dtype", str, path, "float32")
    if stored_dtype not in ("float32", "float64"):
        raise _model_file_error(path, f"metadata 'dtype' is {stored_dtype!r}; expected float32 or float64")
    seed = _meta_field(meta, "seed", int, path, 0)
    overrides = _overrides(meta, path)
    dtype = dtype or stored_dtype
    try:
        options = options or CompileOptions()
        # the K the model was compiled with, unless the caller sets it
        options = replace(options, **{k: v for k, v in overrides.items() if getattr(options, k) is None})
        plan = compile_plan(source, filename, replace(options, dtype=dtype, target=options.target or device))
    except EincError as error:
        raise ModelFileError(f"{path}: the circuit stored in the model does not compile:\n{error}") from None
    params = _parameters(archive, f"{prefix}param/", plan, path, "parameter")
    model = Model(plan, source, filename, backend, device, dtype, params, seed)
    model.max_bytes = options.max_bytes
    model.overrides = {key: getattr(options, key) for key in OVERRIDES if getattr(options, key) is not None}
    if "training" in meta:
        model.training = _training_state(archive, prefix, meta["training"], plan, path)
    return model


def _overrides(meta: dict[str, Any], path: Path) -> dict[str, int]:
    overrides = _meta_field(meta, "overrides", dict, path, {})
    for key, value in overrides.items():
        if key not in OVERRIDES:
            raise _model_file_error(path, f"metadata 'overrides' has {key!r}; expected only {', '.join(OVERRIDES)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _model_file_error(path, f"metadata 'overrides' {key} is {value!r}; expected a whole number >= 1")
    return overrides


def _training_state(archive: Any, prefix: str, meta: Any, plan: Plan, path: Path) -> TrainingState:
    if not isinstance(meta, dict):
        raise _model_file_error(path, "the training state is not a JSON object")
    epoch = _meta_field(meta, "epoch", int, path)
    method = _meta_field(meta, "method", str, path, "em")
    rng = _meta_field(meta, "rng", dict, path)
    try:
        np.random.default_rng().bit_generator.state = rng
    except (TypeError, ValueError, KeyError):
        raise _model_file_error(path, "the training state's random generator state is not valid") from None
    best_valid = meta.get("best_valid_ll")
    if best_valid is not None and not (isinstance(best_valid, (int, float)) and math.isfinite(best_valid)):
        raise _model_file_error(path, f"the training state's best_valid_ll is {best_valid!r}")
    params = _parameters(archive, f"{prefix}training/param/", plan, path, "training-state parameter")
    optimizer_prefix = f"{prefix}training/optimizer/"
    optimizer = {k[len(optimizer_prefix):]: archive[k] for k in archive.files if k.startswith(optimizer_prefix)}
    if any(v.dtype.kind not in "biuf" or not np.all(np.isfinite(v)) for v in optimizer.values()):
        raise _model_file_error(path, "the training state's optimiser arrays are not finite numbers")
    return TrainingState(epoch, params, rng, method, optimizer or None, meta.get("best_epoch"), best_valid,
                         int(meta.get("stale_epochs", 0) or 0))
