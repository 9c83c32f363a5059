"""The two arms of ``spvae_mnist.py`` and the training loop they share, checkpointed every epoch.

An ``Arm`` is one model being trained (the SPVAE or the single VAE): its ``torch.nn.Module``
(forward = the k-sample IWAE bound), its Adam optimiser, its batch-order generator, its own torch
noise-generator state, the best validation epoch's parameters, the patience counter and the
epoch table. ``save_checkpoint`` writes all of it to one ``.npz`` (atomically; no pickle) and
``load_checkpoint`` puts it back, so that a run stopped after any epoch — a killed process, a
machine that went away — continues with exactly the steps it would have taken (``tests/
test_spvae_benchmark.py``: 2 + 2 epochs give the parameters and Adam moments of 4).

Each arm draws its IWAE noise from torch's global generator (both modules do); the arm swaps its
own generator state in and out around its epochs, so arms may be interleaved, and a resumed arm
draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import einc
from einc.backends.torch_ops.vae import DECODER_LOG_DENSITIES, MIN_STD
from einc.io.files import atomic_write
from einc.ir.neural import VaeSpec
from einc.ir.plan import VaeOp

PIXELS = 784
LEVELS = 255
# hidden layers of each MLP unless a grid entry says otherwise (n_zxHxL)
DEFAULT_LAYERS = 2
Config = tuple[int, ...]  # (n_z, H) or (n_z, H, hidden layers)
CHECKPOINT_FORMAT = "spvae-mnist-checkpoint"


def bpd(log_likelihood: float) -> float:
    """Bits per dimension of a mean log-likelihood in nats over MNIST's 784 pixels."""
    return -log_likelihood / (PIXELS * math.log(2))


def pixel_logits(train: np.ndarray) -> np.ndarray:
    """logit of each pixel's mean intensity / 255: where the decoders' output biases start
    (a standard VAE initialisation; without it the first epochs only learn the background)."""
    mean = np.clip(train.mean(0) / LEVELS, 1e-3, 1 - 1e-3)
    return np.log(mean) - np.log1p(-mean)


# ---------------------------------------------------------------- configurations
def config_key(config: Config) -> str:
    """How ``run.json`` names a candidate: ``25x32``, ``100x600x1``."""
    return "x".join(str(v) for v in config)


def config_parts(config: Config) -> tuple[int, int, int]:
    """(n_z, H, hidden layers) of a candidate."""
    return (config[0], config[1], config[2] if len(config) == 3 else DEFAULT_LAYERS)


def checkpoint_config(config: Config) -> dict:
    """What an arm's checkpoint records of its configuration (checked on resume); runs with the
    default depth keep the keys they were started with."""
    latent, hidden, layers = config_parts(config)
    return {"n_z": latent, "H": hidden, **({} if layers == DEFAULT_LAYERS else {"layers": layers})}


