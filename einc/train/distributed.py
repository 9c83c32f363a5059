"""Data-parallel training on ``torch.distributed`` (gloo on CPU, NCCL on CUDA), out of core.

EM suits data parallelism: the E-step statistics of disjoint shards add. Each worker (rank) reads
its own shard of the training rows (a row range of one file, or a file of its own) window by
window, computes statistics on its part of every global batch, and the workers all-reduce them in
one flat buffer per step; every worker then applies the same M-step, so all hold the same
parameters. Adam training all-reduces gradients the same way (as DistributedDataParallel does).
Rank 0 validates and reports; the caller writes the model from rank 0.

    # under torchrun (or `einc train --nproc N`, which starts the workers itself)
    >>> torch.distributed.init_process_group("gloo")                    # doctest: +SKIP
    >>> model = einc.compile("examples/nltcs.pc")                       # doctest: +SKIP
    >>> history = einc.train.distributed.fit(model, "train.npy", epochs=5)    # doctest: +SKIP

Without a process group ``fit`` trains in one process on data read from disk block by block.

The hardening rules of ``Model.fit`` hold here too: every option and every data row is checked
before the first epoch (errors name ``file:line:column``), a non-finite log-likelihood or
parameter stops training with ``TrainingError`` and the last good parameters, an interrupt leaves
the best (or last completed) epoch's parameters, ``patience`` stops early, checkpoints are
written atomically by rank 0, and ``resume`` continues from ``model.training``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

# Imported here, before any process group exists, for its side effect: its functions take
# ``group=group.WORLD`` as a default argument, evaluated when the module is first imported. torch.optim
# imports it lazily (through torch._dynamo) the first time an optimiser is built — after
# ``init_process_group`` on the Adam path — and those defaults then keep the default group alive past
# ``destroy_process_group``: gloo's worker threads survive into interpreter shutdown, where one that
# releases a tensor takes the GIL and the process aborts ("terminate called without an active
# exception", SIGABRT; about 1 run in 3 of tests/test_distributed.py). Imported first, the defaults
# are None (the group is looked up at call time) and destroy_process_group joins the threads.
if dist.is_available():
    import torch.distributed.nn.functional  # noqa: F401  (see above)

from einc.backends.base import Batch, Statistics
from einc.backends.em import DEFAULT_PSEUDOCOUNT
from einc.io.data import prepare, prepare_labels
from einc.io.files import check_writable
from einc.errors import DataError, EincError
from einc.ir.neural import DEFAULT_TRAINING_SAMPLES
from einc.model import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_STEP_SIZE,
    Model,
)
from einc.train.loop import EpochRecord, Hooks, Options, Run, TrainingState
from einc.train.loop import train as train_epochs
from einc.train.steps import HostEm, ShardAdam
from einc.train.rows import RowSource, Window, iter_windows, open_rows
from einc.train.schedule import (
    Schedule,
    Step,
    aligned_shard_sizes,
    default_block_rows,
    local_batch_sizes,
    shard_starts,
)

# Cells per chunk when a shard is validated before training (about 8 MB as float64).
CHECK_CELLS = 1 << 20
# Rows per chunk when rank 0 evaluates a validation set.
EVAL_ROWS = 1024


class WorkerLost(EincError):
    """A collective operation failed: another worker stopped or became unreachable."""


class SetupError(EincError):
    """Setting up failed on some worker; every worker raises the same message (rank 0 prints it)."""


# ---------------------------------------------------------------------------------------------
# workers and collectives


def launched() -> bool:
    """True in a process started by torchrun or ``einc train --nproc`` (their environment contract)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class Workers:
    """This process's place among the workers, and the collectives einc uses."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    # where collective buffers live (CUDA for NCCL)
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @staticmethod
    def current() -> Workers:
        """The default process group if one is initialised, else a single worker."""
        if not (dist.is_available() and dist.is_initialized()):
            return Workers()
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        return Workers(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                       int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())), device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _run(self, what: str, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return operation(*args, **kwargs)
        except RuntimeError as error:  # gloo/NCCL errors (DistBackendError is a RuntimeError)
            raise WorkerLost(f"worker {self.rank}: lost contact with the other workers during {what} "
                             f"({_first_sentence(error)}); stopping") from None

    def all_reduce(self, flat: torch.Tensor, what: str) -> torch.Tensor:
        """Sum ``flat`` over the workers, in place."""
        if self.world_size > 1:
            self._run(what, dist.all_reduce, flat)
        return flat

    def broadcast(self, flat: torch.Tensor, what: str) -> torch.Tensor:
        """Rank 0's ``flat`` on every worker, in place."""
        if self.world_size > 1:
            self._run(what, dist.broadcast, flat, 0)
        return flat

    def gather(self, value: Any, what: str) -> list[Any]:
        """Every worker's ``value`` (a small picklable object), in rank order."""
        if self.world_size == 1:
            return [value]
        out: list[Any] = [None] * self.world_size
        self._run(what, dist.all_gather_object, out, value)
        return out

    def barrier(self, what: str) -> None:
        if self.world_size > 1:
            self._run(what, dist.barrier)


