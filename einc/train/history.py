"""Training history: the per-epoch table (CSV) and learning curves (PNG, Pillow only).

``einc train -o MODEL.npz`` writes ``MODEL.history.csv`` beside the model whenever it writes the
model (at the end, at an interrupt, after a divergence), atomically; ``--plot FILE.png`` draws its
curves. The benchmarks draw theirs with ``curve_png`` too.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

from einc.errors import DataError
from einc.io.files import atomic_write
from einc.train.loop import EpochRecord

COLUMNS = ("epoch", "train_ll", "valid_ll", "seconds", "train_ll_running")


def history_path(model_path: str | os.PathLike) -> Path:
    """Where the table of ``MODEL.npz`` goes: ``MODEL.history.csv`` beside it."""
    path = Path(model_path)
    return path.with_name(path.stem + ".history.csv") if path.suffix else path.with_name(path.name + ".history.csv")


def write_history(path: str | os.PathLike, records: Sequence[EpochRecord]) -> None:
    """One row per epoch (an empty valid_ll where there was no validation), written atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in records:
        writer.writerow([r.epoch, repr(float(r.train_ll)), "" if r.valid_ll is None else repr(float(r.valid_ll)),
                         f"{r.seconds:.4f}", int(r.running)])
    atomic_write(path, lambda stream: stream.write(text.getvalue().encode("utf-8")))


def read_history(path: str | os.PathLike) -> list[EpochRecord]:
    """The records of a table ``write_history`` wrote (a resumed run extends it)."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
    except OSError as error:
        raise DataError(f"{path}: cannot read the training history ({error.strerror or error})") from None
    if not rows or tuple(rows[0]) != COLUMNS:
        raise DataError(f"{path}: not a training history written by einc (expected the header {','.join(COLUMNS)})")
    records = []
    for number, row in enumerate(rows[1:], 2):
        try:
            epoch, train, valid, seconds, running = row
            records.append(EpochRecord(int(epoch), float(train), float(valid) if valid else None, float(seconds),
                                       bool(int(running))))
        except ValueError:
            raise DataError(f"{path}:{number}: not a row of a training history") from None
    return records


def learning_curves(path: str | os.PathLike, records: Sequence[EpochRecord], title: str) -> None:
    """Train and valid log-likelihood per epoch as a PNG line chart."""
    history = []
    for r in records:
        point = {"epoch": float(r.epoch), "train": float(r.train_ll)}
        if r.valid_ll is not None:
            point["valid"] = float(r.valid_ll)
        history.append({k: v for k, v in point.items() if math.isfinite(v)})
    series = {"train": (31, 119, 180)}
    if any("valid" in h for h in history):
        series["valid"] = (255, 127, 14)
    curve_png(Path(path), history, title, series)


def curve_png(path: Path, history: list[dict[str, float]], title: str,
              series: dict[str, tuple[int, int, int]] | None = None, ceiling: float | None = None) -> None:
    """Values per epoch as a small line chart: one line per ``series`` name (a key of the
    history's records) in its colour; by default bits per dimension on train, valid and test.
    ``ceiling`` caps the axis (higher values are drawn at the top edge), so that a few early
    epochs do not flatten the rest."""
    from PIL import Image, ImageDraw

    width, height, margin = 640, 400, 60
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    series = series or {"train": (31, 119, 180), "valid": (255, 127, 14), "test": (44, 160, 44)}
    values = [h[name] for h in history for name in series if name in h]
    if not values:
        values = [0.0]
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
    atomic_write(path, lambda stream: canvas.save(stream, format="PNG"))
