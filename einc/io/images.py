"""Pictures of samples: circuits over one 2-D array variable become PNG grids (Pillow)."""

from __future__ import annotations

import io
import os
import re

import numpy as np

from einc.io.files import atomic_write
from einc.errors import DataError
from einc.ir.neural import observation_family
from einc.ir.region_graph import RegionGraph

_INDEX = re.compile(r"^(\w+)\[\s*(\d+)\s*,\s*(\d+)\s*\]$")


def image_shape(graph: RegionGraph) -> tuple[int, int, int]:
    """(height, width, channels) when every variable is one cell of a single 2-D array."""
    cells = [_INDEX.match(v.name) for v in graph.variables]
    if not cells or any(c is None for c in cells) or len({c.group(1) for c in cells}) != 1:  # type: ignore[union-attr]
        raise DataError("PNG output needs a circuit over one 2-D array variable, e.g. `var img[28, 28] : ...`")
    height = 1 + max(int(c.group(2)) for c in cells)  # type: ignore[union-attr]
    width = 1 + max(int(c.group(3)) for c in cells)  # type: ignore[union-attr]
    return height, width, graph.variables[0].domain.columns


def value_range(graph: RegionGraph) -> float:
    """The value that maps to white: the top of the domain (binary 1, categorical(n) n−1, real 1)."""
    domain = graph.variables[0].domain
    if domain.kind == "binary":
        return 1.0
    if domain.kind == "categorical":
        return float(domain.size - 1)
    family = observation_family(graph.variables[0].family)  # a vae leaf: its decoder
    if family.name == "binomial":
        return family.arg("n")
    return 1.0


def to_images(graph: RegionGraph, rows: np.ndarray) -> np.ndarray:
    """(N, columns) -> (N, H, W, channels) uint8."""
    height, width, channels = image_shape(graph)
    scaled = np.clip(np.nan_to_num(rows, nan=0.0) / value_range(graph), 0.0, 1.0)
    return (scaled.reshape(len(rows), height, width, channels) * 255).round().astype(np.uint8)


def grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile (N, H, W, ch) images into one (rows·(H+pad), cols·(W+pad), ch) array."""
    count, height, width, channels = images.shape
    columns = columns or int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    canvas = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 128, np.uint8)
    for index in range(count):
        r, c = divmod(index, columns)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        canvas[top : top + height, left : left + width] = images[index]
    return canvas


def save_png(path: str | os.PathLike, canvas: np.ndarray, scale: int = 3) -> None:
    from PIL import Image

    picture = canvas[..., 0] if canvas.shape[-1] == 1 else canvas
    image = Image.fromarray(picture)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)

    def write(stream) -> None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        stream.write(buffer.getvalue())

    atomic_write(path, write)


def check_mask(spec: str) -> float | None:
    """Check a --mask spec (top, bottom, left, right or random:FRACTION); return the fraction."""
    if spec in ("top", "bottom", "left", "right"):
        return None
    if spec.startswith("random:"):
        try:
            fraction = float(spec.split(":", 1)[1])
        except ValueError:
            raise DataError(f"--mask {spec}: expected random:FRACTION, e.g. random:0.5") from None
        if not 0.0 <= fraction <= 1.0:
            raise DataError(f"--mask {spec}: the fraction must be in [0, 1]")
        return fraction
    raise DataError(f"--mask {spec}: expected top, bottom, left, right or random:FRACTION")


def image_mask(spec: str, shape: tuple[int, int, int], count: int, seed: int = 0) -> np.ndarray:
    """Which columns are hidden, per image: top|bottom|left|right (half) or random:FRACTION."""
    fraction = check_mask(spec)
    height, width, channels = shape
    hidden = np.zeros((count, height, width, channels), dtype=bool)
    if spec == "top":
        hidden[:, : height // 2] = True
    elif spec == "bottom":
        hidden[:, height // 2 :] = True
    elif spec == "left":
        hidden[:, :, : width // 2] = True
    elif spec == "right":
        hidden[:, :, width // 2 :] = True
    else:
        pixels = np.random.default_rng(seed).random((count, height, width)) < fraction
        hidden[:] = pixels[..., None]
    return hidden.reshape(count, -1)


def inpainting_rows(model, data: np.ndarray, hidden: np.ndarray, seed: int = 0,
                    leaf_value: str = "sample", **head: int) -> dict[str, np.ndarray]:
    """Original, masked, a conditional sample and the MPE completion of each row (``head=h``:
    under head h of a multi-head model)."""
    evidence = np.where(hidden, np.nan, data)
    return {
        "original": data,
        "masked": evidence,
        "sample": model.sample(evidence=evidence, seed=seed, leaf_value=leaf_value, **head),
        "mpe": model.mpe(evidence=evidence, **head),
    }


def inpainting_figure(model, rows: dict[str, np.ndarray], hidden: np.ndarray) -> np.ndarray:
    """One column per image; rows: original, masked (hidden pixels tinted), sample, MPE."""
    graph = model.graph
    pictures = []
    for name in ("original", "masked", "sample", "mpe"):
        images = to_images(graph, rows[name])
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, -1)
        if name == "masked":
            tint = hidden.reshape(images.shape[0], images.shape[1], images.shape[2], -1)[..., :1]
            images = np.where(tint, np.array([40, 60, 140], np.uint8), images)
        pictures.append(images)
    stacked = np.concatenate(pictures, 0)  # row-major grid: 4 rows of N images
    return grid(stacked, columns=len(rows["original"]))
