"""The public model object: compile a .pc circuit, query it, train it, save and load it."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from einc.backends.base import Batch, Params, create_backend, device_name, dtype_name
from einc.backends.em import DEFAULT_PSEUDOCOUNT
from einc.compiler.params import init_parameters, parameter_problems
from einc.compiler.pipeline import CompileOptions, check_options, compile_plan
from einc.compiler.size import DEFAULT_MAX_BYTES, format_bytes
from einc.io.data import as_rows, prepare, prepare_labels, prepare_latents
from einc.archive import OVERRIDES, ModelFileWriter
from einc.errors import DataError, EincError, ResourceError
from einc.ir.neural import DEFAULT_TRAINING_SAMPLES
from einc.ir.plan import LatentSlot, Plan
from einc.progress import Progress, row_progress

if TYPE_CHECKING:
    from einc.flows import Flows

# the one training recipe of the API, the CLI and mixtures (README: einc.model.DEFAULT_*)
from einc.train.loop import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, DEFAULT_STEP_SIZE
from einc.train.loop import EpochRecord, TrainingState
from einc.train.memory import fit_in_memory
from einc.train.options import (TrainingOptions, check_label_options, check_non_negative_int, check_positive_int,
                                check_used_options)





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
    ``backend_options`` go to the backend: ``precision="tf32"`` opts into TF32 tensor-core
    matmuls on CUDA (default ``"fp32"``, IEEE; refused on the CPU: backends/precision.py), and
    torch's ``fuse``/``capture``.

    >>> import einc
    >>> model = einc.compile("examples/tiny.pc", dtype="float64")   # doctest: +SKIP
    >>> model.log_likelihood([[0, 1, 1, 0]])                          # doctest: +SKIP
    """
    check_non_negative_int(seed, "seed")
    seed = int(seed)  # a NumPy integer would not go into the model file's JSON metadata
    device, dtype = device_name(device), dtype_name(dtype)  # also torch.device, torch.float64
    check_options(options)
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


