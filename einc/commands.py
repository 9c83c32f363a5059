"""The ``einc`` subcommands that run models: train, eval, sample, query.

Registered in ``einc.cli.COMMANDS``; each is a function ``(args) -> exit code``.
"""

from __future__ import annotations

import argparse
import re
import sys

import numpy as np

from einc.data import load_array
from einc.ir.diagnostics import DataError, EincError
from einc.model import EpochRecord, Model, compile, load


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(int(args.threads))


def _epoch_line(record: EpochRecord) -> str:
    valid_text = "" if record.valid_ll is None else f"  valid LL {record.valid_ll:.4f}"
    return f"epoch {record.epoch:3d}  train LL {record.train_ll:.4f}{valid_text}  ({record.seconds:.2f}s)"


def cmd_train(args: argparse.Namespace) -> int:
    from einc import launch

    if launch.wanted(args):  # --nproc, --stream, one file per worker, or under torchrun
        return launch.cmd_train_sharded(args, _epoch_line)
    _threads(args)
    train = load_array(args.data)
    valid = load_array(args.valid) if args.valid else None
    test = load_array(args.test) if args.test else None
    if args.mixture:
        return _train_mixture(args, train, valid, test)
    model = compile(args.file, backend=args.backend, device=args.device, dtype=args.dtype, seed=args.seed)
    labels = load_array(args.labels).reshape(-1) if args.labels else None
    valid_labels = load_array(args.valid_labels).reshape(-1) if args.valid_labels else None
    print(f"{model.graph.name}: {model.num_parameters} parameters, {len(train)} training samples, "
          f"backend {args.backend} on {args.device} ({args.dtype})")

    def report(record: EpochRecord) -> None:
        print(_epoch_line(record), flush=True)

    model.fit(train, valid=valid, epochs=args.epochs, batch_size=args.batch_size, step_size=args.step_size,
              method=args.method, learning_rate=args.learning_rate, update=args.update, labels=labels, valid_labels=valid_labels, keep_best=valid is not None,
              progress=sys.stderr.isatty(), on_epoch=report)
    if valid is not None:
        print(f"kept the parameters of the best validation epoch: valid LL {model.log_likelihood(valid).mean():.4f}")
    if test is not None:
        print(f"test LL {model.log_likelihood(test).mean():.4f}")
    model.save(args.output)
    print(f"wrote {args.output}")
    return 0


def _train_mixture(args: argparse.Namespace, train: np.ndarray, valid: np.ndarray | None,
                   test: np.ndarray | None) -> int:
    from einc.mixture import fit_mixture

    print(f"mixture of {args.mixture} circuits: k-means on {len(train)} samples, one circuit per cluster")

    def report(component: int, record: EpochRecord) -> None:
        print(f"component {component:3d} {_epoch_line(record)}", flush=True)

    mixture = fit_mixture(args.file, train, args.mixture, valid=valid, epochs=args.epochs,
                          batch_size=args.batch_size, step_size=args.step_size, seed=args.seed,
                          backend=args.backend, device=args.device, dtype=args.dtype, on_epoch=report)
    if valid is not None:
        print(f"valid LL {mixture.log_likelihood(valid).mean():.4f}")
    if test is not None:
        print(f"test LL {mixture.log_likelihood(test).mean():.4f}")
    mixture.save(args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_inpaint(args: argparse.Namespace) -> int:
    from einc.images import image_mask, image_shape, inpainting_figure, inpainting_rows, save_png

    _threads(args)
    model = load(args.model, backend=args.backend, device=args.device)
    data = load_array(args.data)[: args.n]
    hidden = image_mask(args.mask, image_shape(model.graph), len(data), args.seed)
    rows = inpainting_rows(model, data, hidden, args.seed, "mean" if args.means else "sample")
    save_png(args.output, inpainting_figure(model, rows, hidden))
    print(f"wrote {args.output}: rows are original, masked, conditional sample, MPE ({len(data)} images)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    _threads(args)
    model = load(args.model, backend=args.backend, device=args.device)
    data = load_array(args.data)
    ll = model.log_likelihood(data)
    if ll.ndim == 2:
        if args.labels:
            labels = load_array(args.labels).reshape(-1).astype(int)
            if len(labels) != len(data):
                raise DataError(f"{args.labels}: {len(labels)} labels for {len(data)} samples")
            accuracy = float(np.mean(ll.argmax(1) == labels))
            print(f"accuracy {accuracy:.4f} ({len(data)} samples, {ll.shape[1]} heads)")
            print(f"mean LL of the true class {ll[np.arange(len(ll)), labels].mean():.4f}")
            return 0
        ll = ll[:, 0]
    dims = model.graph.num_columns
    print(f"mean LL {ll.mean():.4f} nats over {len(data)} samples "
          f"({-ll.mean() / dims / np.log(2):.4f} bits per dimension)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    _threads(args)
    model = load(args.model, backend=args.backend, device=args.device)
    samples = model.sample(args.n, seed=args.seed, leaf_value="mean" if args.means else "sample")
    if str(args.output).lower().endswith(".png"):
        from einc.images import grid, save_png, to_images

        save_png(args.output, grid(to_images(model.graph, samples)))
    else:
        from einc.files import save_array

        save_array(args.output, samples, header=model.columns if args.output.endswith(".csv") else None)
    print(f"wrote {len(samples)} samples to {args.output}")
    return 0


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
    return parts


def cmd_query(args: argparse.Namespace) -> int:
    model = load(args.model, backend=args.backend, device=args.device, dtype="float64")
    evidence = np.full(model.graph.num_columns, np.nan)
    for assignment in _split_assignments(args.evidence or ""):
        match = _ASSIGNMENT.match(assignment)
        if match is None:
            raise EincError(f"--evidence: '{assignment}' is not of the form name=value")
        try:
            evidence[_column_of(model, match.group(1))] = float(match.group(2))
        except ValueError:
            raise EincError(f"--evidence: '{match.group(2)}' is not a number") from None
    for target in _split_assignments(args.target):
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
        print(f"P({model.columns[column]} | evidence):")
        for level, probability in zip(levels, probabilities):
            print(f"  {int(level)}: {probability:.6f}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Compare backends on one circuit: agreement of answers, speed and peak memory."""
    from einc.compare import compare_backends

    _threads(args)
    if args.data:
        data = load_array(args.data)[: args.samples]
    else:
        # the paper's efficiency setup uses Gaussian noise; other domains get random valid values
        data = _random_data(args.file, args.samples, args.seed)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    report = compare_backends(args.file, data, backends=backends, device=args.device, dtype=args.dtype,
                              batch_size=args.batch_size, seed=args.seed, repeats=args.repeats)
    print(report)
    return 0


def _random_data(path: str, samples: int, seed: int) -> np.ndarray:
    model = compile(path, dtype="float64", seed=seed)
    if all(v.domain.kind == "real" for v in model.graph.variables):
        return np.random.default_rng(seed).standard_normal((samples, model.graph.num_columns))
    return model.sample(samples, seed=seed)
