"""One JSON record per measurement: printed, and appended to a results file (benchmarks share it)."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

MNIST_PIXELS = 28 * 28


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


def machine_text(device: str = "cpu") -> str:
    """The machine in words for a results file: CPU model, SIMD flags, cores (and the GPU's name)."""
    cpu = machine()
    text = f"{cpu['cpu']} ({', '.join(cpu['simd']) or 'no AVX2'}), {cpu['cores']} cores"
    if device.startswith("cuda"):
        import torch

        text += f", {torch.cuda.get_device_name()}"
    return text


def command_line(script: str, argv: list[str] | None) -> str:
    """How this run was started, for its results: ``python benchmarks/SCRIPT ARGS``."""
    return " ".join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


MNIST_HELP = "MNIST as an .npz (x_train, x_test); default: where `einc data path mnist` finds it"


def mnist_path(given: Path | None) -> Path:
    """Where MNIST is: ``given`` (a script's --data), else einc's data cache (``$EINC_DATA``),
    else ../shared/data; otherwise the script exits with one line saying how to get it."""
    from einc.io.datasets import DataMissing, find

    try:
        return find("mnist", given)
    except DataMissing as error:
        raise SystemExit(f"{Path(sys.argv[0]).name}: {error}") from None


def mnist_images(path: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's training and test images as flat uint8 rows, (60000, 784) and (10000, 784);
    callers convert the rows they use (a float64 copy of all of them is 440 MB). ``path``:
    as for ``mnist_path``."""
    with np.load(mnist_path(path)) as archive:
        return (archive["x_train"].reshape(-1, MNIST_PIXELS), archive["x_test"].reshape(-1, MNIST_PIXELS))


def require_device(device: str, script: str) -> None:
    """Exit with a message (no traceback, before any data is read) when ``device`` is a CUDA
    device that torch cannot see."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"error: benchmarks/{script} --device {device} needs a CUDA device, and torch sees "
                             f"none (torch {torch.__version__}); run it on a GPU machine or with --device cpu")
