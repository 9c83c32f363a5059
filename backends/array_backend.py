"""Array backend: one interpreter of the einsum plan written against the NumPy API.

It runs as ``numpy`` on the CPU and as ``cupy`` on an NVIDIA GPU (the module namespace ``xp`` is
the only difference). NumPy is the readable reference; nothing here loops over samples or rows.

- Forward: a table ``FORWARD_RULES`` keyed by op type; each rule also has the max-product variant
  used by MPE. Einsums run their opt-einsum path from the plan, step by step, each pairwise step
  as one batched matmul (what ``opt_einsum.contract`` would do, without NumPy's einsum loops).
- EM: no autograd. ``compiler.backward.derive_backward`` turns the plan into a backward plan whose
  steps ``BACKWARD_RULES`` executes (keyed by step type); the M-step is ``backends.em``.
- Sampling and MPE: top-down backtracking (``BACKTRACK_RULES``), Gumbel-max for sampling.

Every op kind's rules live in its own module under ``backends/array_ops/`` (input, einsum,
mixing, hadamard); this file keeps the pass loops, operand reads and adjoint accumulation.

    >>> backend = ArrayBackend(plan, dtype="float64")            # doctest: +SKIP
    >>> params = backend.put(init_parameters(plan, seed=0))      # doctest: +SKIP
    >>> backend.log_likelihood(params, batch)                    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from einc.backends.array_ops import einsum, hadamard, mixing
from einc.backends.array_ops import input as input_op
from einc.backends.array_namespace import is_numpy, load_cupy, scatter_add, scatter_max, to_host
from einc.backends.array_ops.contract import contract, no_mass, pairwise_steps  # noqa: F401
from einc.backends.array_ops.walk import Sweep, Walk
from einc.backends.base import Batch, Params, Statistics, keep_freed_memory
from einc.backends.denormals import flushed
from einc.backends.em import em_update
from einc.backends.input_layer import leaf_coefficients
from einc.backends.input_layer import leaf_features as shared_leaf_features
from einc.backends.latents import log_mask
from einc.ir.backward_plan import (
    BackwardPlan,
    EinsumBackward,
    HadamardBackward,
    InputBackward,
    MixingBackward,
)
from einc.errors import BackendError
from einc.ir.families import ZERO_PROBABILITY
from einc.ir.plan import EinsumOp, HadamardOp, InputOp, MixingOp, Operand, Plan, RowRange, VaeOp

_DTYPES = ("float32", "float64")
# Backtracking choices (−1 or an index < K) are int32: CuPy's atomic scatter-max has no int64.
_CHOICE = np.int32


# ---------------------------------------------------------------- sampler
class ArraySampler:
    """Random draws for leaf sampling and Gumbel-max from one seeded NumPy/CuPy Generator."""

    def __init__(self, xp: ModuleType, seed: int) -> None:
        self.xp = xp
        self.generator = xp.random.default_rng(int(seed))

    def uniform(self, like: Any) -> Any:
        return self.generator.random(like.shape, dtype=like.dtype)

    def standard_normal(self, like: Any) -> Any:
        return self.generator.standard_normal(like.shape, dtype=like.dtype)

    def binomial(self, n: float, p: Any) -> Any:
        return self.generator.binomial(int(n), p.astype(np.float64)).astype(p.dtype)

    def poisson(self, rate: Any) -> Any:
        return self.generator.poisson(rate.astype(np.float64)).astype(rate.dtype)

    def categorical(self, probs: Any) -> Any:
        # inverse CDF: the index of the first cumulative probability above u·total
        cdf = self.xp.cumsum(probs, -1)
        u = self.uniform(probs[..., :1]) * cdf[..., -1:]
        index = self.xp.sum(cdf <= u, -1)
        return self.xp.minimum(index, probs.shape[-1] - 1).astype(probs.dtype)

    def gumbel(self, like: Any) -> Any:
        u = self.xp.clip(self.uniform(like), 1e-20, 1.0)
        return -self.xp.log(-self.xp.log(u))


# ---------------------------------------------------------------- per-call data
@dataclass(frozen=True)
class _Data:
    """A batch on the device: values and observed mask with one extra all-zero padding column."""

    x: Any  # (B, columns + 1)
    observed: Any  # (B, columns + 1)
    latents: Any = None  # (B, latents) clamped states, −1 summed out; None: all summed out

    @property
    def size(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class ResidentData:
    """A training set on the device: values and mask with the pad column, and each row's head."""

    x: Any  # (N, columns + 1)
    observed: Any  # (N, columns + 1)
    heads: Any  # (N,) int
    latents: Any = None  # (N, latents) int, or None


