"""HCLT on MNIST: einc's EM epoch and PyJuice's, on the same GPU, in alternating rounds (issue 23).

    python benchmarks/hclt_gpu.py --data mnist.npz --K 16 32 --rounds 3 --out results.jsonl
    python benchmarks/hclt_gpu.py --device cpu --rows 1024 --K 4 --rounds 1 --peer none   # CPU smoke run

The circuit: the hidden Chow–Liu tree in ``--pc`` (default ``benchmarks/peers_gpu/hclt_mnist.pc``,
learned by ``einc learn-structure hclt`` from MNIST) with K hidden states per tree node and K
categorical(256) leaves per pixel. einc compiles that file (``CompileOptions(sums=K, inputs=K)``);
PyJuice builds the same tree with its own HCLT builder (``peers_gpu/pyjuice_hclt.py``), and the
parameter counts of both are recorded (they must be equal).

Protocol (PyJuice's MNIST example): mini-batch EM, batch 512, step size 0.1, pseudocount 0.1, the
first ``--rows`` training images in full batches (117 of 512 for 60,000: the same batches, in the
same order, for both), data resident on the GPU (einc: its ``upload``; PyJuice: an int64
tensor, its categorical leaves' data dtype). Each system is built, primed and given one untimed warm-up epoch
(einc: ``torch.compile`` + CUDA-graph capture; PyJuice: graph recording, Triton autotuning);
then ``--rounds`` rounds of one einc epoch followed by one PyJuice epoch. Both read their
log-likelihood back once per epoch.

Peak memory per system: what it keeps allocated after its warm-up (parameters, buffers, graph
pools; its copy of the data excluded) plus the largest extra allocation during its timed epochs
(``torch.cuda.max_memory_allocated`` above the memory in use when the epoch began).

One JSON line per K (on stdout, appended to ``--out``): backend, device, gpu, setup
``hclt_mnist``, K, ``epoch_s`` (einc's median), ``peer_epoch_s`` (PyJuice's median), the per-round
times and ratios, peak MB of both, parameter counts, mean train log-likelihood per image of the
last epoch of both.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "peers_gpu"))
import records  # noqa: E402  benchmarks/records.py

import einc  # noqa: E402
from einc.compiler.pipeline import CompileOptions  # noqa: E402

PIXELS = 784


class Memory:
    """Allocated device memory and its peak (zero everywhere on the CPU)."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def allocated(self) -> int:
        return self.torch.cuda.memory_allocated() if self.cuda else 0

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        return self.torch.cuda.max_memory_allocated() if self.cuda else 0


class EincSide:
    def __init__(self, args: argparse.Namespace, k: int, images: np.ndarray, memory: Memory) -> None:
        before = memory.allocated()
        options = {} if args.fuse is None else {"fuse": args.fuse}
        if args.precision != "fp32":
            options["precision"] = args.precision
        self.model = einc.compile(args.pc, backend="torch", device=args.device, dtype="float32", seed=0,
                                  options=CompileOptions(sums=k, inputs=k), **options)
        built = memory.allocated()
        values = images.astype(np.float32)
        self.data = self.model.backend.upload(values, np.ones(values.shape, dtype=bool), None)
        self.data_bytes = memory.allocated() - built
        self.order = np.arange(len(images))
        self.args = args
        started = time.perf_counter()
        self.epoch()  # warm-up: compilation and CUDA-graph capture
        memory.sync()
        self.first_epoch_s = time.perf_counter() - started
        self.kept_bytes = memory.allocated() - before - self.data_bytes

    def epoch(self) -> float:
        model = self.model
        model.params, total = model.backend.train_epoch(
            model.params, self.data, self.order, self.args.batch, self.args.step_size, self.args.pseudocount)
        return total / len(self.order)


def timed(run: Any, memory: Memory) -> tuple[float, float, int]:
    """(seconds, mean log-likelihood, extra peak bytes) of one epoch."""
    memory.sync()
    memory.reset_peak()
    start_bytes = memory.allocated()
    started = time.perf_counter()
    ll = run()
    memory.sync()
    return time.perf_counter() - started, ll, memory.peak() - start_bytes


def peer_side(args: argparse.Namespace, k: int, images: np.ndarray, memory: Memory) -> tuple[Any, dict[str, Any]]:
    """The PyJuice model ready to time, or None and the reason in the record."""
    info: dict[str, Any] = {"peer": "pyjuice"}
    if args.peer == "none":
        info["peer_error"] = "not run (--peer none)"
        return None, info
    try:
        import pyjuice
        import pyjuice_hclt  # benchmarks/peers_gpu/pyjuice_hclt.py
        import torch

        info["peer_version"] = pyjuice_hclt.version(pyjuice)
        if not memory.cuda:  # PyJuice compiles and runs only on CUDA: check its structure here
            stats = pyjuice_hclt.dag_stats(pyjuice_hclt.build_hclt(pyjuice_hclt.read_parents(args.pc), k))
            info.update({"peer_params": stats["params"], "peer_dag": stats,
                         "peer_error": "PyJuice runs Triton kernels on a CUDA device; built its DAG only"})
            return None, info
        device = torch.device("cuda", torch.cuda.current_device())
        batches = pyjuice_hclt.resident_batches(torch, images, args.batch, device)
        before = memory.allocated()
        peer = pyjuice_hclt.PyJuiceHCLT(pyjuice_hclt.read_parents(args.pc), k, device, args.step_size,
                                       args.pseudocount)
        peer.prime(batches[0])
        started = time.perf_counter()
        peer.epoch(batches)
        memory.sync()
        info.update({"peer_first_epoch_s": round(time.perf_counter() - started, 3),
                     "peer_compile_s": round(peer.compile_s, 3), "peer_params": peer.stats["params"],
                     "peer_dag": peer.stats})
        peer.kept_bytes = memory.allocated() - before
        peer.batches = batches
        return peer, info
    except Exception as error:  # the peer failing must not lose einc's numbers
        info["peer_error"] = f"{type(error).__name__}: {error}"[:1000]
        return None, info