# ---------------------------------------------------------------- the two models
class SingleVae(torch.nn.Module):
    """One VAE over all pixels: softplus MLPs, Binomial(255) decoder, forward = the IWAE bound.

    It uses einc's decoder log-density and σ floor, so that the two models differ only in
    structure. ``forward`` streams the k samples in chunks (a running log-sum-exp), as einc does.
    """

    def __init__(self, latent: int, hidden: int, spec: VaeSpec, logits: np.ndarray,
                 layers: int = DEFAULT_LAYERS) -> None:
        super().__init__()
        self.latent, self.decoder_family, self.samples = latent, spec.decoder, 5
        self.encoder = _mlp((PIXELS, *[hidden] * layers, 2 * latent))
        self.decoder = _mlp((latent, *[hidden] * layers, PIXELS))
        with torch.no_grad():
            self.decoder[-1].bias.copy_(torch.as_tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x / LEVELS)
        mu, sigma = h[:, : self.latent], F.softplus(h[:, self.latent :]) + MIN_STD  # (B, Z)
        density = DECODER_LOG_DENSITIES[self.decoder_family.name]
        chunk = max(1, min(self.samples, 2**22 // (x.shape[0] * PIXELS)))
        running = None
        for start in range(0, self.samples, chunk):
            eps = torch.randn((min(chunk, self.samples - start), *mu.shape), dtype=x.dtype, device=x.device)
            z = mu + sigma * eps  # (S, B, Z)
            u = self.decoder(z)[..., None]  # (S, B, D, 1): the binomial logits
            log_px = density(x, u, self.decoder_family).sum(-1)  # (S, B)
            log_w = log_px - 0.5 * (z * z).sum(-1) + 0.5 * (eps * eps).sum(-1) + torch.log(sigma).sum(-1)
            part = torch.logsumexp(log_w, 0)
            running = part if running is None else torch.logaddexp(running, part)
        assert running is not None
        return running - math.log(self.samples)


def _mlp(sizes: tuple[int, ...]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for number, (fan_in, fan_out) in enumerate(pairwise(sizes)):
        layers.append(torch.nn.Linear(fan_in, fan_out))
        if number < len(sizes) - 2:
            layers.append(torch.nn.Softplus())
    return torch.nn.Sequential(*layers)


def circuit_text(source: str, latent: int, hidden: int, layers: int = DEFAULT_LAYERS) -> str:
    """The SPVAE circuit's text with every vae leaf's latent size and hidden widths replaced
    (the paper's H is the same in every layer; ``layers`` of them): how the hyper-parameter pilot
    varies n_z, H and the depth."""
    text, count = re.subn(r"latent\s*=\s*\d+", f"latent = {latent}", source)
    widths = ", ".join([str(hidden)] * layers)
    text, hidden_count = re.subn(r"hidden\s*=\s*\[[^\]]*\]", f"hidden = [{widths}]", text)
    if count == 0 or hidden_count == 0:
        raise ValueError("the circuit's vae leaf must name latent = ... and hidden = [...]")
    return text


def spvae_model(source: str, latent: int, hidden: int, logits: np.ndarray, device: str, seed: int,
                layers: int = DEFAULT_LAYERS) -> einc.Model:
    """The compiled SPVAE with n_z = ``latent``, ``layers`` hidden layers of H = ``hidden``, its
    decoders' output biases set from ``logits`` (one per pixel)."""
    model = einc.compile(circuit_text(source, latent, hidden, layers), device=device, seed=seed)
    params = model.parameters()
    found = False
    for op in model.plan.ops:
        if isinstance(op, VaeOp):
            found = True
            bias = op.decoder[-1][1]  # (L, K, D) for a one-output-per-pixel decoder
            region_logits = np.stack([logits[list(columns)] for columns in op.columns])  # (L, D)
            params[bias] = np.broadcast_to(region_logits[:, None, :], params[bias].shape).copy()
    if not found:
        raise ValueError("the circuit has no vae leaves")
    model.set_parameters(params)
    return model


def decoder_spec(model: einc.Model) -> VaeSpec:
    """The vae leaves' spec of a compiled SPVAE (the single VAE uses the same decoder)."""
    return next(VaeSpec.of(op.family) for op in model.plan.ops if isinstance(op, VaeOp))


# ---------------------------------------------------------------- an arm and its checkpoint
@dataclass
class Arm:
    """One model in training, with everything a checkpoint must hold to continue it exactly."""

    name: str
    module: torch.nn.Module
    learning_rate: float
    seed: int
    epoch: int = 0  # epochs completed
    stale: int = 0  # epochs since the best validation bound (patience)
    best_epoch: int = 0
    best_valid: float = -math.inf  # the best validation bound, nats (mean log-likelihood)
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict] = field(default_factory=list)
    done: bool = False  # stopped by patience or the epoch cap
    optimiser: torch.optim.Adam = field(init=False)
    rng: np.random.Generator = field(init=False)  # orders each epoch's batches
    torch_rng: torch.Tensor = field(init=False)  # this arm's IWAE noise generator state

    def __post_init__(self) -> None:
        self.optimiser = torch.optim.Adam(self.module.parameters(), lr=self.learning_rate)
        self.rng = np.random.default_rng(self.seed)
        self.torch_rng = torch.Generator().manual_seed(self.seed).get_state()

    def set_learning_rate(self, rate: float) -> None:
        """Adam's step size from the next step on (a decay, or the rate a checkpoint ran at)."""
        self.learning_rate = rate
        for group in self.optimiser.param_groups:
            group["lr"] = rate

    def record_validation(self, valid_ll: float, patience: int, max_epochs: int, decay_factor: float = 1.0,
                          decay_patience: int = 1) -> None:
        """After epoch ``self.epoch``: keep the best parameters, count the epochs since them
        (early stopping after ``patience``), and multiply the step size by ``decay_factor``
        after every ``decay_patience`` of those epochs (1: the constant step of the paper's
        Adam; a plateau schedule as torch's ReduceLROnPlateau, counted by the same patience)."""
        if valid_ll > self.best_valid:
            self.best_valid, self.best_epoch, self.stale = valid_ll, self.epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        else:
            self.stale += 1
        self.done = self.stale >= patience or self.epoch >= max_epochs
        if decay_factor < 1.0 and self.stale and self.stale % decay_patience == 0 and not self.done:
            self.set_learning_rate(self.learning_rate * decay_factor)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def load_best(self) -> None:
        """Leave the module at its best validation epoch (where the test is scored)."""
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)


def _state_arrays(state: dict[str, torch.Tensor], prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}{key}": value.detach().cpu().numpy() for key, value in state.items()}


def save_checkpoint(arm: Arm, path: Path, config: dict) -> None:
    """Write ``arm`` to ``path`` atomically: current and best parameters, Adam's moments and step
    counts, both generators, the patience counter and the epoch table (JSON), and ``config`` (what
    the arm is: checked on load)."""
    arrays = _state_arrays(arm.module.state_dict(), "state/")
    # after an improving epoch the best parameters are the current ones: stored once (a smaller file)
    best_is_current = arm.best_state is not None and arm.best_epoch == arm.epoch
    if arm.best_state is not None and not best_is_current:
        arrays.update(_state_arrays(arm.best_state, "best/"))
    for index, slots in arm.optimiser.state_dict()["state"].items():
        for slot, value in slots.items():
            arrays[f"adam/{index}/{slot}"] = torch.as_tensor(value).detach().cpu().numpy()
    arrays["torch_rng"] = arm.torch_rng.numpy()
    meta = {"format": CHECKPOINT_FORMAT, "version": 1, "name": arm.name, "config": config, "epoch": arm.epoch,
            "stale": arm.stale, "best_epoch": arm.best_epoch,
            "best_valid": None if arm.best_state is None else arm.best_valid, "done": arm.done,
            "best_is_current": best_is_current, "learning_rate": arm.learning_rate,
            "rng": arm.rng.bit_generator.state, "history": arm.history}
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write(path, lambda stream: np.savez_compressed(stream, **arrays))


def load_checkpoint(arm: Arm, path: Path, config: dict) -> None:
    """Put the state ``save_checkpoint`` wrote back into a freshly built ``arm`` of the same
    ``config``; a checkpoint of another arm or configuration is a ``ValueError`` saying which."""
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(str(archive["meta"]))
        if meta.get("format") != CHECKPOINT_FORMAT or meta.get("name") != arm.name:
            raise ValueError(f"{path}: not a checkpoint of the {arm.name} arm")
        if meta["config"] != config:
            raise ValueError(f"{path}: the checkpoint's configuration {meta['config']} is not this run's {config}")
        device = next(arm.module.parameters()).device

        def state(prefix: str) -> dict[str, torch.Tensor]:
            return {key[len(prefix):]: torch.as_tensor(archive[key], device=device)
                    for key in archive.files if key.startswith(prefix)}

        arm.module.load_state_dict(state("state/"))
        best = state("best/")
        if meta.get("best_is_current"):
            best = {k: v.detach().clone() for k, v in arm.module.state_dict().items()}
        arm.best_state = best or None
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key in archive.files:
            if key.startswith("adam/"):
                _, index, slot = key.split("/")
                value = torch.as_tensor(archive[key])
                slots.setdefault(int(index), {})[slot] = value if slot == "step" else value.to(device)
        optimiser_state = arm.optimiser.state_dict()
        optimiser_state["state"] = slots
        arm.optimiser.load_state_dict(optimiser_state)
        arm.torch_rng = torch.as_tensor(archive["torch_rng"])
    arm.rng.bit_generator.state = meta["rng"]
    arm.epoch, arm.stale, arm.best_epoch, arm.done = meta["epoch"], meta["stale"], meta["best_epoch"], meta["done"]
    arm.best_valid = -math.inf if meta["best_valid"] is None else meta["best_valid"]
    arm.history = meta["history"]
    arm.set_learning_rate(meta.get("learning_rate", arm.learning_rate))  # older checkpoints: never decayed


# ---------------------------------------------------------------- training and scoring
def mean_estimate(module: torch.nn.Module, x: torch.Tensor, samples: int, seed: int, batch: int = 500) -> float:
    """Mean IWAE estimate over ``x`` with fixed noise (``seed``): comparable across epochs.
    Leaves torch's global generator reseeded: callers that care swap their own state back."""
    module.samples, total = samples, 0.0
    torch.manual_seed(seed)
    with torch.no_grad():
        for start in range(0, len(x), batch):
            total += float(module(x[start : start + batch]).sum())
    return total / len(x)


def train_epoch(arm: Arm, train_x: torch.Tensor, valid_x: torch.Tensor, batch_size: int, samples: int,
                patience: int, max_epochs: int, min_steps: int = 1, decay_factor: float = 1.0,
                decay_patience: int = 1) -> dict:
    """One epoch of Adam on −mean IWAE bound, then the validation bound (fixed noise); updates the
    best epoch, the patience counter, ``done`` and the step size (``Arm.record_validation``);
    returns the epoch's record (bpd, seconds, the step size it ran at).

    An epoch is as many passes over ``train_x`` (each in a fresh random order) as it takes to make
    at least ``min_steps`` Adam steps: one pass on the 50,000 images (391 steps), 32 passes on 1%
    of them (4 steps each), so that validation and patience count comparable amounts of training
    (the paper validated every 128 batches) instead of validating 10,000 images every 4 steps."""
    started = time.perf_counter()
    learning_rate = arm.learning_rate
    torch.set_rng_state(arm.torch_rng)
    arm.module.samples = samples
    steps_per_pass = math.ceil(len(train_x) / batch_size)
    passes = max(1, math.ceil(min_steps / steps_per_pass))
    total = 0.0
    for _ in range(passes):
        order = torch.as_tensor(arm.rng.permutation(len(train_x)), device=train_x.device)
        for begin in range(0, len(order), batch_size):
            log_p = arm.module(train_x[order[begin : begin + batch_size]])
            arm.optimiser.zero_grad(set_to_none=True)
            (-log_p.mean()).backward()
            arm.optimiser.step()
            total += float(log_p.detach().sum())
    arm.torch_rng = torch.get_rng_state()
    valid_ll = mean_estimate(arm.module, valid_x, samples, arm.seed + 1)
    arm.epoch += 1
    if not math.isfinite(valid_ll):
        raise FloatingPointError(f"{arm.name}: the validation bound is {valid_ll} after epoch {arm.epoch}")
    arm.record_validation(valid_ll, patience, max_epochs, decay_factor, decay_patience)
    record = {"model": arm.name, "epoch": arm.epoch, "seconds": time.perf_counter() - started,
              "learning_rate": learning_rate,
              "train": bpd(total / (passes * len(train_x))), "valid": bpd(valid_ll), "best_epoch": arm.best_epoch,
              "passes": passes, "steps": passes * steps_per_pass,
              "stale": arm.stale, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    arm.history.append(record)
    return record


def score_blocks(score: Callable[[np.ndarray, int], float], test: np.ndarray, block: int, done: list[float],
                 on_block: Callable[[list[float]], None]) -> float:
    """The mean test log-likelihood, scored ``block`` rows at a time: ``done`` holds the sums of
    the blocks already scored (from an earlier sitting) and ``on_block`` records each new one, so
    that a long 5000-sample test also survives interruptions. ``score(rows, index)`` returns the
    sum of log p over ``rows`` with noise seeded by the block's ``index``."""
    blocks = list(done)
    for index in range(len(blocks), math.ceil(len(test) / block)):
        blocks.append(score(test[index * block : (index + 1) * block], index))
        on_block(blocks)
    return sum(blocks) / len(test)
