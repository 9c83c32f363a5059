"""Out-of-core and data-parallel EM (issue 13): a synthetic binary data set larger than the memory
the trainer may use, trained by ``einc train --stream`` (one process) and ``--nproc 2``.

    python benchmarks/scale.py [--rows 20000000] [--variables 100] [--cap-mb 1024]
                               [--runs 1x1,2x1] [--epochs 1] [--batch-size 10000] [--workdir DIR] [--keep]

- Data: ``--rows`` × ``--variables`` binary values as uint8 ``.npy`` (20 M × 100 = 2.0 GB), drawn
  from a mixture of 10 product-Bernoulli distributions, written in pieces; reused if present.
- Circuit: a RAT-SPN, ``random_binary_trees(depth = 2, replicas = 4)``, K = 8, Bernoulli leaves.
- Memory cap: every process of a run (launcher and workers) runs under ``RLIMIT_DATA`` =
  ``--cap-mb``: its heap and other private memory cannot exceed it (loading the data set into
  memory fails under it, which the script checks first). File pages of the memory-mapped windows
  are not private memory; they are counted in the *measured* peak RSS, which is the number to
  compare with the cap: the sum of the resident memory of all processes of the run (launcher
  and workers) and the largest single process, sampled every 0.5 s from /proc.
- Before each run the data file's pages are dropped from the page cache
  (``posix_fadvise(DONTNEED)``), so every run reads the file from disk once per epoch.
- Runs: ``PxT`` = P processes with T torch threads each (``1x1`` is ``--stream --threads 1``,
  ``2x1`` is ``--nproc 2``, one thread per worker). Online EM, global batch ``--batch-size``.
- On a shared machine wall times depend on the load; ``cpu_s`` (user + system seconds of all
  processes of a run) does not: the CPU cost per row of 1 vs 2 processes is the parallel
  efficiency, independent of what else runs.
- Output: a table, and one JSON record (machine, date, command, per-run wall time, epoch seconds,
  rows per second, peak memory) appended to ``benchmarks/results/scale.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scale.jsonl"
COMPONENTS = 10
CHUNK_ROWS = 250_000
# RSS sampling period: often enough for a run of minutes, cheap enough not to slow it
SAMPLE_SECONDS = 0.5


def circuit_text(variables: int) -> str:
    return (f"circuit scale\nvar x[{variables}] : binary\nleaf x ~ bernoulli\nsums 8\ninputs 8\n"
            f"structure random_binary_trees(depth = 2, replicas = 4, seed = 0)\n")


def write_data(path: Path, rows: int, variables: int, seed: int = 0) -> None:
    """A mixture of product-Bernoulli rows as uint8 .npy, piece by piece (bounded memory)."""
    rng = np.random.default_rng(seed)
    means = rng.beta(0.5, 0.5, size=(COMPONENTS, variables)).astype(np.float32)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|u1", "fortran_order": False, "shape": (rows, variables)})
        for start in range(0, rows, CHUNK_ROWS):
            count = min(CHUNK_ROWS, rows - start)
            component = rng.integers(0, COMPONENTS, count)
            handle.write((rng.random((count, variables), dtype=np.float32) < means[component]).astype(np.uint8).tobytes())
            print(f"\rwriting {path.name}: {start + count:,} / {rows:,} rows", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    temporary.replace(path)


def limit_memory(cap_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (cap_bytes, cap_bytes))


def drop_from_page_cache(path: Path) -> None:
    with open(path, "rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _tree_rss(root: int) -> dict[int, int]:
    """Resident bytes of ``root`` and its descendants, following /proc/PID/task/TID/children."""
    rss, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            for task in Path(f"/proc/{pid}/task").iterdir():
                frontier += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        if match:
            rss[pid] = int(match.group(1)) * 1024
    return rss


def run(label: str, command: list[str], cap_bytes: int, data: Path) -> dict[str, Any]:
    drop_from_page_cache(data)
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # no other thread runs at this point (the sampler starts after), so preexec_fn is safe
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: limit_memory(cap_bytes))
    peak_total, peak_single, peak_processes, done = 0, 0, 0, threading.Event()

    def sample() -> None:
        nonlocal peak_total, peak_single, peak_processes
        while not done.is_set():
            rss = _tree_rss(process.pid)
            if rss:
                peak_total = max(peak_total, sum(rss.values()))
                peak_single = max(peak_single, max(rss.values()))
                peak_processes = max(peak_processes, len(rss))
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert process.stdout is not None
    output = []
    for line in process.stdout:
        output.append(line)
        print(f"[{label}] {line}", end="", file=sys.stderr, flush=True)
    process.wait()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    epochs = [float(m.group(1)) for m in re.finditer(r"^epoch .*\(([\d.]+)s\)$", "".join(output), re.MULTILINE)]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    return {
        "run": label,
        "command": " ".join(command),
        "exit_code": process.returncode,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),  # user + system time of every process of the run (load-independent)
        "epoch_s": epochs,
        "peak_rss_total_mb": round(peak_total / 2**20, 1),
        "peak_rss_largest_process_mb": round(peak_single / 2**20, 1),
        "processes": peak_processes,
        "tail": "".join(output[-6:]),
    }


def check_cap_bites(data: Path, cap_bytes: int) -> str:
    """Loading the whole data set into memory must fail under the cap."""
    result = subprocess.run([sys.executable, "-c", f"import numpy; numpy.load({str(data)!r}).sum()"],
                            capture_output=True, text=True, check=False, preexec_fn=lambda: limit_memory(cap_bytes))
    last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
    return "loaded (the cap does not bite!)" if result.returncode == 0 else f"failed as expected: {last[:120]}"


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text()
    total = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1)) * 1024  # type: ignore[union-attr]
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": commit or None, "host": platform.node(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "memory_gb": round(total / 2**30, 1), "python": platform.python_version(),
            "torch": torch.__version__, "load_average": os.getloadavg(), "nice": os.nice(0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--variables", type=int, default=100)
    parser.add_argument("--cap-mb", type=int, default=1024)
    parser.add_argument("--runs", default="1x1,2x1", help="PxT: P processes of T threads each")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "einc-scale")
    parser.add_argument("--keep", action="store_true", help="keep the data file for the next run")
    args = parser.parse_args()
    cap = args.cap_mb * 2**20
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = args.workdir / f"binary-{args.rows}x{args.variables}.npy"
    needed = args.rows * args.variables
    if not data.exists():
        free = shutil.disk_usage(args.workdir).free
        if free < 1.2 * needed:
            sys.exit(f"{args.workdir}: {free / 2**30:.1f} GiB free; the data set needs {needed / 2**30:.1f} GiB")
        write_data(data, args.rows, args.variables)
    circuit = args.workdir / "scale.pc"
    circuit.write_text(circuit_text(args.variables))
    record: dict[str, Any] = {
        "benchmark": "scale", "command": " ".join([sys.executable, *sys.argv]), **machine(),
        "rows": args.rows, "variables": args.variables, "data_bytes": data.stat().st_size,
        "cap_mb": args.cap_mb, "cap_mechanism": "RLIMIT_DATA on every process of a run (heap and private "
        "mappings); peak RSS measured from /proc (includes mapped file pages)",
        "circuit": circuit_text(args.variables), "epochs": args.epochs, "batch_size": args.batch_size,
        "update": "batch (online EM), step size 0.1",
    }
    record["in_memory_load_under_cap"] = check_cap_bites(data, cap)
    print(f"loading the data set into memory under the cap: {record['in_memory_load_under_cap']}", file=sys.stderr)
    record["runs"] = []
    for spec in args.runs.split(","):
        processes, threads = (int(n) for n in spec.split("x"))
        mode = ["--stream"] if processes == 1 else ["--nproc", str(processes)]
        command = [sys.executable, "-m", "einc", "train", str(circuit), "--data", str(data), *mode,
                   "--threads", str(threads), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                   "--step-size", "0.1", "-o", str(args.workdir / f"model-{spec}.npz")]
        result = run(spec, command, cap, data)
        if result["epoch_s"]:
            result["rows_per_s"] = round(args.rows / float(np.median(result["epoch_s"])))
        record["runs"].append(result)
    base = next((r for r in record["runs"] if r["run"] == "1x1" and r.get("rows_per_s")), None)
    for result in record["runs"]:
        if base and result.get("rows_per_s"):
            result["speedup_vs_1x1"] = round(result["rows_per_s"] / base["rows_per_s"], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(f"\n{args.rows:,} rows x {args.variables} binary variables ({record['data_bytes'] / 1e9:.2f} GB uint8), "
          f"cap {args.cap_mb} MiB per process; {record['date']}, {record['cpus']} CPUs, load {record['load_average']}")
    print("| run | exit | wall s | CPU s | epoch s | rows/s | speed-up | peak RSS all processes MB | largest process MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in record["runs"]:
        print(f"| {r['run']} | {r['exit_code']} | {r['wall_s']} | {r['cpu_s']} | {', '.join(f'{s:.1f}' for s in r['epoch_s'])} | "
              f"{r.get('rows_per_s', '')} | {r.get('speedup_vs_1x1', '')} | {r['peak_rss_total_mb']} | "
              f"{r['peak_rss_largest_process_mb']} |")
    if not args.keep:
        data.unlink()


if __name__ == "__main__":
    main()