class Model(ModelFileWriter):
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
        # float32 matmuls on CUDA: "fp32" (IEEE, the default) or "tf32" (backends/precision.py)
        self.precision: str = (backend_options or {}).get("precision", "fp32")
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
        if self._module is None:
            return self._params
        self._check_module_intact()
        return self._module.snapshot()

    def _check_module_intact(self) -> None:
        """``EincError`` when the shared module's tensors no longer have the model's dtype or
        device (``module().double()``, ``.half()``, ``.to(...)``): every query, ``save`` and
        ``fit`` read the parameters through here, so a converted module is refused with a
        message instead of a dtype mismatch deep inside torch (or a file of rounded weights)."""
        want_dtype, want_device = getattr(self.backend, "dtype", None), getattr(self.backend, "device", None)
        for tensor in self._module.free.values():
            if (want_dtype is not None and tensor.dtype != want_dtype) or (
                    want_device is not None and tensor.device.type != want_device.type):
                found = f"{str(tensor.dtype).replace('torch.', '')} on {tensor.device}"
                raise EincError(
                    f"the model's module was converted to {found} (by .to(), .double(), .half(), ...); the "
                    f"model runs at {self.dtype} on {want_device}: convert the module back (e.g. "
                    f"module.to({str(want_dtype).replace('torch.', 'torch.')})), or compile or load the model "
                    f"with the dtype and device you want (dtype='float64', device='cuda')")

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
            check_positive_int(samples, "samples")
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
        names = [spec.name for spec in self.plan.params]
        unknown = sorted(set(params) - set(names))
        if unknown:  # a misspelt name would otherwise be dropped without a word
            problems.append(f"{unknown[0]!r} is not a parameter of this model; its names are those of "
                            f"model.parameters(): {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}")
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

    def batch_bytes(self) -> int:
        """Bytes one sample occupies while a batch runs: every op's output (forward values,
        their gradients and the autograd copies: about 3 of each) plus the data row."""
        floats = sum(self.plan.op_cost(op)[2] for op in self.plan.ops)
        return 3 * floats * np.dtype(self.dtype).itemsize + 16 * self.graph.num_columns

    def check_batch(self, rows: int, what: str, samples: int | None = None, training: bool = False,
                    chunked: bool = True) -> None:
        """``ResourceError`` before a batch of ``rows`` that would not fit ``max_bytes``: the
        circuit's values per row, plus the vae leaves' networks at ``samples`` IWAE samples (all
        of them kept for the backward pass when ``training``; one chunk at a time in a forward
        query when ``chunked``). A large ``latent`` or ``--samples`` is refused here, with the
        numbers, instead of failing inside the allocator."""
        if self.exact:
            self.check_memory(rows, self.batch_bytes(), what)
            return
        from einc.ir.neural import DEFAULT_QUERY_SAMPLES

        samples = samples or (DEFAULT_TRAINING_SAMPLES if training else DEFAULT_QUERY_SAMPLES)
        copies = 3 if training else 1  # values, their gradients and autograd's saved copies
        itemsize = np.dtype(self.dtype).itemsize
        neural = copies * itemsize * self.plan.neural_floats(rows, samples, chunked and not training)
        needed = rows * self.batch_bytes() + neural
        if needed > self.max_bytes:
            one = self.batch_bytes() + copies * itemsize * self.plan.neural_floats(1, samples, False)
            advice = ("use fewer rows per batch" if one <= self.max_bytes else
                      "even one row does not fit: use fewer IWAE samples or a smaller vae latent/hidden")
            raise ResourceError(
                f"{what} with {samples:,} IWAE samples per vae leaf would need about "
                f"{format_bytes(needed)}, more than the limit of {format_bytes(self.max_bytes)}; "
                f"{advice}, or raise the limit (CompileOptions(max_bytes=...), --max-memory)")

    def _batches(self, data: Any, missing: Any, batch_size: int, labels: Any = None,
                 label: str = "data", latents: Any = None, samples: int | None = None,
                 chunked: bool = True) -> Iterator[Batch]:
        check_positive_int(batch_size, "batch_size")
        values, observed = prepare(self.graph, data, missing, label, self.dtype)
        rows = min(batch_size, len(values))
        self.check_batch(rows, f"a batch of {rows} samples", samples, chunked=chunked)
        label_array = None if labels is None else prepare_labels(labels, len(values), self.plan.heads)
        latent_array = None if latents is None else prepare_latents(self.plan.latents, latents, len(values))
        for start in range(0, len(values), batch_size):
            stop = start + batch_size
            yield Batch(values[start:stop], observed[start:stop],
                        None if label_array is None else label_array[start:stop],
                        None if latent_array is None else latent_array[start:stop])

    def log_likelihood(self, x: Any, missing: Any = None, batch_size: int = 1024, latents: Any = None,
                       samples: int | None = None, seed: int | None = None, progress: Progress = False) -> np.ndarray:
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
        ``progress``: True shows a bar over the rows (tqdm, stderr), a callable gets (rows done,
        rows in all) after every batch (``einc.progress``).
        """
        result = self._log_likelihood_heads(x, missing, batch_size, latents, samples, seed, progress)
        return like_input(result[:, 0] if self.plan.heads == 1 else result, x, self.dtype)

    def _log_likelihood_heads(self, x: Any, missing: Any = None, batch_size: int = 1024, latents: Any = None,
                              samples: int | None = None, seed: int | None = None,
                              progress: Progress = False) -> np.ndarray:
        noise = self.noise_options(samples, seed)
        out = []
        # the rows as the query reads them (a 1-D input is one row); converted only to count them
        total = len(as_rows(x, "x")) if progress else 0
        with row_progress(progress, total, "log-likelihood") as advance:
            for batch in self._batches(x, missing, batch_size, latents=latents, samples=samples):
                out.append(self.backend.log_likelihood(self.params, batch, **next(noise)))
                advance(len(batch.values))
        return np.concatenate(out, 0) if out else np.zeros((0, self.plan.heads))

    def noise_options(self, samples: int | None, seed: int | None) -> Iterator[dict[str, Any]]:
        """Per batch, the backend options of a stochastic query (none for exact circuits): the
        IWAE samples and a seed drawn from ``seed`` (default the model's), one per batch."""
        if samples is not None:
            check_positive_int(samples, "samples")
        if seed is not None:
            check_non_negative_int(seed, "seed")
        rng = np.random.default_rng(self.seed if seed is None else seed)
        while True:
            yield {} if self.exact else {"samples": samples, "seed": int(rng.integers(2**31))}

    def max_log_likelihood(self, evidence: Any, batch_size: int = 1024, latents: Any = None) -> np.ndarray:
        """max over unobserved variables and latent sum choices of log p(x, z): the value of the
        MPE completion (max-product upward pass); ``latents`` clamps declared latents. With neural
        leaves an approximation: each leaf region contributes its estimated marginal of the
        observed part (README)."""
        noise = self.noise_options(None, None)
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

    def flows(self, x: Any, heads: Any = None, missing: Any = None, latents: Any = None,
              batch_size: int = 1024) -> "Flows":
        """Circuit flows of every unit and sum edge, summed over the samples (``einc.flows``).

        Each sample's root flow is 1 at its head (``heads``: one head index per sample, or one
        int for all; optional for a single-head circuit) — the flows of log p(x | Z = head).
        ``missing`` marginalises entries of x and ``latents`` clamps latents, as in
        ``log_likelihood``: the flows are then those of log p(x_observed, z)."""
        from einc.flows import Flows

        if not self.plan.exact or not self.plan.trained_by_em:
            raise EincError("flows need an exact circuit with EM statistics; this one has neural (vae) leaves")
        rows = len(as_rows(x, "x"))
        if heads is None and self.plan.heads > 1:
            raise EincError(f"the circuit has {self.plan.heads} heads: give heads=, each sample's head (its cluster)")
        if heads is None or isinstance(heads, (int, np.integer)):
            self._check_head(0 if heads is None else heads)
            heads = np.full(rows, 0 if heads is None else int(heads), dtype=np.int64)
        total: Flows | None = None
        for batch in self._batches(x, missing, batch_size, labels=heads, latents=latents):
            values = tuple(self.backend.value_flows(self.params, batch, batch.labels))
            stats = self.backend.statistics(self.params, batch)
            edges = {name: np.asarray(self.backend.get({name: count})[name], dtype=np.float64)
                     for name, count in stats.weights.items()}
            part = Flows(self.plan, len(batch.values), values, edges)
            total = part if total is None else total + part
        if total is None:
            raise DataError("x: no samples; flows need at least one")
        return total

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
            check_positive_int(n, "n")
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
        for batch in self._batches(evidence, None, batch_size, label="evidence", latents=latents, chunked=False):
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
            batch_order: Callable[[int], np.ndarray] | None = None,
            on_message: Callable[[str], None] | None = None) -> list[EpochRecord]:
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
        plain maximum likelihood). With ``update="batch"`` it is added to every mini-batch's counts,
        where a unit of a K-unit region sees about ``batch_size``/K rows: its pull towards uniform
        grows with K/batch_size (``backends/em.py``), so large circuits want a small α.

        ``latents`` (N, number of latents; −1 = summed out) trains on (x, z) pairs: EM maximises
        log p(x, z), the first step of latent variable distillation (``einc.train.lvd``); the records'
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
        permutation, e.g. ``einc.train.schedule.Schedule.global_order`` to replay a data-parallel run.

        ``progress=True`` shows a bar over each epoch's steps (tqdm, on stderr); ``on_epoch(record)``
        sees every epoch's ``EpochRecord`` (epoch, train LL, valid LL, seconds) as it ends;
        ``on_message(line)`` gets a line whenever a checkpoint is written or patience stops the run
        (``einc train`` prints them). The epochs run in ``einc.train.loop.train``, the one loop
        that ``einc.train.distributed.fit`` and the command line run too.

        >>> history = model.fit(train, valid=valid, epochs=50, patience=3, progress=True,   # doctest: +SKIP
        ...                     on_epoch=lambda r: print(r.epoch, r.train_ll, r.valid_ll))  # doctest: +SKIP
        """
        return fit_in_memory(
            self, train, valid, epochs=epochs, method=method, batch_size=batch_size, step_size=step_size,
            update=update, learning_rate=learning_rate, labels=labels, valid_labels=valid_labels, keep_best=keep_best,
            seed=seed, progress=progress, on_epoch=on_epoch, patience=patience, checkpoint=checkpoint,
            checkpoint_every=checkpoint_every, resume=resume, pseudocount=pseudocount, latents=latents,
            valid_latents=valid_latents, samples=samples, batch_order=batch_order, on_message=on_message)

    def check_training_options(self, method: str | None, update: str, step_size: float, *, epochs: int = 1,
                               batch_size: int = DEFAULT_BATCH_SIZE, learning_rate: float = DEFAULT_LEARNING_RATE,
                               patience: int | None = None, checkpoint_every: int = 0,
                               has_valid: bool = False, pseudocount: float = DEFAULT_PSEUDOCOUNT,
                               samples: int = DEFAULT_TRAINING_SAMPLES, labels: Any = None,
                               valid_labels: Any = None) -> TrainingOptions:
        """Raise a clear error for a training option this model cannot use (every option of
        ``fit``, each with its own message, class labels included), before any work;
        ``einc.train.distributed.fit`` checks its options here too. ``method=None`` resolves to
        "em", or "adam" for neural (vae) leaves."""
        method = method or ("em" if self.plan.trained_by_em else "adam")
        if method == "adam" and not hasattr(self.backend, "gradient_trainer"):
            raise EincError(f"method='adam' needs autograd: use backend='torch' (this model runs on '{self.backend_name}')")
        if method == "em" and not self.plan.trained_by_em:
            raise EincError("method='em' cannot train this circuit: its vae leaves are neural networks, trained by "
                            "gradient on the IWAE bound; use method='adam' (or leave method out)")
        check_used_options(method, self.exact, step_size, update, learning_rate, pseudocount, samples)
        check_label_options(labels, has_valid, valid_labels)
        return TrainingOptions.checked(epochs, method, batch_size, step_size, update, learning_rate, patience,
                                       checkpoint_every, has_valid, pseudocount, samples)

    def _select(self, ll: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """Per-sample log p from (N, heads): head 0, or each sample's labelled head."""
        if labels is None:
            return ll[:, 0]
        return ll[np.arange(len(ll)), labels]

    def mean_ll(self, values: np.ndarray, observed: np.ndarray, labels: np.ndarray | None,
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
