"""einc beside cirkit on one MNIST HCLT: seconds per training epoch, alternating fresh processes (issue 18).

    python benchmarks/cirkit_hclt.py --cirkit-python VENV/bin/python --sums 16 32 --rounds 3

The circuit: an einc HCLT ``.pc`` (default ``benchmarks/results/mnist_hclt.pc``, as
``mnist_hclt.py`` writes it) with K set by ``--sums``; cirkit 0.3.1 builds the same tree and
layers from it with the peer harness ``../shared/peers/cirkit_hclt/`` (``cirkit_build.py``, ``common.py``; not part of
einc: a venv with ``torch==2.13.0 libcirkit==0.3.1`` from the package registry). Both sides: the
first 4,096 MNIST training images, batch 512, one torch thread, float32, one untimed warm-up
step, then one timed epoch of 8 steps (forward, backward, update) in wall seconds.

- einc: the torch backend's online-EM epoch (``train_epoch``, step 0.05, pseudocount 0.01).
- cirkit: its EM optimiser (``cirkit.backend.torch.em_optimizer.EM``, same step and pseudocount,
  its log clamp lowered so the values are right), on the circuit the harness's
  ``cirkit_build.compiled_hclt_probs`` builds (``CIRKIT_EPOCH`` below runs it in the cirkit venv).

Each epoch is timed in wall seconds and in the thread's CPU seconds (``time.thread_time``; one
torch thread does all the work): on this project's shared 2-core machine the CPU seconds are the
fair comparison, since the two processes need not get the same share of a core.

glibc malloc gets the same settings on both sides: einc's CPU backends set ``M_MMAP_MAX = 0`` and
a 1 GiB trim threshold in-process (``backends/base.py``); the cirkit process gets them from
glibc's environment variables ``MALLOC_MMAP_MAX_`` and ``MALLOC_TRIM_THRESHOLD_``. Rounds
alternate einc, cirkit, einc, … so load changes hit both. The ratio compares time only: cirkit
clamps log-likelihoods at −708.4 as installed, so its numbers are not einc's.

Appends one JSON record per process to ``--out`` (machine, date, command, load averages) and
prints a table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import records  # benchmarks/records.py

ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = ROOT.parent / "shared" / "peers" / "cirkit_hclt"
ROWS, BATCH, STEP, PSEUDOCOUNT = 4096, 512, 0.05, 0.01
# The cirkit side, run by the cirkit venv's python with the harness folder on its path:
# argv = (pc, K, round); prints one JSON line.
CIRKIT_EPOCH = """
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
import common, cirkit_build
from cirkit.backend.torch.em_optimizer import EM
pc, k, number = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
parents = common.read_parents(pc)
x = torch.as_tensor(common.mnist(%(rows)d).astype(np.int64))
cirkit_build.set_log_clamp(-1e30)
torch.manual_seed(number)
started = time.perf_counter()
sc, circuit, ctx = cirkit_build.compiled_hclt_probs(parents, k)
compile_s = time.perf_counter() - started
em = EM(circuit, lr=%(step)r, pseudocount=%(pseudocount)r)
def step(rows):
    ll = circuit(x[rows]).flatten()
    em.zero_grad()
    ll.sum().backward()
    em.step()
    return float(ll.detach().sum())
step(torch.arange(%(batch)d))
order = torch.randperm(len(x), generator=torch.Generator().manual_seed(number))
wall, cpu = time.perf_counter(), time.thread_time()
total = sum(step(rows) for rows in order.split(%(batch)d))
print(json.dumps({"em_epoch_s": time.perf_counter() - wall, "em_epoch_thread_s": time.thread_time() - cpu,
                  "em_epoch_mean_ll": total / len(x), "compile_s": compile_s,
                  "params": sum(p.numel() for p in circuit.parameters()), "threads": torch.get_num_threads(),
                  "torch": torch.__version__}))
