"""The ``einc`` subcommands that run models: train, eval, sample, inpaint, query, bench.

Registered in ``einc.cli.entry.COMMANDS``; each is a function ``(args) -> exit code``. Each one checks
everything it can before the work starts (option combinations, output paths, every data file
against the circuit), so that a mistake costs seconds, not a training run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

import numpy as np

from einc.cli.session import (
    Session,
    check_outputs,
    check_train_options,
    compile_options,
    epoch_line,
    exit_code,
    finite_ll,
    load_model,
    set_threads,
    termination_as_interrupt,
    training_model,
)
from einc.io.data import prepare, prepare_labels, prepare_latents, read_data
from einc.io.files import check_array_output, check_distinct_paths, check_not_an_input, check_writable, save_array
from einc.errors import DataError, EincError, TrainingError
from einc.ir.neural import DEFAULT_QUERY_SAMPLES
from einc.model import EpochRecord, Model, compile
from einc.progress import log_lines

def cmd_train(args: argparse.Namespace) -> int:
    from einc.cli import launch

    check_train_options(args)
    if launch.wanted(args):  # --nproc, --stream, one file per worker, or under torchrun
        return launch.cmd_train_sharded(args)
    output = check_outputs(args)
    if args.mixture is not None:
        return _train_mixture(args)
    model = training_model(args)
    set_threads(args, model.plan)
    train, valid, test = _read_splits(args, model)
    labels = read_data(args.labels) if args.labels else None
    valid_labels = read_data(args.valid_labels) if args.valid_labels else None
    if labels is not None:
        prepare_labels(labels, len(train), model.plan.heads)
    if valid_labels is not None and valid is not None:
        prepare_labels(valid_labels, len(valid), model.plan.heads)
    tf32 = ", TF32 matmuls" if model.precision == "tf32" else ""
    print(f"{model.graph.name}: {model.num_parameters} parameters, {len(train)} training samples, "
          f"backend {args.backend} on {args.device} ({model.dtype}{tf32})")
    if not model.exact:
        print(f"vae leaves: Adam on the IWAE bound with {args.samples} samples per leaf; the epoch lines show "
              f"that estimate (a lower bound of the log-likelihood in expectation)")
    if args.resume and model.training is not None:
        print(f"resuming after epoch {model.training.epoch} of {args.resume}")
    session = Session(args, model, output)
    try:
        with termination_as_interrupt():
            history = model.fit(
                train, valid=valid, epochs=args.epochs, batch_size=args.batch_size, step_size=args.step_size,
                method=args.method, learning_rate=args.learning_rate, update=args.update, labels=labels,
                valid_labels=valid_labels, keep_best=valid is not None, seed=args.seed, patience=args.patience,
                checkpoint=output if args.checkpoint_every else None, checkpoint_every=args.checkpoint_every or 0,
                resume=bool(args.resume), progress=sys.stderr.isatty(), on_epoch=session.on_epoch,
                on_message=session.message, pseudocount=args.pseudocount, samples=args.samples)
    except KeyboardInterrupt as interrupt:
        return session.interrupted(interrupt)
    except TrainingError as error:
        return session.diverged(error)
    test_ll = None if test is None else float(model.log_likelihood(test, samples=DEFAULT_QUERY_SAMPLES).mean())
    return session.finish(history, test_ll)


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


def _train_mixture(args: argparse.Namespace) -> int:
    from einc.mixture import fit_mixture

    options = compile_options(args)
    probe = compile(args.file, backend=args.backend, device=args.device, dtype=args.dtype, options=options,
                    precision=args.precision)
    set_threads(args, probe.plan)
    train, valid, test = _read_splits(args, probe)
    if args.mixture > len(train):
        raise DataError(f"--mixture {args.mixture}: more components than the {len(train)} training samples")
    print(f"mixture of {args.mixture} circuits: k-means on {len(train)} samples, one circuit per cluster")

    def report(component: int, record: EpochRecord) -> None:
        print(f"component {component:3d} {epoch_line(record)}", flush=True)

    try:
        mixture = fit_mixture(args.file, train, args.mixture, valid=valid, epochs=args.epochs,
                              batch_size=args.batch_size, step_size=args.step_size, seed=args.seed,
                              backend=args.backend, device=args.device, dtype=args.dtype, on_epoch=report,
                              method=args.method, learning_rate=args.learning_rate, update=args.update,
                              patience=args.patience, options=options,
                              pseudocount=args.pseudocount, precision=args.precision)
    except KeyboardInterrupt:
        print("einc: interrupted; a mixture is written only once all its components are trained, so "
              "nothing was written", file=sys.stderr)
        return 130
    if valid is not None:
        valid_ll = mixture.log_likelihood(valid)
        if not np.isfinite(valid_ll).all():
            mixture.save(args.output)
            finite_ll(valid_ll, mixture, f"--valid {args.valid} (the mixture was written to {args.output})")
        print(f"valid LL {valid_ll.mean():.4f}")
    test_ll = None if test is None else mixture.log_likelihood(test)
    mixture.save(args.output)
    if test_ll is not None:
        finite_ll(test_ll, mixture, f"--test {args.test} (the mixture was written to {args.output})")
        print(f"test LL {test_ll.mean():.4f}")
    print(f"wrote {args.output}")
    return 0


# ---------------------------------------------------------------------------------------------
# einc eval, sample, inpaint


def cmd_eval(args: argparse.Namespace) -> int:
    if args.labels and args.head is not None:
        raise EincError("--head and --labels: with labels each row is scored under its own class's head; "
                        "give one of them")
    if args.per_sample:
        check_array_output(args.per_sample)
        check_not_an_input(args.per_sample, {"MODEL": args.model, "--data": args.data, "--labels": args.labels})
    model = load_model(args)
    set_threads(args, getattr(model, "plan", None))
    data = read_data(args.data, columns=model.columns)
    labels = prepare_labels(read_data(args.labels), len(data), _heads(model)) if args.labels else None
    head = _head(model, args.head)
    exact = getattr(model, "exact", True)
    # an IWAE estimate over 10,000 images takes minutes to an hour: a bar on a terminal, a line a
    # minute in a log
    progress = True if sys.stderr.isatty() else log_lines("einc eval")
    ll = (model.log_likelihood(data, progress=progress) if exact
          else model.log_likelihood(data, samples=args.samples, progress=progress))
    finite_ll(ll, model, f"--data {args.data}")
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
        ll = ll[:, head]
    elif labels is not None:
        raise EincError("--labels: the model has one head; labels classify with multi-head models")
    dims = model.graph.num_columns
    print(f"mean LL {ll.mean():.4f} nats over {len(data)} samples{_of_head(model, head)} "
          f"({-ll.mean() / dims / np.log(2):.4f} bits per dimension)")
    _wrote_per_sample(args)
    return 0


def _heads(model: Any) -> int:
    return model.plan.heads if hasattr(model, "plan") else 1


def _head(model: Any, head: int | None) -> int:
    """The head ``--head`` names (default 0), checked against the model's heads."""
    head = 0 if head is None else head
    heads = _heads(model)
    if head >= heads:
        raise EincError(f"--head {head}: the model has one head, 0" if heads == 1 else
                        f"--head {head}: the model has {heads} heads; expected a head in 0..{heads - 1}")
    return head


