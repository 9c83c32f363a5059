"""VAE experts as leaves (SPVAE) and the circuit as a torch.nn.Module, proved against oracles.

- Quadrature: with a 1-D latent over two binary pixels a leaf's density ∫ p(x|z) N(z) dz is
  computed to 1e-10 by Gauss-Hermite quadrature of the networks written out in NumPy here. The IWAE
  estimate converges to it as k grows and its expectation stays below it (its exponential is
  unbiased: a batch of identical rows gets independent noise, so row means are expectations).
- The circuit over those leaves, with each leaf replaced by its quadrature density, is the exact
  model: exp(estimates) over every state of the grid sum to ≈ 1, samples pass a χ² test.
- The batched ensemble equals a per-expert loop (NumPy, one expert at a time) with the same noise.
- ``model.module()`` gradients equal finite differences; the module shares its parameters with the
  model; it runs under ``torch.compile``.
"""

from __future__ import annotations

import io
import json
import math
import zipfile

import numpy as np
import pytest
import torch

import einc
from einc import cli
from einc.backends import torch_backend
from einc.backends.base import Batch
from einc.backends.torch_ops import Noise, TorchOpRule, vae
from einc.errors import BackendError, EincError
from einc.ir.neural import VaeSpec
from einc.ir.plan import VaeOp
from einc.progress import log_lines

from oracles import chi_square, chi_square_threshold

# x[0:2] and x[2:4] are the leaf regions: two 1-D-latent VAE experts each
GRID = """circuit vae_grid
var x[4] : binary
leaf x ~ vae(latent = 1, hidden = [6], decoder = bernoulli)
inputs 2
x -> x[0:2] * x[2:4]
"""
# 4x4 pixels with values 0..3, Poon-Domingos into 2x2 leaf regions, binomial decoders
IMAGE = """circuit vae_image
var img[4, 4] : categorical(4)
leaf img ~ vae(latent = 2, hidden = [5, 4], decoder = binomial)
inputs 2
sums 2
structure poon_domingos(delta = 2)
"""
STATES = np.array([[(s >> (3 - i)) & 1 for i in range(4)] for s in range(16)], dtype=np.float64)


def _softplus(a: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, a)


def _sharp_grid_model(seed: int = 0) -> einc.Model:
    """The grid circuit in float64 with decoder weights scaled up, so that p(x | z) depends
    strongly on z (at initialisation every pixel is near 1/2 and any estimate looks right), and
    proposals q(z | x) wider than the prior, with x-dependent means: importance weights are then
    bounded and the IWAE gap shrinks like 1/k (with narrower proposals it still converges, but
    far more slowly than a test can wait for)."""
    model = einc.compile(GRID, dtype="float64", seed=seed)
    params = model.parameters()
    rng = np.random.default_rng(seed + 100)
    for spec in model.plan.params:
        if spec.free and "decoder" in spec.name:
            params[spec.name] = rng.normal(0.0, 2.5, size=spec.shape)
        elif spec.free:
            params[spec.name] = rng.normal(0.0, 0.15, size=spec.shape)
    last_bias = _vae_op(model).encoder[-1][1]
    params[last_bias][..., 1] = 2.0  # σ = softplus(2 + ...) ≈ 2.1
    model.set_parameters(params)
    return model


def _vae_op(model: einc.Model) -> VaeOp:
    (op,) = [op for op in model.plan.ops if isinstance(op, VaeOp)]
    return op


def _decoder_logits(params: dict, op: VaeOp, l: int, k: int, z: np.ndarray) -> np.ndarray:
    """The decoder of expert (l, k) written out in NumPy: z (N, Z) -> outputs (N, D·t)."""
    h = z
    for number, (weight, bias) in enumerate(op.decoder):
        h = h @ params[weight][l, k] + params[bias][l, k]
        if number < len(op.decoder) - 1:
            h = _softplus(h)
    return h