"""
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}  # = backends/base.py's mallopt


def with_sums(source: str, k: int) -> str:
    return re.sub(r"^inputs\s+\d+", f"inputs {k}", re.sub(r"^sums\s+\d+", f"sums {k}", source, flags=re.M), flags=re.M)


def einc_round(pc: Path, k: int, data: Path | None) -> dict:
    """One einc process: the timed EM epoch (called in a fresh subprocess by ``main``)."""
    import numpy as np
    import torch

    import einc
    from einc.io.data import prepare

    torch.set_num_threads(1)
    started = time.perf_counter()
    model = einc.compile(with_sums(pc.read_text(), k), backend="torch", dtype="float32", seed=0)
    compile_s = time.perf_counter() - started
    images, _ = records.mnist_images(records.mnist_path(data))
    resident = model.backend.upload(*prepare(model.graph, images[:ROWS].astype(np.float64), None, "mnist"), None)
    params = model.params
    params, _ = model.backend.train_epoch(params, resident, np.arange(BATCH), BATCH, STEP, PSEUDOCOUNT)  # warm-up
    order = np.random.default_rng(0).permutation(ROWS)
    wall, cpu = time.perf_counter(), time.thread_time()
    params, total = model.backend.train_epoch(params, resident, order, BATCH, STEP, PSEUDOCOUNT)
    return {"tool": "einc", "k": k, "em_epoch_s": time.perf_counter() - wall, "em_epoch_thread_s": time.thread_time() - cpu,
            "em_epoch_mean_ll": total / ROWS, "compile_s": compile_s, "params": model.num_parameters,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def run_round(args: argparse.Namespace, tool: str, k: int, number: int) -> dict:
    load = os.getloadavg()
    if tool == "einc":
        command = [sys.executable, __file__, "--einc-round", "--pc", str(args.pc), "--sums", str(k)]
        if args.data:
            command += ["--data", str(args.data)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        record = json.loads(output.strip().splitlines()[-1])
    else:
        script = CIRKIT_EPOCH % {"rows": ROWS, "batch": BATCH, "step": STEP, "pseudocount": PSEUDOCOUNT}
        command = [str(args.cirkit_python), "-c", script, str(args.pc), str(k), str(number)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MNIST=str(records.mnist_path(args.data)),
                   PYTHONPATH=str(args.peer_dir), **MALLOC_ENV)
        output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        record = {"tool": "cirkit", "k": k, **json.loads(output.strip().splitlines()[-1]), "malloc_env": MALLOC_ENV}
    record.update(round=number, load_before=round(load[0], 2), load_after=round(os.getloadavg()[0], 2))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pc", type=Path, default=ROOT / "benchmarks" / "results" / "mnist_hclt.pc")
    parser.add_argument("--sums", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cirkit-python", type=Path, help="python of a venv with torch==2.13.0 libcirkit==0.3.1")
    parser.add_argument("--peer-dir", type=Path, default=PEER_DIR, help="the cirkit_hclt peer harness")
    parser.add_argument("--data", type=Path, help=records.MNIST_HELP)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cirkit_hclt.jsonl")
    parser.add_argument("--einc-round", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.einc_round:
        print(json.dumps(einc_round(args.pc, args.sums[0], args.data)))
        return 0
    if args.cirkit_python is None or not args.cirkit_python.exists():
        parser.error("--cirkit-python: the python of a venv with torch==2.13.0 libcirkit==0.3.1 is needed")
    if not (args.peer_dir / "cirkit_build.py").exists():
        parser.error(f"--peer-dir {args.peer_dir}: no cirkit_build.py there (the shared cirkit_hclt harness)")
    if not args.pc.exists():
        parser.error(f"--pc {args.pc}: no such file (run benchmarks/mnist_hclt.py, or give an HCLT .pc)")
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": records.machine_text(),
            "command": records.command_line("cirkit_hclt.py", argv), "pc": str(args.pc)}
    results: list[dict] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for k in args.sums:
        for number in range(1, args.rounds + 1):
            for tool in ("einc", "cirkit"):
                record = {**meta, **run_round(args, tool, k, number)}
                results.append(record)
                with args.out.open("a") as stream:  # one line per finished process: nothing is lost
                    stream.write(json.dumps(record) + "\n")
                print(f"K={k} round {number} {tool}: EM epoch {record['em_epoch_s']:.2f} s wall, "
                      f"{record['em_epoch_thread_s']:.2f} s CPU (load {record['load_before']})",
                      file=sys.stderr, flush=True)
    print(f"einc beside cirkit 0.3.1, MNIST HCLT ({args.pc.name}), {ROWS} images, batch {BATCH}, 1 thread; "
          f"{meta['machine']}; {meta['date']}; `{meta['command']}`\n")
    print("| K | einc EM epoch, CPU (wall) | cirkit EM epoch, CPU (wall) | speed-up, CPU (wall) | load |")
    print("|---:|---:|---:|---:|---|")
    for k in args.sums:
        mine = [r for r in results if r["k"] == k and r["tool"] == "einc"]
        theirs = [r for r in results if r["k"] == k and r["tool"] == "cirkit"]
        ec, ew, cc, cw = (statistics.median(r[key] for r in rows) for rows, key in
                          ((mine, "em_epoch_thread_s"), (mine, "em_epoch_s"), (theirs, "em_epoch_thread_s"),
                           (theirs, "em_epoch_s")))
        loads = [r["load_before"] for r in mine + theirs]
        print(f"| {k} | {ec:.2f} s ({ew:.2f} s) | {cc:.2f} s ({cw:.2f} s) | **{cc / ec:.2f}×** ({cw / ew:.2f}×) | "
              f"{min(loads):.1f}–{max(loads):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