def _first_sentence(error: Exception) -> str:
    """'Read error [127.0.0.1]:22961: Connection reset by peer' from gloo's long message."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text)  # the C++ source location
    return text.split(". ")[0][:200]


def join(device: str = "cpu", timeout_minutes: float = 30.0) -> Workers:
    """Join the workers a launcher started (torchrun's environment: RANK, WORLD_SIZE, MASTER_ADDR,
    ...): gloo on the CPU, NCCL on CUDA, one GPU per local rank. A single worker otherwise."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return Workers.current()
    if not dist.is_available():
        raise EincError("this torch build has no torch.distributed; install a standard torch wheel")
    use_cuda = device.startswith("cuda")
    if use_cuda:
        if not torch.cuda.is_available():
            raise EincError("--device cuda but torch sees no CUDA device on this machine")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    try:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=timeout_minutes))
    except (RuntimeError, ValueError) as error:
        raise EincError(f"cannot join the other workers ({error})") from None
    return Workers.current()


def leave(workers: Workers) -> None:
    if workers.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def worker_device(device: str, workers: Workers) -> str:
    """Each local worker on a GPU of its own."""
    if device.startswith("cuda") and workers.world_size > 1 and ":" not in device:
        return f"cuda:{torch.cuda.current_device()}"
    return device


# ---------------------------------------------------------------------------------------------
# one flat buffer of statistics (or gradients) per step


class StatisticsBuffer:
    """Packs a ``Statistics`` into one float64 tensor ``[Σ log p, rows, n..., Σp·T..., Σp...]`` in
    the plan's parameter order, so a step costs one all-reduce whatever the number of tensors."""

    def __init__(self, model: Model, device: torch.device) -> None:
        self.plan = model.plan
        self.backend = model.backend
        self.device = device
        self.zeros = self._zeros()

    def _zeros(self) -> Statistics:
        weights, leaf = {}, {}
        for spec in self.plan.params:
            if spec.kind == "leaf":
                zero = self.backend.put({"t": np.zeros(spec.shape), "p": np.zeros(spec.shape[:-1])})
                leaf[spec.name] = (zero["t"], zero["p"])
            else:
                weights[spec.name] = self.backend.put({"n": np.zeros(spec.shape)})["n"]
        return Statistics(0.0, 0, weights, leaf)

    def _arrays(self, stats: Statistics) -> list[Any]:
        arrays = []
        for spec in self.plan.params:
            arrays += list(stats.leaf[spec.name]) if spec.kind == "leaf" else [stats.weights[spec.name]]
        return arrays

    def all_reduce(self, stats: Statistics, workers: Workers) -> Statistics:
        header = torch.tensor([stats.log_likelihood, float(stats.count)], dtype=torch.float64, device=self.device)
        flat = torch.cat([header] + [_flat64(array, self.device) for array in self._arrays(stats)])
        workers.all_reduce(flat, "the E-step")
        pieces, offset = [], 2
        for template in self._arrays(self.zeros):
            size = int(np.prod(template.shape))
            pieces.append(_like(flat[offset : offset + size].reshape(template.shape), template, self.backend))
            offset += size
        weights, leaf, parts = {}, {}, iter(pieces)
        for spec in self.plan.params:
            if spec.kind == "leaf":
                leaf[spec.name] = (next(parts), next(parts))
            else:
                weights[spec.name] = next(parts)
        return Statistics(float(flat[0]), round(float(flat[1])), weights, leaf)


