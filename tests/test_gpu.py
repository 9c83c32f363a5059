"""GPU backends (CuPy, torch on CUDA) against the float64 torch-CPU reference.

The same checks as tests/test_array_backend.py, on every circuit there. Marked ``gpu``; each test
skips cleanly where CuPy or a CUDA device is absent, so ``pytest`` stays green on CPU machines.
Run them alone with ``pytest -m gpu``.

``EINC_GPU_TESTS_ON_CPU=1 pytest -m gpu tests/test_gpu.py`` runs the same tests' logic on the CPU
(torch on "cpu" standing for torch-CUDA, the NumPy array backend for CuPy; no CUDA graphs, no
fusion), so that a test's own plumbing is checked before the first GPU run; the comparisons
are then CPU against CPU and prove nothing about a GPU.
"""

from __future__ import annotations

import math
import os

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
ON_CPU = os.environ.get("EINC_GPU_TESTS_ON_CPU") == "1"
GPU = "cpu" if ON_CPU else "cuda"  # the device the tests below put on the GPU


def _need_cuda() -> None:
    if not ON_CPU and not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")


def _xp():
    """CuPy (NumPy when the tests run on the CPU), skipping where CuPy cannot run."""
    if ON_CPU:
        return np
    _backend_or_skip("cupy")
    import cupy

    return cupy


def _cupy_reason() -> str | None:
    """Why the cupy backend cannot run here, or None when it can."""
    try:
        create_backend("cupy", plan_of(explicit_graph([BERNOULLI] * 4)), device="cuda")
    except BackendError as error:
        return str(error)
    return None


def _backend_or_skip(target: str) -> tuple[str, str]:
    """(backend name, device) for a target, skipping the test where it is unavailable."""
    if ON_CPU:
        return ("numpy", "cpu") if target == "cupy" else ("torch", "cpu")
    if target == "cupy":
        reason = _cupy_reason()
        if reason is not None:
            pytest.skip(reason)
        return "cupy", "cuda"
    _need_cuda()
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
    cupy = _xp()
    from einc.backends.array_backend import ArraySampler

    sampler = ArraySampler(cupy, 0)
    n = 200000
    like = cupy.zeros(n)
    assert abs(float(sampler.standard_normal(like).mean())) < 0.02
    assert abs(float(sampler.poisson(cupy.full(n, 3.0)).mean()) - 3.0) < 0.03
    assert abs(float(sampler.binomial(5.0, cupy.full(n, 0.3)).mean()) - 1.5) < 0.02
    probs = cupy.tile(cupy.asarray([0.2, 0.5, 0.3]), (n, 1))
    frequencies = np.bincount(np.asarray(sampler.categorical(probs).tolist()).astype(int), minlength=3) / n
    np.testing.assert_allclose(frequencies, [0.2, 0.5, 0.3], atol=0.01)


# every RAT case; HCLT trees (hadamard products) with the default kernel, and one with the fused
# kernel (each fused case costs a torch.compile of its own on the GPU)
CAPTURED_CASES = [("rat", families, fuse, kernel) for families in ("bernoulli", "categorical", "normal")
                  for fuse in (False, True) for kernel in ("matmul", "fused")]
CAPTURED_CASES += [("tree", families, fuse, "matmul") for families in ("bernoulli", "categorical", "normal")
                   for fuse in (False, True)] + [("tree", "categorical", True, "fused")]
# HCLT patches under an outer-product PD: einsum and hadamard ops in one captured step
CAPTURED_CASES += [("hclt_patches", "bernoulli", False, "matmul"), ("hclt_patches", "normal", True, "fused")]


