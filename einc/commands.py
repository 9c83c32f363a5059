"""The ``einc`` subcommands that run models: train, eval, sample, inpaint, query, bench.

Registered in ``einc.cli.COMMANDS``; each is a function ``(args) -> exit code``. Each one checks
everything it can before the work starts (option combinations, output paths, every data file
against the circuit), so that a mistake costs seconds, not a training run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from einc.compiler.pipeline import CompileOptions
from einc.data import prepare, prepare_labels, prepare_latents, read_data
from einc.files import check_array_output, check_not_an_input, check_writable, save_array
from einc.ir.diagnostics import DataError, EincError, TrainingError
from einc.ir.neural import DEFAULT_QUERY_SAMPLES
from einc.ir.plan import Plan
from einc.model import EpochRecord, Model, compile, load

# Below this many multiply-adds per batch of 100, a second thread costs more than it saves
# (benchmarks/threads.py: nltcs, 3.5 M, is no faster with 2 threads; MNIST PD, 170 M, is).
SMALL_WORK = 20_000_000
MAX_AUTO_THREADS = 8


def choose_threads(setting: str | int | None, plan: Plan | None = None) -> int:
    """Torch CPU threads for ``--threads``: a number, or ``auto``.

    ``auto`` is 1 for circuits whose batch is too small to split, and otherwise the cores not
    already busy (usable cores minus the 1-minute load average, at most 8): torch's own default
    (all cores) oversubscribes a machine that is doing other work, which made training 4× slower
    than one thread on a shared 2-core machine.
    """
    if setting not in (None, "auto"):
        return int(setting)
    if plan is not None:
        work = sum(plan.op_cost(op)[0] for op in plan.ops) * 100
        if work < SMALL_WORK:
            return 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(usable - busy, MAX_AUTO_THREADS))


def _set_threads(args: argparse.Namespace, plan: Plan | None) -> None:
    if getattr(args, "backend", "torch") != "torch" or getattr(args, "threads", None) is None:
        return
    import torch

    torch.set_num_threads(choose_threads(args.threads, plan))


def compile_options(args: argparse.Namespace, dtype: str | None = None) -> CompileOptions:
    """The front end's options from the command line (K overrides, size limits, dtype)."""
    defaults = CompileOptions()
    return CompileOptions(
        sums=getattr(args, "sums", None),
        inputs=getattr(args, "inputs", None),
        heads=getattr(args, "heads", None),
        dtype=dtype or getattr(args, "dtype", None) or defaults.dtype,
        max_bytes=getattr(args, "max_memory", None) or defaults.max_bytes,
        max_build_seconds=getattr(args, "max_build_seconds", None) or defaults.max_build_seconds,
        target=getattr(args, "device", None),  # the device picks the einsum kernels
    )


def _load(args: argparse.Namespace, dtype: str | None = None) -> Any:
    return load(args.model, backend=args.backend, device=args.device, dtype=dtype or args.dtype,
                options=compile_options(args, dtype or args.dtype))


def _epoch_line(record: EpochRecord) -> str:
    valid_text = "" if record.valid_ll is None else f"  valid LL {record.valid_ll:.4f}"
    return f"epoch {record.epoch:3d}  train LL {record.train_ll:.4f}{valid_text}  ({record.seconds:.2f}s)"


# ---------------------------------------------------------------------------------------------
# einc train


def _check_train_options(args: argparse.Namespace) -> None:
    """Option combinations that cannot work, refused before anything is read or compiled."""
    if args.patience is not None and not args.valid:
        raise EincError("--patience stops on the validation log-likelihood: give --valid too")
    if args.valid_labels and not args.valid:
        raise EincError("--valid-labels label the --valid rows: give --valid too")
    if args.mixture is not None:
        unsupported = [flag for flag, value in (("--resume", args.resume), ("--checkpoint-every", args.checkpoint_every),
                                                ("--labels", args.labels), ("--valid-labels", args.valid_labels))
                       if value]
        if unsupported:
            raise EincError(f"--mixture cannot be combined with {', '.join(unsupported)}: a mixture is trained "
                            f"component by component and written once all are trained")
    if args.method == "adam" and args.backend != "torch":
        raise EincError(f"--method adam needs autograd: use --backend torch (not {args.backend})")


