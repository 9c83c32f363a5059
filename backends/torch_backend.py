"""PyTorch backend: interprets the plan with torch ops; EM statistics come from autograd (§3.5).

The EiNet core op kinds (input, einsum, mixing) are interpreted here, with their CUDA-graph and
fused paths; every further op kind is one entry of ``OP_RULES``, in its own module under
``backends/torch_ops/`` (forward and max-product, top-down backtracking).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from einc.backends.base import Batch, Params, Statistics, keep_freed_memory, shifted_exp
from einc.backends.em import em_update
from einc.backends.input_layer import leaf_coefficients, leaf_features
from einc.backends.latents import log_mask
from einc.backends.torch_ops import (
    LeafOutput,
    Noise,
    PassData,
    TorchOpRule,
    hadamard,
    log_of_mass,
    log_sum_exp_shift,
    vae,
)
from einc.ir.diagnostics import BackendError
from einc.ir.families import ZERO_PROBABILITY, family_rule
from einc.ir.neural import DEFAULT_QUERY_SAMPLES, DEFAULT_TRAINING_SAMPLES
from einc.ir.plan import EinsumOp, FamilyBlock, HadamardOp, InputOp, MixingOp, Operand, Plan, RowRange, VaeOp

if TYPE_CHECKING:
    from einc.backends.torch_module import CircuitModule, GradientTrainer

_DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Op kinds beyond the EiNet core: one rule each (tests/test_op_kinds.py checks the coverage).
OP_RULES: dict[type, TorchOpRule] = {
    HadamardOp: hadamard.RULE,
    VaeOp: vae.RULE,
}
CORE_OPS = (InputOp, EinsumOp, MixingOp)  # interpreted inline below


class TorchSampler:
    """Random draws for leaf sampling, from one seeded torch.Generator."""

    xp = torch

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def uniform(self, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def standard_normal(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def binomial(self, n: float, p: torch.Tensor) -> torch.Tensor:
        counts = torch.full_like(p, float(n))
        return torch.binomial(counts, p, generator=self.generator)

    def poisson(self, rate: torch.Tensor) -> torch.Tensor:
        return torch.poisson(rate, generator=self.generator)

    def categorical(self, probs: torch.Tensor) -> torch.Tensor:
        flat = probs.reshape(-1, probs.shape[-1])
        draws = torch.multinomial(flat, 1, generator=self.generator).reshape(probs.shape[:-1])
        return draws.to(probs.dtype)

    def gumbel(self, like: torch.Tensor) -> torch.Tensor:
        u = self.uniform(like).clamp_(1e-20, 1.0)
        return -torch.log(-torch.log(u))


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
        self.gathers: dict[int, tuple[tuple[int, ...], torch.Tensor]] = {}
        # Where each value's batch axis lies in memory. Values are indexed (rows, B, K) everywhere;
        # on the CPU the contractions store them batch-minor, (rows, K, B) in memory, so that the
        # batched matmuls have the batch (not K) as their wide side and elementwise work runs along
        # contiguous batches (about 1.7x faster K=10 epochs on a 2-core EPYC, benchmarks/README.md);
        # on CUDA batch-major, (rows, B, K), the layout of the measured GPU figures.
        self.batch_minor = (self.device.type == "cpu") if batch_minor is None else batch_minor
        self.leaf_rows: dict[str, torch.Tensor] = {
            param: cols.reshape(-1) for param, cols in self.columns.items()
        }  # (L·S,): the feature rows each block reads, padding = the zero column C
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
        self.captured_steps: dict[tuple, _CapturedStep] = {}
        self.captured_forwards: dict[tuple, _CapturedForward] = {}
        # einsum kernels by name (compiler/kernels.py); where Triton cannot run, fused ops run the
        # same contraction as batched matmuls
        fused = any(isinstance(op, EinsumOp) and op.kernel == "fused" for op in plan.ops)
        matmul = _einsum_layer_batch_minor if self.batch_minor else _einsum_layer
        self.contractions = {
            "matmul": matmul,
            "fused": _fused_einsum_layer(self.batch_minor) if fused and _fused_kernels_run_on(self.device) else matmul,
        }
        self.real_column = torch.ones(self.num_columns + 1, dtype=self.dtype, device=self.device)
        self.real_column[-1] = 0.0
        # clamped latents: per value holding latent rows, those rows (backends/latents.py)
        self.latent_groups = plan.latent_groups
        self.latent_rows = {g.value: torch.as_tensor(g.rows, dtype=torch.long, device=self.device)
                            for g in self.latent_groups}
        self.latent_states = {g.value: torch.arange(g.states, device=self.device) for g in self.latent_groups}
        self.latent_columns = {g.value: torch.as_tensor(g.latents, dtype=torch.long, device=self.device)
                               for g in self.latent_groups}

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
        values = torch.as_tensor(batch.values, dtype=self.dtype, device=self.device)
        observed = torch.as_tensor(batch.observed, dtype=self.dtype, device=self.device)
        pad = torch.zeros((values.shape[0], 1), dtype=self.dtype, device=self.device)
        return torch.cat([values, pad], 1), torch.cat([observed, pad], 1)

    # ------------------------------------------------------------------ forward
    def _read(self, operand: Operand, values: list[torch.Tensor]) -> torch.Tensor:
        if operand.is_view:
            (segment,) = operand.segments
            return values[segment.value][segment.start : segment.stop]
        # fragmented reads (DAGs): one concatenation of the source values and one gather, so the
        # backward is one index_add instead of a zero-filled copy of a source per segment
        sources, index = self._gather_plan(operand)
        stacked = values[sources[0]] if len(sources) == 1 else torch.cat([values[v] for v in sources], 0)
        return stacked.index_select(0, index)

    def _gather_plan(self, operand: Operand) -> tuple[tuple[int, ...], torch.Tensor]:
        """(source values, row index into their concatenation) for a fragmented operand; cached."""
        cached = self.gathers.get(id(operand))
        if cached is None:
            sources = tuple(sorted({segment.value for segment in operand.segments}))
            offsets, total = {}, 0
            for value in sources:
                offsets[value] = total
                total += self.plan.ops[value].rows
            rows: list[int] = []
            for segment in operand.segments:
                local = range(segment.start, segment.stop) if isinstance(segment, RowRange) else segment.rows
                rows.extend(offsets[segment.value] + row for row in local)
            cached = (sources, torch.as_tensor(rows, dtype=torch.long, device=self.device))
            self.gathers[id(operand)] = cached
        return cached

    def _index(self, rows: tuple[int, ...]) -> torch.Tensor:
        cached = self.row_index.get(rows)
        if cached is None:
            cached = torch.as_tensor(rows, dtype=torch.long, device=self.device)
            self.row_index[rows] = cached
        return cached

    def _leaf_coefficients(self, op: InputOp, params: Params, max_product: bool) -> list[torch.Tensor]:
        """Per block Θ = [θ, −A(θ), 1, (max log f)] shaped (L, S, K, f)."""
        return [leaf_coefficients(torch, block, params[block.param], max_product) for block in op.blocks]

    def _input(self, op: InputOp, coefficients: list[torch.Tensor], x: torch.Tensor,
               observed: torch.Tensor, max_product: bool) -> torch.Tensor:
        total = None
        batch_size = x.shape[0]
        for block, coef in zip(op.blocks, coefficients):
            rule = family_rule(block.family)
            if rule.one_hot_statistics:
                term = self._input_lookup(block, coef, x, observed, max_product)
                total = term if total is None else total + term
                continue
            # per-column features, computed once per column (not once per leaf region); in
            # max-product, unobserved real columns (not the zero pad column C) take max log f
            missing = (self.real_column - observed) if max_product else None
            column_features = leaf_features(torch, block, x, observed, missing)  # (B, C+1, f)
            cols = self.columns[block.param]  # (L, S)
            rows, width = cols.shape
            f = column_features.shape[-1]
            k = coef.shape[2]
            if self.batch_minor:
                # the features batch-minor, (C+1, f, B), then whole rows of them per leaf factor:
                # an index of L·S rows (not L·S·B entries) into (L, S·f, B)
                by_column = column_features.permute(1, 2, 0).contiguous()
                gathered = by_column.index_select(0, self.leaf_rows[block.param]).reshape(rows, width * f, batch_size)
                # (L, K, S·f) x (L, S·f, B) -> (L, K, B), indexed as (L, B, K)
                term = torch.bmm(coef.permute(0, 2, 1, 3).reshape(rows, k, width * f), gathered).transpose(1, 2)
            else:
                # the small (L, S) index broadcast over the batch: on an H100 ~20x faster than one
                # flat gather of L·B·S rows; viewed as (L, B, S·f) without a copy
                gathered = column_features[:, cols].reshape(batch_size, rows, width * f).transpose(0, 1)
                # (L, B, S·f) x (L, S·f, K) -> (L, B, K)
                term = torch.bmm(gathered, coef.permute(0, 1, 3, 2).reshape(rows, width * f, k))
            total = term if total is None else total + term
        assert total is not None
        return total

    def _input_lookup(self, block: FamilyBlock, coef: torch.Tensor, x: torch.Tensor,
                      observed: torch.Tensor, max_product: bool) -> torch.Tensor:
        """The input layer for one-hot statistics: T(x)·θ is θ[x], a lookup instead of a matmul
        over (B, C, categories) one-hot features. Same numbers; autograd's scatter-add backward
        still yields Σ p·T(x) as the gradient of the θ part of Θ."""
        cols = self.columns[block.param]  # (L, S)
        categories = block.stat_dim
        obs = observed.t()[cols]  # (L, S, B)
        values = x.t()[cols].long().clamp_(0, categories - 1)  # (L, S, B); unobserved are 0
        theta = coef[..., :categories]  # (L, S, K, n)
        # (L, S, K, n) gathered at x along n -> (L, S, K, B)
        picked = torch.gather(theta, 3, values[:, :, None, :].expand(-1, -1, theta.shape[2], -1))
        # the remaining features [obs, (log h(x)·obs), (missing)] are a small dense contraction
        dense = [obs]
        if block.log_base:
            dense.append(rule_log_base(block, x, observed, cols))
        if max_product:
            valid = (cols < self.num_columns).to(self.dtype)[..., None]  # (L, S, 1)
            dense.append(valid - obs)
        features = torch.stack(dense, -1)  # (L, S, B, f')
        # (L, S, K, B) x (L, S, B) -> (L, B, K)  and  (L, S, B, f') x (L, S, K, f') -> (L, B, K)
        looked_up = torch.einsum("lskb,lsb->lbk", picked, obs)
        return looked_up + torch.einsum("lsbf,lskf->lbk", features, coef[..., categories:])

    def forward(self, params: Params, x: torch.Tensor, observed: torch.Tensor,
                max_product: bool = False, coefficients: dict[str, list[torch.Tensor]] | None = None,
                masks: dict[int, torch.Tensor] | None = None, noise: Noise | None = None) -> list[torch.Tensor]:
        """Every op's value for a batch ``x`` (B, C+1) with mask ``observed``; ``masks``
        (``_latent_masks``) clamp latents on their rows; ``noise`` says how stochastic ops draw
        (default: the training IWAE k from torch's global generator)."""
        data = PassData(x, observed, noise or Noise(DEFAULT_TRAINING_SAMPLES))
        values: list[torch.Tensor] = []
        for index, op in enumerate(self.plan.ops):
            if isinstance(op, InputOp):
                coefs = coefficients[op.name] if coefficients else self._leaf_coefficients(op, params, max_product)
                value = self._input(op, coefs, x, observed, max_product)
            elif isinstance(op, EinsumOp):
                left = self._read(op.left, values)  # (L, B, i)
                right = self._read(op.right, values)  # (L, B, j)
                weights = params[op.param]  # (L, k, i, j)
                if max_product:
                    value = _max_einsum(left, right, weights)
                else:
                    value = self._log_einsum_exp(op, left, right, weights)
            elif isinstance(op, MixingOp):
                value = self._mix(op, params, values, max_product)
            else:
                value = self._rule(op).forward(self, op, params, values, max_product, data)
            values.append(self._masked(index, value, masks))
        return values

    def _log_einsum_exp(self, op: EinsumOp, left: torch.Tensor, right: torch.Tensor,
                        weights: torch.Tensor) -> torch.Tensor:
        """log Σ_ij W[l,k,i,j] exp(N[l,b,i]) exp(N'[l,b,j]) (eq. 4), shifted by the operands' maxima.

        Batch-minor, the shift, exp and log run on the stored (L, K, B) memory (contiguous along
        the batch) and the contraction takes and returns that layout; the result is indexed
        (L, B, k) like every value.
        """
        contraction = self.contractions[op.kernel]
        k_axis = 1 if self.batch_minor else 2
        if self.batch_minor:
            left, right = left.transpose(1, 2), right.transpose(1, 2)  # (L, i, B), (L, j, B)
        left_max, left_empty = log_sum_exp_shift(left, k_axis)
        right_max, right_empty = log_sum_exp_shift(right, k_axis)
        # (L, B, i) x (L, B, j) x (L, k, i, j) -> (L, B, k), or batch-minor (L, ·, B) throughout
        mixed = contraction(shifted_exp(torch, left, left_max), shifted_exp(torch, right, right_max), weights, op.path)
        value = log_of_mass(mixed, left_max + right_max, left_empty | right_empty)
        return value.transpose(1, 2) if self.batch_minor else value

    def _rule(self, op: Any) -> TorchOpRule:
        rule = OP_RULES.get(type(op))
        if rule is None:
            raise BackendError(f"the torch backend has no rule for plan op {type(op).__name__} ('{op.name}')")
        return rule

    def _mix(self, op: MixingOp, params: Params, values: list[torch.Tensor], max_product: bool) -> torch.Tensor:
        rows = self._read(op.input, values)
        m, c = op.rows, op.components
        stacked = rows.reshape(m, c, rows.shape[1], rows.shape[2])  # (M, C, B, K)
        weights = params[op.param]  # (M, C, K)
        if max_product:
            return (torch.log(weights)[:, :, None, :] + stacked).amax(1)
        if self.batch_minor:  # work in the stored order (M, C, K, B)
            stacked, weights = stacked.transpose(2, 3), weights[..., None]
        else:
            weights = weights[:, :, None, :]
        top, empty = log_sum_exp_shift(stacked, 1)  # (M, 1, B, K)
        # (M, C, B, K) x (M, C, 1, K) -> (M, B, K), or batch-minor (M, C, K, B) x (M, C, K, 1) -> (M, K, B)
        mixed = (shifted_exp(torch, stacked, top) * weights).sum(1)
        value = log_of_mass(mixed, top[:, 0], empty[:, 0])
        return value.transpose(1, 2) if self.batch_minor else value

    def _root(self, values: list[torch.Tensor]) -> torch.Tensor:
        value, row = self.plan.root
        return values[value][row]  # (B, heads)

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
                root = self._root(self.forward(params, x, observed, max_product, masks=masks, noise=noise))
        return root.to("cpu", torch.float64).numpy()

    def noise(self, samples: int | None, seed: int | None) -> Noise:
        """The noise of a query: ``samples`` per neural leaf from a generator seeded with ``seed``."""
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(int(seed))
        return Noise(DEFAULT_QUERY_SAMPLES if samples is None else int(samples), generator)

    def _captured_forward(self, params: Params, batch_size: int, max_product: bool) -> "_CapturedForward":
        key = (batch_size, max_product, _storage_key(params))
        captured = self.captured_forwards.get(key)
        if captured is None:
            if len(self.captured_forwards) > 8:
                self.captured_forwards.clear()
            try:
                captured = _CapturedForward(self, params, batch_size, max_product)
            except Exception as error:
                if not self.fuse:
                    raise
                self._without_fusion(error)
                captured = _CapturedForward(self, params, batch_size, max_product)
            self.captured_forwards[key] = captured
        return captured

    # ------------------------------------------------------------------ EM
    def _root_of_plain(self, params: Params, x: torch.Tensor, observed: torch.Tensor,
                       coefficients: dict[str, list[torch.Tensor]] | None = None,
                       max_product: bool = False, masks: dict[int, torch.Tensor] | None = None,
                       noise: Noise | None = None) -> torch.Tensor:
        return self._root(self.forward(params, x, observed, max_product, coefficients, masks, noise))

    def _inference_root_plain(self, params: Params, x: torch.Tensor, observed: torch.Tensor,
                              max_product: bool) -> torch.Tensor:
        return self._root(self.forward(params, x, observed, max_product))

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

    def statistics(self, params: Params, batch: Batch) -> Statistics:
        """E-step by autograd: ∂ Σ log p / ∂W · W gives n (eq. 6); ∂/∂Θ gives Σ p·F."""
        self._check_em()
        x, observed = self._batch(batch)
        labels = None if batch.labels is None else torch.as_tensor(batch.labels, dtype=torch.long, device=self.device)
        total, weight_counts, leaf_stats = self._statistics(params, x, observed, labels, self._latents(batch))
        return Statistics(float(total), int(x.shape[0]), weight_counts, leaf_stats)

    def _statistics(self, params: Params, x: torch.Tensor, observed: torch.Tensor,
                    labels: torch.Tensor | None, latents: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, Any], dict[str, tuple[Any, Any]]]:
        """The E-step on device tensors, free of host synchronisation (so it can be graph-captured).
        With clamped ``latents`` it is the E-step of log p(x, z)."""
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
        weight_counts = {name: w.detach() * g for (name, w), g in zip(weights.items(), grads)}
        leaf_stats: dict[str, tuple[Any, Any]] = {}
        leaf_grads = iter(grads[len(weights):])
        for op in self.plan.ops:
            if isinstance(op, InputOp):
                for block in op.blocks:
                    g = next(leaf_grads)  # (L, S, K, f): Σ_b p · [T(x), obs, log h]
                    leaf_stats[block.param] = (g[..., : block.stat_dim], g[..., block.stat_dim])
        return total.detach(), weight_counts, leaf_stats

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
        batch_total, counts, leaf = self._statistics(
            params, data.values.index_select(0, index), data.observed.index_select(0, index), labels, latents
        )
        with torch.no_grad():
            new = self._m_step(torch, self.plan, params, counts, leaf, step_size, pseudocount)
            if not in_place:
                return new, batch_total
            for name, value in new.items():
                params[name].copy_(value)
        return params, batch_total

    def _captured_step(self, params: Params, data: "DeviceData", batch_size: int, step_size: float,
                       pseudocount: float = 0.0) -> "_CapturedStep":
        key = (id(data), batch_size, step_size, pseudocount, _storage_key(params))
        step = self.captured_steps.get(key)
        if step is None:
            self.captured_steps.clear()
            try:
                step = _CapturedStep(self, params, data, batch_size, step_size, pseudocount)
            except Exception as error:  # a compiler failure must not stop training
                if not self.fuse:
                    raise
                self._without_fusion(error)
                step = _CapturedStep(self, params, data, batch_size, step_size, pseudocount)
            self.captured_steps[key] = step
        return step

    # ------------------------------------------------------------------ latent posteriors
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

    # ------------------------------------------------------------------ sampling and MPE
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
                if not isinstance(op, CORE_OPS):
                    self._rule(op).backtrack(self, op, params, values, choice, chosen, sampler, mpe, data, output)
                    continue
                reached = chosen >= 0
                k = chosen.clamp(min=0)
                if isinstance(op, MixingOp):
                    rows = self._read(op.input, values)
                    m, c = op.rows, op.components
                    stacked = rows.reshape(m, c, batch_size, -1)  # (M, C, B, K)
                    log_w = torch.log(params[op.param])  # (M, C, K)
                    picked_w = torch.gather(log_w, 2, k[:, None, :].expand(m, c, batch_size))  # (M, C, B)
                    picked_v = torch.gather(stacked, 3, k[:, None, :, None].expand(m, c, batch_size, 1))[..., 0]
                    logits = picked_w + picked_v
                    if not mpe:
                        logits = logits + sampler.gumbel(logits)
                    component = logits.argmax(1)  # (M, B)
                    child = torch.full((m, c, batch_size), -1, dtype=torch.long, device=self.device)
                    child.scatter_(1, component[:, None, :], k[:, None, :])
                    child = torch.where(reached[:, None, :], child, torch.full_like(child, -1))
                    self._write(op.input, child.reshape(m * c, batch_size), choice)
                elif isinstance(op, EinsumOp):
                    left = self._read(op.left, values)  # (L, B, i)
                    right = self._read(op.right, values)  # (L, B, j)
                    log_w = torch.log(params[op.param])  # (L, k, i, j)
                    rows_index = torch.arange(op.rows, device=self.device)[:, None]
                    picked = log_w[rows_index, k]  # (L, B, i, j)
                    logits = picked + left[..., :, None] + right[..., None, :]
                    flat = logits.reshape(op.rows, batch_size, -1)
                    if not mpe:
                        flat = flat + sampler.gumbel(flat)
                    best = flat.argmax(-1)  # (L, B)
                    i = torch.where(reached, best // op.k_right, torch.full_like(best, -1))
                    j = torch.where(reached, best % op.k_right, torch.full_like(best, -1))
                    self._write(op.left, i, choice)
                    self._write(op.right, j, choice)
                else:
                    self._emit_leaves(op, params, chosen, observed, completed, leaf_value, sampler)
        return completed[:, : self.num_columns].to("cpu", torch.float64).numpy()

    def _write(self, operand: Operand, rows_choice: torch.Tensor, choice: list[torch.Tensor]) -> None:
        """Merge child selections into the producers' choice arrays (max: −1 means not reached)."""
        offset = 0
        for segment in operand.segments:
            part = rows_choice[offset : offset + len(segment)]
            offset += len(segment)
            target = choice[segment.value]
            if isinstance(segment, RowRange):
                target[segment.start : segment.stop] = torch.maximum(target[segment.start : segment.stop], part)
            else:
                index = self._index(segment.rows)[:, None].expand(-1, part.shape[1])
                target.scatter_reduce_(0, index, part, reduce="amax")

    def _emit_leaves(self, op: InputOp, params: Params, chosen: torch.Tensor, observed: torch.Tensor,
                     completed: torch.Tensor, leaf_value: str, sampler: TorchSampler) -> None:
        reached = chosen >= 0  # (L, B)
        k = chosen.clamp(min=0)
        for block in op.blocks:
            rule = family_rule(block.family)
            cols = self.columns[block.param]  # (L, S)
            phi = params[block.param]  # (L, S, K, t)
            L, S, _, t = phi.shape
            index = k[:, None, :, None].expand(L, S, k.shape[1], t)  # (L, S, B, t)
            selected = torch.gather(phi, 2, index)  # (L, S, B, t)
            if leaf_value == "sample":
                draw = rule.sample(sampler, selected, block.family)
            elif leaf_value == "mean":
                draw = rule.mean(torch, selected, block.family)
            else:
                draw = rule.mode(torch, selected, block.family)
            draw = draw.to(self.dtype)  # (L, S, B)
            write = reached[:, None, :] & (cols < self.num_columns)[..., None]
            write = write & (observed.t()[cols] == 0)
            rows, positions, samples = torch.nonzero(write, as_tuple=True)
            completed[samples, cols[rows, positions]] = draw[rows, positions, samples]


@dataclass(frozen=True)
class DeviceData:
    """A training set resident on the device: values and mask with the pad column, labels."""

    values: torch.Tensor  # (N, C+1)
    observed: torch.Tensor  # (N, C+1)
    labels: torch.Tensor | None  # (N,)
    latents: torch.Tensor | None = None  # (N, latents): clamped states, −1 summed out


def _storage_key(params: Params) -> tuple:
    return tuple((name, value.data_ptr()) for name, value in sorted(params.items()))


def _capture(function: Any) -> torch.cuda.CUDAGraph:
    """Warm up on a side stream (as torch requires for autograd), then capture one call."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            function()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        function()
    return graph


class _CapturedStep:
    """One stochastic-EM step on a batch of ``data`` rows picked by ``index``, as a CUDA graph.

    Parameters are updated in place, so the graph keeps reading the live values; the warm-up
    runs are undone by restoring a snapshot.
    """

    def __init__(self, backend: TorchBackend, params: Params, data: DeviceData, batch_size: int, step_size: float,
                 pseudocount: float = 0.0) -> None:
        self.index = torch.zeros(batch_size, dtype=torch.long, device=backend.device)
        self.total = torch.zeros((), dtype=backend.dtype, device=backend.device)
        snapshot = {name: value.clone() for name, value in params.items()}

        def step() -> None:
            _, batch_total = backend._em_step(params, data, self.index, step_size, in_place=True, pseudocount=pseudocount)
            with torch.no_grad():
                self.total.add_(batch_total)

        try:
            self.graph = _capture(step)
        finally:  # undo the warm-up updates, also when capture fails
            with torch.no_grad():
                for name, value in snapshot.items():
                    params[name].copy_(value)
        self.total.zero_()


class _CapturedForward:
    """The upward pass for one batch size as a CUDA graph with static input buffers."""

    def __init__(self, backend: TorchBackend, params: Params, batch_size: int, max_product: bool) -> None:
        columns = backend.num_columns + 1
        self.x = torch.zeros((batch_size, columns), dtype=backend.dtype, device=backend.device)
        self.observed = torch.zeros((batch_size, columns), dtype=backend.dtype, device=backend.device)
        self.root: torch.Tensor | None = None

        def forward() -> None:
            self.root = backend._inference_root(params, self.x, self.observed, max_product)

        with torch.no_grad():
            self.graph = _capture(forward)

    def run(self, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """Root values of the first len(x) rows; the rest of the bucket is padding."""
        count = x.shape[0]
        self.x[:count].copy_(x)
        self.observed[:count].copy_(observed)
        if count < self.x.shape[0]:
            self.observed[count:].zero_()
        self.graph.replay()
        assert self.root is not None
        return self.root[:count].clone()


def _einsum_layer(left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor,
                  path: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """``lbi,lbj,lkij->lbk`` along the plan's opt-einsum path, each pairwise step one bmm.

    Written out (instead of ``opt_einsum.contract``) so each step is a batched matmul on views,
    with no permute copies of the (L, B, ·) operands.
    """
    rows, batch, k_left = left.shape
    k_out, k_right = weights.shape[1], weights.shape[3]
    first = tuple(sorted(path[0]))
    if first == (0, 1):
        # (L, B, i) x (L, B, j) -> (L, B, i·j); then (L, B, i·j) x (L, i·j, k) -> (L, B, k)
        outer = (left[..., :, None] * right[..., None, :]).reshape(rows, batch, k_left * k_right)
        return torch.bmm(outer, weights.reshape(rows, k_out, k_left * k_right).transpose(1, 2))
    if first == (0, 2):
        # (L, B, i) x (L, i, k·j) -> (L, B, k, j); then (L·B, k, j) x (L·B, j, 1) -> (L, B, k)
        w = weights.permute(0, 2, 1, 3).reshape(rows, k_left, k_out * k_right)
        partial = torch.bmm(left, w).reshape(rows * batch, k_out, k_right)
        return torch.bmm(partial, right.reshape(rows * batch, k_right, 1)).reshape(rows, batch, k_out)
    # (L, B, j) x (L, j, k·i) -> (L, B, k, i); then (L·B, k, i) x (L·B, i, 1) -> (L, B, k)
    w = weights.permute(0, 3, 1, 2).reshape(rows, k_right, k_out * k_left)
    partial = torch.bmm(right, w).reshape(rows * batch, k_out, k_left)
    return torch.bmm(partial, left.reshape(rows * batch, k_left, 1)).reshape(rows, batch, k_out)


def _einsum_layer_batch_minor(left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor,
                              path: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """``lib,ljb,lkij->lkb``: the einsum layer batch-minor, the batch the matmuls' wide side."""
    rows, k_left, batch = left.shape
    k_out, k_right = weights.shape[1], weights.shape[3]
    first = tuple(sorted(path[0]))
    if first == (0, 1):
        # (L, i, B) x (L, j, B) -> (L, i·j, B); then (L, k, i·j) x (L, i·j, B) -> (L, k, B)
        pairs = (left[:, :, None, :] * right[:, None, :, :]).reshape(rows, k_left * k_right, batch)
        return torch.bmm(weights.reshape(rows, k_out, k_left * k_right), pairs)
    if first == (0, 2):
        # (L, k·j, i) x (L, i, B) -> (L, k, j, B); then Σ_j with (L, j, B) -> (L, k, B)
        w = weights.permute(0, 1, 3, 2).reshape(rows, k_out * k_right, k_left)
        partial = torch.bmm(w, left).reshape(rows, k_out, k_right, batch)
        return (partial * right[:, None, :, :]).sum(2)
    # (L, k·i, j) x (L, j, B) -> (L, k, i, B); then Σ_i with (L, i, B) -> (L, k, B)
    w = weights.reshape(rows, k_out * k_left, k_right)
    partial = torch.bmm(w, right).reshape(rows, k_out, k_left, batch)
    return (partial * left[:, None, :, :]).sum(2)


def _fused_kernels_run_on(device: torch.device) -> bool:
    """Triton runs its kernels on CUDA, and on the CPU only under its interpreter (the tests)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def _fused_einsum_layer(batch_minor: bool) -> Any:
    """``lbi,lbj,lkij->lbk`` by the fused Triton kernels (no K² intermediates; the path is unused),
    taking and returning the backend's layout (batch-minor: ``lib,ljb,lkij->lkb``)."""
    try:
        from einc.backends.fused_einsum import einsum_layer  # imports Triton: only when asked for
    except ImportError as error:
        raise BackendError(
            f"the plan asks for the fused einsum kernel, which needs Triton ({error}); install it with "
            "`pip install triton`, or compile with CompileOptions(einsum_kernel='matmul')"
        ) from None

    def contraction(left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor,
                    path: tuple[tuple[int, ...], ...]) -> torch.Tensor:
        if batch_minor:
            # (L, i, B) x (L, j, B) x (L, k, i, j) -> (L, k, B), through the kernels' (L, B, ·)
            return einsum_layer(left.transpose(1, 2), right.transpose(1, 2), weights).transpose(1, 2)
        # (L, B, i) x (L, B, j) x (L, k, i, j) -> (L, B, k)
        return einsum_layer(left, right, weights)

    return contraction


def rule_log_base(block: FamilyBlock, x: torch.Tensor, observed: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """log h(x)·obs gathered to (L, S, B)."""
    log_base = family_rule(block.family).log_base_measure(torch, x, block.family) * observed
    return log_base.t()[cols]


def _max_einsum(left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Max-product einsum: max_ij log W[l,k,i,j] + N[l,b,i] + N'[l,b,j] -> (L, B, k)."""
    log_w = torch.log(weights)  # (L, k, i, j)
    out = []
    # chunk over the batch so the (L, b, k, i, j) tensor stays small
    step = max(1, int(2**24 // max(1, weights.numel())))
    for start in range(0, left.shape[1], step):
        l_part = left[:, start : start + step]
        r_part = right[:, start : start + step]
        scores = log_w[:, None] + l_part[:, :, None, :, None] + r_part[:, :, None, None, :]
        out.append(scores.amax(dim=(-1, -2)))
    return torch.cat(out, 1)

