"""The headline rows of a GPU suite run: einc beside PyJuice per setup and K (issue 23).

    python benchmarks/gpu_summary.py OUTDIR/results.jsonl

Reads the suite's records and appends one ``"benchmark": "summary"`` record per row: the RAT
rows join ``cuda_epoch.py``'s captured fp32 records with ``pyjuice_bench.py``'s at the same K
(``peer_epoch_s``, ``peer_peak_mb``); the HCLT rows are ``hclt_gpu.py``'s (already side by side).
Prints them as a table.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

HCLT_FIELDS = ("setup", "backend", "device", "gpu", "K", "fuse", "precision", "epoch_s", "peak_mb", "peer",
               "peer_epoch_s", "peer_peak_mb", "same_params")


def summary_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    peer = {r["config"]["K"]: r for r in records if r.get("bench") == "pyjuice" and r.get("ok")}
    rows = []
    for r in records:
        if r.get("benchmark") == "summary":
            continue
        if r.get("setup") == "rat" and r.get("variant") == "graph" and r.get("precision") == "fp32" and "epoch_s" in r:
            row = {"benchmark": "summary", "setup": "rat", "backend": r["backend"], "device": r["device"],
                   "gpu": r["gpu"], "K": r["K"], "fuse": True, "precision": "fp32", "epoch_s": r["epoch_s"],
                   "peak_mb": r.get("peak_mb")}
            if r["K"] in peer:
                row.update(peer="pyjuice", peer_epoch_s=peer[r["K"]]["em_epoch_s_median"],
                           peer_peak_mb=round(peer[r["K"]]["peak_mem_train_bytes"] / 2**20, 1))
            rows.append(row)
        elif r.get("setup") == "hclt_mnist" and "epoch_s" in r:
            rows.append({"benchmark": "summary", **{key: r.get(key) for key in HCLT_FIELDS}})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["setup        K  fused  precision  einc epoch s  PyJuice epoch s  PyJuice/einc  einc MB  PyJuice MB"]
    for row in rows:
        peer_s = row.get("peer_epoch_s")
        ratio = peer_s / row["epoch_s"] if peer_s else math.nan
        lines.append(f"{row['setup']:11s} {row['K']:3d}  {str(row.get('fuse')):5s}  {row.get('precision') or '':9s}"
                     f"  {row['epoch_s']:12.4f}  {peer_s or math.nan:15.4f}  {ratio:12.2f}"
                     f"  {row.get('peak_mb') or math.nan:7.0f}  {row.get('peer_peak_mb') or math.nan:10.0f}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = argv[0]
    with open(path) as file:
        records = [json.loads(line) for line in file if line.startswith("{")]
    rows = summary_rows(records)
    with open(path, "a") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