def cmd_train(args: argparse.Namespace) -> int:
    from einc import launch

    _check_train_options(args)
    if launch.wanted(args):  # --nproc, --stream, one file per worker, or under torchrun
        return launch.cmd_train_sharded(args, _epoch_line)
    output = check_writable(args.output, "model")
    check_not_an_input(output, {"FILE.pc": args.file, "--data": args.data, "--valid": args.valid,
                                "--test": args.test, "--labels": args.labels, "--valid-labels": args.valid_labels})
    if args.mixture is not None:
        return _train_mixture(args)
    model = _training_model(args)
    _set_threads(args, model.plan)
    train, valid, test = _read_splits(args, model)
    labels = read_data(args.labels) if args.labels else None
    valid_labels = read_data(args.valid_labels) if args.valid_labels else None
    if labels is not None:
        prepare_labels(labels, len(train), model.plan.heads)
    if valid_labels is not None and valid is not None:
        prepare_labels(valid_labels, len(valid), model.plan.heads)
    print(f"{model.graph.name}: {model.num_parameters} parameters, {len(train)} training samples, "
          f"backend {args.backend} on {args.device} ({model.dtype})")
    if not model.exact:
        print(f"vae leaves: Adam on the IWAE bound with {args.samples} samples per leaf; the epoch lines show "
              f"that estimate (a lower bound of the log-likelihood in expectation)")
    if args.resume and model.training is not None:
        print(f"resuming after epoch {model.training.epoch} of {args.resume}")

    def report(record: EpochRecord) -> None:
        print(_epoch_line(record), flush=True)

    try:
        with _termination_as_interrupt():
            history = model.fit(
                train, valid=valid, epochs=args.epochs, batch_size=args.batch_size, step_size=args.step_size,
                method=args.method, learning_rate=args.learning_rate, update=args.update, labels=labels,
                valid_labels=valid_labels, keep_best=valid is not None, seed=args.seed, patience=args.patience,
                checkpoint=output if args.checkpoint_every else None, checkpoint_every=args.checkpoint_every or 0,
                resume=bool(args.resume), progress=sys.stderr.isatty(), on_epoch=report,
                pseudocount=args.pseudocount, samples=args.samples)
    except KeyboardInterrupt as interrupt:
        return _save_interrupted(model, output, interrupt)
    except TrainingError as error:
        return _save_diverged(model, output, error)
    test_ll = None if test is None else float(model.log_likelihood(test, samples=DEFAULT_QUERY_SAMPLES).mean())
    return _finish_training(model, output, args, history, test_ll)


def _finish_training(model: Model, output: Any, args: argparse.Namespace, history: list[EpochRecord],
                     test_ll: float | None) -> int:
    """Say how training ended and write the model (one process, or rank 0 of several)."""
    if args.resume and not history:
        print(f"already trained for {model.training.epoch if model.training else 0} epochs; "
              f"raise --epochs to train longer")
    if args.valid and model.training is not None and model.training.best_epoch is not None:
        print(f"kept the parameters of the best validation epoch ({model.training.best_epoch}): "
              f"valid LL {model.training.best_valid_ll:.4f}")
    if test_ll is not None:
        estimate = "" if model.exact else f" (IWAE estimate with {DEFAULT_QUERY_SAMPLES} samples per leaf)"
        print(f"test LL {test_ll:.4f}{estimate}")
    model.save(output)
    print(f"wrote {output}")
    return 0


def _read_splits(args: argparse.Namespace, model: Model) -> tuple[Any, Any, Any]:
    """--data, --valid and --test, each checked against the circuit before anything is trained."""
    columns = model.columns
    train = read_data(args.data, columns=columns)
    valid = read_data(args.valid, columns=columns) if args.valid else None
    test = read_data(args.test, columns=columns) if args.test else None
    for name, data in (("train", train), ("valid", valid), ("test", test)):
        if data is not None:
            prepare(model.graph, data, None, name, model.dtype)
    return train, valid, test


def _save_diverged(model: Model, output: Any, error: TrainingError) -> int:
    """Training diverged: report it and write the last good model (the parameters fit restored)."""
    print(error.render("einc"), file=sys.stderr)
    if model.training is not None:
        model.save(output)
        print(f"einc: wrote the last good model (epoch {model.training.epoch}) to {output}", file=sys.stderr)
    return 1


