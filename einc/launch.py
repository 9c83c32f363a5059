"""``einc train`` across processes and machines, and out of core.

``einc train … --nproc N`` starts N local workers with torch's elastic launcher (what ``torchrun``
runs), each of which runs the same ``einc train`` command as a worker; under ``torchrun`` that
command is the worker directly, so several machines need no other change:

    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m einc train model.pc --data train.npy -o model.npz

If a worker fails, the launcher stops the others and reports which worker failed and how; rank 0
writes the model only after every worker has finished training, atomically, so a failed run
leaves no model file (and never a half-written one).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from typing import Any

from einc import distributed
from einc.distributed import SetupError, WorkerLost, Workers
from einc.ir.diagnostics import EincError
from einc.model import EpochRecord, compile
from einc.rows import open_rows


# A worker that stops because of a failure reported elsewhere (it lost contact with a failed worker,
# or rank 0 printed a setup problem for all) exits with this code (EX_TEMPFAIL), so the launcher
# names the worker that failed first, not these.
STOPPED = 75


class WorkersFailed(EincError):
    """A worker of a local multi-process run failed; the others were stopped."""


def wanted(args: argparse.Namespace) -> bool:
    """Does this ``einc train`` run on the sharded, out-of-core path?"""
    return bool(args.nproc or args.stream or distributed.launched() or "{rank}" in str(args.data))


def cmd_train_sharded(args: argparse.Namespace, epoch_line: Any) -> int:
    """``einc train`` with --nproc, --stream, one file per worker, or under torchrun."""
    if args.mixture:
        raise EincError("--mixture trains in one process from data in memory; leave out --nproc and --stream")
    if args.nproc is not None and args.nproc < 1:
        raise EincError(f"--nproc must be at least 1, not {args.nproc}")
    if distributed.launched():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        if args.nproc is not None and args.nproc != local:
            raise EincError(f"--nproc {args.nproc} conflicts with the launcher's {local} processes per machine; "
                            f"leave out --nproc under torchrun")
        return _worker(args, epoch_line)
    if args.nproc and args.nproc > 1:
        _preflight(args)
        return launch_local(args, args.nproc)
    return _worker(args, epoch_line)


# ---------------------------------------------------------------------------------------------
# the launcher


def _preflight(args: argparse.Namespace) -> None:
    """Catch the common mistakes once, before starting workers: the circuit, missing files; and
    build CSV caches here so that workers do not wait on each other for them."""
    compile(args.file, backend=args.backend, dtype=args.dtype, seed=args.seed)
    for data, is_labels in ((args.data, False), (args.labels, True)):
        if data is None:
            continue
        paths = [str(data).replace("{rank}", str(rank)) for rank in range(args.nproc)] if "{rank}" in str(data) else [data]
        for path in paths:
            open_rows(path, args.cache_dir, one_row_if_flat=not is_labels)


def launch_local(args: argparse.Namespace, nproc: int) -> int:
    """Run this ``einc train`` command as ``nproc`` workers on this machine (torch elastic, as
    ``torchrun --standalone --nproc-per-node nproc`` would); return 0 or raise ``WorkersFailed``."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from einc.cli import command_line

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"einc-{uuid.uuid4().hex[:12]}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1)
    try:
        with _quiet_launcher_logs():
            elastic_launch(config, sys.executable)("-m", "einc", *command_line(args))
    except SignalException as error:  # the launcher was interrupted; the agent stopped the workers
        if error.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise WorkersFailed(f"stopped by {signal.Signals(error.sigval).name}; the workers were stopped; "
                            f"{args.output} was not written") from None
    except ChildFailedError as error:
        rank, exitcode = _first_cause(error.failures)
        raise WorkersFailed(f"{_describe(rank, exitcode, nproc)}; {args.output} was not written") from None
    return 0


def _first_cause(failures: dict[int, Any]) -> tuple[int, int]:
    """(rank, exit code) of the failure that most likely caused the others: a worker killed by a
    signal or failing with an error before workers that lost contact, before workers the
    launcher stopped (SIGTERM); then the earliest."""
    def order(item: tuple[int, Any]) -> tuple[int, float, int]:
        rank, failure = item
        consequence = 2 if failure.exitcode == -signal.SIGTERM else 1 if failure.exitcode == STOPPED else 0
        return consequence, failure.timestamp, rank

    rank, failure = min(failures.items(), key=order)
    return rank, failure.exitcode


