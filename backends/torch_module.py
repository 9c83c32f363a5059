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

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from einc.backends.base import Batch, Params
from einc.backends.denormals import flushed
from einc.backends.torch_ops import Noise
from einc.errors import DataError
from einc.ir.families import family_rule
from einc.ir.neural import DEFAULT_TRAINING_SAMPLES
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
    The result is (N,) — or (N, heads) for a multi-head circuit. ``forward`` trusts its input like
    any ``torch.nn`` layer (only its shape is checked); ``Model.log_likelihood`` validates data.

    With neural (vae) leaves each call is a fresh IWAE estimate with ``samples`` importance
    samples per leaf, drawn from torch's global generator (``torch.manual_seed`` makes it
    repeatable); its expectation is a lower bound of log p(x), the objective SPVAE trains.

    The module lives where the model runs (``einc.compile(..., device=...)``); moving it with
    ``.to()`` would separate it from the model.
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
        pad = x.new_zeros((x.shape[0], 1))
        values = torch.cat([torch.where(observed, x, torch.zeros_like(x)), pad], 1)
        mask = torch.cat([observed.to(x.dtype), pad], 1)
        root = self.log_density(values, mask)
        return root[:, 0] if self.plan.heads == 1 else root

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
