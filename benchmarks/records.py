"""One JSON record per measurement: printed, and appended to a results file (benchmarks share it)."""

from __future__ import annotations

import json
import os
import platform
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


def machine() -> dict[str, Any]:
    """The CPU's model name, core count and SIMD flags (from /proc/cpuinfo where there is one)."""
    cpu, flags = platform.processor() or "unknown", ""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    simd = [flag for flag in ("avx2", "avx512f", "fma") if f" {flag}" in flags]
    return {"cpu": cpu, "cores": os.cpu_count(), "simd": simd}
