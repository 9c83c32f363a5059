"""A small teacher for latent variable distillation on MNIST: a VQ-VAE with one code per 7×7 patch.

    einc data fetch mnist                     # once: MNIST into einc's data cache (or give --data)
    python examples/lvd/teacher.py --train-rows 10000 -o examples/lvd/out
    einc lvd examples/lvd/mnist_lvd.pc --data examples/lvd/out/train.npy \\
        --teacher examples/lvd/out/features_train.npy -o lvd.npz

The design follows the LVD paper's image recipe (§5, "closing the LVD gap"): the latent map has
one position per patch, as the circuit has one latent per Poon–Domingos leaf patch, and the
decoder is *independent* per patch — patch i is generated from its own code z_i (and its
position) alone, which is the conditional independence the circuit assumes given z.

- Encoder: two 3×3 convolutions over the whole image (so a patch's code sees a 2-pixel border of
  context), then a 7×7 convolution with stride 7: a (D, 4, 4) map, one D-vector h_i per patch.
- Vector quantisation: the nearest of ``codes`` codebook vectors, straight-through gradients,
  codebook and commitment losses (van den Oord et al., 2017); unused codes are restarted at
  random encoder outputs after every epoch.
- Decoder: per patch, an MLP of (code + position embedding) to a mixture of three discretised
  logistics over the 256 grey levels of each of its 49 pixels (PixelCNN++'s likelihood, so the
  teacher's ELBO is in bits per dimension like the circuit's).

The files written are what ``einc lvd`` and ``benchmarks/lvd_mnist.py`` read: the continuous
pre-quantisation embeddings ``features_{train,test}.npy`` (N, 16, D) in the circuit's latent
order (``patches[r, c]``, row-major), the images ``{train,test}.npy`` (N, 784) and the weights
``teacher.pt``. The teacher's ELBO under a discretisation z of the features (one-hot q(z | x), so
ELBO = log p(x | z) + log p(z)) is ``elbo``.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from einc.io.datasets import DataMissing
from einc.io.datasets import find as find_dataset

PATCH = 7
GRID = 4  # 28 / 7 patches per side
PIXELS_PER_PATCH = PATCH * PATCH
LEVELS = 256
RESTART_EVERY = 20  # batches between restarts of unused codes


@dataclass(frozen=True)
class TeacherConfig:
    dims: int = 16  # D, the size of a patch embedding
    codes: int = 10  # the VQ codebook size (use the circuit's K)
    channels: int = 16
    hidden: int = 128
    mixture: int = 3  # logistic components per pixel: MNIST pixels are black, white or in between
    commitment: float = 0.25


class Teacher(nn.Module):
    """Conv encoder -> (B, 16, D) patch embeddings; independent per-patch decoder."""

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, config.dims, PATCH, stride=PATCH),  # (B, D, 4, 4): one vector per patch
        )
        self.codebook = nn.Parameter(torch.randn(config.codes, config.dims) * 0.1)
        self.position = nn.Parameter(torch.zeros(GRID * GRID, config.dims))
        self.decoder = nn.Sequential(
            nn.Linear(config.dims, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.hidden), nn.ReLU(),
            # per pixel and mixture component: a weight logit, a mean and a log-scale
            nn.Linear(config.hidden, 3 * config.mixture * PIXELS_PER_PATCH),
        )
        with torch.no_grad():  # start near the typical MNIST pixel: black (mean ≈ 1), scale e ≈ 3 levels
            bias = self.decoder[-1].bias.view(3, config.mixture, PIXELS_PER_PATCH)
            bias[1] = -2.5
            bias[1, -1] = 2.5  # one component starts white
            bias[2] = 1.0

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 784) grey levels -> (B, 16, D) continuous patch embeddings, patches row-major."""
        scaled = images.reshape(-1, 1, 28, 28) / 127.5 - 1.0
        return self.encoder(scaled).flatten(2).transpose(1, 2)

    def quantise(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (B, 16), quantised embeddings (B, 16, D)) by the nearest codebook vector."""
        distances = (h**2).sum(-1, keepdim=True) - 2 * h @ self.codebook.t() + (self.codebook**2).sum(-1)
        codes = distances.argmin(-1)
        return codes, self.codebook[codes]

    def log_likelihood_given(self, images: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per image (B,), each patch decoded from its own embedding (B, 16, D)."""
        out = self.decoder(embeddings + self.position)  # (B, 16, 3·M·49)
        logits, raw_mean, raw_scale = out.unflatten(-1, (3, self.config.mixture, PIXELS_PER_PATCH)).unbind(2)
        mean = 127.5 + 127.5 * torch.tanh(raw_mean)  # (B, 16, M, 49)
        # a smooth bound (−3.5, 5.5) on the log-scale: a hard clamp's zero gradient stalls training
        log_scale = 1.0 + 4.5 * torch.tanh(raw_scale / 4.5)
        pixels = to_patches(images)[:, :, None, :]  # (B, 16, 1, 49)
        per_component = discretised_logistic(pixels, mean, log_scale) + torch.log_softmax(logits, 2)
        return torch.logsumexp(per_component, 2).sum((1, 2))


