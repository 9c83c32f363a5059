"""The circuit as a ``torch.nn.Module`` (``Model.module()``), and gradient training on top of it.

``CircuitModule.forward(x)`` is log p(x) for a batch (N, columns) with NaN for missing entries:
shape (N,), or (N, heads) for a multi-head circuit. Its parameters are unconstrained tensors —
the same reparameterisation ``method="adam"`` has always used:

- sum weights of every op kind: log-weights, normalised by a softmax over the axes their
  ``ParamSpec.normalised_over`` names;
- exponential-family leaves: their family's unconstrained form (logits, log-probabilities,
  mean and log-variance, log-rate; indicators stay fixed);
- free parameters (neural leaves' network weights): as they are.

So any optimiser keeps the circuit a normalised distribution, and ``module.params()`` gives the
constrained values the backend runs on. A ``Model`` that has handed out its module reads its
parameters from it (``Model.params``): an optimiser step on the module is seen by every query of
the model, and ``Model.set_parameters``/``fit`` write into the module's tensors in place.

    >>> model = einc.compile("examples/tiny.pc")                               # doctest: +SKIP
    >>> module = model.module()                                                # doctest: +SKIP
    >>> optimiser = torch.optim.Adam(module.parameters(), lr=0.01)             # doctest: +SKIP
    >>> loss = -module(torch.as_tensor(batch)).mean()                          # doctest: +SKIP
    >>> loss.backward(); optimiser.step()                                      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from einc.backends.base import Batch, Params
from einc.backends.denormals import flushed
from einc.backends.torch_ops import Noise
from einc.errors import DataError
from einc.ir.families import family_rule
from einc.ir.neural import DEFAULT_TRAINING_SAMPLES, observation_family
from einc.ir.plan import ParamSpec

if TYPE_CHECKING:
    from einc.backends.torch_backend import DeviceData, TorchBackend


def unconstrained(spec: ParamSpec, value: torch.Tensor) -> torch.Tensor:
    """A parameter's unconstrained form (what an optimiser moves)."""
    if spec.free:
        return value
    if spec.normalised_over:
        return torch.log(value)
    assert spec.family is not None
    return family_rule(spec.family).unconstrained(torch, value, spec.family)


def constrained(spec: ParamSpec, free: torch.Tensor) -> torch.Tensor:
    """The parameter the backend runs on, from its unconstrained form (differentiably)."""
    if spec.free:
        return free
    if spec.normalised_over:
        return softmax_over(free, spec.normalised_over)
    assert spec.family is not None
    return family_rule(spec.family).constrained(torch, free, spec.family)


