"""The ``einc`` command line.

Subcommands live in one table, ``COMMANDS``: adding one is a function ``(args) -> exit code``
plus one ``Command`` entry naming its arguments. Every numeric option is range-checked by the
parser (its type is one of the checked types below), and every option shows its default in
``--help``.

One error path: a user error (a bad option, any ``EincError``, a file the system refuses) prints
``einc: error: ...`` (or a located ``file:line:col: error: ...`` diagnostic) to stderr and exits 1;
Ctrl-C exits 130; anything else is a bug and prints a short "internal error" message, exit 2.
``--debug``, anywhere on the line, adds the traceback.

    $ einc check examples/tiny.pc
    $ einc compile examples/tiny.pc --emit layers
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from einc import __version__
from einc.cli import commands
from einc.cli.options import (
    FILE,
    HEAD,
    K_OPTIONS,
    LIMIT_OPTIONS,
    LOADED_MODEL_OPTIONS,
    MEANS,
    MODEL,
    NEW_MODEL_OPTIONS,
    SEED,
    PSEUDOCOUNT,
    STEP_SIZE,
    BATCH_SIZE,
    TEST_DATA,
    THREADS,
    TRAIN_ARGS,
    TRAIN_DATA,
    UPDATE,
    Arg,
    Command,
    arguments_of,
    device_name,
    grow_spec,
    non_negative_float,
    non_negative_int,
    positive_int,
    unit_fraction,
)
from einc.cli.session import compile_options
from einc.compiler import dump
from einc.compiler.pipeline import CompileOptions, check_file, compile_plan, front_end, load_source, region_graph
from einc.io import datasets
from einc.io.files import atomic_write, check_not_an_input, check_writable
from einc.ir.diagnostics import EincError
from einc.ir.neural import DEFAULT_QUERY_SAMPLES
from einc.train.lvd import DEFAULT_DISTILL_EPOCHS, DEFAULT_FINETUNE_EPOCHS

# ---------------------------------------------------------------------------------------------
# einc check, einc compile --emit


def cmd_check(args: argparse.Namespace) -> int:
    layered = check_file(args.file, compile_options(args))
    sys.stdout.write(dump.summary(layered))
    return 0


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
    if args.output:
        check_writable(args.output)
        check_not_an_input(args.output, {"FILE.pc": args.file})
    text, filename = load_source(args.file)
    output = EMITTERS[args.emit](text, filename, compile_options(args))
    if args.output:
        atomic_write(args.output, lambda stream: stream.write(output.encode("utf-8")))
    else:
        sys.stdout.write(output)
    return 0


def _drawing_command(name: str, summary: str, run: Callable[[argparse.Namespace], int],
                     arguments: tuple[Arg, ...], output: dict[str, str]) -> Command:
    """A command that draws from a loaded model (sample, inpaint): the model, its own arguments,
    the seed and --means, then the required output."""
    output_arg = Arg(("-o", "--output"), {"required": True, **output})
    return Command(name, summary, run, (*LOADED_MODEL_OPTIONS, MODEL, *arguments, SEED, MEANS, HEAD, output_arg))


COMMANDS: tuple[Command, ...] = (
    Command(
        "check",
        "verify a circuit and print a summary (variables and their data columns, regions, "
        "layers, parameters)",
        cmd_check,
        (FILE, *K_OPTIONS, *LIMIT_OPTIONS),
    ),
    Command(
        "compile",
        "compile a circuit and print one of its intermediate representations",
        cmd_compile,
        (
            FILE,
            Arg(("--emit",), {"choices": list(EMITTERS), "default": "ir", "help": "which IR to print"}),
            Arg(("-o", "--output"), {"metavar": "PATH", "help": "write to PATH, not stdout"}),
            *K_OPTIONS,
            *LIMIT_OPTIONS,
        ),
    ),
    Command(
        "train",
        "train a circuit on data (EM; Adam for vae leaves), keep the best validation epoch, write the model",
        commands.cmd_train,
        TRAIN_ARGS,
    ),
    Command(
        "lvd",
        "latent variable distillation: assign the circuit's latents from teacher features (k-means) or a "
        "file, train on (x, z) with EM, sum the latents out and fine-tune on x; write the model",
        commands.cmd_lvd,
        (
            *NEW_MODEL_OPTIONS,
            FILE,
            *K_OPTIONS,
            TRAIN_DATA,
            Arg(("--teacher",), {"metavar": "FEATURES.npy",
                                 "help": "teacher embeddings (N, latents, D), one per training row and latent in "
                                         "declaration order: clustered by k-means with one shared codebook"}),
            Arg(("--latents",), {"metavar": "Z.npy", "help": "the latent states (N, latents) of the training rows "
                                                            "(instead of --teacher); -1 sums one out"}),
            Arg(("--epochs",), {"type": positive_int, "default": DEFAULT_DISTILL_EPOCHS,
                                "help": "EM epochs on log p(x, z) (per round)"}),
            Arg(("--finetune-epochs",), {"type": non_negative_int, "default": DEFAULT_FINETUNE_EPOCHS,
                                         "help": "EM epochs on log p(x) afterwards, the latents summed out (0: none)"}),
            Arg(("--reassign",), {"type": non_negative_int, "default": 0, "metavar": "ROUNDS",
                                  "help": "after training on (x, z), set z to each row's most probable states and "
                                          "train again, ROUNDS times"}),
            Arg(("--valid",), {"metavar": "V", "help": "validation data: keep the best fine-tuning epoch on it"}),
            TEST_DATA,
            BATCH_SIZE,
            STEP_SIZE,
            UPDATE,
            PSEUDOCOUNT,
            Arg(("--seed",), {"type": non_negative_int, "default": 0, "help": "initial parameters, k-means and batch order"}),
            Arg(("--write-latents",), {"metavar": "OUT", "help": "also write the latent states used (.npy, .npz or .csv)"}),
            Arg(("--grow",), {"type": grow_spec, "metavar": "N1xN2",
                              "help": "progressive growing (LVD-PG): per latent, k-means into N1 outer clusters, then "
                                      "grow the patch circuits until N1*N2 clusters (needs --teacher); writes the "
                                      "grown .pc too"}),
            Arg(("--grow-threshold",), {"type": unit_fraction, "metavar": "T",
                                        "help": "copy a unit when its flow per growing sample reaches T (default 0.1)"}),
            Arg(("--grown-pc",), {"metavar": "OUT.pc", "help": "where --grow writes the grown circuit "
                                                              "(default: MODEL with the suffix .pc)"}),
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
            Arg(("--sums",), {"type": positive_int, "metavar": "K", "help": "hidden states per tree node (hclt; default 16)"}),
            Arg(("-o", "--output"), {"required": True, "metavar": "OUT.pc", "help": "the .pc file to write"}),
            Arg(("--variables",), {"metavar": "SPEC.pc", "help": "reuse the var and leaf lines of this .pc file "
                                   "(default: every column a binary variable with bernoulli leaves)"}),
            Arg(("--bins",), {"type": positive_int, "default": 16, "help": "bins for the mutual information of "
                              "variables with more values (default 16)"}),
            Arg(("--pseudocount",), {"type": non_negative_float, "default": 1.0, "metavar": "ALPHA",
                                     "help": "pseudocount of the pairwise counts (default 1)"}),
            Arg(("--max-rows",), {"type": positive_int, "metavar": "N", "help": "estimate the tree from N random rows"}),
            Arg(("--seed",), {"type": non_negative_int, "default": 0, "help": "seed of the --max-rows subsample"}),
        ),
    ),
    Command(
        "eval",
        "mean log-likelihood of data under a model (an IWAE estimate for vae leaves; accuracy with --labels for multi-head models)",
        commands.cmd_eval,
        (
            *LOADED_MODEL_OPTIONS,
            MODEL,
            Arg(("--data",), {"required": True, "help": "data to evaluate (.csv[.gz], .npy, .npz)"}),
            Arg(("--labels",), {"help": "class labels (one per row) for a multi-head model"}),
            HEAD,
            Arg(("--per-sample",), {"metavar": "OUT", "help": "also write each sample's log-likelihood (.csv, .npy or .npz)"}),
            Arg(("--samples",), {"type": positive_int, "default": DEFAULT_QUERY_SAMPLES, "metavar": "K",
                                 "help": "vae leaves: the log-likelihood is an IWAE estimate with K importance samples "
                                         "per leaf (exact circuits ignore it)"}),
        ),
    ),
    _drawing_command(
        "sample",
        "draw samples from a model into .csv, .npy, .npz or a .png grid",
        commands.cmd_sample,
        (Arg(("-n",), {"type": positive_int, "default": 16, "help": "number of samples"}),),
        {"metavar": "OUT", "help": "where to write the samples"},
    ),
    _drawing_command(
        "inpaint",
        "complete masked images by conditional sampling and MPE; write original | masked | sample | MPE as a PNG",
        commands.cmd_inpaint,
        (
            Arg(("--data",), {"required": True, "help": "images to mask (rows of the circuit's columns)"}),
            Arg(("--mask",), {"default": "top", "help": "top, bottom, left, right or random:FRACTION"}),
            Arg(("-n",), {"type": positive_int, "default": 8, "help": "number of images"}),
        ),
        {"metavar": "OUT.png", "help": "the picture to write"},
    ),
    Command(
        "bench",
        "compare backends on a circuit: max |Δ log p| per query and after an EM step, timings, peak memory",
        commands.cmd_bench,
        (
            FILE,
            Arg(("--backends",), {"default": "torch,numpy", "help": "comma-separated, e.g. torch,numpy,cupy (torch:cuda names a device)"}),
            Arg(("--device",), {"type": device_name, "default": None, "help": "device for torch (cpu or cuda); numpy is CPU, cupy is CUDA"}),
            Arg(("--dtype",), {"default": "float32", "choices": ["float32", "float64"], "help": "precision of the compared runs"}),
            Arg(("--data",), {"help": "data to use (default: Gaussian noise for real circuits, else model samples)"}),
            Arg(("--samples",), {"type": positive_int, "default": 2000, "help": "number of samples"}),
            Arg(("--batch-size",), {"type": positive_int, "default": 100, "help": "samples per batch"}),
            Arg(("--repeats",), {"type": positive_int, "default": 3, "help": "timing repeats"}),
            Arg(("--json",), {"metavar": "FILE", "help": "also append one JSON line per backend to FILE"}),
            SEED,
            THREADS,
            *LIMIT_OPTIONS,
        ),
    ),
    Command(
        "query",
        "exact conditional marginals of target variables given evidence",
        commands.cmd_query,
        (
            *LOADED_MODEL_OPTIONS,
            MODEL,
            # repeatable: `--target A --target B` asks for both (argparse would keep only the last)
            Arg(("--evidence",), {"action": "append", "help": 'e.g. "x[0]=1,x[3]=0" (may be repeated)'}),
            Arg(("--target",), {"action": "append", "required": True,
                                "help": "e.g. x[5] (several: x[5],x[6], or --target repeated)"}),
            HEAD,
        ),
    ),
    Command(
        "data",
        "fetch a public data set (MNIST, DEBD) into the cache, checked against its published checksums, "
        "or print where one is",
        datasets.cmd_data,
        (
            Arg(("action",), {"choices": ["fetch", "path", "list"],
                              "help": "fetch: download, verify and convert; path: print where it is; list: all"}),
            Arg(("dataset",), {"nargs": "?", "choices": ["mnist", "debd"], "help": "mnist, or debd NAME..."}),
            Arg(("names",), {"nargs": "*", "metavar": "NAME", "help": "DEBD set names (nltcs, plants, ...)"}),
            Arg(("--dir",), {"metavar": "D", "help": f"the data folder (default: ${datasets.DATA_ENV}, else "
                                                     "~/.cache/einc/data; without --dir, path and list also look in "
                                                     "../shared/data)"}),
        ),
    ),
)


def command_line(args: argparse.Namespace, commands: Sequence[Command] = COMMANDS) -> list[str]:
    """The arguments that parse back to ``args`` (how a launcher re-runs a command in workers)."""
    command = next(c for c in commands if c.name == args.command)
    return arguments_of(command.name, command.args, args)


class UsageError(Exception):
    """A command line argparse rejects; printed with the usage line, exit 1."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        # ArgumentDefaultsHelpFormatter adds "(default: None)" and "(default: False)"; say nothing then
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="einc", description="einc: the Einsum circuit compiler for probabilistic circuits",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"einc {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks for errors (may be given anywhere on the line)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help,
                                    formatter_class=_HelpFormatter)
        for arg in command.args:
            sub.add_argument(*arg.flags, **arg.options)
        # main() takes --debug from anywhere on the line; listed here so that --help shows it
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the traceback of an error")
        sub.set_defaults(run=command.run)
    parser.command_parsers = dict(subparsers.choices)
    return parser