@pytest.mark.parametrize(("structure", "families", "fuse", "kernel"), CAPTURED_CASES)
def test_cuda_graph_training_and_inference_equal_cpu(kernel: str, fuse: bool, families: str, structure: str) -> None:
    """The CUDA fast path (whole EM step captured as one CUDA graph, optionally fused by
    torch.compile; bucketed inference graphs; either einsum kernel) computes the same numbers as
    eager CPU code, on RAT-SPNs (einsum layers), on HCLTs (hadamard products, tree generator) and
    on HCLT patches under an outer-product circuit (both op kinds in one plan)."""
    _need_cuda()
    from oracles import CATEGORICAL3, tree_graph

    family = {"bernoulli": BERNOULLI, "categorical": CATEGORICAL3, "normal": NORMAL}[families]
    if structure == "rat":
        graph = rat_graph([family] * 8, depth=2, replicas=3, k=4)
    elif structure == "hclt_patches":
        from oracles import make_graph

        from einc.compiler.patch_generators import patch_trees

        regions, partitions = patch_trees(np.arange(8).reshape(2, 4), [2, 2], [-1, 0, 0, 1], patch_product="hadamard")
        graph = make_graph([family] * 8, regions, partitions, k=4)
    else:
        graph = tree_graph([family] * 8, [-1, 0, 0, 1, 1, 2, 5, 5], k=4)
    layered = layer(graph)
    plans = {"cpu": lower(layered), GPU: lower(layered, target="cuda", kernel=kernel)}
    params = init_parameters(plans["cpu"], 0)
    rng = np.random.default_rng(1)
    if families == "normal":
        x = rng.normal(size=(250, 8))
    else:
        x = rng.integers(0, 2, (250, 8)).astype(float)
    observed = rng.random((250, 8)) < 0.7
    order = rng.permutation(250)
    results = []
    for device, plan in (("cpu", plans["cpu"]), (GPU, plans[GPU])):
        backend = create_backend("torch", plan, device=device, dtype="float64",
                                 fuse=fuse and device == "cuda")
        p = backend.put(params)
        data = backend.upload(np.where(observed, x, 0), observed, None)
        for _ in range(2):
            p, total = backend.train_epoch(p, data, order, 64, 0.3)
        batch = Batch(np.where(observed, x, 0)[:37], observed[:37])  # a partial inference bucket
        results.append((backend.get(p), total, backend.log_likelihood(p, batch),
                        backend.log_likelihood(p, batch, max_product=True)))
    cpu, cuda = results
    for name in cpu[0]:
        np.testing.assert_allclose(cuda[0][name], cpu[0][name], rtol=1e-9, atol=1e-11)
    assert math.isclose(cuda[1], cpu[1], rel_tol=1e-10)
    np.testing.assert_allclose(cuda[2], cpu[2], rtol=1e-10)
    np.testing.assert_allclose(cuda[3], cpu[3], rtol=1e-10)


@pytest.mark.parametrize("fuse", [False, True])
def test_fused_kernel_float32_training_matches_float64_reference(fuse: bool) -> None:
    """Wide layers (K=24) through the fused kernel in float32 on the captured path:
    log-likelihoods and parameters after two EM epochs close to the float64 CPU reference."""
    _need_cuda()
    layered = layer(rat_graph([NORMAL] * 16, depth=2, replicas=2, k=24))
    cuda_plan = lower(layered, target="cuda", kernel="fused")
    cpu_plan = lower(layered)
    params = init_parameters(cpu_plan, 0)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 16))
    observed = rng.random(x.shape) < 0.8
    order = rng.permutation(300)
    results = {}
    for key, device, plan, dtype in (("cpu", "cpu", cpu_plan, "float64"), ("cuda", GPU, cuda_plan, "float32")):
        backend = create_backend("torch", plan, device=device, dtype=dtype, fuse=fuse and device == "cuda")
        p = backend.put(params)
        data = backend.upload(np.where(observed, x, 0), observed, None)
        for _ in range(2):
            p, total = backend.train_epoch(p, data, order, 100, 0.3)
        batch = Batch(np.where(observed, x, 0)[:50], observed[:50])
        results[key] = (backend.get(p), total, backend.log_likelihood(p, batch))
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
        options = {"fuse": fuse and not ON_CPU} if backend_name == "torch" else {}
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
    _need_cuda()
    import einc
    from pathlib import Path

    path = str(Path(__file__).resolve().parent.parent / source)
    columns = einc.compile(path).graph.num_columns
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2, (40, columns)).astype(np.float64)
    x[rng.random(x.shape) < 0.2] = np.nan
    results = []
    for device in ("cpu", GPU):
        module = einc.compile(path, device=device, dtype="float64", seed=0).module()
        value = module(torch.as_tensor(x, device=device))
        value.sum().backward()
        grads = {name: p.grad.detach().cpu().numpy() for name, p in module.named_parameters()}
        results.append((value.detach().cpu().numpy(), grads, module))
    cpu, cuda = results
    np.testing.assert_allclose(cuda[0], cpu[0], rtol=1e-10)
    for name, grad in cpu[1].items():
        np.testing.assert_allclose(cuda[1][name], grad, rtol=1e-8, atol=1e-12, err_msg=name)
    compiled = torch.compile(cuda[2])
    np.testing.assert_allclose(compiled(torch.as_tensor(x, device=GPU)).detach().cpu().numpy(),
                               cpu[0], rtol=1e-10)