@dataclass(frozen=True)
class _Forward:
    """What a forward pass leaves for the backward pass: every value and, per op, its saved
    shifted operands (the tape is this return value, never state on the backend)."""

    values: list[Any]
    saved: list[tuple[Any, ...]]


class ArrayBackend:
    """The plan on NumPy (``device="cpu"``) or CuPy (``device="cuda[:N]"``)."""

    def __init__(
        self,
        plan: Plan,
        device: str = "cpu",
        dtype: str = "float32",
        xp: ModuleType | None = None,
        backward: BackwardPlan | None = None,
        capture: bool = False,
    ) -> None:
        if dtype not in _DTYPES:
            raise BackendError(f"unsupported dtype '{dtype}'; expected float32 or float64")
        if xp is None:
            xp = load_cupy() if device.startswith("cuda") else np
        self.xp = xp
        self.name = "numpy" if is_numpy(xp) else "cupy"
        # capture=True: each full EM step of an epoch is one replayed CUDA graph (cupy_graph.py)
        self.capture = capture
        self.capture_error: str | None = None
        self.captured_steps: dict[tuple, Any] = {}
        self.graphs: Any = None
        if capture:
            if is_numpy(xp):
                raise BackendError("capture=True records CUDA graphs: it needs the cupy backend")
            from einc.backends.cupy_graph import CupyGraphs

            self.graphs = CupyGraphs(xp)
        if self.name == "numpy":
            keep_freed_memory()  # each step's temporaries reuse warm pages (backends/base.py)
        # NumPy has no flush-to-zero switch; the entry points set the thread's x86 FTZ/DAZ bits
        # through torch's, which NumPy's loops obey too (backends/denormals.py)
        self.flush_denormals = self.name == "numpy"
        self.device = device
        if not is_numpy(xp) and device.startswith("cuda:"):
            xp.cuda.Device(int(device.split(":", 1)[1])).use()
        self.plan = plan
        self.dtype = np.dtype(dtype)
        self.num_columns = plan.graph.num_columns
        # the reverse-mode steps of the plan (EM without autograd), derived by the compiler
        backward = backward if backward is not None else plan.backward
        if backward is None:
            raise BackendError(f"the {self.name} backend needs the plan's backward steps, which this plan "
                               f"lacks (its op kinds are trained by autograd: use the torch backend)")
        self.backward = backward
        # data column indices per family block; padding (-1) points at the extra all-zero column
        self.columns: dict[str, Any] = {}
        self.valid: dict[str, Any] = {}
        for op in plan.ops:
            if isinstance(op, InputOp):
                for block in op.blocks:
                    cols = np.asarray(block.columns, dtype=np.int64)
                    self.valid[block.param] = xp.asarray(cols >= 0).astype(self.dtype)  # (L, S)
                    self.columns[block.param] = xp.asarray(
                        np.where(cols < 0, self.num_columns, cols)
                    )
        # gathers by index: device index arrays, and whether rows repeat (then scatter-add)
        # (op-kind rules add their own derived index arrays here, keyed by a tagged tuple)
        self.row_index: dict[tuple, tuple[Any, bool]] = {}
        for op in plan.ops:
            for operand in op.operands():
                for segment in operand.segments:
                    if not isinstance(segment, RowRange) and segment.rows not in self.row_index:
                        unique = len(set(segment.rows)) == len(segment.rows)
                        self.row_index[segment.rows] = (
                            xp.asarray(np.asarray(segment.rows, dtype=np.int64)),
                            unique,
                        )
        # clamped latents (backends/latents.py): per value holding latent rows, those rows, the
        # latents' columns of z and arange(K)
        self.latent_groups = {
            group.value: (
                xp.asarray(np.asarray(group.rows, dtype=np.int64)),
                xp.asarray(np.asarray(group.latents, dtype=np.int64)),
                xp.arange(group.states),
            )
            for group in plan.latent_groups
        }

    # ------------------------------------------------------------------ parameters and data
    def __getstate__(self) -> dict[str, Any]:
        """Pickled (``copy.deepcopy``, a pickled model) without the array module, which pickles
        not (its name is kept), the captured steps (keyed by id() of data a copy renews) and the
        CUDA graphs: a copy remakes them as at construction."""
        state = {name: value for name, value in self.__dict__.items() if name not in ("xp", "graphs")}
        return {**state, "captured_steps": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.xp = np if self.name == "numpy" else load_cupy()
        self.graphs = None
        if self.capture:
            from einc.backends.cupy_graph import CupyGraphs

            self.graphs = CupyGraphs(self.xp)

    def put(self, params: dict[str, np.ndarray]) -> Params:
        return {k: self.xp.asarray(np.asarray(v), dtype=self.dtype) for k, v in params.items()}

    def get(self, params: Params) -> dict[str, np.ndarray]:
        return {k: to_host(self.xp, v).astype(np.float64) for k, v in params.items()}

    def _data(self, batch: Batch) -> _Data:
        xp = self.xp
        pad = np.zeros((batch.values.shape[0], 1))
        x = xp.asarray(
            np.concatenate([np.asarray(batch.values, dtype=np.float64), pad], 1), dtype=self.dtype
        )
        observed = xp.asarray(
            np.concatenate([np.asarray(batch.observed, dtype=np.float64), pad], 1), dtype=self.dtype
        )
        latents = None if batch.latents is None else xp.asarray(np.asarray(batch.latents, dtype=np.int64))
        return _Data(x, observed, latents)

    def _read(self, operand: Operand, values: list[Any]) -> Any:
        """An operand's rows: a view for one range, else a concatenation of slices and gathers."""
        pieces = []
        for segment in operand.segments:
            source = values[segment.value]
            if isinstance(segment, RowRange):
                pieces.append(source[segment.start : segment.stop])
            else:
                pieces.append(source[self.row_index[segment.rows][0]])
        return pieces[0] if len(pieces) == 1 else self.xp.concatenate(pieces, 0)

    # ------------------------------------------------------------------ forward
    def leaf_coefficients(self, op: InputOp, params: Params, max_product: bool) -> list[Any]:
        """Per block Θ = [θ, −A(θ), 1, (max log f)] laid out (L, S, f, K) for the op's equation."""
        return [
            leaf_coefficients(self.xp, block, params[block.param], max_product).transpose(0, 1, 3, 2)
            for block in op.blocks
        ]

    def leaf_features(self, op: InputOp, data: _Data, max_product: bool) -> list[Any]:
        """Per block F = [T(x)·obs, obs, (log h(x)·obs), (missing)] laid out (B, L, S, f).

        Zero features where a variable is unobserved make marginalisation free and per sample; in
        max-product the 'missing' feature picks up max_x log f(x) instead.
        """
        features = []
        for block in op.blocks:
            cols = self.columns[block.param]  # (L, S)
            obs = data.observed[:, cols]  # (B, L, S)
            missing = (self.valid[block.param] - obs) if max_product else None
            block_features = shared_leaf_features(self.xp, block, data.x[:, cols], obs, missing)
            features.append(block_features.astype(self.dtype, copy=False))
        return features

    def forward(self, params: Params, data: _Data, max_product: bool = False) -> _Forward:
        """Every value of the plan; the latents ``data`` clamps are masked on their rows."""
        values: list[Any] = []
        saved: list[tuple[Any, ...]] = []
        masks = self.latent_masks(data.latents)
        for index, op in enumerate(self.plan.ops):
            rule = FORWARD_RULES.get(type(op))
            if rule is None:
                raise BackendError(
                    f"the {self.name} backend has no forward rule for {type(op).__name__}"
                )
            value, kept = rule(self, op, params, values, data, max_product)
            if index in masks:
                # −inf on the masked entries: the backward rules of the op give them no adjoint
                # (_scaled_adjoint is 0 where a value is −inf); what consumers pass back to them
                # is at most the e^-80 of their floored exponentials (backends/base.py)
                value = value.copy()
                value[self.latent_groups[index][0]] += masks[index]
            values.append(value)
            saved.append(kept)
        return _Forward(values, saved)

    def latent_masks(self, latents: Any) -> dict[int, Any]:
        """(R, B, K) log-masks per value holding latent rows (backends/latents.py); none when
        nothing is clamped."""
        if latents is None:
            return {}
        xp = self.xp
        zero = xp.zeros((), dtype=self.dtype)
        excluded = xp.full((), -np.inf, dtype=self.dtype)
        return {
            value: log_mask(xp, latents[:, columns].T, states, zero, excluded)
            for value, (_rows, columns, states) in self.latent_groups.items()
        }

    def _root(self, values: list[Any]) -> Any:
        value, row = self.plan.root
        return values[value][row]  # (B, heads)

    @flushed
    def log_likelihood(self, params: Params, batch: Batch, max_product: bool = False) -> np.ndarray:
        root = self._root(self.forward(params, self._data(batch), max_product).values)
        return to_host(self.xp, root).astype(np.float64)

    # ------------------------------------------------------------------ EM
    @flushed
    def statistics(self, params: Params, batch: Batch) -> Statistics:
        """E-step by the compiler-derived backward plan: n = W · ∂J/∂W (eq. 6), ∂J/∂Θ = Σ p·F."""
        heads = (
            np.zeros(batch.values.shape[0], dtype=np.int64)
            if batch.labels is None
            else np.asarray(batch.labels, dtype=np.int64)
        )
        data = self._data(batch)
        total, weights, leaf = self._statistics(params, data, self.xp.asarray(heads))
        return Statistics(float(total), data.size, weights, leaf)

    def _statistics(
        self, params: Params, data: _Data, heads: Any
    ) -> tuple[Any, dict[str, Any], dict[str, tuple[Any, Any]]]:
        """The E-step on device arrays: (Σ log p as a 0-d device array, weight counts, leaf
        statistics), with no transfer to the host, so a GPU epoch never waits on one."""
        total, weights, leaf, _forward, _adjoints = self._backward(params, data, heads)
        return total, weights, leaf

    def _backward(
        self, params: Params, data: _Data, heads: Any
    ) -> tuple[Any, dict[str, Any], dict[str, tuple[Any, Any]], _Forward, list[Any]]:
        """Forward and the derived backward plan: Σ log p, weight counts, leaf statistics, and
        the forward values with their adjoints ∂ Σ log p / ∂ value."""
        xp = self.xp
        forward = self.forward(params, data)
        samples = xp.arange(data.size)
        root = self._root(forward.values)
        total = xp.sum(root[samples, heads])
        adjoints: list[Any] = [None] * len(self.plan.ops)
        root_value, root_row = self.backward.root
        seed = xp.zeros_like(forward.values[root_value])
        # ∂J/∂ log p(x_b) = 1 at each sample's head; a sample of probability 0 (possible with
        # indicator leaves) has no posterior and gets no counts
        possible = root[samples, heads] > ZERO_PROBABILITY
        seed[root_row, samples, heads] = possible.astype(self.dtype)
        adjoints[root_value] = seed
        weights: dict[str, Any] = {}
        leaf: dict[str, tuple[Any, Any]] = {}
        sweep = Sweep(forward, adjoints, weights, leaf)
        for step in self.backward.steps:
            rule = BACKWARD_RULES.get(type(step))
            if rule is None:
                raise BackendError(
                    f"the {self.name} backend has no backward rule for {type(step).__name__}"
                )
            rule(self, step, params, sweep)
        return total, weights, leaf, forward, adjoints

    @flushed
    def latent_posterior(self, params: Params, batch: Batch, heads: np.ndarray) -> list[np.ndarray]:
        """p(Z_j = k | x, clamped latents) per latent: the adjoint of each latent's row, which is
        the adjoint of its log-mask (backends/latents.py), from one backward pass for all."""
        data = self._data(batch)
        if data.latents is None:
            data = _Data(data.x, data.observed, self.xp.full((data.size, len(self.plan.latents)), -1))
        _total, _weights, _leaf, forward, adjoints = self._backward(
            params, data, self.xp.asarray(np.asarray(heads, dtype=np.int64))
        )
        out = []
        for slot in self.plan.latents:
            adjoint = self._adjoint(slot.value, forward, adjoints)[slot.row]  # (B, K)
            out.append(to_host(self.xp, adjoint).astype(np.float64))
        return out

    def value_flows(self, params: Params, batch: Batch, heads: np.ndarray) -> list[np.ndarray]:
        """Every value's circuit flows summed over the batch, (rows, K) float64 each (einc.flows):
        the adjoints ∂ Σ_b log p_{head_b}(x_b) / ∂ value of the derived backward plan."""
        _total, _weights, _leaf, forward, adjoints = self._backward(
            params, self._data(batch), self.xp.asarray(np.asarray(heads, dtype=np.int64))
        )
        return [to_host(self.xp, self._adjoint(index, forward, adjoints).sum(1)).astype(np.float64)
                for index in range(len(self.plan.ops))]

    def _adjoint(self, index: int, forward: _Forward, adjoints: list[Any]) -> Any:
        if adjoints[index] is None:  # a value nothing read (possible only for the root's siblings)
            adjoints[index] = self.xp.zeros_like(forward.values[index])
        return adjoints[index]

    def _accumulate(
        self, operand: Operand, adjoint: Any, forward: _Forward, adjoints: list[Any]
    ) -> None:
        """Add an operand's adjoint (rows, B, K) into the adjoints of the values it read."""
        for segment, part in operand.split(adjoint):
            target = self._adjoint(segment.value, forward, adjoints)
            if isinstance(segment, RowRange):
                target[segment.start : segment.stop] += part
            else:
                rows, unique = self.row_index[segment.rows]
                if unique:
                    target[rows] += part
                else:
                    scatter_add(self.xp, target, rows, part)

    def _scaled_adjoint(self, adjoint: Any, value: Any, shift: Any) -> Any:
        """G = ∂J/∂S · exp(−(S − shift)) = ∂J/∂S / P, zero where S = −inf (P = 0: no mass)."""
        xp = self.xp
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = adjoint * xp.exp(shift - value)
        return xp.where(xp.isfinite(value), scaled, 0.0).astype(self.dtype, copy=False)

    @flushed
    def em_update(self, params: Params, stats: Statistics, step_size: float, pseudocount: float = 0.0) -> Params:
        return em_update(self.xp, self.plan, params, stats.weights, stats.leaf, step_size, pseudocount)

    # ------------------------------------------------------------------ resident training
    def upload(self, values: np.ndarray, observed: np.ndarray, labels: np.ndarray | None,
               latents: np.ndarray | None = None) -> ResidentData:
        """Put a whole training set on the device once (with the zero pad column)."""
        data = self._data(Batch(values, observed, None, latents))
        heads = np.zeros(len(values), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        return ResidentData(data.x, data.observed, self.xp.asarray(heads), data.latents)

    @flushed
    def train_epoch(self, params: Params, data: ResidentData, order: np.ndarray, batch_size: int,
                    step_size: float, pseudocount: float = 0.0) -> tuple[Params, float]:
        """One epoch of stochastic EM over resident ``data`` in ``order``: E-step and M-step per
        batch on the device, one transfer to the host (Σ log p) at the end."""
        if self.capture:
            from einc.backends.cupy_graph import captured_epoch

            result = captured_epoch(self, params, data, order, batch_size, step_size, pseudocount)
            if result is not None:
                return result
        xp = self.xp
        order_device = xp.asarray(np.asarray(order, dtype=np.int64))
        total = xp.zeros((), dtype=self.dtype)
        for start in range(0, len(order), batch_size):
            params, batch_total = self.eager_step(params, data, order_device[start : start + batch_size],
                                                  step_size, pseudocount)
            total = total + batch_total
        return params, float(total)

    def eager_step(self, params: Params, data: ResidentData, index: Any, step_size: float,
                   pseudocount: float) -> tuple[Params, Any]:
        """One EM step on the rows ``index`` (a device array) of resident ``data``: the new
        parameters and the batch's Σ log p as a 0-d device array."""
        batch_total, weights, leaf = self.batch_statistics(params, data, index)
        return em_update(self.xp, self.plan, params, weights, leaf, step_size, pseudocount), batch_total

    def batch_statistics(
        self, params: Params, data: ResidentData, index: Any
    ) -> tuple[Any, dict[str, Any], dict[str, tuple[Any, Any]]]:
        """The E-step on the rows ``index`` of resident ``data``, all on the device: Σ log p (0-d),
        weight counts, leaf statistics (what a captured step records, backends/cupy_graph.py)."""
        batch = _Data(data.x[index], data.observed[index], None if data.latents is None else data.latents[index])
        return self._statistics(params, batch, data.heads[index])

    # ------------------------------------------------------------------ sampling and MPE
    @flushed
    def backtrack(
        self, params: Params, batch: Batch, mpe: bool, leaf_value: str, heads: np.ndarray, seed: int
    ) -> np.ndarray:
        xp = self.xp
        data = self._data(batch)
        sampler = ArraySampler(xp, seed)
        values = self.forward(params, data, max_product=mpe).values
        # choice[v][row, b]: which entry of row's K-vector sample b selected, −1 if not reached
        choice = [xp.full((op.rows, data.size), -1, dtype=_CHOICE) for op in self.plan.ops]
        root_value, root_row = self.plan.root
        choice[root_value][root_row] = xp.asarray(np.asarray(heads, dtype=_CHOICE))
        completed = data.x.copy()
        walk = Walk(values, choice, data, completed, mpe, leaf_value, sampler)
        for index in range(len(self.plan.ops) - 1, -1, -1):
            op = self.plan.ops[index]
            rule = BACKTRACK_RULES.get(type(op))
            if rule is None:
                raise BackendError(
                    f"the {self.name} backend has no backtrack rule for {type(op).__name__}"
                )
            rule(self, op, params, choice[index], walk)
        return to_host(xp, completed[:, : self.num_columns]).astype(np.float64)

    def _write(self, operand: Operand, rows_choice: Any, choice: list[Any]) -> None:
        """Merge child selections into the producers' choice arrays (max: −1 means not reached)."""
        xp = self.xp
        for segment, part in operand.split(rows_choice):
            target = choice[segment.value]
            if isinstance(segment, RowRange):
                target[segment.start : segment.stop] = xp.maximum(
                    target[segment.start : segment.stop], part
                ).astype(_CHOICE, copy=False)
            else:
                scatter_max(xp, target, self.row_index[segment.rows][0], part)


def _torch_only(backend: ArrayBackend, op: VaeOp, *args: Any) -> Any:
    """Neural leaves run on torch only (create_backend refuses such plans before this)."""
    raise BackendError(op.backend_problem(backend.name) or f"the {backend.name} backend cannot run {op.name}")


# ---------------------------------------------------------------- rule tables, keyed by type
# forward (and its max-product variant): (backend, op, params, values, data, max_product) -> (value, saved)
FORWARD_RULES: dict[type, Callable[..., tuple[Any, tuple[Any, ...]]]] = {
    InputOp: input_op.forward,
    EinsumOp: einsum.forward,
    MixingOp: mixing.forward,
    HadamardOp: hadamard.forward,
    VaeOp: _torch_only,
}
# backward plan steps: (backend, step, params, sweep) -> None; the rule adds into sweep's adjoints,
# weight counts and leaf statistics
BACKWARD_RULES: dict[type, Callable[..., None]] = {
    InputBackward: input_op.backward,
    EinsumBackward: einsum.backward,
    MixingBackward: mixing.backward,
    HadamardBackward: hadamard.backward,
}
# top-down sampling / MPE: (backend, op, params, chosen, walk) -> None, chosen: the op's choice row (R, B)
BACKTRACK_RULES: dict[type, Callable[..., None]] = {
    InputOp: input_op.backtrack,
    EinsumOp: einsum.backtrack,
    MixingOp: mixing.backtrack,
    HadamardOp: hadamard.backtrack,
    VaeOp: _torch_only,
}


# ---------------------------------------------------------------- registry factories
def numpy_backend(plan: Plan, device: str = "cpu", dtype: str = "float32") -> ArrayBackend:
    """The ``numpy`` backend: the array backend on the CPU."""
    if device != "cpu":
        raise BackendError(
            f"the numpy backend runs on the CPU, not '{device}'; use backend 'cupy' for a GPU"
        )
    return ArrayBackend(plan, device="cpu", dtype=dtype, xp=np)


def cupy_backend(plan: Plan, device: str = "cpu", dtype: str = "float32", capture: bool = False) -> ArrayBackend:
    """The ``cupy`` backend: the array backend on the current (``cpu``, the API default, or
    ``cuda``) or a named (``cuda:N``) CUDA device; ``capture=True`` replays each EM step of a
    resident epoch as one CUDA graph (backends/cupy_graph.py)."""
    if device != "cpu" and not device.startswith("cuda"):
        raise BackendError(
            f"the cupy backend runs on a CUDA device; expected 'cuda' or 'cuda:N', found '{device}'"
        )
    cupy = load_cupy()
    return ArrayBackend(
        plan, device=device if device.startswith("cuda") else "cuda", dtype=dtype, xp=cupy, capture=capture
    )