def _quadrature_log_density(params: dict, op: VaeOp, x: np.ndarray, observed: np.ndarray,
                            nodes: int = 20001) -> np.ndarray:
    """log ∫ Π_{observed d} Bern(x_d; σ(u_d(z))) N(z; 0, 1) dz for every region, expert and row:
    (L, B, K), 0 where a region has nothing observed. 1-D latents only: Simpson's rule on
    [-9, 9] (the prior's mass outside is 2e-19), fine enough for the softplus networks' kinks."""
    z = np.linspace(-9.0, 9.0, nodes)
    simpson = np.ones(nodes)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    weights = simpson * (z[1] - z[0]) / 3.0 * np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    out = np.zeros((op.rows, len(x), op.k))
    for l, columns in enumerate(op.columns):
        xs, seen = x[:, columns], observed[:, columns]  # (B, D)
        for k in range(op.k):
            logits = _decoder_logits(params, op, l, k, z[:, None])  # (Q, D)
            log_px = xs[:, None, :] * logits[None] - _softplus(logits)[None]  # (B, Q, D)
            log_px = (log_px * seen[:, None, :]).sum(-1)  # (B, Q)
            out[l, :, k] = np.log((np.exp(log_px) * weights[None]).sum(1))
    return out


def _exact_rule(monkeypatch: pytest.MonkeyPatch, params: dict) -> None:
    """Replace the vae op's estimate by its quadrature density: the circuit becomes the exact
    SPVAE distribution (the other op kinds are proved exact elsewhere)."""

    def exact_forward(backend, op, _params, values, max_product, data):
        x, observed = vae.region_data(backend, op, data)  # (L, B, D)
        flat_x = np.zeros((x.shape[1], backend.num_columns))
        flat_observed = np.zeros_like(flat_x, dtype=bool)
        for l, columns in enumerate(op.columns):
            flat_x[:, columns] = x[l].numpy()
            flat_observed[:, columns] = observed[l].numpy() > 0
        exact = _quadrature_log_density(params, op, flat_x, flat_observed)
        return torch.as_tensor(exact, dtype=backend.dtype)

    monkeypatch.setitem(torch_backend.OP_RULES, VaeOp, TorchOpRule(exact_forward, vae.backtrack))


