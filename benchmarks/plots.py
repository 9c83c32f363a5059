"""Charts the benchmarks write as PNG (Pillow only)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from einc.files import atomic_write


def curve_png(path: Path, history: list[dict[str, float]], title: str,
              series: dict[str, tuple[int, int, int]] | None = None, ceiling: float | None = None) -> None:
    """Values per epoch as a small line chart: one line per ``series`` name (a key of the
    history's records) in its colour; by default bits per dimension on train, valid and test.
    ``ceiling`` caps the axis (higher values are drawn at the top edge), so that a few early
    epochs do not flatten the rest."""
    width, height, margin = 640, 400, 60
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    series = series or {"train": (31, 119, 180), "valid": (255, 127, 14), "test": (44, 160, 44)}
    values = [h[name] for h in history for name in series if name in h]
    if ceiling is not None:
        history = [{k: min(v, ceiling) if k in series else v for k, v in h.items()} for h in history]
        values = [min(v, ceiling) for v in values]
    low, high = min(values), max(values)
    high = high if high > low else low + 1.0
    epochs = [h["epoch"] for h in history]
    first, last = min(epochs), max(max(epochs), min(epochs) + 1)

    def point(epoch: float, value: float) -> tuple[float, float]:
        x = margin + (epoch - first) / (last - first) * (width - 2 * margin)
        y = height - margin - (value - low) / (high - low) * (height - 2 * margin)
        return x, y

    draw.rectangle([margin, margin, width - margin, height - margin], outline=(0, 0, 0))
    for fraction in (0.0, 0.5, 1.0):
        value = low + fraction * (high - low)
        draw.text((5, point(first, value)[1] - 6), f"{value:.3f}", fill=(0, 0, 0))
    draw.text((margin, height - margin + 8), f"epoch {first}", fill=(0, 0, 0))
    draw.text((width - margin - 50, height - margin + 8), f"epoch {last}", fill=(0, 0, 0))
    draw.text((margin, 20), title, fill=(0, 0, 0))
    for offset, (name, colour) in enumerate(series.items()):
        points = [point(h["epoch"], h[name]) for h in history if name in h]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.text((width - margin - 110, margin + 8 + 14 * offset), name, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)  # the results folder (atomic_write creates none)
    atomic_write(path, lambda stream: canvas.save(stream, format="PNG"))
