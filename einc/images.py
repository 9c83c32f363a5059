"""Pictures of samples: circuits over one 2-D array variable become PNG grids (Pillow)."""

from __future__ import annotations

import io
import os
import re

import numpy as np

from einc.files import atomic_write
from einc.ir.diagnostics import DataError
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
    if graph.variables[0].family.name == "binomial":
        return graph.variables[0].family.arg("n")
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