def test_adam_fit_on_cuda_equals_cpu() -> None:
    """model.fit(method="adam") on CUDA (the module-based trainer, issue 10): the parameters and
    history after two epochs equal the float64 CPU run's (the same shuffles, the same steps)."""
    _need_cuda()
    import einc

    rng = np.random.default_rng(3)
    results = []
    for device in ("cpu", GPU):
        model = einc.compile(rat_graph_source(), device=device, dtype="float64", seed=0)
        x = rng.integers(0, 2, (300, 6)).astype(np.float64) if not results else results[0][2]
        history = model.fit(x, epochs=2, batch_size=50, method="adam", learning_rate=0.05)
        results.append((model.parameters(), [record.train_ll for record in history], x))
    cpu, cuda = results
    np.testing.assert_allclose(cuda[1], cpu[1], rtol=1e-9)
    for name, value in cpu[0].items():
        np.testing.assert_allclose(cuda[0][name], value, rtol=1e-7, atol=1e-10, err_msg=name)


def rat_graph_source() -> str:
    return ("circuit small\nvar x[6] : binary\nleaf x ~ bernoulli\nsums 3\ninputs 3\n"
            "structure random_binary_trees(depth = 2, replicas = 2)\n")


def test_vae_module_trains_on_cuda() -> None:
    """A vae circuit's module on CUDA: Adam steps on the IWAE bound raise the model's estimate."""
    _need_cuda()
    import einc

    text = "var img[4, 4] : categorical(4)\nleaf img ~ vae(latent = 2, hidden = [8])\ninputs 2\nsums 2\n" \
           "structure poon_domingos(delta = 2)\n"
    model = einc.compile(text, device=GPU, seed=0)
    rng = np.random.default_rng(0)
    x = np.where(rng.random((256, 1)) < 0.5, np.tile([3, 3, 0, 0], 4), np.tile([0, 0, 3, 3], 4)).astype(np.float64)
    before = model.log_likelihood(x, samples=50).mean()
    module = model.module()
    optimiser = torch.optim.Adam(module.parameters(), lr=0.03)
    data = torch.as_tensor(x, dtype=torch.float32, device=GPU)
    for _ in range(100):
        loss = -module(data[torch.randint(0, 256, (64,), device=GPU)]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = model.log_likelihood(x, samples=50).mean()
    assert np.isfinite(after) and after > before + 3.0


def test_module_cuda_and_cpu_move_the_model() -> None:
    """``model.module().cuda()`` moves the model with it (issue 19): its queries run on the GPU,
    agree with the CPU, and a torch tensor in gives a CUDA tensor out; ``.cpu()`` comes back."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    import einc

    model = einc.compile("examples/tiny.pc", dtype="float64", seed=0)
    x = np.array([[0, 1, 1, 0], [1, 1, 0, 0], [np.nan, 0, 1, 1]])
    expected = model.log_likelihood(x)
    module = model.module().cuda()
    assert model.device.startswith("cuda") and all(p.is_cuda for p in module.parameters())
    np.testing.assert_allclose(model.log_likelihood(x), expected, rtol=1e-12)
    out = module(torch.as_tensor(x, device="cuda"))
    assert out.is_cuda
    np.testing.assert_allclose(out.detach().cpu().numpy(), expected, rtol=1e-12)
    on_gpu = model.log_likelihood(torch.as_tensor(x, device="cuda"))
    assert isinstance(on_gpu, torch.Tensor) and on_gpu.is_cuda
    assert model.sample(4, seed=0).shape == (4, 4)
    module.cpu()
    assert model.device == "cpu"
    np.testing.assert_allclose(model.log_likelihood(x), expected, rtol=1e-12)


@pytest.mark.parametrize("name", ["rat-mixed", "tree-mixed", "pd-mixed"])
def test_cupy_captured_epochs_equal_uncaptured(name: str) -> None:
    """CuPy's EM step captured as one CUDA graph (backends/cupy_graph.py) gives the uncaptured
    epoch's parameters and Σ log p in float64; the capture must succeed (no fallback)."""
    if ON_CPU:
        pytest.skip("CUDA graphs: tests/test_cupy_graph.py checks this logic on the CPU")
    _backend_or_skip("cupy")
    graph = CIRCUITS[name]()
    plan = plan_of(graph)
    params = init_parameters(plan, 0)
    x = random_data(graph, 250, 0)
    observed = np.random.default_rng(0).random(x.shape) < 0.8
    order = np.random.default_rng(1).permutation(250)
    results = []
    for capture in (False, True):
        backend = create_backend("cupy", plan, device="cuda", dtype="float64", capture=capture)
        p = backend.put(params)
        data = backend.upload(np.where(observed, x, 0), observed, None)
        totals = []
        for _ in range(3):
            p, total = backend.train_epoch(p, data, order, 64, 0.3, 0.01)
            totals.append(total)
        results.append((backend.get(p), totals, backend))
    (plain, plain_totals, _), (captured, captured_totals, backend) = results
    assert backend.capture_error is None and backend.captured_steps, backend.capture_error
    np.testing.assert_allclose(captured_totals, plain_totals, rtol=1e-12)
    for key, value in plain.items():
        np.testing.assert_allclose(captured[key], value, rtol=1e-11, atol=1e-14, err_msg=key)


def test_tf32_precision_on_cuda_is_scoped_and_close_to_fp32() -> None:
    """precision="tf32" (backends/precision.py) on the captured, fused CUDA path: EM epochs and
    log-likelihoods within TF32's error of the fp32 run, and torch's setting restored after
    every call."""
    if ON_CPU:
        pytest.skip("TF32 is a CUDA mode; tests/test_precision.py checks the CPU refusal and the scope")
    _need_cuda()
    import einc

    source = ("circuit wide\nvar x[16] : real\nleaf x ~ normal\nsums 24\ninputs 24\n"
              "structure random_binary_trees(depth = 2, replicas = 2)\n")
    x = np.random.default_rng(0).normal(size=(400, 16))
    before = torch.get_float32_matmul_precision()
    results = {}
    for precision in ("fp32", "tf32"):
        model = einc.compile(source, device="cuda", seed=0, precision=precision)
        assert model.precision == precision
        history = model.fit(x, epochs=2, batch_size=100)
        assert torch.get_float32_matmul_precision() == before
        results[precision] = (model.log_likelihood(x), history[-1].train_ll)
    np.testing.assert_allclose(results["tf32"][0], results["fp32"][0], rtol=2e-2)
    assert math.isclose(results["tf32"][1], results["fp32"][1], rel_tol=2e-2)