def _training_model(args: argparse.Namespace, device: str | None = None) -> Model:
    """A fresh model from FILE.pc, or the model of --resume (which must have the same circuit);
    on ``device`` (default ``--device``: a data-parallel worker passes its own GPU)."""
    device = device or args.device
    options = compile_options(args)
    model = compile(args.file, backend=args.backend, device=device, dtype=args.dtype, seed=args.seed,
                    options=options)
    if not args.resume:
        return model
    resumed = load(args.resume, backend=args.backend, device=device, dtype=args.dtype, options=options)
    if not isinstance(resumed, Model):
        raise EincError(f"--resume {args.resume}: a mixture cannot be resumed")
    shapes = [(s.name, s.shape) for s in model.plan.params]
    if shapes != [(s.name, s.shape) for s in resumed.plan.params] or model.columns != resumed.columns:
        raise EincError(f"--resume {args.resume}: the model was trained from another circuit than {args.file} "
                        f"(its variables or parameter shapes differ)")
    if resumed.training is None:
        raise EincError(f"--resume {args.resume}: the model holds no training state (it was not written by "
                        f"einc train or Model.fit)")
    return resumed


class _Terminated(KeyboardInterrupt):
    """SIGTERM during training: handled like Ctrl-C (the work done is saved), exit 143."""


