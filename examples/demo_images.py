"""``make demo-images``: train a Poon–Domingos EiNet on MNIST and write pictures.

Writes a grid of samples (leaf means, paper addendum D), a grid of exact samples, and an
inpainting figure (original | top half masked | conditional sample | MPE completion) as PNG.
By default it uses the 3,000-image subset shipped in examples/data/ so it runs on any machine;
``--data "$(einc data path mnist)" --device cuda`` trains on the full set (``einc data fetch mnist``).
The pictures go to ``out/demo-images/`` (ignored by git), so a demo never changes the checkout;
``make docs-images`` runs it and copies the README's three pictures to ``docs/images/``, on purpose.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import einc
from einc.io.images import grid, image_mask, image_shape, inpainting_figure, inpainting_rows, save_png, to_images
from einc.mixture import fit_mixture

ROOT = Path(__file__).resolve().parent.parent
# ignored by git: running the demo never changes the checkout (`make docs-images` copies on purpose)
DEFAULT_OUT = ROOT / "out" / "demo-images"


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--circuit", default=str(ROOT / "examples" / "mnist.pc"))
    parser.add_argument("--data", default=str(ROOT / "examples" / "data" / "mnist_small.npz"))
    parser.add_argument("--train-size", type=int, default=None, help="use the first N training images")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--step-size", type=float, default=0.1)
    parser.add_argument("--mixture", type=int, default=0, help="train a mixture of C EiNets (k-means clusters)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="folder for the pictures (docs/images: the README's, on purpose)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    with np.load(args.data) as archive:
        train = archive["x_train"].astype(np.float64)
        test = archive["x_test"].astype(np.float64)
    if args.train_size:
        train = train[: args.train_size]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def report(*values) -> None:
        record = values[-1]
        prefix = f"component {values[0]:2d} " if len(values) == 2 else ""
        print(f"{prefix}epoch {record.epoch:2d}  train LL {record.train_ll:10.2f}  ({record.seconds:.1f}s)", flush=True)

    if args.mixture:
        model = fit_mixture(args.circuit, train, args.mixture, epochs=args.epochs, batch_size=args.batch_size,
                            step_size=args.step_size, device=args.device, on_epoch=report)
    else:
        model = einc.compile(args.circuit, device=args.device, seed=0)
        print(f"{Path(args.circuit).name}: {model.num_parameters:,} parameters, {len(train)} training images, {args.device}")
        model.fit(train, epochs=args.epochs, batch_size=args.batch_size, step_size=args.step_size, on_epoch=report)
    seconds = time.perf_counter() - started
    test_ll = float(model.log_likelihood(test).mean())
    bits_per_dim = -test_ll / (test.shape[1] * np.log(2))
    print(f"trained in {seconds:.1f}s; test LL {test_ll:.1f} nats = {bits_per_dim:.3f} bits per dimension")

    graph = model.graph
    save_png(out / "mnist_samples_means.png", grid(to_images(graph, model.sample(64, seed=1, leaf_value="mean"))))
    save_png(out / "mnist_samples.png", grid(to_images(graph, model.sample(64, seed=2))))
    hidden = image_mask("top", image_shape(graph), 10)
    rows = inpainting_rows(model, test[:10], hidden, seed=3, leaf_value="mean")
    save_png(out / "mnist_inpaint_top.png", inpainting_figure(model, rows, hidden))
    hidden = image_mask("left", image_shape(graph), 10)
    rows = inpainting_rows(model, test[10:20], hidden, seed=4, leaf_value="mean")
    save_png(out / "mnist_inpaint_left.png", inpainting_figure(model, rows, hidden))
    print(f"wrote {out}/mnist_samples_means.png, mnist_samples.png, mnist_inpaint_top.png, mnist_inpaint_left.png")
    return 0


if __name__ == "__main__":
    sys.exit(run())