def _of_head(model: Any, head: int) -> str:
    """' under head 1 of 2' for a multi-head model (whose outputs are p(x | class)), else ''."""
    return f" under head {head} of {_heads(model)}" if _heads(model) > 1 else ""


def _head_option(model: Any, head: int) -> dict[str, int]:
    """``head=`` for queries of a multi-head model (mixtures have one head and no such argument)."""
    return {"head": head} if _heads(model) > 1 else {}


def _wrote_per_sample(args: argparse.Namespace) -> None:
    if args.per_sample:
        print(f"wrote the log-likelihood of each sample to {args.per_sample}")


def cmd_sample(args: argparse.Namespace) -> int:
    check_array_output(args.output, pictures=True)
    check_not_an_input(args.output, {"MODEL": args.model})
    model = load_model(args)
    set_threads(args, getattr(model, "plan", None))
    if str(args.output).lower().endswith(".png"):
        from einc.io.images import image_shape

        image_shape(model.graph)  # a picture needs a 2-D array circuit: say so before sampling
    head = _head(model, args.head)
    samples = model.sample(args.n, seed=args.seed, leaf_value="mean" if args.means else "sample",
                           **_head_option(model, head))
    if str(args.output).lower().endswith(".png"):
        from einc.io.images import grid, save_png, to_images

        save_png(args.output, grid(to_images(model.graph, samples)))
    else:
        save_array(args.output, samples, header=model.columns if str(args.output).lower().endswith(".csv") else None)
    print(f"wrote {len(samples)} samples{_of_head(model, head)} to {args.output}")
    return 0


