"""Progress over the rows of a long query (``Model.log_likelihood(..., progress=...)``).

``progress`` is what a caller passes: False (nothing), True (a tqdm bar on stderr, as
``Model.fit(progress=True)``) or a callable ``report(rows_done, rows_total)`` — what the CLI uses
when stderr is not a terminal (a background ``einc eval --samples 5000`` writes a line a minute to
its log instead of nothing for an hour).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Progress = bool | Callable[[int, int], None]


@contextmanager
def row_progress(progress: Progress, total: int, desc: str) -> Iterator[Callable[[int], None]]:
    """``advance(rows)`` after each batch of ``rows`` rows, reporting to ``progress``."""
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="row", leave=False)
        try:
            yield bar.update
        finally:
            bar.close()
    elif callable(progress):
        done = 0

        def advance(rows: int) -> None:
            nonlocal done
            done += rows
            progress(done, total)

        yield advance
    else:
        yield lambda rows: None


def log_lines(label: str, every_seconds: float = 60.0, stream: Any = None) -> Callable[[int, int], None]:
    """A ``progress`` callable writing ``label: N/M rows (elapsed, time left)`` at most once per
    ``every_seconds``, and at the end if it wrote before, for logs where a bar's carriage returns
    would be noise. A query shorter than ``every_seconds`` writes nothing (stderr stays the
    errors' alone)."""
    started = last = time.monotonic()
    wrote = False

    def report(done: int, total: int) -> None:
        nonlocal last, wrote
        now = time.monotonic()
        if now - last < every_seconds and not (wrote and done >= total):
            return
        last, wrote = now, True
        elapsed = now - started
        left = elapsed / done * (total - done) if done else float("nan")
        print(f"{label}: {done}/{total} rows ({elapsed:.0f} s, about {left:.0f} s left)",
              file=stream if stream is not None else sys.stderr, flush=True)

    return report


def counted(number: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``: a count with its noun in the right number (regular plurals)."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
