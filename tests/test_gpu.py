"""GPU backends (CuPy, torch on CUDA) against the float64 torch-CPU reference.

The same checks as tests/test_array_backend.py, on every circuit there. Marked ``gpu``; each test
skips cleanly where CuPy or a CUDA device is absent, so ``pytest`` stays green on CPU machines.
Run them alone with ``pytest -m gpu``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from einc.backends.base import Batch, create_backend
from einc.compiler.params import init_parameters
from einc.errors import BackendError
from oracles import (
    BERNOULLI,
    assert_samples_follow_the_model,
    NORMAL,
    explicit_graph,
    plan_of,
    random_data,
    rat_graph,
)
from test_array_backend import (
    CIRCUITS,
    SAMPLED,
    _batch,
    _host,
    check_em,
    check_mpe,
    check_queries,
    check_resident_epochs,
    check_statistics,
)
from einc.compiler.layering import layer
from einc.compiler.lower import lower

pytestmark = pytest.mark.gpu

TARGETS = ["cupy", "torch-cuda"]


def _cupy_reason() -> str | None:
    """Why the cupy backend cannot run here, or None when it can."""
    try:
        create_backend("cupy", plan_of(explicit_graph([BERNOULLI] * 4)), device="cuda")
    except BackendError as error:
        return str(error)
    return None


def _backend_or_skip(target: str) -> tuple[str, str]:
    """(backend name, device) for a target, skipping the test where it is unavailable."""
    if target == "cupy":
        reason = _cupy_reason()
        if reason is not None:
            pytest.skip(reason)
        return "cupy", "cuda"
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    return "torch", "cuda"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_queries_agree_with_torch_cpu(target: str, name: str) -> None:
    check_queries(CIRCUITS[name], *_backend_or_skip(target))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_statistics_agree_with_torch_cpu_autograd(target: str, name: str) -> None:
    check_statistics(CIRCUITS[name], *_backend_or_skip(target))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_mpe_agrees_with_torch_cpu(target: str, name: str) -> None:
    check_mpe(CIRCUITS[name], *_backend_or_skip(target))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_em_agrees_with_torch_cpu(target: str, name: str) -> None:
    check_em(CIRCUITS[name], *_backend_or_skip(target))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["explicit-mixed", "rat-mixed", "pd-mixed"])
def test_resident_epochs_agree_with_torch_cpu(target: str, name: str) -> None:
    check_resident_epochs(CIRCUITS[name], *_backend_or_skip(target))


@pytest.mark.parametrize("target", TARGETS)
def test_multi_head_statistics_with_labels_agree(target: str) -> None:
    backend, device = _backend_or_skip(target)
    check_statistics(
        lambda: rat_graph([BERNOULLI] * 4, depth=1, replicas=2, heads=3),
        backend,
        device,
        labels=True,
    )


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(SAMPLED))
def test_sample_frequencies_match_probabilities(target: str, name: str) -> None:
    backend_name, device = _backend_or_skip(target)
    graph = SAMPLED[name]()
    plan = plan_of(graph)
    backend = create_backend(backend_name, plan, device=device, dtype="float64")
    assert_samples_follow_the_model(backend, backend.put(init_parameters(plan, 0)), graph, n=40000, seed=3)


@pytest.mark.parametrize("target", TARGETS)
def test_float32_backward_stays_stable(target: str) -> None:
    """float32 on the GPU with log p ≈ −1e4: finite counts matching the float64 reference."""
    backend_name, device = _backend_or_skip(target)
    graph = rat_graph([NORMAL] * 6, depth=2, replicas=2, k=3)
    plan = plan_of(graph)
    params = init_parameters(plan, 0)
    batch = _batch(40.0 + random_data(graph, 32, 0))
    reference = create_backend("torch", plan, dtype="float64")
    expected = reference.statistics(reference.put(params), batch)
    backend = create_backend(backend_name, plan, device=device, dtype="float32")
    got = backend.statistics(backend.put(params), batch)
    assert math.isclose(got.log_likelihood, expected.log_likelihood, rel_tol=1e-4)
    for name, counts in got.weights.items():
        host = _host(counts)
        assert np.isfinite(host).all(), name
        np.testing.assert_allclose(host, _host(expected.weights[name]), rtol=2e-3, atol=2e-3 * 32)


def test_cupy_sampler_draws_follow_their_distributions() -> None:
    _backend_or_skip("cupy")
    import cupy
    from einc.backends.array_backend import ArraySampler

    sampler = ArraySampler(cupy, 0)
    n = 200000
    like = cupy.zeros(n)
    assert abs(float(sampler.standard_normal(like).mean())) < 0.02
    assert abs(float(sampler.poisson(cupy.full(n, 3.0)).mean()) - 3.0) < 0.03
    assert abs(float(sampler.binomial(5.0, cupy.full(n, 0.3)).mean()) - 1.5) < 0.02
    probs = cupy.tile(cupy.asarray([0.2, 0.5, 0.3]), (n, 1))
    frequencies = np.bincount(cupy.asnumpy(sampler.categorical(probs)).astype(int), minlength=3) / n
    np.testing.assert_allclose(frequencies, [0.2, 0.5, 0.3], atol=0.01)


@pytest.mark.parametrize("kernel", ["matmul", "fused"])
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("families", ["bernoulli", "categorical", "normal"])
def test_cuda_graph_training_and_inference_equal_cpu(kernel: str, fuse: bool, families: str) -> None:
    """The CUDA fast path (whole EM step captured as one CUDA graph, optionally fused by
    torch.compile; bucketed inference graphs; either einsum kernel) computes the same numbers as
    eager CPU code."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    from oracles import CATEGORICAL3

    family = {"bernoulli": BERNOULLI, "categorical": CATEGORICAL3, "normal": NORMAL}[families]
    layered = layer(rat_graph([family] * 8, depth=2, replicas=3, k=4))
    plans = {"cpu": lower(layered), "cuda": lower(layered, target="cuda", kernel=kernel)}
    plan = plans["cpu"]
    params = init_parameters(plan, 0)
    rng = np.random.default_rng(1)
    if families == "normal":
        x = rng.normal(size=(250, 8))
    else:
        x = rng.integers(0, 2, (250, 8)).astype(float)
    observed = rng.random((250, 8)) < 0.7
    order = rng.permutation(250)
    results = {}
    for device in ("cpu", "cuda"):
        backend = create_backend("torch", plans[device], device=device, dtype="float64", fuse=fuse and device == "cuda")
        p = backend.put(params)
        data = backend.upload(np.where(observed, x, 0), observed, None)
        for _ in range(2):
            p, total = backend.train_epoch(p, data, order, 64, 0.3)
        batch = Batch(np.where(observed, x, 0)[:37], observed[:37])  # a partial inference bucket
        results[device] = (backend.get(p), total, backend.log_likelihood(p, batch),
                           backend.log_likelihood(p, batch, max_product=True))
    cpu, cuda = results["cpu"], results["cuda"]
    for name in cpu[0]:
        np.testing.assert_allclose(cuda[0][name], cpu[0][name], rtol=1e-9, atol=1e-11)
    assert math.isclose(cuda[1], cpu[1], rel_tol=1e-10)
    np.testing.assert_allclose(cuda[2], cpu[2], rtol=1e-10)
    np.testing.assert_allclose(cuda[3], cpu[3], rtol=1e-10)


