"""``einc train`` across processes and machines, and out of core.

``einc train … --nproc N`` starts N local workers with torch's elastic launcher (what ``torchrun``
runs), each of which runs the same ``einc train`` command as a worker; under ``torchrun`` that
command is the worker directly, so several machines need no other change:

    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m einc train model.pc --data train.npy -o model.npz

If a worker fails, the launcher stops the others and reports which worker failed and how; rank 0
writes the model only after every worker has finished training, atomically, so a failed run
leaves no model file (and never a half-written one).

The rules of single-process ``einc train`` hold: options, the output path and every data file are
checked before the first epoch; Ctrl-C writes the best (or last completed) epoch's model from rank
0 and exits 130; a diverging run writes the last good model and exits 1; --checkpoint-every,
--resume and --patience work as on one process. One difference: with several workers SIGTERM
stops the run without writing a model (exit 143), because the launcher itself stops the surviving
workers with SIGTERM when one fails (a single worker saves on SIGTERM as one process does).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from einc.train import distributed
from einc.cli.options import TRAIN_ARGS, arguments_of
from einc.cli.session import (
    Session,
    check_outputs,
    exit_code,
    set_threads,
    termination_as_interrupt,
    training_model,
)
from einc.train.distributed import SetupError, WorkerLost, Workers
from einc.compiler.size import format_bytes
from einc.errors import EincError, ResourceError, TrainingError
from einc.train.rows import open_rows

# A worker that stops because of a failure reported elsewhere (it lost contact with a failed worker,
# or rank 0 printed a setup problem for all) exits with this code (EX_TEMPFAIL), so the launcher
# names the worker that failed first, not these.
STOPPED = 75


class WorkersFailed(EincError):
    """A worker of a local multi-process run failed; the others were stopped."""


def wanted(args: argparse.Namespace) -> bool:
    """Does this ``einc train`` run on the sharded, out-of-core path?"""
    return bool(args.nproc or args.stream or distributed.launched() or "{rank}" in str(args.data))


def cmd_train_sharded(args: argparse.Namespace) -> int:
    """``einc train`` with --nproc, --stream, one file per worker, or under torchrun."""
    if args.mixture:
        raise EincError("--mixture trains in one process from data in memory; leave out --nproc and --stream")
    if distributed.launched():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        if args.nproc is not None and args.nproc != local:
            raise EincError(f"--nproc {args.nproc} conflicts with the launcher's {local} processes per machine; "
                            f"leave out --nproc under torchrun")
        return _worker(args)
    if args.nproc and args.nproc > 1:
        check_worker_count(args.nproc)
        _preflight(args)
        return launch_local(args, args.nproc)
    return _worker(args)


# ---------------------------------------------------------------------------------------------
# the launcher


# Resident memory of one idle worker process (Python, torch, gloo): 64 workers took about 10 GB on
# the 2-core development VM, about 160 MB each.
WORKER_BASE_BYTES = 160 * 2**20


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_worker_count(nproc: int, per_worker: int = 0) -> None:
    """``ResourceError`` before starting ``nproc`` local workers that the machine cannot run:
    more than its usable cores (they would only take turns, each a whole torch process), or more
    memory than it has available (a base process each, plus ``per_worker`` bytes of model and
    batch). ``--nproc 64`` on 2 cores took 10 GB and 50 s before the first epoch."""
    cores = usable_cores()
    if nproc > cores:
        raise ResourceError(f"--nproc {nproc}: this machine has {cores} usable cores; more workers than cores "
                            f"only take turns (each is a whole process of about {format_bytes(WORKER_BASE_BYTES)}); "
                            f"use --nproc {cores} or fewer")
    available = available_memory()
    needed = nproc * (WORKER_BASE_BYTES + per_worker)
    if available is not None and needed > available:
        raise ResourceError(f"--nproc {nproc}: the workers would need about {format_bytes(needed)} "
                            f"({format_bytes(WORKER_BASE_BYTES + per_worker)} each), more than the "
                            f"{format_bytes(available)} this machine has available; use fewer workers")


def _preflight(args: argparse.Namespace) -> None:
    """Catch the common mistakes once, before starting workers: the output path, the circuit (and
    the --resume model), missing or unreadable files; and build CSV caches here so that workers do
    not wait on each other for them. (The workers check every row, in parallel.)"""
    check_outputs(args)
    # a CPU probe of the circuit: the workers' own --precision is checked on their devices
    model = training_model(argparse.Namespace(**{**vars(args), "precision": "fp32"}), "cpu")
    # each worker holds the parameters (and host copies of them) and one local batch
    local_rows = -(-args.batch_size // args.nproc)
    itemsize = 8 if args.dtype == "float64" else 4
    check_worker_count(args.nproc, model.num_parameters * (itemsize + 24) + local_rows * model.batch_bytes())
    for data, is_labels in ((args.data, False), (args.labels, True), (args.valid, False),
                            (args.valid_labels, True), (args.test, False)):
        if data is None:
            continue
        paths = [str(data).replace("{rank}", str(rank)) for rank in range(args.nproc)] if "{rank}" in str(data) else [data]
        for path in paths:
            open_rows(path, args.cache_dir, one_row_if_flat=not is_labels, columns=None if is_labels else model.columns)


def launch_local(args: argparse.Namespace, nproc: int) -> int:
    """Run this ``einc train`` command as ``nproc`` workers on this machine (torch elastic, as
    ``torchrun --standalone --nproc-per-node nproc`` would); return 0 or raise ``WorkersFailed``."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"einc-{uuid.uuid4().hex[:12]}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1)
    before = _file_state(args.output)
    try:
        with _quiet_launcher_logs():
            elastic_launch(config, sys.executable)("-m", "einc", *arguments_of("train", TRAIN_ARGS, args))
    except SignalException as error:  # the launcher was interrupted; the agent stopped the workers
        if error.sigval == signal.SIGINT:
            return 130  # the agent passed Ctrl-C on: worker 0 has said what it saved
        print(f"einc: stopped by {signal.Signals(error.sigval).name}; the workers were stopped; "
              f"{_output_note(args.output, before)}", file=sys.stderr)
        return 128 + int(error.sigval)  # 143 for SIGTERM, as one process exits
    except ChildFailedError as error:
        rank, exitcode = _first_cause(error.failures)
        raise WorkersFailed(f"{_describe(rank, exitcode, nproc)}; {_output_note(args.output, before)}") from None
    return 0