def measure(args: argparse.Namespace, k: int, images: np.ndarray) -> dict[str, Any]:
    import torch

    memory = Memory(args.device)
    ours = EincSide(args, k, images, memory)
    print(f"[hclt_gpu] K={k}: einc built, warm-up epoch {ours.first_epoch_s:.1f} s", file=sys.stderr, flush=True)
    peer, info = peer_side(args, k, images, memory)
    if peer is not None:
        print(f"[hclt_gpu] K={k}: pyjuice built, warm-up epoch {info['peer_first_epoch_s']:.1f} s",
              file=sys.stderr, flush=True)
    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        row: dict[str, float] = {}
        row["einc_s"], row["einc_ll"], row["einc_extra_bytes"] = timed(ours.epoch, memory)
        if peer is not None:
            try:
                row["peer_s"], row["peer_ll"], row["peer_extra_bytes"] = timed(
                    lambda: peer.epoch(peer.batches), memory)
            except Exception as error:
                info["peer_error"] = f"{type(error).__name__}: {error}"[:1000]
                peer = None
        rounds.append(row)
        peer_text = f", pyjuice {row['peer_s']:.3f} s" if "peer_s" in row else ""
        print(f"[hclt_gpu] K={k} round {len(rounds)}: einc {row['einc_s']:.3f} s{peer_text}",
              file=sys.stderr, flush=True)
    epoch_s = statistics.median(r["einc_s"] for r in rounds)
    record: dict[str, Any] = {
        "benchmark": "hclt_gpu",
        "setup": "hclt_mnist",
        "backend": "torch",
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if memory.cuda else None,
        "K": k,
        "batch": args.batch,
        "rows": len(images),
        "precision": args.precision,
        "fuse": ours.model.backend.fuse,
        "capture": ours.model.backend.capture,
        "pc": str(args.pc),
        "params": ours.model.num_parameters,
        "epoch_s": round(epoch_s, 5),
        "epoch_s_rounds": [round(r["einc_s"], 5) for r in rounds],
        "first_epoch_s": round(ours.first_epoch_s, 3),
        "train_ll": rounds[-1]["einc_ll"],
        "peak_mb": round((ours.kept_bytes + max(r["einc_extra_bytes"] for r in rounds)) / 2**20, 1),
        **info,
    }
    if "peer_params" in info:
        record["same_params"] = record["params"] == info["peer_params"]
    if all("peer_s" in r for r in rounds):
        record.update({
            "peer_epoch_s": round(statistics.median(r["peer_s"] for r in rounds), 5),
            "peer_epoch_s_rounds": [round(r["peer_s"], 5) for r in rounds],
            "peer_over_einc_rounds": [round(r["peer_s"] / r["einc_s"], 3) for r in rounds],
            "peer_train_ll": rounds[-1]["peer_ll"],
            "peer_peak_mb": round((peer.kept_bytes + max(r["peer_extra_bytes"] for r in rounds)) / 2**20, 1),
        })
    record.update({"torch": torch.__version__,
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "command": records.command_line("hclt_gpu.py", None)})
    del ours, peer
    if memory.cuda:
        torch.cuda.empty_cache()
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pc", type=Path, default=ROOT / "benchmarks" / "peers_gpu" / "hclt_mnist.pc",
                        help="an einc HCLT .pc (its tree; K comes from --K)")
    parser.add_argument("--data", type=Path, default=None,
                        help="mnist.npz (default: $EINC_DATA, ~/.cache/einc/data, ../shared/data)")
    parser.add_argument("--K", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--rows", type=int, default=60000, help="the first ROWS training images (full batches)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--step-size", type=float, default=0.1)
    parser.add_argument("--pseudocount", type=float, default=0.1)
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu runs einc's side as a smoke test")
    parser.add_argument("--peer", choices=["pyjuice", "none"], default="pyjuice")
    parser.add_argument("--precision", choices=["fp32", "tf32"], default="fp32",
                        help="einc's float32 matmuls: IEEE fp32 (default) or TF32 tensor cores (CUDA)")
    parser.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile fusion (default: the backend's choice, on for CUDA)")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the host side only launches work (CUDA) or is a smoke run (CPU)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: benchmarks/hclt_gpu.py --device cuda needs a CUDA device; torch sees none "
                         "(use --device cpu --peer none for a smoke run)")
    with np.load(records.mnist_path(args.data)) as archive:
        images = archive["x_train"].reshape(-1, PIXELS)[: args.rows]
    images = images[: len(images) // args.batch * args.batch]
    if len(images) == 0:
        raise SystemExit(f"error: --rows {args.rows} gives no full batch of {args.batch}")
    for k in args.K:
        try:
            record = measure(args, k, images)
        except Exception as error:  # one failing K must not lose the others
            record = {"benchmark": "hclt_gpu", "setup": "hclt_mnist", "K": k, "device": args.device,
                      "error": f"{type(error).__name__}: {error}"[:2000]}
        records.emit(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
