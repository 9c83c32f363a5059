"""The command line's option types and the options several commands share, as data.

Every numeric option is range-checked by the parser (its type is one of the checked types
below), so a bad number never reaches the work; ``command_line`` writes a parsed command back
as arguments (how ``--nproc`` re-runs ``einc train`` in its workers).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from einc.backends.em import DEFAULT_PSEUDOCOUNT
from einc.compiler import size
from einc.ir.neural import DEFAULT_TRAINING_SAMPLES
from einc.train.loop import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, DEFAULT_STEP_SIZE

@dataclass(frozen=True)
class Arg:
    """One ``argparse`` argument: the flags and ``add_argument`` keywords, as data."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    args: tuple[Arg, ...] = ()


# ---------------------------------------------------------------------------------------------
# Checked option types: argparse reports a ValueError/ArgumentTypeError from them as a usage error
# naming the option, so a bad number never reaches the work.


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found '{text}'") from None


def _real(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, found '{text}'")
    return value


def _checked(convert: Callable[[str], Any], allowed: Callable[[Any], bool], message: str,
             name: str) -> Callable[[str], Any]:
    """An option type: ``convert`` the text, then refuse a value ``allowed`` rejects with
    ``message`` (which may name ``{found}``, the value as written)."""

    def option_type(text: str) -> Any:
        value = convert(text)
        if not allowed(value):
            raise argparse.ArgumentTypeError(message.format(found=value if convert is _integer else text))
        return value

    option_type.__name__ = name  # argparse names the type in its messages
    return option_type


positive_int = _checked(_integer, lambda v: v >= 1, "must be at least 1, found {found}", "positive_int")
non_negative_int = _checked(_integer, lambda v: v >= 0, "must be 0 or more, found {found}", "non_negative_int")
positive_float = _checked(_real, lambda v: v > 0, "must be positive, found {found}", "positive_float")
non_negative_float = _checked(_real, lambda v: v >= 0, "must be 0 or more, found {found}", "non_negative_float")
step_size = _checked(_real, lambda v: 0 < v <= 1, "must be in (0, 1] (1 is a full EM step), found {found}", "step_size")


def grow_spec(text: str) -> tuple[int, int]:
    """``--grow N1xN2``, read by ``einc.train.lvd_pg.parse_grow``."""
    from einc.errors import EincError
    from einc.train.lvd_pg import parse_grow

    try:
        return parse_grow(text)
    except EincError:
        raise argparse.ArgumentTypeError(f"expected N1xN2 with whole numbers of at least 1, e.g. 4x4, "
                                         f"found '{text}'") from None


def unit_fraction(text: str) -> float:
    value = _real(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] (a fraction of the flow per sample), found {text}")
    return value


def thread_count(text: str) -> str | int:
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number of at least 1 ({error})") from None


def device_name(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, found '{text}'")
    return text


_BYTE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def byte_count(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a size such as 4G, 512M or 1000000, found '{text}'")
    value = int(float(match.group(1)) * _BYTE_UNITS[match.group(2)])
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, found '{text}'")
    return value


# ---------------------------------------------------------------------------------------------
# Option groups

FILE = Arg(("file",), {"metavar": "FILE.pc", "help": "a .pc circuit file"})
K_OPTIONS = (
    Arg(("--sums",), {"type": positive_int, "metavar": "K", "help": "override the file's `sums`"}),
    Arg(("--inputs",), {"type": positive_int, "metavar": "K", "help": "override the file's `inputs`"}),
    Arg(("--heads",), {"type": positive_int, "metavar": "K", "help": "override the file's `heads`"}),
)
LIMIT_OPTIONS = (
    Arg(("--max-memory",), {"type": byte_count, "metavar": "BYTES", "default": f"{size.DEFAULT_MAX_BYTES // 2**30}G",
                            "help": "refuse circuits whose estimated memory exceeds this (e.g. 8G)"}),
    Arg(("--max-build-seconds",), {"type": positive_float, "metavar": "S", "default": size.DEFAULT_MAX_BUILD_SECONDS,
                                   "help": "refuse circuits whose front end would take longer than this (estimated)"}),
)
DEVICE = Arg(("--device",), {"type": device_name, "default": "cpu", "help": "cpu, cuda or cuda:N"})
BACKEND = Arg(("--backend",), {"choices": ["torch", "numpy", "cupy"], "default": "torch", "help": "which backend runs the plan"})
THREADS = Arg(("--threads",), {"type": thread_count, "default": "auto", "metavar": "auto|N",
                               "help": "torch CPU threads; auto: 1 for small circuits, else the idle cores"})
# Commands that compile a new model (train) default to float32; those that load one use its own.
NEW_MODEL_OPTIONS = (
    BACKEND,
    DEVICE,
    Arg(("--dtype",), {"default": "float32", "choices": ["float32", "float64"], "help": "parameter precision"}),
    THREADS,
    *LIMIT_OPTIONS,
)
LOADED_MODEL_OPTIONS = (
    BACKEND,
    DEVICE,
    Arg(("--dtype",), {"default": None, "choices": ["float32", "float64"],
                       "help": "run at this precision (default: the model's own)"}),
    THREADS,
    *LIMIT_OPTIONS,
)
MODEL = Arg(("model",), {"metavar": "MODEL", "help": "a model file written by einc train"})
# the data and EM options einc train and einc lvd share
TRAIN_DATA = Arg(("--data",), {"required": True, "metavar": "TRAIN", "help": "training data (.csv[.gz], .npy, .npz)"})
TEST_DATA = Arg(("--test",), {"metavar": "T", "help": "test data: report its log-likelihood at the end"})
BATCH_SIZE = Arg(("--batch-size",), {"type": positive_int, "default": DEFAULT_BATCH_SIZE, "help": "samples per EM step"})
STEP_SIZE = Arg(("--step-size",), {"type": step_size, "default": DEFAULT_STEP_SIZE,
                                   "help": "online EM step size λ (eqs. 8-9)"})
UPDATE = Arg(("--update",), {"choices": ["batch", "epoch"], "default": "batch",
                             "help": "M-step after every batch (stochastic EM) or once per epoch"})
SEED = Arg(("--seed",), {"type": non_negative_int, "default": 0, "help": "random seed"})
MEANS = Arg(("--means",), {"action": "store_true", "help": "leaf means instead of leaf samples"})
HEAD = Arg(("--head",), {"type": non_negative_int, "metavar": "H",
                         "help": "a multi-head model's head to answer with (default 0)"})
PSEUDOCOUNT = Arg(("--pseudocount",), {
    "type": non_negative_float, "default": DEFAULT_PSEUDOCOUNT, "metavar": "ALPHA",
    "help": "EM Laplace smoothing: ALPHA pseudo-observations per sum-weight vector and categorical/Bernoulli "
            "leaf, spread over its outcomes, at each M-step: per batch in online EM, so keep it well below "
            "batch/K (0: none)"})


def arguments_of(name: str, options: Sequence[Arg], args: argparse.Namespace) -> list[str]:
    """The arguments that parse back to ``args`` of the command ``name`` with ``options``. Every option's value is written
    out, defaults included, so a worker's parser range-checks the same values."""
    argv = ["--debug"] if getattr(args, "debug", False) else []
    argv.append(name)
    for arg in options:
        flag = next((f for f in arg.flags if f.startswith("--")), arg.flags[0])
        value = getattr(args, arg.options.get("dest", flag.lstrip("-").replace("-", "_")))
        if not flag.startswith("-"):
            argv.append(str(value))
        elif arg.options.get("action") == "store_true":
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    return argv


# einc train's options (a launcher re-runs them in its workers: command_line)
TRAIN_ARGS: tuple[Arg, ...] = (
    *NEW_MODEL_OPTIONS,
    FILE,
    *K_OPTIONS,  # as check and compile take them (the model file records them)
    TRAIN_DATA,
    Arg(("--valid",), {"metavar": "V", "help": "validation data: keep the best epoch on it"}),
    TEST_DATA,
    Arg(("--epochs",), {"type": positive_int, "default": DEFAULT_EPOCHS,
                        "help": "epochs in all (with --resume: including those already done)"}),
    BATCH_SIZE,
    STEP_SIZE,
    Arg(("--method",), {"choices": ["em", "adam"], "default": None,
                        "help": "EM, or gradient training with Adam (torch backend); default: em, "
                                "or adam for circuits with vae leaves (which EM cannot train)"}),
    Arg(("--samples",), {"type": positive_int, "default": DEFAULT_TRAINING_SAMPLES, "metavar": "K",
                         "help": "vae leaves: importance samples per leaf of the IWAE bound trained on "
                                 "(the SPVAE paper used 5)"}),
    Arg(("--learning-rate",), {"type": positive_float, "default": DEFAULT_LEARNING_RATE,
                               "help": "Adam's learning rate (--method adam)"}),
    UPDATE,
    PSEUDOCOUNT,
    Arg(("--seed",), {"type": non_negative_int, "default": 0, "help": "initial parameters and batch order"}),
    Arg(("--patience",), {"type": positive_int, "metavar": "N",
                          "help": "stop after N epochs without a better validation LL (needs --valid)"}),
    Arg(("--checkpoint-every",), {"type": positive_int, "metavar": "N",
                                  "help": "write the model (best so far, with the training state) every N epochs"}),
    Arg(("--resume",), {"metavar": "MODEL", "help": "continue the training saved in MODEL (same circuit)"}),
    Arg(("--labels",), {"metavar": "L", "help": "class labels of the training rows: class-conditional training of a multi-head circuit (head = label)"}),
    Arg(("--valid-labels",), {"metavar": "L", "help": "class labels of the validation rows"}),
    Arg(("--mixture",), {"type": positive_int, "metavar": "C", "help": "train a mixture of C circuits, one per k-means cluster (paper §4.2)"}),
    Arg(("-o", "--output"), {"required": True, "metavar": "MODEL", "help": "model file to write (.npz)"}),
    Arg(("--nproc",), {"type": positive_int, "metavar": "N", "help": "data-parallel training: start N local worker "
                       "processes (torch.distributed: gloo on CPU, NCCL on CUDA); under torchrun leave it out"}),
    Arg(("--stream",), {"action": "store_true", "help": "read the training data from disk block by block "
                        "(out of core) instead of loading it; implied by --nproc and torchrun"}),
    Arg(("--plot",), {"metavar": "FILE.png", "help": "also draw the learning curves (train and valid LL per "
                       "epoch) as a PNG; the per-epoch table is always written beside the model, as "
                       "MODEL.history.csv"}),
    Arg(("--cache-dir",), {"metavar": "DIR", "help": "where CSV and .npz training data are cached as .npy "
                           "for out-of-core reading (default: ~/.cache/einc)"}),
    Arg(("--precision",), {"choices": ["fp32", "tf32"], "default": "fp32",
                           "help": "float32 matmuls on CUDA: IEEE fp32 (default) or TF32 tensor cores "
                                   "(faster, ~1e-3 relative error; torch on CUDA only)"}),
)
