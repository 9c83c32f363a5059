"""The ``einc`` command line.

Subcommands live in one table, ``COMMANDS``: adding one is a function ``(args) -> exit code``
plus one ``Command`` entry naming its arguments. User errors (any ``EincError``) print their
diagnostics to stderr, without a traceback, and exit 1; ``--debug`` shows the traceback.

    $ einc check examples/tiny.pc
    $ einc compile examples/tiny.pc --emit layers
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from einc import __version__, commands
from einc.backends.em import DEFAULT_PSEUDOCOUNT
from einc.compiler import dump
from einc.compiler.pipeline import (
    compile_plan,
    CompileOptions,
    check_file,
    front_end,
    load_source,
    region_graph,
)
from einc.ir.diagnostics import EincError


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


FILE = Arg(("file",), {"metavar": "FILE.pc", "help": "a .pc circuit file"})
K_OPTIONS = (
    Arg(("--sums",), {"type": int, "metavar": "K", "help": "override the file's `sums`"}),
    Arg(("--inputs",), {"type": int, "metavar": "K", "help": "override the file's `inputs`"}),
    Arg(("--heads",), {"type": int, "metavar": "K", "help": "override the file's `heads`"}),
)


RUN_OPTIONS = (
    Arg(("--backend",), {"default": "torch", "help": "torch (default), numpy or cupy"}),
    Arg(("--device",), {"default": "cpu", "help": "cpu or cuda"}),
    Arg(("--dtype",), {"default": "float32", "choices": ["float32", "float64"]}),
    Arg(("--threads",), {"type": int, "help": "torch CPU threads (default: torch's choice)"}),
)


def compile_options(args: argparse.Namespace) -> CompileOptions:
    return CompileOptions(
        sums=getattr(args, "sums", None),
        inputs=getattr(args, "inputs", None),
        heads=getattr(args, "heads", None),
    )


# ---------------------------------------------------------------------------------------------
# einc check


def cmd_check(args: argparse.Namespace) -> int:
    layered = check_file(args.file, compile_options(args))
    sys.stdout.write(dump.summary(layered))
    return 0


# ---------------------------------------------------------------------------------------------
# einc compile --emit


def _emit_ir(text: str, filename: str, options: CompileOptions) -> str:
    return dump.dump_ir(region_graph(text, filename, options))


def _emit_layers(text: str, filename: str, options: CompileOptions) -> str:
    return dump.dump_layers(front_end(text, filename, options))


def _emit_dot(text: str, filename: str, options: CompileOptions) -> str:
    return dump.dump_dot(region_graph(text, filename, options))


def _emit_plan(text: str, filename: str, options: CompileOptions) -> str:
    return compile_plan(text, filename, options).table() + "\n"


def _emit_backward(text: str, filename: str, options: CompileOptions) -> str:
    from einc.compiler.backward import derive_backward

    return derive_backward(compile_plan(text, filename, options)).table() + "\n"


# Each emitter runs the pipeline as far as its IR and prints it.
EMITTERS: dict[str, Callable[[str, str, CompileOptions], str]] = {
    "ir": _emit_ir,
    "layers": _emit_layers,
    "dot": _emit_dot,
    "plan": _emit_plan,
    "backward": _emit_backward,
}


def cmd_compile(args: argparse.Namespace) -> int:
    text, filename = load_source(args.file)
    output = EMITTERS[args.emit](text, filename, compile_options(args))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(output)
    else:
        sys.stdout.write(output)
    return 0


COMMANDS: tuple[Command, ...] = (
    Command(
        "check",
        "verify a circuit and print a summary (variables and their data columns, regions, "
        "layers, parameters)",
        cmd_check,
        (FILE, *K_OPTIONS),
    ),
    Command(
        "compile",
        "compile a circuit and print one of its intermediate representations",
        cmd_compile,
        (
            FILE,
            Arg(
                ("--emit",),
                {
                    "choices": list(EMITTERS),
                    "default": "ir",
                    "help": "which IR to print (default: ir)",
                },
            ),
            Arg(("-o", "--output"), {"metavar": "PATH", "help": "write to PATH, not stdout"}),
            *K_OPTIONS,
        ),
    ),
    Command(
        "train",
        "train a circuit with EM on data, keep the best validation epoch, write the model",
        commands.cmd_train,
        (
            *RUN_OPTIONS,
            FILE,
            Arg(("--data",), {"required": True, "metavar": "TRAIN", "help": "training data (.csv[.gz], .npy, .npz)"}),
            Arg(("--valid",), {"metavar": "V", "help": "validation data: keep the best epoch on it"}),
            Arg(("--test",), {"metavar": "T", "help": "test data: report its log-likelihood at the end"}),
            Arg(("--epochs",), {"type": int, "default": 10}),
            Arg(("--batch-size",), {"type": int, "default": 100}),
            Arg(("--step-size",), {"type": float, "default": 0.1, "help": "online EM step size λ (eqs. 8-9)"}),
            Arg(("--method",), {"choices": ["em", "adam"], "default": "em",
                                "help": "EM (default) or gradient training with Adam (torch backend)"}),
            Arg(("--learning-rate",), {"type": float, "default": 0.01, "help": "Adam's learning rate (--method adam)"}),
            Arg(("--update",), {"choices": ["batch", "epoch"], "default": "batch",
                                "help": "M-step after every batch (stochastic EM) or once per epoch"}),
            Arg(("--pseudocount",), {"type": float, "default": DEFAULT_PSEUDOCOUNT, "metavar": "ALPHA",
                                     "help": "EM Laplace smoothing: ALPHA pseudo-observations per sum-weight vector "
                                             "and categorical/Bernoulli leaf, spread over its outcomes, at each M-step "
                                             f"(default {DEFAULT_PSEUDOCOUNT}; 0: none)"}),
            Arg(("--seed",), {"type": int, "default": 0}),
            Arg(("--labels",), {"metavar": "L", "help": "class labels of the training rows: class-conditional training of a multi-head circuit (head = label)"}),
            Arg(("--valid-labels",), {"metavar": "L", "help": "class labels of the validation rows"}),
            Arg(("--mixture",), {"type": int, "metavar": "C", "help": "train a mixture of C circuits, one per k-means cluster (paper §4.2)"}),
            Arg(("-o", "--output"), {"required": True, "metavar": "MODEL", "help": "model file to write (.npz)"}),
        ),
    ),
    Command(
        "learn-structure",
        "learn a Chow-Liu tree or a hidden Chow-Liu tree (HCLT) from data and write it as a .pc file",
        commands.cmd_learn_structure,
        (
            Arg(("kind",), {"choices": ["hclt", "chow_liu"], "help": "hclt (hidden states per tree node) or chow_liu"}),
            Arg(("--data",), {"required": True, "metavar": "TRAIN", "help": "training data (.csv[.gz], .npy, .npz)"}),
            Arg(("--sums",), {"type": int, "metavar": "K", "help": "hidden states per tree node (hclt; default 16)"}),
            Arg(("-o", "--output"), {"required": True, "metavar": "OUT.pc", "help": "the .pc file to write"}),
            Arg(("--variables",), {"metavar": "SPEC.pc", "help": "reuse the var and leaf lines of this .pc file "
                                   "(default: every column a binary variable with bernoulli leaves)"}),
            Arg(("--bins",), {"type": int, "default": 16, "help": "bins for the mutual information of "
                              "variables with more values (default 16)"}),
            Arg(("--pseudocount",), {"type": float, "default": 1.0, "metavar": "ALPHA",
                                     "help": "pseudocount of the pairwise counts (default 1)"}),
            Arg(("--max-rows",), {"type": int, "metavar": "N", "help": "estimate the tree from N random rows"}),
            Arg(("--seed",), {"type": int, "default": 0, "help": "seed of the --max-rows subsample"}),
        ),
    ),
    Command(
        "eval",
        "mean log-likelihood of data under a model (and accuracy with --labels for multi-head models)",
        commands.cmd_eval,
        (
            *RUN_OPTIONS,
            Arg(("model",), {"metavar": "MODEL"}),
            Arg(("--data",), {"required": True}),
            Arg(("--labels",), {"help": "class labels (one per row) for a multi-head model"}),
        ),
    ),
    Command(
        "sample",
        "draw samples from a model into .csv, .npy or a .png grid",
        commands.cmd_sample,
        (
            *RUN_OPTIONS,
            Arg(("model",), {"metavar": "MODEL"}),
            Arg(("-n",), {"type": int, "default": 16, "help": "number of samples"}),
            Arg(("--seed",), {"type": int, "default": 0}),
            Arg(("--means",), {"action": "store_true", "help": "emit leaf means instead of leaf samples"}),
            Arg(("-o", "--output"), {"required": True, "metavar": "OUT"}),
        ),
    ),
    Command(
        "inpaint",
        "complete masked images by conditional sampling and MPE; write original | masked | sample | MPE as a PNG",
        commands.cmd_inpaint,
        (
            *RUN_OPTIONS,
            Arg(("model",), {"metavar": "MODEL"}),
            Arg(("--data",), {"required": True, "help": "images to mask (rows of the circuit's columns)"}),
            Arg(("--mask",), {"default": "top", "help": "top, bottom, left, right or random:FRACTION"}),
            Arg(("-n",), {"type": int, "default": 8, "help": "number of images"}),
            Arg(("--seed",), {"type": int, "default": 0}),
            Arg(("--means",), {"action": "store_true", "help": "leaf means instead of leaf samples"}),
            Arg(("-o", "--output"), {"required": True, "metavar": "OUT.png"}),
        ),
    ),
    Command(
        "bench",
        "compare backends on a circuit: max |Δ log p| per query and after an EM step, timings, peak memory",
        commands.cmd_bench,
        (
            FILE,
            Arg(("--backends",), {"default": "torch,numpy", "help": "comma-separated, e.g. torch,numpy,cupy (torch:cuda names a device)"}),
            Arg(("--device",), {"default": None, "help": "device for torch (cpu or cuda); numpy is CPU, cupy is CUDA"}),
            Arg(("--dtype",), {"default": "float32", "choices": ["float32", "float64"]}),
            Arg(("--data",), {"help": "data to use (default: Gaussian noise for real circuits, else model samples)"}),
            Arg(("--samples",), {"type": int, "default": 2000}),
            Arg(("--batch-size",), {"type": int, "default": 100}),
            Arg(("--repeats",), {"type": int, "default": 3}),
            Arg(("--seed",), {"type": int, "default": 0}),
            Arg(("--threads",), {"type": int, "help": "torch CPU threads"}),
        ),
    ),
    Command(
        "query",
        "exact conditional marginals of target variables given evidence",
        commands.cmd_query,
        (
            *RUN_OPTIONS,
            Arg(("model",), {"metavar": "MODEL"}),
            Arg(("--evidence",), {"default": "", "help": 'e.g. "x[0]=1,x[3]=0"'}),
            Arg(("--target",), {"required": True, "help": "e.g. x[5] (several: x[5],x[6])"}),
        ),
    ),
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="einc", description="einc: the Einsum circuit compiler for probabilistic circuits"
    )
    parser.add_argument("--version", action="version", version=f"einc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        for arg in command.args:
            sub.add_argument(*arg.flags, **arg.options)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``einc`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except EincError as error:
        if args.debug:
            traceback.print_exc()
        print(str(error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `einc compile ... | head`: the reader left; nothing more to say.
        return 0


if __name__ == "__main__":
    sys.exit(main())
