#!/usr/bin/env python3
"""PyJuice (Tractables/pyjuice 2.6.3, PyPI ``pyjuice``) on an einc HCLT: the same tree, K, leaves.

Ours (written for this project's peer study): it imports ``pyjuice`` and calls its public API
(``pyjuice.structures.compilation.BayesianTreeToHiddenRegionGraph``, the builder that PyJuice's
own ``HCLT()`` hands its learned tree to; ``juice.compile``; the forward with
``record_cudagraph``; the flow backward; ``mini_batch_em``). No PyJuice code is copied.

The tree is read from an einc HCLT ``.pc`` file (``structure tree(parents = [...])``, written by
``einc learn-structure hclt``): parents[v] is v's parent variable in declaration order, −1 at the
root. PyJuice's construction of an HCLT from a tree is the same circuit as einc's: at every inner
tree node an element-wise product of the node's K categorical leaves and each child's K-vector
(a child that is a tree leaf contributes its K leaves directly), then K sums over those K
products (one sum at the root). ``dag_stats`` counts the parameters so a caller can check that
they equal einc's.

Used two ways:
  * as a module by ``benchmarks/hclt_gpu.py`` (einc and PyJuice alternating in one process);
  * alone, printing one JSON line: ``python benchmarks/peers_gpu/pyjuice_hclt.py --pc TREE.pc
    --K 16 --data mnist.npz`` (EM epochs, batch 512, peak memory), or ``--structure-only`` to build
    the node DAG and report its sizes without a GPU.

Exit codes: 0 ok; 2 no CUDA device; 3 pyjuice import failure; 4 out of memory; 5 other error.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

_TREE = re.compile(r"structure\s+tree\s*\(\s*parents\s*=\s*\[(.*?)\]\s*\)", re.S)


def read_parents(path: str | Path) -> np.ndarray:
    """parents[v] of the tree in an einc HCLT ``.pc`` file (comments after ``#`` ignored)."""
    text = Path(path).read_text(encoding="utf-8")
    match = _TREE.search("\n".join(line.split("#", 1)[0] for line in text.splitlines()))
    if match is None:
        raise ValueError(f"{path}: no `structure tree(parents = [...])` line; expected an einc HCLT .pc")
    parents = np.array([int(token) for token in match.group(1).replace("\n", " ").split(",") if token.strip()])
    if (parents == -1).sum() != 1:
        raise ValueError(f"{path}: a tree has one root (parent -1); found {(parents == -1).sum()}")
    return parents


def build_hclt(parents: np.ndarray, k: int, categories: int = 256) -> Any:
    """PyJuice's HCLT over the tree ``parents`` with ``k`` hidden states and categorical leaves."""
    import networkx as nx
    import pyjuice.nodes.distributions as dists
    from pyjuice.structures.compilation import BayesianTreeToHiddenRegionGraph

    tree = nx.Graph()
    tree.add_nodes_from(range(len(parents)))
    tree.add_edges_from((int(v), int(p)) for v, p in enumerate(parents) if p >= 0)
    root = int(np.flatnonzero(parents < 0)[0])
    dist = dists.Categorical(num_cats=categories)
    return BayesianTreeToHiddenRegionGraph(tree, root, k, *dist._get_constructor())


def dag_stats(root: Any) -> dict[str, int]:
    """Nodes, edges and free parameters of a PyJuice node DAG (no padding, no dummy entries)."""
    counts = dict.fromkeys(("sum_nodes", "prod_nodes", "input_nodes", "sum_edges", "prod_edges",
                            "sum_params", "input_params"), 0)
    for ns in root:  # CircuitNodes iterates its DAG, children first
        if ns.is_sum():
            counts["sum_nodes"] += ns.num_nodes
            counts["sum_edges"] += ns.num_edges
            counts["sum_params"] += 0 if ns.is_tied() else ns.num_edges
        elif ns.is_prod():
            counts["prod_nodes"] += ns.num_nodes
            counts["prod_edges"] += ns.num_edges
        else:
            counts["input_nodes"] += ns.num_nodes
            counts["input_params"] += 0 if ns.is_tied() else ns.num_nodes * ns.dist.num_parameters()
    counts["params"] = counts["sum_params"] + counts["input_params"]
    return counts


class PyJuiceHCLT:
    """A compiled PyJuice HCLT on a CUDA device, trained by mini-batch EM on resident batches."""

    def __init__(self, parents: np.ndarray, k: int, device: Any, step_size: float, pseudocount: float,
                 cudagraph: bool = True) -> None:
        import pyjuice as juice
        import torch

        self.torch = torch
        # PyJuice's compile takes a CUDA ordinal (it builds "cuda:{index}"; a bare "cuda" device
        # would give "cuda:None")
        index = device.index if device.index is not None else torch.cuda.current_device()
        self.device = device = torch.device("cuda", index)
        self.step_size, self.pseudocount = step_size, pseudocount
        started = time.perf_counter()
        self.root = build_hclt(parents, k)
        self.build_s = time.perf_counter() - started
        self.stats = dag_stats(self.root)
        started = time.perf_counter()
        self.pc = juice.compile(self.root, device=index, verbose=False)
        self.pc.to(device)
        torch.cuda.synchronize(device)
        self.compile_s = time.perf_counter() - started
        self.cudagraph = cudagraph

    def prime(self, batch: Any) -> None:
        """One forward + flow backward that records the CUDA graphs (as PyJuice's own examples do),
        then zeroed flows, so no statistics leak into the timed epochs."""
        self.pc.init_param_flows(flows_memory=0.0)
        lls = self.pc(batch, record_cudagraph=self.cudagraph)
        lls.mean().backward()
        self.pc.init_param_flows(flows_memory=0.0)
        self.torch.cuda.synchronize(self.device)

    def epoch(self, batches: list[Any]) -> float:
        """One epoch of mini-batch EM (flows zeroed, forward, flow backward, EM step per batch);
        the mean log-likelihood is summed on the device and read once at the end (no sync per
        batch, as einc's epoch)."""
        total = self.torch.zeros((), device=self.device)
        for x in batches:
            self.pc.init_param_flows(flows_memory=0.0)
            lls = self.pc(x)
            lls.mean().backward()
            self.pc.mini_batch_em(step_size=self.step_size, pseudocount=self.pseudocount)
            total += lls.detach().mean()
        return float(total) / len(batches)


def version(pyjuice: Any) -> str | None:
    """PyJuice's version (2.6.3 has no ``__version__``: the installed distribution's)."""
    try:
        from importlib.metadata import version as installed

        return installed("pyjuice")
    except Exception:
        return getattr(pyjuice, "__version__", None)


def resident_batches(torch: Any, images: np.ndarray, batch: int, device: Any) -> list[Any]:
    """The images on the device as full batches, in the dtype PyJuice's categorical leaves
    declare for their data (``Categorical.get_data_dtype()``: int64)."""
    full = len(images) // batch * batch
    data = torch.as_tensor(images[:full].astype(np.int64), device=device)
    return list(data.split(batch))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pc", type=Path, default=Path(__file__).resolve().parent / "hclt_mnist.pc",
                        help="an einc HCLT .pc file (its tree is used; K comes from --K)")
    parser.add_argument("--K", type=int, default=16)
    parser.add_argument("--data", type=Path, help="MNIST .npz with x_train (needed unless --structure-only)")
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--step-size", type=float, default=0.1)
    parser.add_argument("--pseudocount", type=float, default=0.1)
    parser.add_argument("--structure-only", action="store_true", help="build the DAG and report its sizes (no GPU)")
    args = parser.parse_args(argv)
    out: dict[str, Any] = {"bench": "pyjuice_hclt", "ok": False, "setup": "hclt_mnist", "K": args.K,
                           "pc": str(args.pc), "batch": args.batch}

    def emit(code: int) -> int:
        print(json.dumps(out), flush=True)
        return code

    try:
        import pyjuice
        import torch
    except Exception as error:
        out["error"] = f"import pyjuice failed: {type(error).__name__}: {error}"
        return emit(3)
    out["versions"] = {"pyjuice": version(pyjuice), "torch": torch.__version__}
    try:
        parents = read_parents(args.pc)
        if args.structure_only:
            started = time.perf_counter()
            out["dag"] = dag_stats(build_hclt(parents, args.K))
            out["build_s"] = round(time.perf_counter() - started, 3)
            out["ok"] = True
            return emit(0)
        if not torch.cuda.is_available():
            out["error"] = "PyJuice runs Triton kernels on a CUDA device; torch sees none (try --structure-only)"
            return emit(2)
        if args.data is None or not args.data.exists():
            out["error"] = f"MNIST not found at {args.data}; pass --data PATH/TO/mnist.npz"
            return emit(5)
        device = torch.device("cuda", torch.cuda.current_device())
        with np.load(args.data) as archive:
            images = archive["x_train"].reshape(-1, 784)[: args.rows]
        batches = resident_batches(torch, images, args.batch, device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        model = PyJuiceHCLT(parents, args.K, device, args.step_size, args.pseudocount)
        model.prime(batches[0])
        started = time.perf_counter()
        model.epoch(batches)  # warm-up: autotuning and the first use of every kernel
        out["first_epoch_s"] = round(time.perf_counter() - started, 3)
        times, lls = [], []
        for _ in range(args.epochs):
            started = time.perf_counter()
            lls.append(model.epoch(batches))
            times.append(time.perf_counter() - started)
        out.update({"ok": True, "gpu": torch.cuda.get_device_name(), "dag": model.stats,
                    "params": model.stats["params"], "build_s": round(model.build_s, 3),
                    "compile_s": round(model.compile_s, 3), "epoch_s": times,
                    "epoch_s_median": statistics.median(times), "train_ll": lls,
                    "peak_mb": round((torch.cuda.max_memory_allocated() - before) / 2**20, 1)})
        return emit(0)
    except Exception as error:
        oom = "out of memory" in str(error).lower()
        out["error"] = f"{type(error).__name__}: {error}"[:2000]
        out["traceback"] = traceback.format_exc()[-3000:]
        return emit(4 if oom else 5)


if __name__ == "__main__":
    sys.exit(main())