@contextlib.contextmanager
def _termination_as_interrupt() -> Iterator[None]:
    """While training, SIGTERM (``kill``, a job scheduler's time limit) saves like Ctrl-C does."""

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (einc.cli.main called from a worker thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _save_interrupted(model: Model, output: Any, interrupt: KeyboardInterrupt) -> int:
    state = model.training
    code = 128 + signal.SIGTERM if isinstance(interrupt, _Terminated) else 130
    word = "terminated" if isinstance(interrupt, _Terminated) else "interrupted"
    if state is None:
        print(f"einc: {word} before the first epoch finished; nothing written", file=sys.stderr)
        return code
    model.save(output)
    if state.best_epoch is not None:
        what = f"the parameters of epoch {state.best_epoch} (best valid LL {state.best_valid_ll:.4f})"
    else:
        what = f"the parameters after epoch {state.epoch}"
    print(f"einc: {word} after {state.epoch} epochs; wrote {what} to {output} "
          f"(continue with --resume {output})", file=sys.stderr)
    return code


def _train_mixture(args: argparse.Namespace) -> int:
    from einc.mixture import fit_mixture

    options = compile_options(args)
    probe = compile(args.file, backend=args.backend, device=args.device, dtype=args.dtype, options=options)
    _set_threads(args, probe.plan)
    train, valid, test = _read_splits(args, probe)
    if args.mixture > len(train):
        raise DataError(f"--mixture {args.mixture}: more components than the {len(train)} training samples")
    print(f"mixture of {args.mixture} circuits: k-means on {len(train)} samples, one circuit per cluster")

    def report(component: int, record: EpochRecord) -> None:
        print(f"component {component:3d} {_epoch_line(record)}", flush=True)

    try:
        mixture = fit_mixture(args.file, train, args.mixture, valid=valid, epochs=args.epochs,
                              batch_size=args.batch_size, step_size=args.step_size, seed=args.seed,
                              backend=args.backend, device=args.device, dtype=args.dtype, on_epoch=report,
                              method=args.method, learning_rate=args.learning_rate, update=args.update,
                              patience=args.patience, options=options,
                              pseudocount=args.pseudocount)
    except KeyboardInterrupt:
        print("einc: interrupted; a mixture is written only once all its components are trained, so "
              "nothing was written", file=sys.stderr)
        return 130
    if valid is not None:
        print(f"valid LL {mixture.log_likelihood(valid).mean():.4f}")
    if test is not None:
        print(f"test LL {mixture.log_likelihood(test).mean():.4f}")
    mixture.save(args.output)
    print(f"wrote {args.output}")
    return 0


# ---------------------------------------------------------------------------------------------
# einc eval, sample, inpaint


def cmd_eval(args: argparse.Namespace) -> int:
    if args.per_sample:
        check_array_output(args.per_sample)
        check_not_an_input(args.per_sample, {"MODEL": args.model, "--data": args.data, "--labels": args.labels})
    model = _load(args)
    _set_threads(args, getattr(model, "plan", None))
    data = read_data(args.data, columns=model.columns)
    labels = prepare_labels(read_data(args.labels), len(data), _heads(model)) if args.labels else None
    exact = getattr(model, "exact", True)
    ll = model.log_likelihood(data) if exact else model.log_likelihood(data, samples=args.samples)
    if not exact:
        print(f"an IWAE estimate with {args.samples} samples per vae leaf (a lower bound of the "
              f"log-likelihood in expectation; more --samples tighten it)")
    if args.per_sample:
        per_sample = ll if ll.ndim == 2 else ll[:, None]
        header = ["log_likelihood"] if per_sample.shape[1] == 1 else [f"head{h}" for h in range(per_sample.shape[1])]
        save_array(args.per_sample, per_sample, header=header)
    if ll.ndim == 2:
        if labels is not None:
            accuracy = float(np.mean(ll.argmax(1) == labels))
            print(f"accuracy {accuracy:.4f} ({len(data)} samples, {ll.shape[1]} heads)")
            print(f"mean LL of the true class {ll[np.arange(len(ll)), labels].mean():.4f}")
            _wrote_per_sample(args)
            return 0
        ll = ll[:, 0]
    elif labels is not None:
        raise EincError("--labels: the model has one head; labels classify with multi-head models")
    dims = model.graph.num_columns
    print(f"mean LL {ll.mean():.4f} nats over {len(data)} samples "
          f"({-ll.mean() / dims / np.log(2):.4f} bits per dimension)")
    _wrote_per_sample(args)
    return 0


def _heads(model: Any) -> int:
    return model.plan.heads if hasattr(model, "plan") else 1


def _wrote_per_sample(args: argparse.Namespace) -> None:
    if args.per_sample:
        print(f"wrote the log-likelihood of each sample to {args.per_sample}")


def cmd_sample(args: argparse.Namespace) -> int:
    check_array_output(args.output, pictures=True)
    check_not_an_input(args.output, {"MODEL": args.model})
    model = _load(args)
    _set_threads(args, getattr(model, "plan", None))
    if str(args.output).lower().endswith(".png"):
        from einc.images import image_shape

        image_shape(model.graph)  # a picture needs a 2-D array circuit: say so before sampling
    samples = model.sample(args.n, seed=args.seed, leaf_value="mean" if args.means else "sample")
    if str(args.output).lower().endswith(".png"):
        from einc.images import grid, save_png, to_images

        save_png(args.output, grid(to_images(model.graph, samples)))
    else:
        save_array(args.output, samples, header=model.columns if str(args.output).lower().endswith(".csv") else None)
    print(f"wrote {len(samples)} samples to {args.output}")
    return 0


def cmd_inpaint(args: argparse.Namespace) -> int:
    from einc.images import (
        check_mask,
        image_mask,
        image_shape,
        inpainting_figure,
        inpainting_rows,
        save_png,
    )

    if not str(args.output).lower().endswith(".png"):
        raise EincError(f"{args.output}: inpaint writes a PNG picture; name the output OUT.png")
    check_writable(args.output, "picture")
    check_not_an_input(args.output, {"MODEL": args.model, "--data": args.data})
    check_mask(args.mask)
    model = _load(args)
    _set_threads(args, getattr(model, "plan", None))
    shape = image_shape(model.graph)
    data = read_data(args.data, columns=model.columns).head(args.n)
    hidden = image_mask(args.mask, shape, len(data), args.seed)
    rows = inpainting_rows(model, data, hidden, args.seed, "mean" if args.means else "sample")
    save_png(args.output, inpainting_figure(model, rows, hidden))
    print(f"wrote {args.output}: rows are original, masked, conditional sample, MPE ({len(data)} images)")
    return 0


# ---------------------------------------------------------------------------------------------
# einc query


_ASSIGNMENT = re.compile(r"^\s*([^=]+?)\s*=\s*([^=]+?)\s*$")


def _column_of(model: Model, name: str) -> int:
    wanted = re.sub(r"\s+", "", name)
    for column, label in enumerate(model.columns):
        if re.sub(r"\s+", "", label) == wanted:
            return column
    raise EincError(f"unknown variable '{name}'; the model's variables are {', '.join(model.columns[:8])}"
                    + (", ..." if len(model.columns) > 8 else ""))


def _split_assignments(text: str) -> list[str]:
    # commas inside brackets (img[1, 2]=3) are part of a name, not separators
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [part for part in parts if part.strip()]


def cmd_query(args: argparse.Namespace) -> int:
    targets = _split_assignments(args.target)
    if not targets:
        raise EincError("--target names no variable; expected e.g. --target x[5] (several: x[5],x[6])")
    model = _load(args, dtype=args.dtype or "float64")
    evidence = np.full(model.graph.num_columns, np.nan)
    for assignment in _split_assignments(args.evidence or ""):
        match = _ASSIGNMENT.match(assignment)
        if match is None:
            raise EincError(f"--evidence: '{assignment.strip()}' is not of the form name=value")
        try:
            evidence[_column_of(model, match.group(1))] = float(match.group(2))
        except ValueError:
            raise EincError(f"--evidence: '{match.group(2)}' is not a number") from None
    prepare(model.graph, evidence[None], None, "--evidence", model.dtype)
    for target in targets:
        column = _column_of(model, target)
        variable = next(v for v in model.graph.variables if v.column <= column < v.column + v.domain.columns)
        if variable.domain.kind not in ("binary", "categorical"):
            raise EincError(f"--target {target}: exact conditional marginals are tabulated for binary and "
                            f"categorical variables; {variable.name} is {variable.domain}")
        if not np.isnan(evidence[column]):
            raise EincError(f"--target {target} is also in the evidence")
        levels = np.arange(2 if variable.domain.kind == "binary" else variable.domain.size, dtype=float)
        rows = np.tile(evidence, (len(levels), 1))
        rows[:, column] = levels
        # p(target = v | e) = p(v, e) / p(e): every query is one marginal with the rest missing
        joint = model.log_likelihood(rows)
        joint = joint if joint.ndim == 1 else joint[:, 0]
        log_evidence = model.log_likelihood(evidence[None])
        log_evidence = log_evidence if log_evidence.ndim == 1 else log_evidence[:, 0]
        probabilities = np.exp(joint - log_evidence[0])
        estimated = "" if model.exact else (f" (a ratio of IWAE estimates with {DEFAULT_QUERY_SAMPLES} samples per "
                                            f"vae leaf: approximate)")
        given = ", ".join(f"{name}={value:g}" for name, value in zip(model.columns, evidence) if not np.isnan(value))
        print(f"P({model.columns[column]}{f' | {given}' if given else ''}){estimated}:")  # P(C | A=1), P(C)
        for level, probability in zip(levels, probabilities):
            print(f"  {int(level)}: {probability:.6f}")
    return 0


# ---------------------------------------------------------------------------------------------
# einc bench


def cmd_bench(args: argparse.Namespace) -> int:
    """Compare backends on one circuit: agreement of answers, speed and peak memory."""
    from einc.backends.base import available_backends
    from einc.compare import compare_backends

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    known = available_backends()
    unknown = [b for b in backends if b.split(":", 1)[0] not in known]
    if not backends or unknown:
        raise EincError(f"--backends {args.backends}: expected a comma-separated list of {', '.join(known)} "
                        f"(torch:cuda names a device)")
    model = compile(args.file, dtype="float64", seed=args.seed, options=compile_options(args, "float64"))
    _set_threads(args, model.plan)
    if args.data:
        data: Any = read_data(args.data, columns=model.columns).head(args.samples)
        prepare(model.graph, data, None, "data", args.dtype)
    else:
        data = _random_data(model, args.samples, args.seed)
    report = compare_backends(args.file, np.asarray(data), backends=backends, device=args.device, dtype=args.dtype,
                              batch_size=args.batch_size, seed=args.seed, repeats=args.repeats)
    print(report)
    if args.json:
        with open(args.json, "a", encoding="utf-8") as file:
            file.writelines(json.dumps(record) + "\n" for record in report.records())
    return 0


def _random_data(model: Model, samples: int, seed: int) -> np.ndarray:
    # the paper's efficiency setup uses Gaussian noise; other domains get random valid values
    if all(v.domain.kind == "real" for v in model.graph.variables):
        return np.random.default_rng(seed).standard_normal((samples, model.graph.num_columns))
    return model.sample(samples, seed=seed)


def cmd_learn_structure(args: argparse.Namespace) -> int:
    """Learn a Chow-Liu tree or an HCLT from data; write it as a verified .pc file."""
    from einc.files import atomic_write
    from einc.structure_learning import learn_structure

    text, tree = learn_structure(args.kind, args.data, args.output, hidden_states=args.sums,
                                 variables=args.variables, bins=args.bins, pseudocount=args.pseudocount,
                                 max_rows=args.max_rows, seed=args.seed)
    atomic_write(args.output, lambda stream: stream.write(text.encode("utf-8")))
    inner = sum(1 for v in range(len(tree.parents)) if v in set(tree.parents))
    print(f"wrote {args.output}: {args.kind} over {len(tree.parents)} variables, a tree of depth {tree.depth} "
          f"({inner} inner nodes, mutual information {tree.weight:.4f} nats); "
          f"train it with `einc train {args.output} --data {args.data} -o MODEL.npz`")
    return 0


# ---------------------------------------------------------------------------------------------
# einc lvd


def _read_features(path: str) -> np.ndarray:
    """Teacher features from a .npy (or the one array of a .npz), without pickles."""
    try:
        with open(path, "rb"):
            pass
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise DataError(f"--teacher {path}: cannot read it as a .npy array ({reason})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if len(loaded.files) != 1:
                raise DataError(f"--teacher {path}: a .npz with {len(loaded.files)} arrays; expected one "
                                f"(N, latents, D) array")
            return loaded[loaded.files[0]]
    return loaded


def cmd_lvd(args: argparse.Namespace) -> int:
    from einc import lvd

    if (args.teacher is None) == (args.latents is None):
        raise EincError("give --teacher FEATURES.npy (teacher embeddings to cluster) or --latents Z.npy "
                        "(the latent states of every training row): exactly one of them")
    output = check_writable(args.output, "model")
    inputs = {"FILE.pc": args.file, "--data": args.data, "--teacher": args.teacher, "--latents": args.latents,
              "--valid": args.valid, "--test": args.test}
    check_not_an_input(output, inputs)
    if args.write_latents:
        check_array_output(args.write_latents)
        check_not_an_input(args.write_latents, {**inputs, "-o": args.output})
    model = compile(args.file, backend=args.backend, device=args.device, dtype=args.dtype, seed=args.seed,
                    options=compile_options(args))
    # raises without latents (nothing to distill) and, for --teacher, unless they share one K (one codebook)
    states = lvd.shared_states(model) if args.teacher or not model.latents else None
    _set_threads(args, model.plan)
    train, valid, test = _read_splits(args, model)
    features = latents = None
    if args.teacher:
        features = lvd.per_latent_features(_read_features(args.teacher), len(model.latents),
                                           label=f"--teacher {args.teacher}")
        if len(features) != len(train):
            raise DataError(f"--teacher {args.teacher}: {len(features)} examples for the {len(train)} rows of "
                            f"--data {args.data}; expected one (latents, D) block per row, in the same order")
        source = f"k-means with {states} shared centres over {features.shape[0] * features.shape[1]} teacher embeddings"
    else:
        latents = read_data(args.latents)
        prepare_latents(model.latents, latents, len(train))
        source = f"the states in {args.latents}"
    print(f"{model.graph.name}: {model.num_parameters} parameters, {len(model.latents)} latents, "
          f"{len(train)} training samples; latents from {source}")

    def report(phase: str, record: EpochRecord) -> None:
        print(f"{phase:>9} {_epoch_line(record)}", flush=True)

    try:
        with _termination_as_interrupt():
            result = lvd.distill(
                model, train, latents=latents, features=features, epochs=args.epochs,
                finetune_epochs=args.finetune_epochs, reassign=args.reassign, valid=valid,
                batch_size=args.batch_size, step_size=args.step_size, update=args.update,
                pseudocount=args.pseudocount, seed=args.seed, on_epoch=report)
    except KeyboardInterrupt as interrupt:
        if model.training is None:
            print("einc: interrupted before the first epoch finished; nothing written", file=sys.stderr)
        else:
            model.save(output)
            print(f"einc: interrupted; wrote the parameters after the last finished epoch to {output}",
                  file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(interrupt, _Terminated) else 130
    except TrainingError as error:
        return _save_diverged(model, output, error)
    dims = model.graph.num_columns

    def nats_and_bits(ll: float) -> str:
        return f"{ll:.4f} nats ({-ll / dims / np.log(2):.4f} bits per dimension)"

    print(f"LVD objective, mean log p(x, z): {nats_and_bits(result.objective)}")
    print(f"after distillation, mean log p(x): {nats_and_bits(result.distilled_ll)}")
    if args.finetune_epochs:
        print(f"after fine-tuning, mean log p(x): {nats_and_bits(result.final_ll)}")
    if test is not None:
        print(f"test LL {nats_and_bits(float(model.log_likelihood(test).mean()))}")
    model.save(output)
    print(f"wrote {output}")
    if args.write_latents:
        save_array(args.write_latents, result.latents,
                   header=[slot.name for slot in model.latents] if str(args.write_latents).lower().endswith(".csv") else None)
        print(f"wrote the latent states of the last distillation round to {args.write_latents}")
    return 0