def _unrecognized(parser: argparse.ArgumentParser, name: str, extra: Sequence[str]) -> UsageError:
    """Arguments the command does not take, reported by the command's own parser (so that the
    message points at its --help), with the closest option to a misspelt one."""
    command = getattr(parser, "command_parsers", {}).get(name, parser)
    # compared without their dashes, and closely: '--stream' is not a slip of '--threads'
    names = {flag.lstrip("-"): flag for action in command._actions for flag in action.option_strings
             if flag.startswith("--")}
    unknown = next((a.partition("=")[0].lstrip("-") for a in extra if a.startswith("--")), None)
    close = difflib.get_close_matches(unknown, list(names), n=1, cutoff=0.75) if unknown else []
    hint = f" — did you mean {names[close[0]]}?" if close else ""
    return UsageError(command, f"unrecognized arguments: {' '.join(extra)}{hint}")


def _split_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``--debug`` may appear anywhere (before a ``--`` that ends the options)."""
    arguments = list(argv)
    end = arguments.index("--") if "--" in arguments else len(arguments)
    debug = "--debug" in arguments[:end]
    return [a for i, a in enumerate(arguments) if not (i < end and a == "--debug")], debug


def _check_option_values(parser: argparse.ArgumentParser, arguments: Sequence[str]) -> None:
    # argparse turns `--epochs=--` into an empty list without calling the option's type
    for argument in arguments:
        if argument == "--":
            return
        flag, equals, value = argument.partition("=")
        if argument.startswith("-") and equals and value == "--":
            raise UsageError(parser, f"argument {flag}: expected a value, found '--'")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``einc`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    arguments, debug = _split_debug(sys.argv[1:] if argv is None else argv)
    parser = build_parser(COMMANDS)
    try:
        _check_option_values(parser, arguments)
        args, extra = parser.parse_known_args(arguments)
        if extra:
            raise _unrecognized(parser, args.command, extra)
    except UsageError as error:
        # one line, like every other error; the usage is one --help away
        print(f"einc: error: {error} (see {error.parser.prog} --help)", file=sys.stderr)
        return 1
    except SystemExit as exit:  # --help and --version
        return int(exit.code or 0) if not isinstance(exit.code, str) else 1
    args.debug = debug  # a launcher passes it on to its workers (command_line)
    try:
        return int(args.run(args))
    except EincError as error:
        _traceback(debug)
        print(error.render("einc"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _traceback(debug)
        print("einc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `einc compile ... | head`: the reader left; nothing more to say (and nothing to flush).
        _silence_stdout()
        return 0
    except MemoryError:
        _traceback(debug)
        print("einc: error: out of memory; use a smaller --batch-size, a smaller circuit, or a lower "
              "--max-memory so that einc refuses such circuits up front", file=sys.stderr)
        return 1
    except OSError as error:
        # the system refused a file or a device: a user-side problem with a system message
        _traceback(debug)
        where = f"{error.filename}: " if error.filename else ""
        print(f"einc: error: {where}{error.strerror or error}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - the catch-all that keeps tracebacks from users
        _traceback(debug)
        print(f"einc: internal error: {type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}\n"
              "This is a bug in einc, not in your input. Please report it to the einc developers "
              "with the command line and the output of the same command with --debug.", file=sys.stderr)
        return 2


def _traceback(debug: bool) -> None:
    if debug:
        traceback.print_exc()


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