def softmax_over(free: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """Softmax over several axes at once: moved to the end, flattened, and back."""
    trailing = tuple(range(free.dim() - len(axes), free.dim()))
    moved = free.movedim(axes, trailing)
    flat = torch.softmax(moved.reshape(*moved.shape[: -len(axes)], -1), -1)
    return flat.reshape(moved.shape).movedim(trailing, axes)


def parameter_key(name: str) -> str:
    """A plan parameter's name as a module attribute (``torch.nn`` forbids dots in them)."""
    return name.replace(".", ":")


class CircuitModule(torch.nn.Module):
    """A compiled circuit as a PyTorch module: ``forward(x)`` = log p(x), differentiable with
    respect to every parameter.

    ``x`` is (N, columns) in the model's column order (``Model.columns``); NaN marks a missing
    entry, which is marginalised (exactly; for neural leaves, see ``backends/torch_ops/vae.py``).
    The result is (N,) — or (N, heads) for a multi-head circuit. A row with an observed value
    outside its variable's domain (a binary 3, a count 1.5, an infinite real) has probability 0:
    its log p is −inf, as the density says, decided on the device without a host sync and
    without NaN in any gradient (such a row passes none back); ``Model.log_likelihood`` raises a
    ``DataError`` naming the row and column instead. Only the shape raises here.

    With neural (vae) leaves each call is a fresh IWAE estimate with ``samples`` importance
    samples per leaf, drawn from torch's global generator (``torch.manual_seed`` makes it
    repeatable); its expectation is a lower bound of log p(x), the objective SPVAE trains.

    The module lives where the model runs (``einc.compile(..., device=...)``). ``.to(device or
    dtype)``, ``.double()``, ``.float()``, ``.cuda()``, ``.cpu()`` move it *with* its model: the
    model's ``device``, ``dtype`` and every query follow. float16/bfloat16 (``.half()``) and devices
    other than cpu/cuda are refused with a ``BackendError`` before anything changes.
    """

    def __init__(self, backend: TorchBackend, params: Params, samples: int = DEFAULT_TRAINING_SAMPLES) -> None:
        super().__init__()
        self.backend = backend
        self.plan = backend.plan
        self.samples = samples
        self.free = torch.nn.ParameterDict()
        with torch.no_grad():
            for spec in self.plan.params:
                value = unconstrained(spec, params[spec.name]).detach().clone()
                self.free[parameter_key(spec.name)] = torch.nn.Parameter(value, requires_grad=True)
        self._snapshot: tuple[tuple, Params] | None = None
        # called with the new backend once .to()/.double()/.cuda() moved the tensors (Model.module()
        # sets it: the model follows its module)
        self.on_move: Callable[[TorchBackend], None] | None = None
        self.domain_checks = _domain_checks(self.plan)

    # ------------------------------------------------------------------ device and dtype
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> CircuitModule:
        """Every conversion of ``torch.nn.Module`` (``.to``, ``.double``, ``.half``, ``.cuda``, ...)
        comes here: the backend is rebuilt for the new device and dtype first (which refuses what
        einc cannot run, leaving everything as it was), then the tensors move, then the model."""
        current = self.backend
        probe = fn(torch.zeros((), dtype=current.dtype, device=current.device))
        if not isinstance(probe, torch.Tensor) or (probe.dtype == current.dtype
                                                   and _same_device(probe.device, current.device)):
            return super()._apply(fn, recurse)  # nothing moves (.float() on float32, share_memory, ...)
        backend = current.moved(probe.device, probe.dtype)
        super()._apply(fn, recurse)
        self.backend = backend
        self._snapshot = None
        if self.on_move is not None:
            self.on_move(backend)
        return self

    # ------------------------------------------------------------------ parameters
    def params(self) -> Params:
        """Every parameter in the form the backend runs on, differentiable w.r.t. the module's."""
        return {spec.name: constrained(spec, self.free[parameter_key(spec.name)]) for spec in self.plan.params}

    def snapshot(self) -> Params:
        """``params()`` without autograd, recomputed only after the module's tensors changed
        (an optimiser step bumps their version): what the model's queries read."""
        tensors = list(self.free.values())
        key = tuple((t._version, t.data_ptr()) for t in tensors)
        if self._snapshot is None or self._snapshot[0] != key:
            with torch.no_grad():
                self._snapshot = (key, {name: value.detach() for name, value in self.params().items()})
        return self._snapshot[1]

    def load_params(self, params: Params) -> None:
        """Write constrained parameters into the module's tensors, in place (storage is kept, so
        optimisers holding them keep working)."""
        with torch.no_grad():
            for spec in self.plan.params:
                value = torch.as_tensor(params[spec.name], dtype=self.backend.dtype, device=self.backend.device)
                self.free[parameter_key(spec.name)].copy_(unconstrained(spec, value))
        self._snapshot = None

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=self.backend.dtype, device=self.backend.device)
        columns = self.backend.num_columns
        if x.dim() != 2 or x.shape[1] != columns:
            raise DataError(f"module input has shape {tuple(x.shape)}; expected (N, {columns}): one column "
                            f"per data column of the circuit (Model.columns), NaN where missing")
        observed = ~torch.isnan(x)
        # out-of-domain values are computed as 0 (in every domain), so that no NaN or inf reaches
        # the circuit or its gradients, and their rows are set to −inf below
        outside = observed & ~self._in_domain(x)
        pad = x.new_zeros((x.shape[0], 1))
        values = torch.cat([torch.where(observed & ~outside, x, torch.zeros_like(x)), pad], 1)
        mask = torch.cat([observed.to(x.dtype), pad], 1)
        root = self.log_density(values, mask)
        root = torch.where(outside.any(1, keepdim=True), torch.full_like(root, float("-inf")), root)
        return root[:, 0] if self.plan.heads == 1 else root

    def _in_domain(self, x: torch.Tensor) -> torch.Tensor:
        """(N, columns) bool: each value inside its variable's domain (the family table's check, as
        ``einc.data.prepare`` makes it on the host), one vectorised test per (family, domain)."""
        if len(self.domain_checks) == 1 and self.domain_checks[0][0] is None:  # one kind of column
            _, rule, family, domain = self.domain_checks[0]
            return rule.valid_values(torch, x, family, domain)
        inside = torch.empty(x.shape, dtype=torch.bool, device=x.device)
        for columns, rule, family, domain in self.domain_checks:
            index = self.backend._index(columns)  # cached on the backend's device
            inside[:, index] = rule.valid_values(torch, x[:, index], family, domain)
        return inside

    def log_density(self, x: torch.Tensor, observed: torch.Tensor, noise: Noise | None = None,
                    latents: torch.Tensor | None = None) -> torch.Tensor:
        """(B, heads) log p of a batch in the backend's layout: values with unobserved entries 0
        and a mask, each with the zero pad column (``TorchBackend._batch``); with ``latents``
        (B, latents) clamped states (−1: summed out), log p(x, z)."""
        noise = noise or Noise(self.samples)
        masks = self.backend._latent_masks(latents)
        return self.backend._root_of_plain(self.params(), x, observed, masks=masks, noise=noise)

    def extra_repr(self) -> str:
        count = sum(p.numel() for p in self.parameters())
        extra = "" if self.plan.exact else f", samples={self.samples}"
        return f"circuit={self.plan.graph.name}, tensors={count}, heads={self.plan.heads}{extra}"