def cmd_inpaint(args: argparse.Namespace) -> int:
    from einc.io.images import (
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
    model = load_model(args)
    set_threads(args, getattr(model, "plan", None))
    shape = image_shape(model.graph)
    data = read_data(args.data, columns=model.columns).head(args.n)
    hidden = image_mask(args.mask, shape, len(data), args.seed)
    head = _head(model, args.head)
    rows = inpainting_rows(model, data, hidden, args.seed, "mean" if args.means else "sample",
                           **_head_option(model, head))
    save_png(args.output, inpainting_figure(model, rows, hidden))
    print(f"wrote {args.output}: rows are original, masked, conditional sample, MPE ({len(data)} images"
          f"{_of_head(model, head)})")
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
    targets = [target for given in args.target for target in _split_assignments(given)]
    if not targets:
        raise EincError("--target names no variable; expected e.g. --target x[5] (several: x[5],x[6])")
    model = load_model(args, dtype=args.dtype or "float64")
    evidence = np.full(model.graph.num_columns, np.nan)
    for assignment in [item for given in args.evidence or () for item in _split_assignments(given)]:
        match = _ASSIGNMENT.match(assignment)
        if match is None:
            raise EincError(f"--evidence: '{assignment.strip()}' is not of the form name=value")
        column = _column_of(model, match.group(1))
        if not np.isnan(evidence[column]):  # the first value would be replaced without a word
            raise EincError(f"--evidence gives {model.columns[column]} twice")
        try:
            evidence[column] = float(match.group(2))
        except ValueError:
            raise EincError(f"--evidence: '{match.group(2)}' is not a number") from None
    prepare(model.graph, evidence[None], None, "--evidence", model.dtype)
    head = _head(model, args.head)
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
        joint = joint if joint.ndim == 1 else joint[:, head]
        if np.isnan(joint).any() or (joint == np.inf).any():  # -inf is a value of probability 0
            finite_ll(joint, model, f"--target {target}")
        if not np.isfinite(joint).any():
            raise EincError(f"--evidence: has probability 0 under the model (every value of {target} gives "
                            f"log-likelihood -inf); a conditional needs evidence of positive probability")
        # normalised over the target's values: Σ_v p(v, e) = p(e) exactly for exact circuits, and
        # for vae leaves each joint is its own IWAE estimate, so dividing by a separate estimate
        # of p(e) gave "probabilities" that did not sum to 1 (1.12 on a binary target)
        probabilities = np.exp(joint - np.logaddexp.reduce(joint))
        estimated = "" if model.exact else (f" (an estimate: approximate IWAE estimates of each p({target} = v, evidence) with "
                                            f"{DEFAULT_QUERY_SAMPLES} samples per vae leaf, normalised over the "
                                            f"values of {target})")
        given = ", ".join(f"{name}={value:g}" for name, value in zip(model.columns, evidence) if not np.isnan(value))
        # P(C | A=1), P(C), P(C | A=1) under head 1 of 2
        print(f"P({model.columns[column]}{f' | {given}' if given else ''}){_of_head(model, head)}{estimated}:")
        for level, probability in zip(levels, probabilities):
            print(f"  {int(level)}: {probability:.6f}")
    return 0


# ---------------------------------------------------------------------------------------------
# einc bench


def cmd_bench(args: argparse.Namespace) -> int:
    """Compare backends on one circuit: agreement of answers, speed and peak memory."""
    from einc.backends.base import available_backends
    from einc.tools.compare import compare_backends

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    known = available_backends()
    unknown = [b for b in backends if b.split(":", 1)[0] not in known]
    if not backends or unknown:
        raise EincError(f"--backends {args.backends}: expected a comma-separated list of {', '.join(known)} "
                        f"(torch:cuda names a device)")
    if args.json:  # before the measurements, which a missing folder would lose (the lines are appended)
        check_writable(args.json, "JSON records")
        check_not_an_input(args.json, {"FILE.pc": args.file, "--data": args.data})
    model = compile(args.file, dtype="float64", seed=args.seed, options=compile_options(args, "float64"))
    set_threads(args, model.plan)
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
    from einc.io.files import atomic_write
    from einc.tools.structure_learning import learn_structure

    check_writable(args.output, "circuit")
    check_distinct_paths({"-o": args.output}, {"--data": args.data, "--variables": args.variables})
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


def _lvd_grow(args: argparse.Namespace, model: Model, output: Any, inputs: dict[str, Any]) -> int:
    """einc lvd --grow N1xN2: progressive growing (einc.train.lvd_pg), fine-tuning, the grown .pc and model."""
    from pathlib import Path

    from einc.tools.growing import write_grown
    from einc.train import lvd, lvd_pg

    if args.teacher is None:
        raise EincError("--grow clusters teacher embeddings: give --teacher FEATURES.npy")
    grown_pc = check_writable(args.grown_pc or Path(args.output).with_suffix(".pc"), "grown circuit")
    check_not_an_input(grown_pc, {**inputs, "-o": args.output})
    if args.grown_pc is None:
        check_derived_grown_pc(grown_pc)
    outer, inner = args.grow
    threshold = lvd_pg.DEFAULT_GROW_THRESHOLD if args.grow_threshold is None else args.grow_threshold
    set_threads(args, model.plan)
    train, valid, test = _read_splits(args, model)
    features = lvd.per_latent_features(_read_features(args.teacher), len(model.latents) or None,
                                       label=f"--teacher {args.teacher}")
    print(f"{model.graph.name}: {len(model.latents)} latents, {len(train)} training samples; progressive growing "
          f"to {outer}x{inner} = {outer * inner} clusters per latent, threshold {threshold}")
    dims = model.graph.num_columns

    def bpd(ll: float | None) -> str:
        return "-" if ll is None else f"{-ll / dims / np.log(2):.4f}"

    def report_round(record: "lvd_pg.GrowRound") -> None:
        print(f"round {record.round}: states {min(record.states)}-{max(record.states)} per latent, "
              f"train bpd of (x, z) {bpd(record.train_ll)}, valid bpd {bpd(record.valid_ll)}, "
              f"{record.parameters:,} parameters, {record.seconds:.1f} s", flush=True)

    def report(phase: str, record: EpochRecord) -> None:
        print(f"{phase:>9} {epoch_line(record)}", flush=True)

    trained: dict[str, Any] = {}  # the last trained circuit: what an interrupt writes

    def keep(current: Model, states: np.ndarray) -> None:
        trained.update(model=current, latents=states)

    try:
        with termination_as_interrupt():
            model, latents, _rounds = lvd_pg.progressive_growing(
                model, train, features, outer, inner, threshold=threshold, epochs=args.epochs,
                valid=valid, batch_size=args.batch_size, step_size=args.step_size, update=args.update,
                pseudocount=args.pseudocount, seed=args.seed, on_round=report_round, on_epoch=report,
                on_model=keep)
            keep(model, latents)
            print(f"LVD objective, mean log p(x, z): bpd {bpd(float(model.log_likelihood(train, latents=latents).mean()))}; "
                  f"after growing, mean log p(x): bpd {bpd(float(model.log_likelihood(train).mean()))}")
            if args.finetune_epochs:
                model.fit(train, valid=valid, epochs=args.finetune_epochs, seed=args.seed, batch_size=args.batch_size,
                          step_size=args.step_size, update=args.update, pseudocount=args.pseudocount,
                          on_epoch=lambda record: report("fine-tune", record))
    except KeyboardInterrupt as interrupt:
        if "model" not in trained:
            print("einc: interrupted before the first round was trained; nothing written", file=sys.stderr)
        else:
            write_grown(trained["model"], grown_pc, output)
            print(f"einc: interrupted; wrote the circuit last trained ({trained['model'].num_parameters:,} "
                  f"parameters) to {grown_pc} and {output}", file=sys.stderr)
        return exit_code(interrupt)
    except TrainingError as error:
        print(error.render("einc"), file=sys.stderr)
        if "model" in trained:
            write_grown(trained["model"], grown_pc, output)
            print(f"einc: wrote the circuit last trained to {grown_pc} and {output}", file=sys.stderr)
        return 1
    if test is not None:
        print(f"test bpd {bpd(float(model.log_likelihood(test).mean()))}")
    write_grown(model, grown_pc, output)
    print(f"wrote {grown_pc} and {output}")
    if args.write_latents:
        save_array(args.write_latents, latents)
        print(f"wrote the latent states of the last round to {args.write_latents}")
    return 0


def check_derived_grown_pc(path: "Path") -> None:
    """The default grown-circuit path (MODEL with the suffix .pc) is one the user did not name:
    replace a file there only when it is a circuit that an earlier ``--grow`` wrote."""
    from einc.tools.growing import WRITTEN_MARK

    if not path.exists():
        return
    try:
        earlier = WRITTEN_MARK in path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise EincError(f"{path}: cannot read it ({error.strerror}); give --grown-pc OUT.pc") from None
    if not earlier:
        raise EincError(f"{path} exists and is not a circuit grown by einc lvd --grow, which would write the grown "
                        f"circuit there (the model's name with the suffix .pc): give --grown-pc OUT.pc, or move it")


def cmd_lvd(args: argparse.Namespace) -> int:
    from einc.train import lvd

    if (args.teacher is None) == (args.latents is None):
        raise EincError("give --teacher FEATURES.npy (teacher embeddings to cluster) or --latents Z.npy "
                        "(the latent states of every training row): exactly one of them")
    growing = [flag for flag, value in (("--grown-pc", args.grown_pc), ("--grow-threshold", args.grow_threshold))
               if value is not None]
    if args.grow is None and growing:
        raise EincError(f"{' and '.join(growing)} {'apply' if len(growing) > 1 else 'applies'} to progressive growing: "
                        f"give --grow N1xN2 too (or leave {'them' if len(growing) > 1 else 'it'} out)")
    if args.grow is not None and args.reassign:
        raise EincError("--reassign re-assigns the latents of one-shot distillation; --grow re-labels the samples "
                        "in each of its rounds itself: give one of them")
    output = check_writable(args.output, "model")
    inputs = {"FILE.pc": args.file, "--data": args.data, "--teacher": args.teacher, "--latents": args.latents,
              "--valid": args.valid, "--test": args.test}
    if args.write_latents:
        check_array_output(args.write_latents)
    check_distinct_paths({"-o": output, "--write-latents": args.write_latents}, inputs)
    model = compile(args.file, backend=args.backend, device=args.device, dtype=args.dtype, seed=args.seed,
                    options=compile_options(args))
    if getattr(args, "grow", None) is not None:
        return _lvd_grow(args, model, output, inputs)
    # raises without latents (nothing to distill) and, for --teacher, unless they share one K (one codebook)
    states = lvd.shared_states(model) if args.teacher or not model.latents else None
    set_threads(args, model.plan)
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
        print(f"{phase:>9} {epoch_line(record)}", flush=True)

    try:
        with termination_as_interrupt():
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
        return exit_code(interrupt)
    except TrainingError as error:
        print(error.render("einc"), file=sys.stderr)
        if model.training is not None:
            model.save(output)
            print(f"einc: wrote the last good model (epoch {model.training.epoch}) to {output}", file=sys.stderr)
        return 1
    dims = model.graph.num_columns

    def nats_and_bits(ll: float) -> str:
        return f"{ll:.4f} nats ({-ll / dims / np.log(2):.4f} bits per dimension)"

    for value, what in ((result.objective, "the LVD objective log p(x, z)"), (result.distilled_ll, "log p(x) after distillation"),
                        (result.final_ll, "log p(x) after fine-tuning")):
        if not np.isfinite(value):
            model.save(output)
            finite_ll(np.array([value]), model, f"{what} (mean over --data; the model was written to {output})")
    print(f"LVD objective, mean log p(x, z): {nats_and_bits(result.objective)}")
    print(f"after distillation, mean log p(x): {nats_and_bits(result.distilled_ll)}")
    if args.finetune_epochs:
        print(f"after fine-tuning, mean log p(x): {nats_and_bits(result.final_ll)}")
    if test is not None:
        test_ll = model.log_likelihood(test)
        if not np.isfinite(test_ll).all():
            model.save(output)
            finite_ll(test_ll, model, f"--test {args.test} (the model was written to {output})")
        print(f"test LL {nats_and_bits(float(test_ll.mean()))}")
    model.save(output)
    print(f"wrote {output}")
    if args.write_latents:
        save_array(args.write_latents, result.latents,
                   header=[slot.name for slot in model.latents] if str(args.write_latents).lower().endswith(".csv") else None)
        print(f"wrote the latent states of the last distillation round to {args.write_latents}")
    return 0
