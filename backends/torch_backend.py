"""PyTorch backend: interprets the plan with torch ops; EM statistics come from autograd (§3.5).

Every op kind is one entry of ``OP_RULES``, in its own module under ``backends/torch_ops/``
(forward and max-product, top-down backtracking). This file keeps the pass loop, how values are
read (``backends/torch_reads.py``: views and gathers of exactly the rows an op needs), the EM
step and its fusion; CUDA-graph capture is in ``backends/torch_capture.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from einc.backends.base import Batch, Params, Statistics, keep_freed_memory
from einc.backends.denormals import flushed
from einc.backends.em import em_update
from einc.backends.latents import log_mask
from einc.backends.torch_ops import (
    LeafOutput,
    Noise,
    PassData,
    TorchOpRule,
    einsum,
    hadamard,
    mixing,
    vae,
)
from einc.backends.torch_ops import input as input_op
from einc.backends.torch_ops.sampler import TorchSampler
from einc.backends.torch_capture import CapturedForward, CapturedStep, storage_key
from einc.errors import BackendError
from einc.ir.families import ZERO_PROBABILITY
from einc.ir.neural import DEFAULT_QUERY_SAMPLES, DEFAULT_TRAINING_SAMPLES
from einc.backends.torch_reads import PassValues, ReadPlan
from einc.ir.plan import (
    EinsumOp,
    HadamardOp,
    InputOp,
    MixingOp,
    Operand,
    Plan,
    RowIndex,
    RowRange,
    Segment,
    VaeOp,
)

if TYPE_CHECKING:
    from einc.backends.torch_module import CircuitModule, GradientTrainer

_DTYPES = {"float32": torch.float32, "float64": torch.float64}

# One rule per op kind (tests/test_op_kinds.py checks the coverage).
OP_RULES: dict[type, TorchOpRule] = {
    InputOp: input_op.RULE,
    EinsumOp: einsum.RULE,
    MixingOp: mixing.RULE,
    HadamardOp: hadamard.RULE,
    VaeOp: vae.RULE,
}


class TorchBackend:
    name = "torch"

    def __init__(self, plan: Plan, device: str = "cpu", dtype: str = "float32", fuse: bool | None = None,
                 capture: bool | None = None, batch_minor: bool | None = None) -> None:
        if dtype not in _DTYPES:
            raise BackendError(f"unsupported dtype '{dtype}'; expected float32 or float64")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("device 'cuda' requested but torch sees no CUDA device; use device=\"cpu\" "
                               "(--device cpu on the command line)")
        self.plan = plan
        # as given (None: the device's default), so that moved() builds the same backend elsewhere
        self.options: dict[str, bool | None] = {"fuse": fuse, "capture": capture, "batch_minor": batch_minor}
        self.device = torch.device(device)
        self.dtype = _DTYPES[dtype]
        if self.device.type == "cpu":
            keep_freed_memory()  # each step's temporaries reuse warm pages (backends/base.py)
        # entry points flush denormals while they compute on the CPU (backends/denormals.py)
        self.flush_denormals = self.device.type == "cpu"
        self.num_columns = plan.graph.num_columns
        # data column indices per family block; padding (-1) points at an extra all-zero column
        self.columns: dict[str, torch.Tensor] = {}
        for op in plan.ops:
            if isinstance(op, InputOp):
                for block in op.blocks:
                    cols = np.asarray(block.columns, dtype=np.int64)
                    cols = np.where(cols < 0, self.num_columns, cols)
                    self.columns[block.param] = torch.as_tensor(cols, device=self.device)
        self.row_index: dict[tuple[int, ...], torch.Tensor] = {}
        self.present: dict[tuple[float, ...], torch.Tensor] = {}
        # where values are split so that every contiguous read is a chunk (backends/torch_reads.py)
        self.reads = ReadPlan(plan)
        # Where each value's batch axis lies in memory. Values are indexed (rows, B, K) everywhere;
        # on the CPU the contractions store them batch-minor, (rows, K, B) in memory, so that the
        # batched matmuls have the batch (not K) as their wide side and elementwise work runs along
        # contiguous batches (about 1.7x faster K=10 epochs on a 2-core EPYC, benchmarks/README.md);
        # on CUDA batch-major, (rows, B, K), the layout of the measured GPU figures.
        self.batch_minor = (self.device.type == "cpu") if batch_minor is None else batch_minor
        self.leaf_rows: dict[str, torch.Tensor] = {
            param: cols.reshape(-1) for param, cols in self.columns.items()
        }  # (L·S,): the feature rows each block reads, padding = the zero column C
        # made at first use: input.feature_columns, input.coefficients (queries' kept Θ, by op
        # name), hadamard._scatter_add (expanded owner indices)
        self.feature_columns: dict[tuple[int, str], torch.Tensor] = {}
        self.query_coefficients: dict[str, Any] = {}
        self.scatter_index: dict[tuple[int, torch.Size], torch.Tensor] = {}
        # fuse=True: torch.compile the upward pass (with its backward) and the M-step, so their
        # elementwise work runs as a few fused kernels; worthwhile on GPUs, costly to compile.
        # Default: fuse on CUDA (a one-off compile of ~15-30 s per circuit), not on the CPU, and
        # not for plans with stochastic (neural) leaves, whose passes draw noise per call.
        self.fuse = (self.device.type == "cuda" and plan.exact) if fuse is None else fuse
        self._root_of = torch.compile(self._root_of_plain, dynamic=False) if self.fuse else self._root_of_plain
        # inference has its own compiled function (no autograd, other shapes): separate caches
        self._inference_root = torch.compile(self._inference_root_plain, dynamic=False) if self.fuse else self._inference_root_plain
        self._m_step = torch.compile(em_update, dynamic=False) if self.fuse else em_update
        # capture=True: each EM step and each inference batch size runs as one replayed CUDA graph
        # (the default on CUDA); capture=False runs eagerly, kernel by kernel
        self.capture = (self.device.type == "cuda" and plan.exact) if capture is None else capture
        if self.capture and self.device.type != "cuda":
            raise BackendError("capture=True needs a CUDA device (CUDA graphs)")
        if self.capture and not plan.exact:
            raise BackendError("capture=True replays fixed work, but this circuit's neural leaves draw new noise "
                               "in every pass; use capture=False")
        self.captured_steps: dict[tuple, CapturedStep] = {}
        self.captured_forwards: dict[tuple, CapturedForward] = {}
        # einsum kernels by name (compiler/kernels.py); where Triton cannot run, fused ops run the
        # same contraction as batched matmuls
        self.contractions = einsum.contractions(plan, self.device, self.batch_minor)
        self.real_column = torch.ones(self.num_columns + 1, dtype=self.dtype, device=self.device)
        self.real_column[-1] = 0.0
        # clamped latents: per value holding latent rows, those rows (backends/latents.py)
        self.latent_groups = plan.latent_groups
        self.latent_rows = {g.value: torch.as_tensor(g.rows, dtype=torch.long, device=self.device)
                            for g in self.latent_groups}
        self.latent_states = {g.value: torch.arange(g.states, device=self.device) for g in self.latent_groups}
        self.latent_columns = {g.value: torch.as_tensor(g.latents, dtype=torch.long, device=self.device)
                               for g in self.latent_groups}

    # Tables keyed by id() of objects that a pickle or deepcopy renews (the plan's ops, the index
    # tensors, the data), and the queries' kept Θ (weak references, which pickle not): a copy
    # starts them empty, or rebuilt from its own plan, as at construction.
    _REMADE_ON_COPY = ("query_coefficients", "feature_columns", "scatter_index", "captured_steps",
                       "captured_forwards")

    def __getstate__(self) -> dict[str, Any]:
        state = {name: value for name, value in self.__dict__.items() if name != "reads"}
        return {**state, **{name: {} for name in self._REMADE_ON_COPY}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.reads = ReadPlan(self.plan)  # keyed by id() of this copy's ops

    def moved(self, device: torch.device, dtype: torch.dtype) -> TorchBackend:
        """This plan's backend on another device or dtype (``CircuitModule.to``), with the options
        it was built with; ``BackendError`` (and nothing built) where einc cannot run."""
        names = {value: name for name, value in _DTYPES.items()}
        if dtype not in names:
            raise BackendError(f"einc circuits compute in float32 or float64, not {str(dtype).removeprefix('torch.')}: "
                               f"sums of products of probabilities need their range and precision; use .float() or "
                               f".double() (the module was left unchanged)")
        if device.type not in ("cpu", "cuda"):
            raise BackendError(f"einc circuits run on 'cpu' or 'cuda', not {str(device)!r} (the module was left "
                               f"unchanged)")
        try:
            return TorchBackend(self.plan, str(device), names[dtype], **self.options)
        except (RuntimeError, AssertionError) as error:  # a bad CUDA index, no driver, ...
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise BackendError(f"cannot move the circuit to {str(device)!r}: {reason} (the module was left "
                               f"unchanged)") from None

    # ------------------------------------------------------------------ parameters
    def put(self, params: dict[str, np.ndarray]) -> Params:
        return {k: torch.as_tensor(np.asarray(v), dtype=self.dtype, device=self.device) for k, v in params.items()}

    def get(self, params: Params) -> dict[str, np.ndarray]:
        return {k: v.detach().to("cpu", torch.float64).numpy() for k, v in params.items()}

    def _latents(self, batch: Batch) -> torch.Tensor | None:
        """The batch's clamped latent states (B, latents) on the device, or None."""
        if batch.latents is None:
            return None
        return torch.as_tensor(batch.latents, dtype=torch.long, device=self.device)

    def _latent_masks(self, latents: torch.Tensor | None) -> dict[int, torch.Tensor] | None:
        """Log-masks per value holding latent rows, (R, B, K) each (backends/latents.py); None
        when nothing is clamped. Device ops only, so a captured EM step can build them."""
        if latents is None:
            return None
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        excluded = torch.full((), float("-inf"), dtype=self.dtype, device=self.device)
        return {
            group.value: log_mask(torch, latents.index_select(1, self.latent_columns[group.value]).t(),
                                  self.latent_states[group.value], zero, excluded)
            for group in self.latent_groups
        }

    def _masked(self, index: int, value: torch.Tensor, masks: dict[int, torch.Tensor] | None) -> torch.Tensor:
        """Value ``index`` with its latent rows' log-masks added (out of place, layout kept)."""
        if masks is None or index not in masks:
            return value
        return value.index_put((self.latent_rows[index],), masks[index], accumulate=True)

    def _batch(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, observed) (B, C+1): the batch in the backend's dtype, then the all-zero pad column.
        On the CPU NumPy casts into padded arrays torch shares: torch's casts, without its slower
        conversion and the pad's cat (batch 512: 66 → 26 µs at 100 columns, 2.4 → 0.45 ms at 784)."""
        if self.device.type == "cpu" and isinstance(batch.values, np.ndarray) and isinstance(batch.observed, np.ndarray):
            rows, columns = batch.values.shape
            dtype = np.float32 if self.dtype == torch.float32 else np.float64
            x, observed = np.zeros((rows, columns + 1), dtype), np.zeros((rows, columns + 1), dtype)
            with np.errstate(over="ignore", invalid="ignore"):  # as torch's casts: ±inf, silently
                x[:, :columns], observed[:, :columns] = batch.values, batch.observed
            return torch.from_numpy(x), torch.from_numpy(observed)
        values = torch.as_tensor(batch.values, dtype=self.dtype, device=self.device)
        observed = torch.as_tensor(batch.observed, dtype=self.dtype, device=self.device)
        pad = torch.zeros((values.shape[0], 1), dtype=self.dtype, device=self.device)
        return torch.cat([values, pad], 1), torch.cat([observed, pad], 1)

    # ------------------------------------------------------------------ forward
    def _read(self, operand: Operand, values: list[torch.Tensor]) -> torch.Tensor:
        """The operand's rows (R, B, K): a view where it is one run of one value, else the
        concatenation of exactly the rows it reads (never of whole source values)."""
        if len(operand.segments) == 1:
            return self._segment(operand.segments[0], values)
        if self.batch_minor:
            # joined in the stored (n, K, B) order, so the copy runs along contiguous rows, and
            # transposed once: no transpose (and autograd node) per piece each way
            stored = [piece for segment in operand.segments for piece in self._stored_pieces(segment, values)]
            return torch.cat(stored, 0).transpose(1, 2)
        return torch.cat([self._segment(segment, values) for segment in operand.segments], 0)

    def _stored_pieces(self, segment: Segment, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """A segment's rows of a batch-minor value in the stored order, (n, K, B), as pieces:
        stored chunks of a ``PassValues`` split, a view, or one gather."""
        value = values[segment.value]
        if not isinstance(value, torch.Tensor):  # a deferred value (input.LookupLeaves): its rows
            return [value.stored(segment)]
        if isinstance(segment, RowIndex):
            return [value.transpose(1, 2).index_select(0, self._index(segment.rows))]
        if segment.start == 0 and segment.stop == value.shape[0]:
            return [value.transpose(1, 2)]
        stored = values.stored_chunks[segment.value] if isinstance(values, PassValues) else None
        if stored is None:
            return [value.transpose(1, 2)[segment.start : segment.stop]]
        first, last = self.reads.chunk_span(segment)
        return list(stored[first:last])

    def _segment(self, segment: Segment, values: list[torch.Tensor]) -> torch.Tensor:
        """One segment's rows (n, B, K): chunks of the pass's split values (``PassValues``), a
        view, or one gather of its rows."""
        value = values[segment.value]
        if isinstance(segment, RowIndex):
            return value.index_select(0, self._index(segment.rows))
        if segment.start == 0 and segment.stop == value.shape[0]:
            return value
        chunks = values.chunks[segment.value] if isinstance(values, PassValues) else None
        if chunks is None:
            return value[segment.start : segment.stop]
        first, last = self.reads.chunk_span(segment)
        if last == first + 1:
            return chunks[first]
        if self.batch_minor:
            return torch.cat(values.stored_chunks[segment.value][first:last], 0).transpose(1, 2)
        return torch.cat(chunks[first:last], 0)

    def _present(self, present: tuple[float, ...]) -> torch.Tensor:
        """A cached 0/1 mask (the backend's dtype) of present entries (torch_reads.LeafParts)."""
        return self._constant(self.present, present, self.dtype)

    def _index(self, rows: tuple[int, ...]) -> torch.Tensor:
        return self._constant(self.row_index, rows, torch.long)

    def _constant(self, cache: dict, entries: tuple, dtype: torch.dtype) -> torch.Tensor:
        """``entries`` as a tensor on the device, made once per plan (plans reuse the same tuples)."""
        cached = cache.get(entries)
        if cached is None:
            cached = torch.as_tensor(entries, dtype=dtype, device=self.device)
            cache[entries] = cached
        return cached

    def _leaf_coefficients(self, op: InputOp, params: Params, max_product: bool) -> list[torch.Tensor]:
        """Per block Θ = [θ, −A(θ), 1, (max log f)] shaped (L, S, K, f)."""
        return input_op.coefficients(self, op, params, max_product)

    def forward(self, params: Params, x: torch.Tensor, observed: torch.Tensor,
                max_product: bool = False, coefficients: dict[str, list[torch.Tensor]] | None = None,
                masks: dict[int, torch.Tensor] | None = None, noise: Noise | None = None,
                defer: bool = False) -> list[torch.Tensor]:
        """Every op's value for a batch ``x`` (B, C+1) with mask ``observed``; ``masks``
        (``_latent_masks``) clamp latents on their rows; ``noise`` says how stochastic ops draw
        (default: the training IWAE k from torch's global generator). ``defer``: values that
        only their readers need (passes that keep just the root) may be left unmaterialised,
        their rows computed at each read (``TorchOpRule.defer``), where the plan's reads make
        that worthwhile (``ReadPlan.deferrable``), and each value is let go after its last reader
        (``ReadPlan.released_after``): of the returned values only the root is then kept."""
        data = PassData(x, observed, noise or Noise(DEFAULT_TRAINING_SAMPLES), coefficients)
        values = PassValues(self.reads, self.batch_minor)
        for index, op in enumerate(self.plan.ops):
            rule = self._rule(op)
            if (defer and rule.defer is not None and index in self.reads.deferrable
                    and (masks is None or index not in masks)):
                deferred = rule.defer(self, op, params, max_product, data)
                if deferred is not None:
                    values.append(deferred)
                    continue
            value = rule.forward(self, op, params, values, max_product, data)
            values.append(self._masked(index, value, masks))
            if defer:  # a root-only pass: values no later op reads are let go
                for read in self.reads.released_after.get(index, ()):
                    values.release(read)
        return values

    def _rule(self, op: Any) -> TorchOpRule:
        rule = OP_RULES.get(type(op))
        if rule is None:
            raise BackendError(f"the torch backend has no rule for plan op {type(op).__name__} ('{op.name}')")
        return rule

    def _root(self, values: list[torch.Tensor]) -> torch.Tensor:
        value, row = self.plan.root
        return values[value][row]  # (B, heads)

    @flushed
    def log_likelihood(self, params: Params, batch: Batch, max_product: bool = False,
                       samples: int | None = None, seed: int | None = None) -> np.ndarray:
        """(B, heads) log-densities. With neural leaves an estimate: ``samples`` importance samples
        per leaf (default ``DEFAULT_QUERY_SAMPLES``) drawn from a generator seeded with ``seed``
        (None: torch's global generator); exact circuits ignore both."""
        x, observed = self._batch(batch)
        masks = self._latent_masks(self._latents(batch))
        with torch.no_grad():
            if self.capture and masks is None:
                # batch sizes are padded to power-of-two buckets so few graphs get captured
                bucket = max(64, 1 << (x.shape[0] - 1).bit_length())
                root = self._captured_forward(params, bucket, max_product).run(x, observed)
            else:  # clamped latents run eagerly (captured graphs are per batch size)
                noise = self.noise(samples, seed)
                root = self._root(self.forward(params, x, observed, max_product, masks=masks, noise=noise,
                                               defer=not self.fuse))
        return root.to("cpu", torch.float64).numpy()

    def noise(self, samples: int | None, seed: int | None) -> Noise:
        """The noise of a query: ``samples`` per neural leaf from a generator seeded with ``seed``."""
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(int(seed))
        return Noise(DEFAULT_QUERY_SAMPLES if samples is None else int(samples), generator)

    def _captured_forward(self, params: Params, batch_size: int, max_product: bool) -> "CapturedForward":
        key = (batch_size, max_product, storage_key(params))
        captured = self.captured_forwards.get(key)
        if captured is None:
            if len(self.captured_forwards) > 8:
                self.captured_forwards.clear()
            try:
                captured = CapturedForward(self, params, batch_size, max_product)
            except Exception as error:
                if not self.fuse:
                    raise
                self._without_fusion(error)
                captured = CapturedForward(self, params, batch_size, max_product)
            self.captured_forwards[key] = captured
        return captured

    # ------------------------------------------------------------------ EM
    def _root_of_plain(self, params: Params, x: torch.Tensor, observed: torch.Tensor,
                       coefficients: dict[str, list[torch.Tensor]] | None = None,
                       max_product: bool = False, masks: dict[int, torch.Tensor] | None = None,
                       noise: Noise | None = None) -> torch.Tensor:
        return self._root(self.forward(params, x, observed, max_product, coefficients, masks, noise,
                                       defer=not self.fuse))

    def _inference_root_plain(self, params: Params, x: torch.Tensor, observed: torch.Tensor,
                              max_product: bool) -> torch.Tensor:
        return self._root(self.forward(params, x, observed, max_product, defer=not self.fuse))

    def _without_fusion(self, error: Exception) -> None:
        import warnings

        warnings.warn(f"einc: torch.compile fusion failed ({type(error).__name__}: {error}); running unfused")
        self.fuse = False
        self._root_of = self._root_of_plain
        self._inference_root = self._inference_root_plain
        self._m_step = em_update
        self.captured_steps.clear()
        self.captured_forwards.clear()

    def _check_em(self) -> None:
        if not self.plan.trained_by_em:
            raise BackendError(
                "EM cannot train this circuit: its neural (vae) leaves are networks trained by gradient "
                "on the IWAE bound; use method='adam' (einc train --method adam)"
            )

    @flushed
    def statistics(self, params: Params, batch: Batch) -> Statistics:
        """E-step by autograd: ∂ Σ log p / ∂W · W gives n (eq. 6); ∂/∂Θ gives Σ p·F."""
        self._check_em()
        x, observed = self._batch(batch)
        labels = None if batch.labels is None else torch.as_tensor(batch.labels, dtype=torch.long, device=self.device)
        total, weight_counts, leaf_stats = self._statistics(params, x, observed, labels, self._latents(batch))
        return Statistics(float(total), int(x.shape[0]), weight_counts, leaf_stats)

    def _statistics(self, params: Params, x: torch.Tensor, observed: torch.Tensor,
                    labels: torch.Tensor | None, latents: torch.Tensor | None = None, counts: bool = True
                    ) -> tuple[torch.Tensor, dict[str, Any], dict[str, tuple[Any, Any]]]:
        """The E-step on device tensors, free of host synchronisation (so it can be graph-captured).
        With clamped ``latents`` it is the E-step of log p(x, z). ``counts=False``: the sum
        weights' gradients ∂ Σ log p / ∂W, not n = W · ∂ (``em_update(weight_gradients=True)``)."""
        weights = {
            spec.name: params[spec.name].detach().requires_grad_(True)
            for spec in self.plan.params
            if spec.normalised_over
        }
        coefficients = {
            op.name: [c.detach().requires_grad_(True) for c in self._leaf_coefficients(op, params, False)]
            for op in self.plan.ops
            if isinstance(op, InputOp)
        }
        masks = self._latent_masks(latents)
        root = self._root_of({**params, **weights}, x, observed, coefficients, False, masks)
        log_p = root[:, 0] if labels is None else torch.gather(root, 1, labels[:, None])[:, 0]
        total = log_p.sum()
        leaves = [c for op_coefs in coefficients.values() for c in op_coefs]
        # a sample of probability 0 (possible with indicator leaves) has no posterior: no counts
        possible = torch.where(log_p > ZERO_PROBABILITY, log_p, torch.zeros_like(log_p))
        grads = torch.autograd.grad(possible.sum(), list(weights.values()) + leaves)
        weight_counts = {name: _counts(w.detach(), g, grads, self.fuse) if counts else g
                         for (name, w), g in zip(weights.items(), grads)}
        leaf_stats: dict[str, tuple[Any, Any]] = {}
        leaf_grads = iter(grads[len(weights):])
        for op in self.plan.ops:
            if isinstance(op, InputOp):
                for block in op.blocks:
                    g = next(leaf_grads)  # (L, S, K, f): Σ_b p · [T(x), obs, log h]
                    leaf_stats[block.param] = (g[..., : block.stat_dim], g[..., block.stat_dim])
        return total.detach(), weight_counts, leaf_stats

    @flushed
    def em_update(self, params: Params, stats: Statistics, step_size: float, pseudocount: float = 0.0) -> Params:
        with torch.no_grad():
            return em_update(torch, self.plan, params, stats.weights, stats.leaf, step_size, pseudocount)

    # ------------------------------------------------------------------ gradient training
    def module(self, params: Params, samples: int = DEFAULT_TRAINING_SAMPLES) -> "CircuitModule":
        """The plan with ``params`` as a ``torch.nn.Module`` over unconstrained copies of them."""
        from einc.backends.torch_module import CircuitModule

        return CircuitModule(self, params, samples)

    def gradient_trainer(self, module: "CircuitModule", learning_rate: float) -> "GradientTrainer":
        """Adam on the module's unconstrained parameters: log-weights (softmax-normalised), each
        leaf family's reparameterisation (logits, log-rates, log-variances), network weights."""
        from einc.backends.torch_module import GradientTrainer

        return GradientTrainer(module, learning_rate)

    # ------------------------------------------------------------------ fast training loop
    def upload(self, values: np.ndarray, observed: np.ndarray, labels: np.ndarray | None,
               latents: np.ndarray | None = None) -> "DeviceData":
        """Put a whole training set on the device once (with the zero pad column)."""
        x, obs = self._batch(Batch(values, observed))
        label_tensor = None if labels is None else torch.as_tensor(labels, dtype=torch.long, device=self.device)
        return DeviceData(x, obs, label_tensor, self._latents(Batch(values, observed, None, latents)))

    @flushed
    def train_epoch(self, params: Params, data: "DeviceData", order: np.ndarray, batch_size: int,
                    step_size: float, pseudocount: float = 0.0) -> tuple[Params, float]:
        """One epoch of stochastic EM over ``data`` in ``order``; returns (params, Σ log p).

        On CUDA every full batch replays one captured CUDA graph of the whole step (gather,
        forward, autograd statistics, M-step written in place), so an epoch costs a few kernel
        launches per batch instead of hundreds. The last, partial batch runs eagerly.
        """
        self._check_em()
        order_t = torch.as_tensor(order, dtype=torch.long, device=self.device)
        full = len(order) // batch_size
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        if self.capture and full > 0:
            step = self._captured_step(params, data, batch_size, step_size, pseudocount)
            step.total.zero_()
            for number in range(full):
                step.index.copy_(order_t[number * batch_size : (number + 1) * batch_size])
                step.graph.replay()
            total = total + step.total
            start = full * batch_size
        else:
            start = 0
        for begin in range(start, len(order), batch_size):
            index = order_t[begin : begin + batch_size]
            # with captured graphs keep the storage, so they stay valid
            params, batch_total = self._em_step(params, data, index, step_size, in_place=self.capture,
                                                pseudocount=pseudocount)
            total = total + batch_total
        return params, float(total)

    def _em_step(self, params: Params, data: "DeviceData", index: torch.Tensor, step_size: float,
                 in_place: bool, pseudocount: float = 0.0) -> tuple[Params, torch.Tensor]:
        """E-step and M-step on the rows ``index`` of ``data``; ``in_place`` writes the new
        parameters into the old storage (what captured CUDA graphs keep reading)."""
        labels = None if data.labels is None else data.labels.index_select(0, index)
        latents = None if data.latents is None else data.latents.index_select(0, index)
        # on the CPU the M-step makes the counts n = W · ∂/∂W block by block in the cache, where
        # it reads W anyway (a pass over every weight fewer than ``_counts``)
        gradients = self.device.type == "cpu" and not self.fuse
        batch_total, counts, leaf = self._statistics(
            params, data.values.index_select(0, index), data.observed.index_select(0, index), labels, latents,
            counts=not gradients,
        )
        with torch.no_grad():
            new = self._m_step(torch, self.plan, params, counts, leaf, step_size, pseudocount,
                               weight_gradients=gradients)
            if not in_place:
                return new, batch_total
            for name, value in new.items():
                params[name].copy_(value)
        return params, batch_total

    def _captured_step(self, params: Params, data: "DeviceData", batch_size: int, step_size: float,
                       pseudocount: float = 0.0) -> "CapturedStep":
        key = (id(data), batch_size, step_size, pseudocount, storage_key(params))
        step = self.captured_steps.get(key)
        if step is None:
            self.captured_steps.clear()
            try:
                step = CapturedStep(self, params, data, batch_size, step_size, pseudocount)
            except Exception as error:  # a compiler failure must not stop training
                if not self.fuse:
                    raise
                self._without_fusion(error)
                step = CapturedStep(self, params, data, batch_size, step_size, pseudocount)
            self.captured_steps[key] = step
        return step

    # ------------------------------------------------------------------ latent posteriors
    @flushed
    def latent_posterior(self, params: Params, batch: Batch, heads: np.ndarray) -> list[np.ndarray]:
        """p(Z_j = k | x, clamped latents) per latent: the gradient of log p at each sample's head
        with respect to the latents' log-masks (backends/latents.py), one backward pass for all."""
        x, observed = self._batch(batch)
        batch_size = x.shape[0]
        latents = self._latents(batch)
        if latents is None:
            latents = torch.full((batch_size, len(self.plan.latents)), -1, dtype=torch.long, device=self.device)
        masks = self._latent_masks(latents)
        assert masks is not None
        masks = {value: mask.requires_grad_(True) for value, mask in masks.items()}
        head_index = torch.as_tensor(np.asarray(heads, dtype=np.int64), device=self.device)
        with torch.enable_grad():
            root = self._root(self.forward({k: v.detach() for k, v in params.items()}, x, observed, masks=masks))
            log_p = torch.gather(root, 1, head_index[:, None])[:, 0]
            # a sample of probability 0 (indicator leaves) has no posterior: zeros
            possible = torch.where(log_p > ZERO_PROBABILITY, log_p, torch.zeros_like(log_p))
            grads = torch.autograd.grad(possible.sum(), list(masks.values()), allow_unused=True)
        out: list[np.ndarray | None] = [None] * len(self.plan.latents)
        for group, grad in zip(self.latent_groups, grads):
            mask = masks[group.value]
            grad = torch.zeros_like(mask) if grad is None else grad  # (R, B, K)
            for position, latent in enumerate(group.latents):
                out[latent] = grad[position].to("cpu", torch.float64).numpy()
        return [posterior for posterior in out if posterior is not None]

    # ------------------------------------------------------------------ circuit flows
    def value_flows(self, params: Params, batch: Batch, heads: np.ndarray) -> list[np.ndarray]:
        """Every value's circuit flows summed over the batch, (rows, K) float64 each (einc.flows):
        Σ_b ∂ log p_{head_b}(x_b) / ∂ value[row, b, k], by autograd through the values."""
        x, observed = self._batch(batch)
        masks = self._latent_masks(self._latents(batch))
        head_index = torch.as_tensor(np.asarray(heads, dtype=np.int64), device=self.device)
        # the parameters require grad only so that every value is a node of the autograd graph
        tracked = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in params.items()}
        with torch.enable_grad():
            values = self.forward(tracked, x, observed, masks=masks)
            log_p = torch.gather(self._root(values), 1, head_index[:, None])[:, 0]
            # a sample of probability 0 (indicator leaves) has no posterior: no flow
            possible = torch.where(log_p > ZERO_PROBABILITY, log_p, torch.zeros_like(log_p))
            grads = torch.autograd.grad(possible.sum(), values, allow_unused=True)
        return [np.zeros((value.shape[0], value.shape[2])) if grad is None
                else grad.sum(1).to("cpu", torch.float64).numpy() for value, grad in zip(values, grads)]

    # ------------------------------------------------------------------ sampling and MPE
    @flushed
    def backtrack(self, params: Params, batch: Batch, mpe: bool, leaf_value: str,
                  heads: np.ndarray, seed: int, samples: int | None = None) -> np.ndarray:
        """Top-down completion of ``batch``; ``samples``: importance samples per neural leaf (its
        upward estimates and its proposals for z; default ``DEFAULT_QUERY_SAMPLES``)."""
        x, observed = self._batch(batch)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(seed))
        sampler = TorchSampler(generator)
        batch_size = x.shape[0]
        masks = self._latent_masks(self._latents(batch))
        noise = Noise(DEFAULT_QUERY_SAMPLES if samples is None else int(samples), generator)
        with torch.no_grad():
            # clamped latents mask their rows, so backtracking never chooses a masked state
            values = self.forward(params, x, observed, max_product=mpe, masks=masks, noise=noise)
            # choice[v][row, b]: which entry of row's K-vector sample b selected, −1 if not reached
            choice = [torch.full((op.rows, batch_size), -1, dtype=torch.long, device=self.device) for op in self.plan.ops]
            root_value, root_row = self.plan.root
            choice[root_value][root_row] = torch.as_tensor(heads, dtype=torch.long, device=self.device)
            completed = x.clone()
            data, output = PassData(x, observed, noise), LeafOutput(completed, leaf_value)
            for index in range(len(self.plan.ops) - 1, -1, -1):
                op = self.plan.ops[index]
                chosen = choice[index]
                self._rule(op).backtrack(self, op, params, values, choice, chosen, sampler, mpe, data, output)
        return completed[:, : self.num_columns].to("cpu", torch.float64).numpy()

    def _write(self, operand: Operand, rows_choice: torch.Tensor, choice: list[torch.Tensor]) -> None:
        """Merge child selections into the producers' choice arrays (max: −1 means not reached)."""
        for segment, part in operand.split(rows_choice):
            target = choice[segment.value]
            if isinstance(segment, RowRange):
                target[segment.start : segment.stop] = torch.maximum(target[segment.start : segment.stop], part)
            else:
                index = self._index(segment.rows)[:, None].expand(-1, part.shape[1])
                target.scatter_reduce_(0, index, part, reduce="amax")

@dataclass(frozen=True)
class DeviceData:
    """A training set resident on the device: values and mask with the pad column, labels."""

    values: torch.Tensor  # (N, C+1)
    observed: torch.Tensor  # (N, C+1)
    labels: torch.Tensor | None  # (N,)
    latents: torch.Tensor | None = None  # (N, latents): clamped states, −1 summed out


def _counts(weights: torch.Tensor, grad: torch.Tensor, grads: tuple[torch.Tensor, ...],
            traced: bool) -> torch.Tensor:
    """The expected counts n = W · ∂ Σ log p / ∂W. On the CPU in place on the gradient, a tensor
    of this pass that nothing holds after it (a large layer's counts are the size of its weights:
    one fresh buffer fewer per step), unless another gradient shares its memory (autograd may
    hand one buffer to two inputs) or the pass is traced."""
    if traced or grad.device.type != "cpu" or sum(other.data_ptr() == grad.data_ptr() for other in grads) > 1:
        return weights * grad
    return grad.mul_(weights)
