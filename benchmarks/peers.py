"""einc and a peer side by side, in alternating rounds, one thread each (issue 12).

    python benchmarks/peers.py --peer einet --einet-src /tmp/peers/EinsumNetworks/src \\
        --peer-python /tmp/peers/venv-einet/bin/python --K 10 20 40 --setups rat mnist --rounds 3
    python benchmarks/peers.py --peer cirkit --peer-python /tmp/peers/venv-cirkit/bin/python --K 10

The peer harnesses are read from ``../shared/peers/`` beside this checkout; from a checkout
elsewhere (a git worktree) name that folder with ``--peers-dir``.

Each round runs einc, then the peer (A, B, A, B, …), each in a fresh process with one torch
thread (``OMP_NUM_THREADS=MKL_NUM_THREADS=1``, ``torch.set_num_threads(1)``), and reports the
peer's time over einc's: per round, and their spread. Shared machines are noisy, so only ratios
taken side by side mean much; every round records the load average (``uptime``) before it, and
both wall-clock and process CPU time.

Setups:
- ``rat``: the EiNet paper's efficiency setup (§4.1): 512 Gaussian noise variables, N = 2000,
  RAT-SPN depth 4, 10 replicas, K sums and leaves, batch 100. An epoch is 20 × (forward +
  backward + EM update). The peers run ``../shared/peers/einet_bench.py`` (the paper's code,
  imported from ``--einet-src``) or ``cirkit_bench.py`` (cirkit, Adam: its EM fails on its own
  folded layers).
- ``mnist``: the paper's MNIST demo circuit: Poon–Domingos with Δ=7 on both axes, categorical(256)
  pixel leaves, K sums and leaves, online EM, batch 100, over the first 2,000 MNIST training
  images (20 batches: the same protocol as ``rat``). einc runs ``examples/mnist_categorical.pc``;
  the paper's code runs ``Graph.poon_domingos_structure`` with ``CategoricalArray``, imported from
  ``--einet-src`` by this script's own worker (no peer code is copied here).

Measured per process: ``epoch_s`` (median of ``--epochs`` timed epochs after one warm-up epoch),
``infer_s`` (log-likelihood of one batch of 100, median of 20) and their CPU times. One JSON
line per round goes to ``benchmarks/results/peers.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import records  # benchmarks/records.py, on the path above

SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "benchmarks" / "results" / "peers.jsonl"
NUM_VARIABLES, NUM_SAMPLES, BATCH, DEPTH, REPLICAS = 512, 2000, 100, 4, 10
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


# ---------------------------------------------------------------- timing inside a worker
def _timed(run: Any, repeats: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds) of ``repeats`` calls of ``run``."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _mnist(path: Path, rows: int) -> Any:
    import numpy as np

    return np.load(path)["x_train"][:rows].astype(np.float64)


def worker_einc(setup: str, k: int, epochs: int, mnist: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import einc
    from einc.backends.base import Batch
    from einc.compiler.pipeline import CompileOptions
    from speed import circuit_text

    torch.set_num_threads(1)
    if setup == "rat":
        model = einc.compile(circuit_text(k, DEPTH, REPLICAS))
        x = np.random.default_rng(0).normal(size=(NUM_SAMPLES, NUM_VARIABLES))
    else:
        model = einc.compile(ROOT / "examples" / "mnist_categorical.pc", options=CompileOptions(sums=k))
        x = _mnist(mnist, NUM_SAMPLES)
    observed = np.ones_like(x, dtype=bool)
    backend = model.backend
    data = backend.upload(x, observed, None)
    order = np.random.default_rng(1).permutation(len(x))

    def epoch() -> None:
        model.params, _ = backend.train_epoch(model.params, data, order, BATCH, 0.05)

    epoch()  # warm-up
    epoch_s, epoch_cpu = _timed(epoch, epochs)
    batch = Batch(x[:BATCH], observed[:BATCH])
    backend.log_likelihood(model.params, batch)
    infer_s, infer_cpu = _timed(lambda: backend.log_likelihood(model.params, batch), 20)
    return {"epoch_s": epoch_s, "epoch_cpu_s": epoch_cpu, "infer_s": infer_s, "infer_cpu_s": infer_cpu,
            "parameters": model.num_parameters, "torch": torch.__version__}


def worker_einet_mnist(k: int, epochs: int, mnist: Path, einet_src: Path) -> dict[str, Any]:
    """The paper's code on its MNIST demo circuit (imported from ``einet_src``, not copied)."""
    import pickle

    import networkx
    import numpy as np
    import torch

    if not hasattr(networkx, "read_gpickle"):  # removed in networkx 3; the peer's Graph imports it
        def read_gpickle(path: str) -> Any:
            with open(path, "rb") as file:
                return pickle.load(file)

        def write_gpickle(graph: Any, path: str) -> None:
            with open(path, "wb") as file:
                pickle.dump(graph, file)

        networkx.read_gpickle, networkx.write_gpickle = read_gpickle, write_gpickle
    sys.path.insert(0, str(einet_src))
    from EinsumNetwork import EinsumNetwork, Graph

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.from_numpy(_mnist(mnist, NUM_SAMPLES).astype(np.float32))
    graph = Graph.poon_domingos_structure(shape=(28, 28), delta=[[7.0, 7.0]])
    args = EinsumNetwork.Args(
        num_var=784, num_dims=1, num_classes=1, num_sums=k, num_input_distributions=k,
        exponential_family=EinsumNetwork.CategoricalArray, exponential_family_args={"K": 256},
        online_em_frequency=1, online_em_stepsize=0.05)
    einet = EinsumNetwork.EinsumNetwork(graph, args)
    einet.initialize()
    order = torch.from_numpy(np.random.default_rng(1).permutation(len(x)))

    def epoch() -> None:
        einet.train()
        for index in order.split(BATCH):
            log_likelihood = EinsumNetwork.log_likelihoods(einet.forward(x[index])).sum()
            log_likelihood.backward()
            einet.em_process_batch()
        einet.em_update()

    epoch()  # warm-up
    epoch_s, epoch_cpu = _timed(epoch, epochs)
    einet.eval()

    def infer() -> None:
        with torch.no_grad():
            einet.forward(x[:BATCH])

    infer()
    infer_s, infer_cpu = _timed(infer, 20)
    return {"epoch_s": epoch_s, "epoch_cpu_s": epoch_cpu, "infer_s": infer_s, "infer_cpu_s": infer_cpu,
            "parameters": sum(p.numel() for p in einet.parameters()), "torch": torch.__version__}


