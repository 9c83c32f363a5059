"""The torch executor (backends/torch_backend.py) against results recorded from the previous one.

``tests/golden/executor.npz`` holds what the executor of b75eb0e (which re-concatenated every
operand from whole source tensors) computed in float64 for a set of circuits covering every op
kind and query: outer (einsum) and hadamard products of any arity, mixing, DAG gathers, latents
clamped and summed out, vae leaves (seeded noise), several heads, max-product, sampling and MPE
backtracking, EM statistics, one online-EM epoch. The executor that reads operands as views and
gathers of exactly the rows needed must give the same numbers (1e-12) and the same samples.
Regenerate only from a known-good executor: ``EINC_UPDATE_GOLDEN=1 pytest tests/test_executor.py``.
"""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import einc
from einc.backends.base import Batch

from oracles import random_data

GOLDEN = Path(__file__).parent / "golden" / "executor.npz"
ROOT = Path(__file__).resolve().parent.parent

CIRCUITS = {
    # hadamard products of 2 and 3 parts, regions with several partitions (mixing)
    "tiny_hadamard": (ROOT / "examples" / "tiny_hadamard.pc").read_text(),
    # a hidden Chow-Liu tree: hadamard rows of mixed arity reading several values
    "hclt": (ROOT / "examples" / "nltcs_hclt.pc").read_text().replace("sums 16", "sums 3").replace("inputs 16", "inputs 3"),
    # RAT-SPN: einsum (outer) products and the root mixing, two heads
    "rat_heads": "var x[6] : binary\nleaf x ~ bernoulli\nsums 3\ninputs 3\nheads 2\n"
                 "structure random_binary_trees(depth = 2, replicas = 3, seed = 1)\n",
    # Poon-Domingos DAG: shared regions are gathered (RowIndex reads), binomial leaves
    "pd_dag": "var img[4, 4] : categorical(4)\nleaf img ~ binomial(3)\nsums 2\ninputs 2\n"
              "structure poon_domingos(delta = 2)\n",
    # the same DAG with hadamard products
    "pd_hadamard": "var img[4, 4] : categorical(4)\nleaf img ~ binomial(3)\nsums 2\ninputs 2\nproduct hadamard\n"
                   "structure poon_domingos(delta = 2)\n",
    # latents: one on an inner region, one on a leaf region; normal and bernoulli leaves
    "latents": "var A, B, C : binary\nvar D : real\nleaf A, B, C ~ bernoulli\nleaf D ~ normal\nsums 2\ninputs 3\n"
               "region all = {A, B, C, D}\nregion left = {A, B}\nall -> left * {C, D}\nleft -> A * B\n"
               "{C, D} -> C * D\nlatent z1 = left\nlatent z2 = D\n",
    # neural leaves (seeded noise)
    "vae": "var x[4] : binary\nleaf x ~ vae(latent = 1, hidden = [6], decoder = bernoulli)\ninputs 2\n"
           "x -> x[0:2] * x[2:4]\n",
}


COPIES = {
    "pickled": lambda backend: pickle.loads(pickle.dumps(backend)),
    "deep-copied": copy.deepcopy,
}