def to_patches(images: torch.Tensor) -> torch.Tensor:
    """(B, 784) row-major images -> (B, 16, 49): patches row-major, pixels row-major in each."""
    grid = images.reshape(-1, GRID, PATCH, GRID, PATCH)
    return grid.permute(0, 1, 3, 2, 4).reshape(-1, GRID * GRID, PIXELS_PER_PATCH)


def discretised_logistic(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of integer grey levels 0..255 under a logistic discretised to unit bins, with
    the edge bins open (x = 0 takes (−∞, 0.5], x = 255 takes [254.5, ∞)), as in PixelCNN++."""
    centred = x - mean
    inverse = torch.exp(-log_scale)
    upper = inverse * (centred + 0.5)
    lower = inverse * (centred - 0.5)
    log_cdf_upper = upper - F.softplus(upper)  # log σ(upper)
    log_survival_lower = -F.softplus(lower)  # log (1 − σ(lower))
    mass = torch.sigmoid(upper) - torch.sigmoid(lower)
    middle = inverse * centred
    log_density = middle - log_scale - 2.0 * F.softplus(middle)  # the bin's mass ≈ its density
    inner = torch.where(mass > 1e-5, torch.log(mass.clamp(min=1e-12)), log_density)
    return torch.where(x < 0.5, log_cdf_upper, torch.where(x > LEVELS - 1.5, log_survival_lower, inner))


def train(images: np.ndarray, config: TeacherConfig, epochs: int = 8, batch_size: int = 128,
          learning_rate: float = 2e-3, seed: int = 0, log=print) -> Teacher:
    """Train the VQ teacher on (N, 784) grey levels; returns it in eval mode."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Teacher(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    data = torch.as_tensor(images, dtype=torch.float32)
    _restart_unused_codes(model, data, torch.zeros(config.codes, dtype=torch.bool), rng)  # start at embeddings
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        order = torch.as_tensor(rng.permutation(len(data)))
        total, used, restarted = 0.0, torch.zeros(config.codes, dtype=torch.bool), 0
        for step, begin in enumerate(range(0, len(data), batch_size), start=1):
            batch = data[order[begin : begin + batch_size]]
            h = model.embed(batch)
            codes, quantised = model.quantise(h)
            used[codes.unique()] = True
            if step % RESTART_EVERY == 0:  # codes no embedding chose lately restart at embeddings
                restarted += _restart_unused_codes(model, data, used, rng)
                used[:] = False
            straight = h + (quantised - h).detach()
            reconstruction = model.log_likelihood_given(batch, straight)
            vq = F.mse_loss(quantised, h.detach()) + config.commitment * F.mse_loss(h, quantised.detach())
            loss = -reconstruction.mean() / 784 + vq
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(reconstruction.detach().sum())
        bits = -total / len(data) / 784 / math.log(2)
        log(f"teacher epoch {epoch:2d}  reconstruction {bits:.4f} bits/dim  codes restarted {restarted}"
            f"  ({time.perf_counter() - started:.1f}s)")
    return model.eval()


def _restart_unused_codes(model: Teacher, data: torch.Tensor, used: torch.Tensor, rng: np.random.Generator) -> int:
    unused = (~used).nonzero()[:, 0]
    if len(unused) == 0:
        return 0
    with torch.no_grad():
        sample = data[torch.as_tensor(rng.choice(len(data), size=min(len(data), 256), replace=False))]
        h = model.embed(sample).reshape(-1, model.config.dims)
        picks = torch.as_tensor(rng.choice(len(h), size=len(unused), replace=False))
        model.codebook[unused] = h[picks]
    return len(unused)


@torch.no_grad()
def features(model: Teacher, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The continuous patch embeddings (N, 16, D) — what ``einc lvd --teacher`` clusters."""
    data = torch.as_tensor(images, dtype=torch.float32)
    return torch.cat([model.embed(data[i : i + batch_size]) for i in range(0, len(data), batch_size)]).numpy()


@torch.no_grad()
def elbo(model: Teacher, images: np.ndarray, latents: np.ndarray, centres: np.ndarray,
         prior: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The teacher's ELBO per image (nats) under a discretisation z of its features, q(z | x)
    one-hot: log p(x | z) + log p(z), with p(x | z) the decoder applied to each patch's centre
    ``centres[z_i]`` and p(z) = Π_i ``prior[i, z_i]`` (a factorised prior, (16, K))."""
    centre = torch.as_tensor(centres, dtype=torch.float32)
    log_prior = np.log(prior)[np.arange(latents.shape[1]), latents].sum(1)
    out = []
    for begin in range(0, len(images), batch_size):
        batch = torch.as_tensor(images[begin : begin + batch_size], dtype=torch.float32)
        codes = torch.as_tensor(latents[begin : begin + batch_size], dtype=torch.long)
        out.append(model.log_likelihood_given(batch, centre[codes]).double().numpy())
    return np.concatenate(out) + log_prior


def factorised_prior(latents: np.ndarray, states: int, pseudocount: float = 1.0) -> np.ndarray:
    """p(z_i = k) per position from training assignments (16, K), Laplace-smoothed."""
    counts = np.stack([np.bincount(column, minlength=states) for column in latents.T]) + pseudocount
    return counts / counts.sum(1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path,
                        help="MNIST as an .npz (x_train, x_test); default: where `einc data path mnist` finds it")
    parser.add_argument("--train-rows", type=int, default=10000, help="train on the first N training images")
    parser.add_argument("--codes", type=int, default=10, help="VQ codebook size (the circuit's K)")
    parser.add_argument("--dims", type=int, default=16, help="patch embedding size D")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        data = find_dataset("mnist", args.data)
    except DataMissing as error:
        parser.exit(1, f"teacher.py: {error}\n")
    with np.load(data) as mnist:
        train_images = mnist["x_train"][: args.train_rows].reshape(-1, 784).astype(np.float32)
        test_images = mnist["x_test"].reshape(-1, 784).astype(np.float32)
    model = train(train_images, TeacherConfig(dims=args.dims, codes=args.codes), epochs=args.epochs, seed=args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    np.save(args.output / "train.npy", train_images)
    np.save(args.output / "test.npy", test_images)
    np.save(args.output / "features_train.npy", features(model, train_images))
    np.save(args.output / "features_test.npy", features(model, test_images))
    torch.save(model.state_dict(), args.output / "teacher.pt")
    print(f"wrote train.npy, test.npy, features_train.npy, features_test.npy and teacher.pt to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
