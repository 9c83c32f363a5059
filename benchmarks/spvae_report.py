"""What ``spvae_mnist.py`` writes into its run directory: the table (the paper's Table 1 side by
side), the curve, the JSON, and the data-efficiency figure (the paper's Figure 2) over runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

from einc.io.files import atomic_write
from plots import curve_png
from spvae_training import config_key

# The paper's Table 1 (discrete MNIST, 5000-sample IWAE) and Table 2 (parameters)
PAPER = {"spvae": {"test_bpd": 2.82, "test_nats": 1532, "parameters": 310_000},
         "vae": {"test_bpd": 4.33, "test_nats": 2351, "parameters": 1_158_000}}
COLOURS = {"spvae": (31, 119, 180), "vae": (214, 39, 40)}


def report(out: Path, state: dict, histories: dict[str, list[dict]], parameters: dict[str, int],
           args: argparse.Namespace) -> None:
    """``results.json``, ``curve.png`` (validation bound per epoch of both arms) and ``table.md``."""
    result = {"run": state, "parameters": parameters, "history": histories}
    atomic_write(out / "results.json", lambda s: s.write((json.dumps(result, indent=1) + "\n").encode()))
    curve = [{"epoch": h["epoch"], f"{name} valid": h["valid"]} for name, rows in histories.items() for h in rows]
    if curve:
        # the axis stops at the worst third-epoch bound: the first epochs are far above (see the table)
        third = [h["valid"] for rows in histories.values() for h in rows if h["epoch"] == 3]
        curve_png(out / "curve.png", curve, "SPVAE vs VAE on MNIST: validation IWAE bound (k=5), bits per dimension",
                  {f"{name} valid": COLOURS[name] for name in histories}, max(third) if third else None)
    sittings = state["sittings"]
    fraction = "" if args.train_fraction == 1 else f" on {args.train_fraction:g} of the training images"
    lines = [
        f"# Discrete MNIST{fraction}: SPVAE vs a single VAE (the paper's Table 1)",
        "",
        f"Command: `{state['command']}`; {len(sittings)} sitting(s), the last started {sittings[-1]['started']} "
        f"by `{sittings[-1]['command']}` on {sittings[-1]['machine']} ({sittings[-1]['threads']} thread(s), "
        f"load average {sittings[-1]['load_average']} at its start).",
        "",
        (f"Protocol: Adam (learning rate {args.spvae_learning_rate} SPVAE, {args.vae_learning_rate} VAE), batch "
         f"{args.batch_size}, k = {args.samples}, {args.valid_rows:,} training images held out for validation, early "
         f"stopping with patience {args.patience} (at most {args.epochs} epochs); n_z x H chosen by a "
         f"{args.pilot_epochs}-epoch pilot on {args.pilot_rows:,} images (not the paper's full cross-validation). "
         f"Test: the {args.eval_samples}-sample IWAE estimate on {args.test_rows:,} test images."
         + ("" if args.decay_factor == 1.0 else
            f" Step size multiplied by {args.decay_factor:g} after every {args.decay_patience} epochs without a "
            f"better validation bound (from the sitting that set it on; each epoch's step size below).")),
        "",
        "| model | n_z x H (x hidden layers, if not 2) | parameters | epochs run (hours) | best epoch | valid bound (bpd) | test (bpd) | "
        "test, −log p (nats) | the paper: test bpd (log p in nats), parameters |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, rows in histories.items():
        chosen = state["chosen"].get(name)
        config = " x ".join(str(v) for v in chosen) if chosen else ""
        hours = sum(h["seconds"] for h in rows) / 3600
        best = min(rows, key=lambda h: h["valid"]) if rows else None
        final = state["final"].get(name)
        test = f"{final['test_bpd']:.4f} | {final['test_nats']:.1f}" if final else "(not yet) | "
        if not final and state["test"].get(name, {}).get("blocks"):
            test = f"(scoring: {len(state['test'][name]['blocks'])} blocks) | "
        paper = PAPER[name]
        retired = state.get("retired", {}).get(name)
        run_length = f"{len(rows)} ({hours:.2f})" + (f", retired by hand at {retired['at']}" if retired else "")
        lines.append(f"| {name} | {config} | {parameters[name]:,} | {run_length} | "
                     f"{best['epoch'] if best else ''} | {best['valid'] if best else float('nan'):.4f} | {test} | "
                     f"{paper['test_bpd']} (−{paper['test_nats']}), {paper['parameters'] // 1000}k |")
    lines += ["", "![curve](curve.png)", ""]
    for name, results in state["pilot"].items():
        lines.append(f"Pilot ({name}): " + "; ".join(
            f"{key}: {r['valid']:.4f} bpd, {r['parameters']:,} parameters" for key, r in results.items()))
    # epochs recorded before the step size was (runs of a constant step) ran at the arm's first
    initial = {"spvae": args.spvae_learning_rate, "vae": args.vae_learning_rate}
    lines += ["", "| model | epoch | finished | seconds | step size | train bound (bpd) | valid bound (bpd) |",
              "|---|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {h['model']} | {h['epoch']} | {h.get('finished', '')} | {h['seconds']:.0f} | "
              f"{h.get('learning_rate', initial[h['model']]):.3g} | {h['train']:.4f} | {h['valid']:.4f} |"
              for rows in histories.values() for h in rows]
    atomic_write(out / "table.md", lambda s: s.write(("\n".join(lines) + "\n").encode()))


def figure2_groups(runs: list[Path]) -> dict[float, list[tuple[str, str, float]]]:
    """Training fraction -> [(arm, label "arm n_zxH[xL]", test bpd)] over the scored arms of ``runs``."""
    groups: dict[float, list[tuple[str, str, float]]] = {}
    for run in runs:
        state = json.loads((run / "run.json").read_text())
        fraction = 1.0
        if "--train-fraction" in state["argv"]:
            fraction = float(state["argv"][state["argv"].index("--train-fraction") + 1])
        bars = groups.setdefault(fraction, [])
        for name, final in state["final"].items():
            label = f"{name} {config_key(state['chosen'][name])}" if name in state["chosen"] else name
            bars.append((name, label, final["test_bpd"]))
    return groups


def data_efficiency_png(path: Path, runs: list[Path]) -> None:
    """Test bpd of every arm per training fraction (the paper's Figure 2): runs of one fraction
    share a group (e.g. a run of both arms and a run of a VAE of another depth), each bar labelled
    with its arm and configuration; runs whose test is not scored yet are left out, and said so."""
    rows = sorted(figure2_groups(runs).items(), reverse=True)
    width, height, margin = 720, 400, 60
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((margin, 20), "Data efficiency on MNIST (the paper's Figure 2): test bits per dimension", fill=(0, 0, 0))
    values = [bpd for _, bars in rows for *_, bpd in bars]
    high = max(values) * 1.1 if values else 1.0
    draw.line([margin, height - margin, width - margin, height - margin], fill=(0, 0, 0))
    slot = (width - 2 * margin) / max(1, len(rows))
    for number, (fraction, bars) in enumerate(rows):
        left = margin + number * slot
        draw.text((left + 10, height - margin + 8), f"{fraction:g} of the data", fill=(0, 0, 0))
        if not bars:
            draw.text((left + 10, height - margin - 20), "(not scored yet)", fill=(0, 0, 0))
        bar_width = (slot - 20) / max(1, len(bars))
        for bar, (name, label, bpd) in enumerate(bars):
            top = height - margin - bpd / high * (height - 2 * margin)
            x0 = left + 10 + bar * bar_width
            draw.rectangle([x0, top, x0 + bar_width - 4, height - margin], fill=COLOURS[name])
            draw.text((x0, top - 26), label, fill=(0, 0, 0))
            draw.text((x0, top - 14), f"{bpd:.2f}", fill=(0, 0, 0))
    atomic_write(path, lambda stream: canvas.save(stream, format="PNG"))