def _flat64(array: Any, device: torch.device) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        tensor = array.detach()
    elif isinstance(array, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:  # CuPy and other DLPack arrays
        tensor = torch.from_dlpack(array)
    return tensor.reshape(-1).to(device=device, dtype=torch.float64)


def _like(piece: torch.Tensor, template: Any, backend: Any) -> Any:
    """A reduced piece as the backend's array (dtype and device of ``template``)."""
    if isinstance(template, torch.Tensor):
        return piece.to(device=template.device, dtype=template.dtype)
    return backend.put({"x": piece.cpu().numpy()})["x"]


def _parameter_vector(model: Model, device: torch.device) -> torch.Tensor:
    values = model.parameters()
    return torch.from_numpy(np.concatenate([values[spec.name].ravel() for spec in model.plan.params])).to(device)


def _set_parameter_vector(model: Model, flat: torch.Tensor) -> None:
    array, params, offset = flat.cpu().numpy(), {}, 0
    for spec in model.plan.params:
        size = int(np.prod(spec.shape))
        params[spec.name] = array[offset : offset + size].reshape(spec.shape)
        offset += size
    model.set_parameters(params)


# ---------------------------------------------------------------------------------------------
# training data: this worker's shard


@dataclass(frozen=True)
class TrainingData:
    """The training rows (and labels) as this worker sees them.

    One source shared by all workers (``per_worker_files`` False: einc splits its rows into
    ranges), or a file per worker (``{rank}`` in the path). ``sizes``: rows of every worker's file
    when files are per worker, else ``(rows of the shared source,)``.
    """

    source: RowSource
    labels: RowSource | None
    per_worker_files: bool
    sizes: tuple[int, ...]

    @property
    def total_rows(self) -> int:
        return sum(self.sizes)

    def shards(self, workers: Workers, batch_size: int) -> tuple[tuple[int, ...], int]:
        """(rows per worker, first row of this worker's shard in ``source``)."""
        if self.per_worker_files:
            return self.sizes, 0
        sizes = tuple(aligned_shard_sizes(self.sizes[0], workers.world_size, batch_size))
        return sizes, shard_starts(sizes)[workers.rank]


def open_training_data(model: Model, train: Any, labels: Any = None, workers: Workers | None = None,
                       cache_dir: str | os.PathLike | None = None) -> TrainingData:
    """Open this worker's training data and check all of it against the circuit before training.

    ``train`` (and ``labels``): an array, a ``RowSource`` or a path (``.npy`` memory-mapped; CSV
    and ``.npz`` cached once as ``.npy``); a path containing ``{rank}`` names one file per worker.
    The workers check disjoint parts of the data in parallel and agree on the outcome: a problem
    anywhere raises the same ``SetupError`` on every worker, naming the file, row and column.
    """
    workers = workers or Workers.current()
    data = agree(workers, "checking the training data", lambda: _open_and_check(model, train, labels, workers, cache_dir))
    if data.per_worker_files:
        sizes = workers.gather(data.source.num_rows, "checking the training data")
        data = TrainingData(data.source, data.labels, True, tuple(int(rows) for rows in sizes))
    return data


def agree(workers: Workers, what: str, action: Callable[[], Any]) -> Any:
    """Run ``action`` on every worker; if it fails on any, raise the same ``SetupError`` on all
    (the problems of every worker, each once), so that rank 0 alone can report it. A single
    worker raises its own error unchanged."""
    if workers.world_size == 1:
        return action()
    result, problem = None, None
    try:
        result = action()
    except EincError as error:
        problem = (error.diagnostics, error.sources)
    reports = workers.gather(problem, what)
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if not failed:
        return result
    sources = {name: text for _, (_, report_sources) in failed for name, text in report_sources.items()}
    if len(failed) == workers.world_size and all(report[0] == failed[0][1][0] for _, report in failed):
        raise SetupError(failed[0][1][0], sources)  # the same everywhere: a missing file, a .pc error
    raise SetupError([dataclasses.replace(d, message=f"worker {rank}: {d.message}")
                      for rank, (diagnostics, _) in failed for d in diagnostics], sources)


def _open_and_check(model: Model, train: Any, labels: Any, workers: Workers,
                    cache_dir: str | os.PathLike | None) -> TrainingData:
    per_worker = isinstance(train, (str, os.PathLike)) and "{rank}" in str(train)
    source = open_rows(_for_rank(train, workers), cache_dir, "train", columns=model.columns)
    label_source = None
    if labels is not None:
        if per_worker != (isinstance(labels, (str, os.PathLike)) and "{rank}" in str(labels)):
            raise DataError("labels must be split like the training data: both with {rank} in the path or neither")
        label_source = open_rows(_for_rank(labels, workers), cache_dir, "labels", one_row_if_flat=False)
    _check_shapes(model, source, label_source)
    # every worker checks its own file, or an equal part of the shared one
    if per_worker:
        check_rows(model, source, label_source)
    else:
        check_rows(model, source, label_source, source.num_rows * workers.rank // workers.world_size,
                   source.num_rows * (workers.rank + 1) // workers.world_size)
    return TrainingData(source, label_source, per_worker, (source.num_rows,))


def open_checked(model: Model, data: Any, labels: Any = None, cache_dir: str | os.PathLike | None = None,
                 label: str = "valid") -> tuple[RowSource, RowSource | None]:
    """A validation or test set (and its labels) as row sources, checked against the circuit;
    ``label`` names an in-memory array in messages."""
    source = open_rows(data, cache_dir, label, columns=model.columns)
    label_source = None if labels is None else open_rows(labels, cache_dir, f"{label} labels", one_row_if_flat=False)
    _check_shapes(model, source, label_source)
    check_rows(model, source, label_source)
    return source, label_source


def _check_shapes(model: Model, source: RowSource, labels: RowSource | None) -> None:
    """The messages ``prepare`` and ``prepare_labels`` give for data loaded whole."""
    if source.columns != model.graph.num_columns:
        raise DataError(f"{source.label}: expected {model.graph.num_columns} columns (one per variable column, "
                        f"in declaration order), found shape {(source.num_rows, source.columns)}")
    if labels is not None and (labels.columns != 1 or labels.num_rows != source.num_rows):
        raise DataError(f"{labels.label}: {labels.num_rows * labels.columns} labels for {source.num_rows} samples; "
                        f"expected one label per sample")


def check_rows(model: Model, source: RowSource, labels: RowSource | None = None, first: int = 0,
               stop: int | None = None) -> None:
    """Check rows [first, stop) of ``source`` (and their labels) against the circuit at the
    model's dtype, a chunk at a time; errors name the file, line (or row) and column as
    ``read_data`` and ``prepare`` do for data loaded whole."""
    stop = source.num_rows if stop is None else stop
    chunk = max(1, CHECK_CELLS // max(1, source.columns))
    for start, window in iter_windows(source, first, stop, chunk):
        with window as rows:
            prepare(model.graph, source.dataset(rows, start), None, source.label, model.dtype, first_row=start)
            count = len(rows)
        if labels is not None:
            with labels.window(start, start + count) as values:
                prepare_labels(labels.dataset(values, start), count, model.plan.heads, labels.label, first_row=start)


def _for_rank(data: Any, workers: Workers) -> Any:
    if isinstance(data, (str, os.PathLike)) and "{rank}" in str(data):
        return str(data).replace("{rank}", str(workers.rank))
    return data


class ShardReader:
    """Reads this worker's rows step by step, holding only the blocks the current step needs."""

    def __init__(self, model: Model, data: TrainingData, schedule: Schedule, rank: int, start: int) -> None:
        self.model = model
        self.data = data
        self.schedule = schedule
        self.rank = rank
        self.start = start
        self.open: dict[int, tuple[Window, Window | None]] = {}

    def _window(self, block: int) -> tuple[Window, Window | None]:
        if block not in self.open:
            first, stop = self.schedule.block_range(self.rank, block)
            rows = (self.start + first, self.start + stop)
            labels = None if self.data.labels is None else self.data.labels.window(*rows)
            self.open[block] = (self.data.source.window(*rows), labels)
        return self.open[block]

    def batch(self, step: Step) -> Batch | None:
        """The step's rows as a host batch (None when this worker has no rows in the step)."""
        if step.rows == 0:
            self.release(step.finished)
            return None
        values, labels = [], []
        for block, offsets in step.pieces:
            rows, label_window = self._window(block)
            assert rows.rows is not None
            values.append(rows.rows[offsets].reshape(len(offsets), -1))  # a copy: the block may go
            if label_window is not None:
                assert label_window.rows is not None
                labels.append(label_window.rows[offsets].reshape(-1))
        self.release(step.finished)
        raw = np.concatenate(values) if len(values) > 1 else values[0]
        x, observed = prepare(self.model.graph, raw, None, self.data.source.label, self.model.dtype)
        return Batch(x, observed, np.concatenate(labels).astype(np.int64) if labels else None)

    def release_all(self) -> None:
        self.release(tuple(self.open))

    def release(self, blocks: tuple[int, ...]) -> None:
        for block in blocks:
            rows, labels = self.open.pop(block, (None, None))
            for window in (rows, labels):
                if window is not None:
                    window.release()


# ---------------------------------------------------------------------------------------------
# training


def fit(model: Model, train: Any, valid: Any = None, *, epochs: int = DEFAULT_EPOCHS, method: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE, step_size: float = DEFAULT_STEP_SIZE, update: str = "batch",
        learning_rate: float = DEFAULT_LEARNING_RATE, labels: Any = None, valid_labels: Any = None,
        keep_best: bool = True, seed: int | None = None, progress: bool = False,
        on_epoch: Callable[[EpochRecord], None] | None = None, patience: int | None = None,
        checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 0, resume: bool = False,
        pseudocount: float = DEFAULT_PSEUDOCOUNT, block_rows: int | None = None,
        cache_dir: str | os.PathLike | None = None, samples: int = DEFAULT_TRAINING_SAMPLES,
        workers: Workers | None = None, on_message: Callable[[str], None] | None = None) -> list[EpochRecord]:
    """Train ``model`` on data read block by block, on every worker of the default process group.

    The options mean what they mean in ``Model.fit`` (the same defaults, checks, ``pseudocount``,
    ``patience``, ``checkpoint``/``checkpoint_every`` written by rank 0, ``resume``, the behaviour on
    an interrupt or a non-finite log-likelihood); ``batch_size`` is the *global* batch (all
    workers together). ``train``: a path, an array, a ``RowSource`` or an ``open_training_data``
    result. Every worker ends with the same parameters (the best validation epoch's with
    ``keep_best``). Differences from ``Model.fit``, for data larger than memory: rows are shuffled
    by blocks of ``block_rows`` (``einc.train.schedule``; a resumed run continues that schedule
    exactly), and an epoch's train LL is the mean over its E-steps as they ran (no second pass
    over the data); ``valid`` is evaluated on rank 0.
    """
    workers = workers or Workers.current()
    options = model.check_training_options(method, update, step_size, epochs=epochs, batch_size=batch_size,
                                           learning_rate=learning_rate, patience=patience,
                                           checkpoint_every=checkpoint_every, has_valid=valid is not None,
                                           pseudocount=pseudocount, samples=samples, labels=labels,
                                           valid_labels=valid_labels)
    method = options.method
    local_rows = local_batch_sizes(batch_size, workers.world_size)[0]
    model.check_batch(local_rows, f"a training batch of {local_rows} samples per worker", samples, training=True)
    data = train if isinstance(train, TrainingData) else open_training_data(model, train, labels, workers, cache_dir)
    shard_sizes, start = data.shards(workers, batch_size)
    if len(shard_sizes) != workers.world_size:
        raise EincError(f"the data were opened for {len(shard_sizes)} workers, not {workers.world_size}")
    schedule = Schedule(shard_sizes, batch_size, model.seed if seed is None else seed,
                        block_rows or default_block_rows(data.source.columns))
    if data.total_rows == 0:
        raise DataError(f"{data.source.label}: no training rows")
    valid_source = valid_label_source = None
    if valid is not None:  # rank 0 validates
        valid_source, valid_label_source = agree(workers, "checking the validation data", lambda: (
            open_checked(model, valid, valid_labels, cache_dir) if workers.is_main else (None, None)))
    if checkpoint is not None:
        agree(workers, "checking the checkpoint path", lambda: (
            check_writable(checkpoint, "checkpoint") if workers.is_main else None))
    if resume and model.training is None:
        raise EincError("nothing to resume: this model holds no training state (train it with fit first)")
    run = Run.start(model, model.training if resume else None, method, model.seed if seed is None else seed,
                    valid is not None and keep_best)
    # like DistributedDataParallel: start from rank 0's parameters
    _set_parameter_vector(model, workers.broadcast(_parameter_vector(model, workers.device), "setup").cpu())
    reader = ShardReader(model, data, schedule, workers.rank, start)

    def batches(epoch: int, rng: np.random.Generator) -> Iterator[Batch | None]:
        return (reader.batch(step) for step in schedule.steps(epoch, workers.rank))

    steps: HostEm | ShardAdam
    if method == "adam":
        # the model's module holds the parameters: every step is seen by the model's queries
        trainer = model.backend.gradient_trainer(model.module(samples), learning_rate)
        if run.optimizer is not None:
            trainer.load_state(run.optimizer)

        def shard_batches(epoch: int, rng: np.random.Generator) -> Iterator[tuple[Batch | None, int]]:
            return ((reader.batch(step), step.rows) for step in schedule.steps(epoch, workers.rank))

        def flatten(header: list[float], gradients: list[Any]) -> torch.Tensor:
            head = torch.tensor(header, dtype=torch.float64, device=workers.device)
            return torch.cat([head] + [_flat64(g, workers.device) for g in gradients])

        steps = ShardAdam(trainer, shard_batches, schedule.num_steps,
                          lambda flat: workers.all_reduce(flat, "the gradient step"), flatten)
    else:
        buffer = StatisticsBuffer(model, workers.device)
        steps = HostEm(model, model.backend, batches, schedule.num_steps, update, step_size, pseudocount,
                       lambda stats: buffer.all_reduce(stats, workers), buffer.zeros)

    def validate() -> float | None:
        if valid is None:
            return None
        mine = mean_log_likelihood(model, valid_source, valid_label_source) if workers.is_main else 0.0
        return float(workers.broadcast(torch.tensor([mine], dtype=torch.float64, device=workers.device),
                                       "validation")[0])

    def checkpoint_to(params: dict[str, np.ndarray]) -> str | None:
        if not workers.is_main:
            return None
        model.write(checkpoint, params)  # type: ignore[arg-type]
        return str(checkpoint)

    def keep(state: TrainingState) -> None:
        model.training = state

    hooks = Hooks(train_ll=lambda total, rows: total / max(1, rows), valid_ll=validate, running=True,
                  checkpoint=None if checkpoint is None else checkpoint_to, on_epoch=on_epoch,
                  say=on_message or _silent, stop_errors=(WorkerLost,))
    loop_options = Options(epochs, method, keep_best, options.patience, options.checkpoint_every,
                           progress and workers.is_main)
    try:
        result = train_epochs(model.plan, model, steps, loop_options, hooks, run, keep)
    finally:
        reader.release_all()
    # every worker returns rank 0's final model
    _set_parameter_vector(model, workers.broadcast(_parameter_vector(model, workers.device), "the end of training").cpu())
    return result.history


def _silent(line: str) -> None:
    pass


def mean_log_likelihood(model: Model, source: RowSource | None, labels: RowSource | None = None) -> float:
    """Mean log p over a row source (each row's labelled head with labels), window by window."""
    assert source is not None
    total = 0.0
    noise = model.noise_options(None, None)  # neural leaves: the same IWAE noise at every call
    for start, window in iter_windows(source, 0, source.num_rows, EVAL_ROWS):
        with window as rows:
            x, observed = prepare(model.graph, source.dataset(rows, start), None, source.label, model.dtype,
                                  first_row=start)
        heads = model.backend.log_likelihood(model.params, Batch(x, observed), **next(noise))
        if labels is None:
            total += float(heads[:, 0].sum())
        else:
            with labels.window(start, start + len(heads)) as values:
                chosen = prepare_labels(labels.dataset(values, start), len(heads), model.plan.heads, labels.label,
                                        first_row=start)
            total += float(heads[np.arange(len(heads)), chosen].sum())
    return total / max(1, source.num_rows)