def _describe(rank: int, exitcode: int, nproc: int) -> str:
    if exitcode in (STOPPED, -signal.SIGTERM):
        return f"training stopped on all {nproc} workers (the message above says why)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker {rank} of {nproc} was killed by {name}; the other workers were stopped"
    return f"worker {rank} of {nproc} failed (exit code {exitcode}, see above); the other workers were stopped"


@contextlib.contextmanager
def _quiet_launcher_logs() -> Iterator[None]:
    """The elastic agent logs every start and stop; einc reports failures itself. (Its loggers
    set their own levels, so each is quieted, not just their parent.)"""
    prefixes = ("torch.distributed.elastic", "torch.distributed.launcher")
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith(prefixes)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# ---------------------------------------------------------------------------------------------
# a worker


def _worker(args: argparse.Namespace, epoch_line: Any) -> int:
    workers = distributed.join(args.device)
    try:
        return _train(args, workers, epoch_line)
    except SetupError as error:
        # every worker has the same message: rank 0 prints it, and nobody exits before it has
        # (the launcher stops all workers as soon as one exits)
        if workers.is_main:
            print(str(error), file=sys.stderr, flush=True)
        with contextlib.suppress(WorkerLost):
            workers.barrier("reporting a setup problem")
        return STOPPED
    except WorkerLost as error:
        # a consequence of another worker's failure: the launcher reports the cause
        print(str(error), file=sys.stderr)
        return STOPPED
    except EincError as error:
        if workers.world_size > 1:
            raise EincError([dataclasses.replace(d, message=f"worker {workers.rank}: {d.message}")
                             for d in error.diagnostics], error.sources) from None
        raise
    finally:
        distributed.leave(workers)


def _train(args: argparse.Namespace, workers: Workers, epoch_line: Any) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(int(args.threads))
    elif workers.local_world_size > 1:
        # share this machine's cores between its workers instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers.local_world_size))
    say = print if workers.is_main else _silent
    device = distributed.worker_device(args.device, workers)
    model = distributed.agree(workers, "compiling the circuit", lambda: compile(
        args.file, backend=args.backend, device=device, dtype=args.dtype, seed=args.seed))
    data = distributed.open_training_data(model, args.data, args.labels, workers, args.cache_dir)
    test = distributed.agree(workers, "checking the test data", lambda: (
        distributed.open_checked(model, args.test, None, args.cache_dir)[0] if args.test and workers.is_main else None))
    engine = "one process" if workers.world_size == 1 else (
        f"{workers.world_size} workers ({'nccl' if device.startswith('cuda') else 'gloo'})")
    say(f"{model.graph.name}: {model.num_parameters} parameters, {data.total_rows} training samples read "
        f"block by block, {engine}, backend {args.backend} on {args.device} ({args.dtype})")

    def report(record: EpochRecord) -> None:
        say(epoch_line(record), flush=True)

    distributed.fit(model, data, valid=args.valid, epochs=args.epochs, method=args.method,
                    batch_size=args.batch_size, step_size=args.step_size, update=args.update,
                    learning_rate=args.learning_rate, valid_labels=args.valid_labels,
                    keep_best=args.valid is not None, seed=args.seed,
                    progress=workers.is_main and sys.stderr.isatty(), on_epoch=report,
                    cache_dir=args.cache_dir, workers=workers)
    # write only once every worker has finished: a failure anywhere leaves no model file
    workers.barrier("the end of training")
    if not workers.is_main:
        return 0
    if args.valid is not None:
        valid, valid_labels = distributed.open_checked(model, args.valid, args.valid_labels, args.cache_dir)
        say(f"kept the parameters of the best validation epoch: valid LL "
            f"{distributed.mean_log_likelihood(model, valid, valid_labels):.4f}")
    if test is not None:
        say(f"test LL {distributed.mean_log_likelihood(model, test):.4f}")
    model.save(args.output)
    say(f"wrote {args.output}")
    return 0


def _silent(*_: Any, **__: Any) -> None:
    pass