def _same_device(a: torch.device, b: torch.device) -> bool:
    """torch.device("cuda") and torch.device("cuda:0") are one device (where the current one is 0)."""
    def index(device: torch.device) -> int | None:
        if device.type == "cuda" and device.index is None:
            return torch.cuda.current_device()
        return device.index
    return a.type == b.type and index(a) == index(b)


def _domain_checks(plan: Any) -> list[tuple[tuple[int, ...] | None, Any, Any, Any]]:
    """(data columns, family rule, family, domain) per kind of column, for ``_in_domain``; columns
    None when one kind covers every column. A neural leaf's columns are checked against its
    decoder's family, as ``einc.data.prepare`` does."""
    groups: dict[tuple, list[int]] = {}
    for variable in plan.graph.variables:
        family = observation_family(variable.family)
        groups.setdefault((family, variable.domain), []).extend(
            range(variable.column, variable.column + variable.domain.columns))
    checks = [(tuple(columns), family_rule(family), family, domain) for (family, domain), columns in groups.items()]
    if len(checks) == 1:
        return [(None, *checks[0][1:])]
    return checks


class GradientTrainer:
    """Adam on a ``CircuitModule`` (``Model.fit(method="adam")``): minimises −mean log p per
    batch — with neural leaves the IWAE bound (SPVAE, Algorithm 1)."""

    def __init__(self, module: CircuitModule, learning_rate: float) -> None:
        self.module = module
        self.names = [spec.name for spec in module.plan.params]
        # the module's tensors in plan order (ParameterDict keeps insertion order)
        self.optimizer = torch.optim.Adam(list(module.free.values()), lr=learning_rate)

    @property
    def flush_denormals(self) -> bool:
        """Epochs flush denormals where the backend computes on the CPU (backends/denormals.py)."""
        return self.module.backend.flush_denormals

    @flushed
    def epoch(self, data: DeviceData, order: np.ndarray, batch_size: int, seed: int | None = None) -> float:
        """One pass of Adam steps over ``data`` in ``order``; returns Σ log p of the batches.

        ``seed`` seeds the noise of neural leaves for this epoch (None: torch's global generator),
        so that a seeded run, and a resumed one, draws the same noise.
        """
        module, backend = self.module, self.module.backend
        noise = None
        if seed is not None:
            generator = torch.Generator(device=backend.device)
            generator.manual_seed(int(seed))
            noise = Noise(module.samples, generator)
        order_t = torch.as_tensor(order, dtype=torch.long, device=backend.device)
        total = torch.zeros((), dtype=backend.dtype, device=backend.device)
        for begin in range(0, len(order), batch_size):
            index = order_t[begin : begin + batch_size]
            latents = None if data.latents is None else data.latents.index_select(0, index)
            root = module.log_density(data.values.index_select(0, index), data.observed.index_select(0, index),
                                      noise, latents)
            if data.labels is None:
                log_p = root[:, 0]
            else:
                log_p = torch.gather(root, 1, data.labels.index_select(0, index)[:, None])[:, 0]
            self.optimizer.zero_grad(set_to_none=True)
            (-log_p.mean()).backward()
            self.optimizer.step()
            total = total + log_p.detach().sum()
        return float(total)

    @flushed
    def accumulate(self, batch: Batch) -> float:
        """Add the gradients of −Σ log p over a host batch to the module's ``.grad`` (no step) and
        return Σ log p. Data-parallel training sums these across workers, divides by the global
        batch size and then steps ``optimizer``: the same step as ``epoch`` on the whole batch.
        With neural leaves the noise comes from torch's global generator."""
        backend = self.module.backend
        x, observed = backend._batch(batch)
        root = self.module.log_density(x, observed, latents=backend._latents(batch))
        if batch.labels is None:
            log_p = root[:, 0]
        else:
            labels = torch.as_tensor(batch.labels, dtype=torch.long, device=backend.device)
            log_p = torch.gather(root, 1, labels[:, None])[:, 0]
        (-log_p.sum()).backward()
        return float(log_p.detach().sum())

    def state(self) -> dict[str, np.ndarray]:
        """Adam's step counts and moments as host arrays, keyed ``{parameter}/{slot}`` (to save)."""
        out: dict[str, np.ndarray] = {}
        for index, slots in self.optimizer.state_dict()["state"].items():
            for slot, value in slots.items():
                out[f"{self.names[index]}/{slot}"] = torch.as_tensor(value).detach().cpu().numpy()
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Continue from ``state()``: the same moments, so a resumed run takes the same steps."""
        backend = self.module.backend
        slots: dict[int, dict[str, Any]] = {}
        for key, value in arrays.items():
            name, slot = key.rsplit("/", 1)
            tensor = torch.as_tensor(value)
            if slot != "step":
                tensor = tensor.to(device=backend.device, dtype=backend.dtype)
            slots.setdefault(self.names.index(name), {})[slot] = tensor
        state = self.optimizer.state_dict()
        state["state"] = slots
        self.optimizer.load_state_dict(state)