def _file_state(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns


def _output_note(path: str, before: tuple[int, int] | None) -> str:
    """Whether a failed run wrote the model: worker 0 writes the last good model of a diverged
    run itself (and says so); a worker failure or a stop leaves no model."""
    if _file_state(path) == before:
        return f"{path} was not written"
    return f"{path} was written by worker 0 (see above)"


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


def _worker(args: argparse.Namespace) -> int:
    workers = distributed.join(args.device)
    try:
        with _interrupts(workers) as interrupted:
            return _train(args, workers, interrupted)
    except SetupError as error:
        # every worker has the same message: rank 0 prints it, and nobody exits before it has
        # (the launcher stops all workers as soon as one exits)
        if workers.is_main:
            print(error.render("einc"), file=sys.stderr, flush=True)
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


@contextlib.contextmanager
def _interrupts(workers: Workers) -> Iterator[threading.Event]:
    """One worker: SIGTERM saves like Ctrl-C, as single-process ``einc train`` does. Several
    workers: Ctrl-C (SIGINT, which the launcher forwards to every worker) is recorded, so that a
    worker that first sees its peers vanish still knows it was interrupted; SIGTERM keeps its
    default action (the launcher's way of stopping workers after a failure)."""
    interrupted = threading.Event()
    if workers.world_size == 1:
        with termination_as_interrupt():
            yield interrupted
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:  # not the main thread
        yield interrupted
        return
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _train(args: argparse.Namespace, workers: Workers, interrupted: threading.Event) -> int:
    say = print if workers.is_main else _silent
    device = distributed.worker_device(args.device, workers)
    # rank 0 writes the model: the output is checked there (other machines may lack its folder)
    output = distributed.agree(workers, "checking the output path", lambda: (
        check_outputs(args) if workers.is_main else None))
    model = distributed.agree(workers, "compiling the circuit", lambda: training_model(args, device))
    set_threads(args, model.plan, workers.local_world_size)
    data = distributed.open_training_data(model, args.data, args.labels, workers, args.cache_dir)
    test = distributed.agree(workers, "checking the test data", lambda: (
        distributed.open_checked(model, args.test, None, args.cache_dir, "test")[0] if args.test and workers.is_main else None))
    engine = "one process" if workers.world_size == 1 else (
        f"{workers.world_size} workers ({'nccl' if device.startswith('cuda') else 'gloo'})")
    say(f"{model.graph.name}: {model.num_parameters} parameters, {data.total_rows} training samples read "
        f"block by block, {engine}, backend {args.backend} on {args.device} ({model.dtype})")
    say("the train LL shown is a running estimate: the mean over the steps as they ran, while the "
        "parameters changed (no second pass over the data)")
    if args.resume and model.training is not None:
        say(f"resuming after epoch {model.training.epoch} of {args.resume}")
    session = Session(args, model, output, workers.is_main)
    try:
        history = distributed.fit(
            model, data, valid=args.valid, epochs=args.epochs, method=args.method, batch_size=args.batch_size,
            step_size=args.step_size, update=args.update, learning_rate=args.learning_rate,
            valid_labels=args.valid_labels, keep_best=args.valid is not None, seed=args.seed,
            progress=workers.is_main and sys.stderr.isatty(), on_epoch=session.on_epoch, patience=args.patience,
            checkpoint=args.output if args.checkpoint_every else None,  # written by rank 0
            checkpoint_every=args.checkpoint_every or 0, resume=bool(args.resume), pseudocount=args.pseudocount,
            cache_dir=args.cache_dir, samples=args.samples, workers=workers, on_message=session.message)
    except WorkerLost:
        if not _was_interrupted(interrupted):
            raise  # another worker failed: no model (the launcher names the cause)
        return session.interrupted(KeyboardInterrupt()) if workers.is_main else 130
    except KeyboardInterrupt as interrupt:  # the parameters are the best (or last completed) epoch's
        return session.interrupted(interrupt) if workers.is_main else exit_code(interrupt)
    except TrainingError as error:  # the same on every worker: rank 0 reports and writes
        return session.diverged(error) if workers.is_main else STOPPED
    # write only once every worker has finished: a failure anywhere leaves no model file
    workers.barrier("the end of training")
    if not workers.is_main:
        return 0
    test_ll = None if test is None else distributed.mean_log_likelihood(model, test)
    return session.finish(history, test_ll)


def _was_interrupted(interrupted: threading.Event) -> bool:
    """Whether this worker got Ctrl-C: the launcher forwards it to all workers at once, so a
    worker may see its peers vanish a moment before its own signal arrives."""
    if not interrupted.is_set():
        with contextlib.suppress(KeyboardInterrupt):
            interrupted.wait(0.5)
    return interrupted.is_set()


def _silent(*_: Any, **__: Any) -> None:
    pass