def _results(name: str, copied: str | None = None) -> dict[str, np.ndarray]:
    """Every query's results; with ``copied``, from a pickled or deep-copied backend whose
    original had answered queries first (its caches filled, keyed by objects a copy renews)."""
    model = einc.compile(CIRCUITS[name], dtype="float64", seed=5)
    backend, params = model.backend, model.params
    n = 24
    x = random_data(model.graph, n, 7)
    observed = np.ones_like(x, dtype=bool)
    observed[::3, 0] = False
    observed[1::4, -1] = False
    latents = None
    if model.latents:
        rng = np.random.default_rng(3)
        latents = np.stack([rng.integers(-1, slot.states, n) for slot in model.latents], 1)
    batch = Batch(np.where(observed, x, 0.0), observed, None, latents)
    heads = np.arange(n) % model.plan.heads
    out: dict[str, np.ndarray] = {}
    exact = model.plan.exact
    if copied is not None:
        backend.log_likelihood(params, batch, **({} if exact else {"samples": 3, "seed": 1}))
        backend = COPIES[copied](backend)
    out["ll"] = backend.log_likelihood(params, batch, **({} if exact else {"samples": 3, "seed": 1}))
    out["max"] = backend.log_likelihood(params, batch, True, **({} if exact else {"samples": 3, "seed": 1}))
    out["mpe"] = backend.backtrack(params, batch, True, "mode", heads, 11, **({} if exact else {"samples": 3}))
    out["sample"] = backend.backtrack(params, batch, False, "sample", heads, 12, **({} if exact else {"samples": 3}))
    if model.latents:
        for index, posterior in enumerate(backend.latent_posterior(params, batch, heads)):
            out[f"posterior{index}"] = posterior
    if model.plan.trained_by_em:
        stats = backend.statistics(params, batch)
        out["stats_ll"] = np.array([stats.log_likelihood])
        for key, value in stats.weights.items():
            out[f"w:{key}"] = value.detach().numpy()
        for key, (sum_pt, sum_p) in stats.leaf.items():
            out[f"pt:{key}"], out[f"p:{key}"] = sum_pt.detach().numpy(), sum_p.detach().numpy()
        data = backend.upload(batch.values, batch.observed, None, latents)
        new, total = backend.train_epoch(backend.put(backend.get(params)), data, np.arange(n)[::-1].copy(), 10, 0.5)
        out["epoch_ll"] = np.array([total])
        for key, value in backend.get(new).items():
            out[f"epoch:{key}"] = value
    else:  # gradient training: one module pass and its gradients
        torch.manual_seed(0)
        module = backend.module(params, samples=3)
        values = np.where(observed, x, np.nan)
        loss = -module(torch.as_tensor(values)).sum()
        loss.backward()
        out["module_loss"] = np.array([float(loss.detach())])
        for key, value in module.free.items():
            out[f"grad:{key}"] = value.grad.numpy()
    return {f"{name}/{key}": np.asarray(value) for key, value in out.items()}


def _all() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in CIRCUITS:
        out.update(_results(name))
    return out


def test_golden_file_exists_or_is_regenerated() -> None:
    if os.environ.get("EINC_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(GOLDEN, **_all())
    assert GOLDEN.exists()


@pytest.mark.parametrize("copied", [None, *COPIES])
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_executor_equals_the_recorded_results(name: str, copied: str | None) -> None:
    """The executor, and a pickled or deep-copied one (``torch.save`` of a module, ``deepcopy``
    of the best model so far), give the recorded results."""
    assert_recorded(name, _results(name, copied))


def assert_recorded(name: str, got: dict[str, np.ndarray]) -> None:
    """``got`` is what the golden file holds for circuit ``name``: samples exactly, the rest to 1e-12."""
    with np.load(GOLDEN) as golden:
        expected = {key: golden[key] for key in golden.files if key.startswith(name + "/")}
    assert sorted(got) == sorted(expected)
    for key, value in got.items():
        if key.endswith("/mpe") or key.endswith("/sample"):
            np.testing.assert_array_equal(value, expected[key], err_msg=key)
        else:
            np.testing.assert_allclose(value, expected[key], rtol=1e-12, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("gradients", ["matmul", "pairs"])
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_row_tiled_einsum_layers_and_m_steps_equal_the_recorded_results(name: str, gradients: str,
                                                                        monkeypatch) -> None:
    """With tiles of one row forced on every einsum layer (``RowTiledLogEinsumExp``: pair products made
    tile by tile, again in the backward pass, whose gradients come by either strategy) and on
    every sum-weight M-step (``em._normalise`` in blocks of one row), every query, statistic and
    EM epoch gives the recorded results."""
    from einc.backends import em
    from einc.backends.torch_ops import einsum

    calls = []
    tiled = einsum.RowTiledLogEinsumExp.apply
    monkeypatch.setattr(einsum, "_TILE_BYTES", 1)
    monkeypatch.setattr(einsum, "_MATMUL_GRADIENTS_BELOW", 2**60 if gradients == "matmul" else 0)
    monkeypatch.setattr(einsum.RowTiledLogEinsumExp, "apply", lambda *args: calls.append(1) or tiled(*args))
    monkeypatch.setattr(em, "_CACHE_BLOCK_ENTRIES", 2)
    assert_recorded(name, _results(name))
    model = einc.compile(CIRCUITS[name])
    outer = any(type(op).__name__ == "EinsumOp" and tuple(sorted(op.path[0])) == (0, 1) for op in model.plan.ops)
    assert bool(calls) == outer, "the tiled contraction runs wherever an einsum layer multiplies pairs first"