@pytest.mark.parametrize("fuse", [False, True])
def test_fused_kernel_float32_training_matches_float64_reference(fuse: bool) -> None:
    """Wide layers (K=24) through the fused kernel in float32 on the captured path:
    log-likelihoods and parameters after two EM epochs close to the float64 CPU reference."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    layered = layer(rat_graph([NORMAL] * 16, depth=2, replicas=2, k=24))
    cuda_plan = lower(layered, target="cuda", kernel="fused")
    cpu_plan = lower(layered)
    params = init_parameters(cpu_plan, 0)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 16))
    observed = rng.random(x.shape) < 0.8
    order = rng.permutation(300)
    results = {}
    for device, plan, dtype in (("cpu", cpu_plan, "float64"), ("cuda", cuda_plan, "float32")):
        backend = create_backend("torch", plan, device=device, dtype=dtype, fuse=fuse and device == "cuda")
        p = backend.put(params)
        data = backend.upload(np.where(observed, x, 0), observed, None)
        for _ in range(2):
            p, total = backend.train_epoch(p, data, order, 100, 0.3)
        results[device] = (backend.get(p), total, backend.log_likelihood(p, Batch(np.where(observed, x, 0)[:50], observed[:50])))
    cpu, cuda = results["cpu"], results["cuda"]
    assert math.isclose(cuda[1], cpu[1], rel_tol=1e-4)
    np.testing.assert_allclose(cuda[2], cpu[2], rtol=1e-4)
    for name in cpu[0]:
        np.testing.assert_allclose(cuda[0][name], cpu[0][name], rtol=1e-3, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("fuse", [False, True])
def test_clamped_latents_agree_with_cpu(target: str, fuse: bool) -> None:
    """Latent log-masks on a GPU (CuPy; torch-CUDA with its captured EM step, fused or not):
    log p(x, z), posteriors and resident EM epochs on (x, z) equal the float64 CPU numbers."""
    from dataclasses import replace

    from einc.ir.region_graph import Latent

    if target == "cupy" and fuse:
        pytest.skip("fusion is a torch option")
    name, device = _backend_or_skip(target)
    graph = replace(explicit_graph([BERNOULLI] * 4, k=3),
                    latents=(Latent("a", ((2, 3), 0)), Latent("b", ((0,), 0))))
    plan = plan_of(graph)
    params = init_parameters(plan, 0)
    rng = np.random.default_rng(2)
    x = rng.integers(0, 2, (250, 4)).astype(float)
    observed = rng.random((250, 4)) < 0.8
    z = np.stack([rng.integers(-1, 3, 250), rng.integers(-1, 3, 250)], 1)
    order = rng.permutation(250)
    results = {}
    for where, (backend_name, backend_device) in (("cpu", ("numpy", "cpu")), ("gpu", (name, device))):
        options = {"fuse": fuse} if backend_name == "torch" else {}
        backend = create_backend(backend_name, plan, device=backend_device, dtype="float64", **options)
        p = backend.put(params)
        batch = Batch(np.where(observed, x, 0), observed, None, z)
        results[where] = [backend.log_likelihood(p, batch),
                          *backend.latent_posterior(p, Batch(batch.values, observed), np.zeros(250, dtype=int))]
        data = backend.upload(np.where(observed, x, 0), observed, None, z)
        for _ in range(2):
            p, _total = backend.train_epoch(p, data, order, 64, 0.3)
        results[where].append(backend.get(p))
    for cpu, gpu in zip(results["cpu"][:-1], results["gpu"][:-1]):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-9, atol=1e-11)
    for key, value in results["cpu"][-1].items():
        np.testing.assert_allclose(results["gpu"][-1][key], value, rtol=1e-9, atol=1e-11)
@pytest.mark.parametrize("source", ["examples/tiny.pc", "examples/tiny_hadamard.pc"])
def test_module_on_cuda_equals_cpu_and_compiles(source: str) -> None:
    """model.module() on CUDA (issue 10): log p and every gradient equal the float64 CPU module's,
    NaN = missing; torch.compile (inductor) of the CUDA module gives the same values."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    import einc
    from pathlib import Path

    path = str(Path(__file__).resolve().parent.parent / source)
    columns = einc.compile(path).graph.num_columns
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2, (40, columns)).astype(np.float64)
    x[rng.random(x.shape) < 0.2] = np.nan
    results = {}
    for device in ("cpu", "cuda"):
        module = einc.compile(path, device=device, dtype="float64", seed=0).module()
        value = module(torch.as_tensor(x, device=device))
        value.sum().backward()
        grads = {name: p.grad.detach().cpu().numpy() for name, p in module.named_parameters()}
        results[device] = (value.detach().cpu().numpy(), grads, module)
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=1e-10)
    for name, grad in results["cpu"][1].items():
        np.testing.assert_allclose(results["cuda"][1][name], grad, rtol=1e-8, atol=1e-12, err_msg=name)
    compiled = torch.compile(results["cuda"][2])
    np.testing.assert_allclose(compiled(torch.as_tensor(x, device="cuda")).detach().cpu().numpy(),
                               results["cpu"][0], rtol=1e-10)


def test_vae_module_trains_on_cuda() -> None:
    """A vae circuit's module on CUDA: Adam steps on the IWAE bound raise the model's estimate."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    import einc

    text = "var img[4, 4] : categorical(4)\nleaf img ~ vae(latent = 2, hidden = [8])\ninputs 2\nsums 2\n" \
           "structure poon_domingos(delta = 2)\n"
    model = einc.compile(text, device="cuda", seed=0)
    rng = np.random.default_rng(0)
    x = np.where(rng.random((256, 1)) < 0.5, np.tile([3, 3, 0, 0], 4), np.tile([0, 0, 3, 3], 4)).astype(np.float64)
    before = model.log_likelihood(x, samples=50).mean()
    module = model.module()
    optimiser = torch.optim.Adam(module.parameters(), lr=0.03)
    data = torch.as_tensor(x, dtype=torch.float32, device="cuda")
    for _ in range(100):
        loss = -module(data[torch.randint(0, 256, (64,), device="cuda")]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = model.log_likelihood(x, samples=50).mean()
    assert np.isfinite(after) and after > before + 3.0