def _leaf_estimates(model: einc.Model, x: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """The vae op's values (L, B, K) for rows x (NaN = missing) with ``samples`` per leaf."""
    backend = model.backend
    observed = ~np.isnan(x)
    values, mask = backend._batch(Batch(np.where(observed, x, 0.0), observed))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        outputs = backend.forward(model.params, values, mask, noise=Noise(samples, generator))
    (index,) = [i for i, op in enumerate(model.plan.ops) if isinstance(op, VaeOp)]
    return outputs[index].numpy()


# ---------------------------------------------------------------- quadrature: the leaf density
def test_the_quadrature_oracle_has_converged() -> None:
    model = _sharp_grid_model()
    params, op = model.parameters(), _vae_op(model)
    observed = np.ones_like(STATES, dtype=bool)
    coarse = _quadrature_log_density(params, op, STATES, observed, nodes=20001)
    fine = _quadrature_log_density(params, op, STATES, observed, nodes=40001)
    np.testing.assert_allclose(coarse, fine, atol=1e-10)
    # each expert is a distribution over its region's four states: region 0 is (x0, x1), which
    # rows 0, 4, 8, 12 enumerate; region 1 is (x2, x3), rows 0..3
    np.testing.assert_allclose(np.exp(coarse[0, [0, 4, 8, 12]]).sum(0), 1.0, atol=1e-10)
    np.testing.assert_allclose(np.exp(coarse[1, :4]).sum(0), 1.0, atol=1e-10)
    assert coarse.std() > 0.3  # the densities are far from uniform: the test below can fail


def test_iwae_estimate_stays_below_the_leaf_density_and_converges_with_k() -> None:
    model = _sharp_grid_model()
    params, op = model.parameters(), _vae_op(model)
    state = STATES[5]  # one state, repeated: every row an independent draw of the estimator
    rows = 4000
    x = np.tile(state, (rows, 1))
    exact = _quadrature_log_density(params, op, x[:1], np.ones((1, 4), dtype=bool))[:, 0]  # (L, K)
    gaps = {}
    for k in (1, 4, 16, 64, 256):
        estimates = _leaf_estimates(model, x, k, seed=k)  # (L, B, K)
        mean = estimates.mean(1)
        stderr = estimates.std(1) / math.sqrt(rows)
        # below the log-density in expectation (Jensen), and exp(estimate) is unbiased
        assert np.all(mean <= exact + 4 * stderr), (k, mean - exact)
        ratio = np.exp(estimates - exact[:, None, :])
        assert np.all(np.abs(ratio.mean(1) - 1.0) <= 4 * ratio.std(1) / math.sqrt(rows) + 1e-12), k
        gaps[k] = float(np.abs(mean - exact).max())
    assert gaps[1] > 0.05  # a genuine bound at k = 1: the proposal is untrained
    assert gaps[256] < gaps[16] < gaps[1]
    assert gaps[256] < 0.02


def test_circuit_estimate_stays_below_the_exact_model_and_converges(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _sharp_grid_model()
    with monkeypatch.context() as patch:
        _exact_rule(patch, model.parameters())
        exact = model.log_likelihood(STATES)
    rows = 2000
    x = np.repeat(STATES[[3, 9, 12]], rows, axis=0)
    previous = None
    for k in (2, 32, 512):
        estimates = model.log_likelihood(x, samples=k, seed=k).reshape(3, rows)
        gap = estimates.mean(1) - exact[[3, 9, 12]]
        assert np.all(gap <= 4 * estimates.std(1) / math.sqrt(rows)), (k, gap)  # Theorem 2
        if previous is not None:
            assert np.abs(gap).max() < np.abs(previous).max()
        previous = gap
    assert np.abs(previous).max() < 0.01


def test_exp_of_the_estimates_sums_to_one_over_a_binary_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _sharp_grid_model()
    estimates = model.log_likelihood(STATES, samples=4096, seed=1)
    assert abs(np.exp(estimates).sum() - 1.0) < 0.01
    with monkeypatch.context() as patch:
        _exact_rule(patch, model.parameters())
        assert abs(np.exp(model.log_likelihood(STATES)).sum() - 1.0) < 1e-10


# ---------------------------------------------------------------- missing data
def test_a_fully_missing_region_contributes_exactly_zero() -> None:
    model = _sharp_grid_model()
    x = STATES.copy()
    x[:, 0:2] = np.nan  # the first leaf region has nothing observed
    estimates = _leaf_estimates(model, x, 8, seed=0)
    assert np.all(estimates[0] == 0.0)
    assert np.all(estimates[1] != 0.0)  # the other region is estimated as usual
    # it drops out of the circuit: no gradient reaches its networks
    module = model.module()
    module(torch.as_tensor(x)).sum().backward()
    for name, tensor in module.free.items():
        if name.startswith("vae0:"):
            assert torch.all(tensor.grad[0] == 0.0), name
            assert torch.any(tensor.grad[1] != 0.0), name
    everything_missing = np.full((3, 4), np.nan)
    np.testing.assert_allclose(model.log_likelihood(everything_missing), 0.0, atol=1e-12)


def test_a_partly_missing_region_estimates_its_marginal_without_bias() -> None:
    model = _sharp_grid_model()
    params, op = model.parameters(), _vae_op(model)
    rows = 4000
    x = np.tile([1.0, np.nan, 0.0, 1.0], (rows, 1))
    exact = _quadrature_log_density(params, op, np.nan_to_num(x[:1]), ~np.isnan(x[:1]))[:, 0]  # (L, K)
    estimates = _leaf_estimates(model, x, 2, seed=3)
    ratio = np.exp(estimates - exact[:, None, :])
    assert np.all(np.abs(ratio.mean(1) - 1.0) <= 4 * ratio.std(1) / math.sqrt(rows))
    assert np.all(estimates.mean(1) <= exact + 4 * estimates.std(1) / math.sqrt(rows))


# ---------------------------------------------------------------- the batched ensemble
def _per_expert_log_weights(params: dict, op: VaeOp, x: np.ndarray, observed: np.ndarray,
                            eps: np.ndarray) -> np.ndarray:
    """log p(x_obs|z) + log p(z) − log q(z|x) one expert at a time, in NumPy: (L, K, S, B)."""
    spec = VaeSpec.of(op.family)
    n = spec.decoder.arg("n")
    out = np.zeros(eps.shape[:4])
    for l, columns in enumerate(op.columns):
        xs, seen = x[:, columns], observed[:, columns]  # (B, D)
        for k in range(op.k):
            h = xs / n * seen
            for number, (weight, bias) in enumerate(op.encoder):
                h = h @ params[weight][l, k] + params[bias][l, k]
                if number < len(op.encoder) - 1:
                    h = _softplus(h)
            mu, sigma = h[:, : spec.latent], _softplus(h[:, spec.latent :]) + vae.MIN_STD
            for s in range(eps.shape[2]):
                z = mu + sigma * eps[l, k, s]  # (B, Z)
                logits = _decoder_logits(params, op, l, k, z)  # (B, D)
                log_choose = np.vectorize(lambda v: math.lgamma(n + 1) - math.lgamma(v + 1) - math.lgamma(n - v + 1))(xs)
                log_px = ((log_choose + xs * logits - n * _softplus(logits)) * seen).sum(1)
                log_prior = -0.5 * (z**2).sum(1) - 0.5 * spec.latent * math.log(2 * math.pi)
                log_q = (-0.5 * eps[l, k, s] ** 2 - np.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(1)
                out[l, k, s] = log_px + log_prior - log_q
    return out


def test_the_batched_ensemble_equals_a_per_expert_loop_with_the_same_noise() -> None:
    model = einc.compile(IMAGE, dtype="float64", seed=2)
    params, op = model.parameters(), _vae_op(model)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(6, 16)).astype(np.float64)
    observed = rng.random(x.shape) > 0.25
    spec = VaeSpec.of(op.family)
    samples = 3
    eps = rng.standard_normal((op.rows, op.k, samples, len(x), spec.latent))
    expected_weights = _per_expert_log_weights(params, op, x, observed, eps)
    expected = np.logaddexp.reduce(expected_weights, axis=2) - math.log(samples)  # (L, K, B)

    t = {name: torch.as_tensor(value) for name, value in params.items()}
    columns = [list(c) for c in op.columns]
    xs = torch.as_tensor(np.stack([x[:, c] for c in columns]))  # (L, B, D)
    seen = torch.as_tensor(np.stack([observed[:, c] for c in columns]).astype(np.float64))
    batched = vae.iwae(op, t, xs, seen, torch.as_tensor(eps))
    np.testing.assert_allclose(batched.numpy(), expected, rtol=1e-10, atol=1e-10)

    # the backend's forward draws its noise in that layout: same generator seed, same numbers
    generator = torch.Generator().manual_seed(7)
    drawn = torch.randn((op.rows, op.k, samples, len(x), spec.latent), generator=generator, dtype=torch.float64)
    values, mask = model.backend._batch(Batch(np.where(observed, x, 0.0), observed))
    with torch.no_grad():
        out = model.backend.forward(model.params, values, mask, noise=Noise(samples, torch.Generator().manual_seed(7)))
    forward = out[0].transpose(1, 2)  # (L, K, B)
    reference = vae.iwae(op, t, xs, seen, drawn)
    region_seen = seen.sum(-1) > 0
    np.testing.assert_allclose(forward.numpy(), torch.where(region_seen[:, None], reference, 0.0).numpy(),
                               rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- sampling
def test_samples_follow_the_exact_model(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _sharp_grid_model()
    with monkeypatch.context() as patch:
        _exact_rule(patch, model.parameters())
        probabilities = np.exp(model.log_likelihood(STATES))
    n = 20000
    draws = model.sample(n, seed=5)
    assert set(np.unique(draws)) <= {0.0, 1.0}
    codes = (draws * np.array([8, 4, 2, 1])).sum(1).astype(int)
    counts = np.bincount(codes, minlength=16)
    statistic, dof = chi_square(counts, probabilities, n)
    assert statistic < chi_square_threshold(dof)


def test_conditional_samples_and_mpe_keep_the_evidence() -> None:
    model = einc.compile(IMAGE, seed=1)
    rng = np.random.default_rng(0)
    evidence = rng.integers(0, 4, size=(5, 16)).astype(np.float64)
    evidence[:, :6] = np.nan
    given = ~np.isnan(evidence)
    for completed in (model.sample(evidence=evidence, seed=1), model.mpe(evidence),
                      model.sample(evidence=evidence, leaf_value="mean")):
        assert np.all(completed[given] == evidence[given])
        assert np.all(np.isfinite(completed)) and np.all((completed >= 0) & (completed <= 3))
    assert np.all(np.isfinite(model.max_log_likelihood(evidence)))


# ---------------------------------------------------------------- training, files, errors
def _two_patterns(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.where(rng.random(n)[:, None] < 0.5, np.tile([3, 3, 0, 0], 4), np.tile([0, 0, 3, 3], 4))
    noise = rng.integers(-1, 2, size=(n, 16)) * (rng.random((n, 16)) < 0.2)
    return np.clip(base + noise, 0, 3).astype(np.float64)


def test_fit_trains_the_bound_with_adam_and_refuses_em() -> None:
    model = einc.compile(IMAGE, seed=0)
    assert not model.exact
    train, valid = _two_patterns(256, 0), _two_patterns(64, 1)
    before = model.log_likelihood(valid, samples=50).mean()
    history = model.fit(train, valid=valid, epochs=8, batch_size=32, learning_rate=0.03, patience=3)
    assert model.training is not None and model.training.method == "adam"
    assert all(math.isfinite(r.train_ll) and math.isfinite(r.valid_ll) for r in history)
    after = model.log_likelihood(valid, samples=50).mean()
    assert after > before + 3.0, (before, after)
    with pytest.raises(EincError, match="method='adam'"):
        model.fit(train, method="em", epochs=1)
    with pytest.raises(BackendError, match="needs the torch backend"):
        einc.compile(IMAGE, backend="numpy")


def test_data_parallel_training_trains_the_bound_through_the_module(tmp_path) -> None:
    # einc.train.distributed (one process, rows read from disk block by block): method=None is adam
    # for vae leaves, every step goes through the model's module, validation is a seeded estimate
    from einc.train import distributed

    model = einc.compile(IMAGE, seed=0)
    np.save(tmp_path / "train.npy", _two_patterns(256, 0))
    valid = _two_patterns(64, 1)
    before = model.log_likelihood(valid, samples=50).mean()
    history = distributed.fit(model, str(tmp_path / "train.npy"), valid=valid, epochs=6, batch_size=32,
                              learning_rate=0.03, block_rows=64, samples=3)
    assert model.training is not None and model.training.method == "adam"
    assert all(math.isfinite(r.train_ll) and math.isfinite(r.valid_ll) for r in history)
    assert model.log_likelihood(valid, samples=50).mean() > before + 3.0
    module = model.module()
    assert module.samples == 3
    with pytest.raises(EincError, match="method='adam'"):
        distributed.fit(model, str(tmp_path / "train.npy"), method="em", epochs=1)


def test_save_and_load_round_trip(tmp_path) -> None:
    model = einc.compile(IMAGE, seed=0)
    model.fit(_two_patterns(64, 0), epochs=1, batch_size=16)
    path = tmp_path / "vae.npz"
    model.save(path)
    loaded = einc.load(path)
    assert not loaded.exact
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(loaded.parameters()[name], value)
    data = _two_patterns(10, 3)
    np.testing.assert_array_equal(loaded.log_likelihood(data, samples=7, seed=3),
                                  model.log_likelihood(data, samples=7, seed=3))
    assert json.loads(str(np.load(path)["meta"]))["version"] == 2
    assert loaded.training is not None and loaded.training.method == "adam"


def test_resumed_training_equals_an_uninterrupted_run(tmp_path) -> None:
    # 2 epochs, saved, loaded and resumed to 4 = 4 in a row: the same batches, the same IWAE
    # noise (seeded per epoch from the saved generator) and the same Adam moments
    train, valid = _two_patterns(96, 0), _two_patterns(32, 1)
    straight = einc.compile(IMAGE, seed=0)
    straight.fit(train, valid=valid, epochs=4, batch_size=32, learning_rate=0.03)
    first = einc.compile(IMAGE, seed=0)
    first.fit(train, valid=valid, epochs=2, batch_size=32, learning_rate=0.03)
    first.save(tmp_path / "half.npz")
    resumed = einc.load(tmp_path / "half.npz")
    resumed.fit(train, valid=valid, epochs=4, batch_size=32, learning_rate=0.03, resume=True)
    assert straight.training is not None and resumed.training is not None
    for name, value in straight.training.params.items():  # after epoch 4 (not the best epoch's)
        np.testing.assert_allclose(resumed.training.params[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    for name, value in straight.parameters().items():
        np.testing.assert_allclose(resumed.parameters()[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert resumed.training.best_epoch == straight.training.best_epoch


def test_version_1_model_files_still_load(tmp_path) -> None:
    model = einc.compile("examples/tiny.pc", seed=0)
    path = tmp_path / "old.npz"
    model.save(path)
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(str(arrays["meta"]))
    meta["version"] = 1
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    loaded = einc.load(path)
    x = np.array([[0, 1, 1, 0], [1, 1, 0, 0]], dtype=float)
    np.testing.assert_array_equal(loaded.log_likelihood(x), model.log_likelihood(x))
    meta["version"] = 3
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(einc.ModelFileError, match="version 3; this einc reads versions 1, 2"):
        einc.load(path)
    assert zipfile.is_zipfile(path)


def test_cli_trains_and_evaluates_a_vae_circuit(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    circuit = tmp_path / "image.pc"
    circuit.write_text(IMAGE)
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    np.savetxt(train, _two_patterns(64, 0), delimiter=",", fmt="%d")
    np.savetxt(test, _two_patterns(16, 1), delimiter=",", fmt="%d")
    output = tmp_path / "model.npz"
    assert cli.main(["train", str(circuit), "--data", str(train), "--epochs", "2", "-o", str(output)]) == 0
    out = capsys.readouterr().out
    assert "IWAE bound with 5 samples per leaf" in out and "epoch   2" in out
    assert cli.main(["eval", str(output), "--data", str(test), "--samples", "20"]) == 0
    captured = capsys.readouterr()
    assert "an IWAE estimate with 20 samples per vae leaf" in captured.out and "mean LL" in captured.out
    assert captured.err == ""  # not a terminal, and too short for a progress line
    assert cli.main(["eval", str(output), "--data", str(test), "--backend", "numpy"]) == 1
    assert "needs the torch backend" in capsys.readouterr().err
    assert cli.main(["query", str(output), "--evidence", "img[0, 0]=3", "--target", "img[0, 1]"]) == 0
    out = capsys.readouterr().out
    assert "IWAE estimates" in out and "an estimate" in out and "normalised" in out
    probabilities = [float(line.split(":")[1]) for line in out.splitlines()[1:]]
    assert len(probabilities) == 4 and all(p >= 0.0 for p in probabilities)


def test_log_likelihood_reports_progress_per_batch_and_returns_the_same_estimate() -> None:
    model = _sharp_grid_model()
    x = np.random.default_rng(0).integers(0, 2, (23, model.graph.num_columns))
    reports: list[tuple[int, int]] = []
    def report(done: int, total: int) -> None:
        reports.append((done, total))

    with_progress = model.log_likelihood(x, batch_size=10, samples=8, progress=report)
    assert reports == [(10, 23), (20, 23), (23, 23)]
    reports.clear()
    model.log_likelihood(x[0], samples=8, progress=report)  # a 1-D input is one row, not its columns
    assert reports == [(1, 1)]
    np.testing.assert_array_equal(with_progress, model.log_likelihood(x, batch_size=10, samples=8))
    reports.clear()
    mixture = einc.MixtureModel([model, model], weights=np.array([0.25, 0.75]))
    mixture.log_likelihood(x, samples=8, progress=report)
    assert reports == [(23, 46), (46, 46)]


def test_progress_lines_for_logs_come_once_a_period_and_at_the_end() -> None:
    stream = io.StringIO()
    report = log_lines("einc eval", every_seconds=0.0, stream=stream)
    for done in (10, 20, 23):
        report(done, 23)
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["einc eval: 10/23 rows", "einc eval: 20/23 rows",
                                                       "einc eval: 23/23 rows"]
    quiet = io.StringIO()
    report = log_lines("einc eval", every_seconds=3600.0, stream=quiet)
    for done in (10, 20, 23):
        report(done, 23)
    assert quiet.getvalue() == ""  # a query shorter than the period says nothing