# ---------------------------------------------------------------- running the rounds
def _run(command: list[str]) -> dict[str, Any]:
    """Run one worker process and return its last JSON line (or the error it printed)."""
    env = {**os.environ, **ONE_THREAD}
    finished = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
    if finished.returncode != 0 or not lines:
        tail = (finished.stderr or finished.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {finished.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def _peer_command(args: argparse.Namespace, setup: str, k: int) -> list[str]:
    python = str(args.peer_python)
    if args.peer == "einet" and setup == "rat":
        return [python, str(args.peers_dir / "einet_bench.py"), "--peer-src", str(args.einet_src),
                "--K", str(k), "--threads", "1", "--epochs", str(args.epochs), "--warmup-epochs", "1"]
    if args.peer == "einet":
        return [python, __file__, "--worker", "einet", "--setups", setup, "--K", str(k),
                "--epochs", str(args.epochs), "--mnist", str(args.mnist), "--einet-src", str(args.einet_src)]
    return [python, str(args.peers_dir / "cirkit_bench.py"), "--K", str(k), "--threads", "1",
            "--epochs", str(args.epochs + 1)]


def _peer_times(peer: str, record: dict[str, Any]) -> dict[str, float]:
    """The peer harness's numbers under this script's names."""
    if "error" in record:
        return record
    if "epoch_s" in record:  # this script's own worker
        return record
    if peer == "einet":
        return {"epoch_s": record["time_per_epoch_s_median"], "epoch_cpu_s": statistics.median(record["cpu_time_per_epoch_s"]),
                "infer_s": record["infer_batch_s_median"]}
    train, infer = record["train"], record["infer"]
    return {"epoch_s": train["epoch_time_s"], "epoch_cpu_s": train["epoch_cpu_time_s"],
            "infer_s": infer["median_s"], "infer_cpu_s": infer["median_cpu_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", choices=["einet", "cirkit"], default="einet")
    parser.add_argument("--peer-python", type=Path, help="the python of the peer's venv (default: this one)")
    parser.add_argument("--einet-src", type=Path, help="a checkout's src/ of cambridge-mlg/EinsumNetworks")
    parser.add_argument("--K", type=int, nargs="+", default=[10])
    parser.add_argument("--setups", nargs="+", default=["rat"], choices=["rat", "mnist"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per process (after one warm-up)")
    parser.add_argument("--mnist", type=Path, help=records.MNIST_HELP)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--peers-dir", type=Path, default=SHARED / "peers",
                        help="the folder of the peer harnesses (einet_bench.py, cirkit_bench.py); "
                             "default ../shared/peers beside this checkout")
    parser.add_argument("--worker", choices=["einc", "einet"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if "mnist" in args.setups:
        args.mnist = records.mnist_path(args.mnist)
    if args.worker:
        setup, k = args.setups[0], args.K[0]
        if args.worker == "einc":
            record = worker_einc(setup, k, args.epochs, args.mnist)
        else:
            record = worker_einet_mnist(k, args.epochs, args.mnist, args.einet_src)
        print(json.dumps(record))
        return
    if args.peer == "einet" and args.einet_src is None:
        parser.error("--peer einet needs --einet-src (a checkout's src/; see ../shared/peers/README.md)")
    if args.peer == "cirkit" and "mnist" in args.setups:
        parser.error("the cirkit harness covers the rat setup only")
    args.peer_python = args.peer_python or Path(sys.executable)
    harness = args.peers_dir / ("einet_bench.py" if args.peer == "einet" else "cirkit_bench.py")
    if "rat" in args.setups and not harness.is_file():
        parser.error(f"no peer harness at {harness} (pass --peers-dir: the folder of ../shared/peers/)")
    machine = records.machine()
    print(f"# {machine['cpu']}, {machine['cores']} cores, {platform.python_version()}; peer {args.peer}; one thread each")
    print(f"{'setup':6} {'K':>3} {'round':>5} {'load':>5} {'einc epoch':>11} {'peer epoch':>11} {'ratio':>6} "
          f"{'cpu ratio':>9} {'einc infer':>11} {'peer infer':>11} {'ratio':>6}")
    for setup in args.setups:
        for k in args.K:
            ratios = []
            for number in range(1, args.rounds + 1):
                load = os.getloadavg()[0]
                ours = _run([sys.executable, __file__, "--worker", "einc", "--setups", setup, "--K", str(k),
                             "--epochs", str(args.epochs), "--mnist", str(args.mnist)])
                theirs = _peer_times(args.peer, _run(_peer_command(args, setup, k)))
                record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                          "peer": args.peer, "setup": setup, "K": k, "round": number, "load_before": load,
                          "einc": ours, "peer_result": theirs, **machine,
                          "command": " ".join(["python", *sys.argv])}
                if "error" in ours or "error" in theirs:
                    print(f"{setup:6} {k:>3} {number:>5} {load:>5.2f}  error: einc {ours.get('error', 'ok')}; "
                          f"peer {theirs.get('error', 'ok')}")
                else:
                    record["epoch_ratio"] = theirs["epoch_s"] / ours["epoch_s"]
                    record["epoch_cpu_ratio"] = theirs["epoch_cpu_s"] / ours["epoch_cpu_s"]
                    record["infer_ratio"] = theirs["infer_s"] / ours["infer_s"]
                    ratios.append(record["epoch_ratio"])
                    print(f"{setup:6} {k:>3} {number:>5} {load:>5.2f} {ours['epoch_s']:>10.3f}s {theirs['epoch_s']:>10.3f}s "
                          f"{record['epoch_ratio']:>5.1f}× {record['epoch_cpu_ratio']:>8.1f}× "
                          f"{ours['infer_s'] * 1e3:>9.1f}ms {theirs['infer_s'] * 1e3:>9.1f}ms {record['infer_ratio']:>5.1f}×",
                          flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with args.out.open("a") as file:
                    file.write(json.dumps(record) + "\n")
            if ratios:
                print(f"{setup:6} {k:>3} epoch ratio over {len(ratios)} rounds: min {min(ratios):.1f}× "
                      f"median {statistics.median(ratios):.1f}× max {max(ratios):.1f}×")


if __name__ == "__main__":
    main()
