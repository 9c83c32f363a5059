"""One JSON record per measurement: printed, and appended to a results file (benchmarks share it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(record: dict[str, Any], out: Path | None) -> None:
    """Print ``record`` as one JSON line and append it to ``out`` (when given)."""
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as file:
            file.write(line + "\n")
