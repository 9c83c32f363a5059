"""``model.module()``: the circuit as a torch.nn.Module, for every circuit.

Its forward is log p(x) with NaN = missing (the model's own values), its gradients equal finite
differences, its parameters are the model's (a step on one is seen by the other), and it runs
under ``torch.compile``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import einc
from einc.errors import DataError, EincError

# every exponential family, a mixture at the root, two heads
MIXED = """circuit mixed
var A : binary
var B : categorical(3)
var C : real
var D : count
leaf A ~ bernoulli
leaf B ~ categorical
leaf C ~ normal
leaf D ~ poisson
sums 3
inputs 2
heads 2
{A, B, C, D} -> {A, B} * {C, D}
{A, B, C, D} -> {A, C} * {B, D}
{A, B} -> A * B
{C, D} -> C * D
{A, C} -> A * C
{B, D} -> B * D
"""


def _data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.stack([rng.integers(0, 2, n), rng.integers(0, 3, n), rng.normal(size=n), rng.poisson(2.0, n)], 1)
    return x.astype(np.float64)


def _binary(columns: int) -> object:
    return lambda n, seed: np.random.default_rng(seed).integers(0, 2, (n, columns)).astype(np.float64)


# (circuit, data(n, seed)): outer products with a mixing root and two heads; element-wise
# (hadamard) products of several parts (issue 8); a learned hidden Chow-Liu tree (K = 16)
CIRCUITS = {
    "mixed": (MIXED, _data),
    "hadamard": ("examples/tiny_hadamard.pc", _binary(5)),
    "hclt": ("examples/nltcs_hclt.pc", _binary(16)),
    # both product kinds in one circuit: HCLT patches under an outer-product circuit over them
    "hclt_patches": ("var img[2, 6] : binary\nleaf img ~ bernoulli\nsums 2\n"
                     "structure patch_trees(size = [2, 3], parents = [-1, 0, 0, 1, 1, 2], patch_product = hadamard)\n",
                     _binary(12)),
}


@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_forward_is_the_models_log_likelihood_with_nan_as_missing(name: str) -> None:
    source, data = CIRCUITS[name]
    model = einc.compile(source, dtype="float64", seed=1)
    module = model.module()
    x = data(20, 0)
    x[::3, 1] = np.nan
    x[1::4, 2] = np.nan
    out = module(torch.as_tensor(x))
    assert out.shape == ((20, model.plan.heads) if model.plan.heads > 1 else (20,))
    np.testing.assert_allclose(out.detach().numpy(), model.log_likelihood(x), rtol=1e-12)
    # marginalising everything: log 1 = 0 on every head
    np.testing.assert_allclose(module(torch.full((2, x.shape[1]), np.nan, dtype=torch.float64)).detach().numpy(),
                               0.0, atol=1e-12)
    single = einc.compile("examples/tiny.pc", dtype="float64")
    assert single.module()(torch.zeros(5, 4, dtype=torch.float64)).shape == (5,)
    with pytest.raises(DataError, match=r"expected \(N, 4\)"):
        single.module()(torch.zeros(5, 3))


@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_forward_runs_under_inference_mode(name: str) -> None:
    """``torch.inference_mode()``, where PyTorch users evaluate: the same values as under
    ``torch.no_grad()`` (its tensors have no version counter, which the kept leaf
    coefficients of no-grad passes key on), and the model's own queries work there too."""
    source, data = CIRCUITS[name]
    model = einc.compile(source, dtype="float64", seed=1)
    module = model.module()
    x = torch.as_tensor(data(20, 0))
    with torch.no_grad():
        expected = module(x)
    with torch.inference_mode():
        got = module(x)
        again = module(x)
        queried = model.log_likelihood(x.numpy())
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12)
    np.testing.assert_allclose(again.numpy(), expected.numpy(), rtol=1e-12)
    np.testing.assert_allclose(queried, expected.numpy(), rtol=1e-12)


@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_gradients_equal_finite_differences(name: str) -> None:
    source, data = CIRCUITS[name]
    model = einc.compile(source, dtype="float64", seed=2)
    module = model.module()
    x = torch.as_tensor(data(16, 1))
    x[3, 0] = float("nan")
    # a different weight per head, so that every head's gradient counts
    weights = torch.arange(1.0, model.plan.heads + 1, dtype=torch.float64)

    def objective() -> torch.Tensor:
        out = module(x)
        return (out.reshape(len(x), -1) * weights).sum()

    objective().backward()
    rng = np.random.default_rng(0)
    eps = 1e-6
    checked = 0
    for key, tensor in module.free.items():
        if key.startswith("input") and "indicator" in key:
            continue
        for _ in range(3):
            index = tuple(int(rng.integers(n)) for n in tensor.shape)
            with torch.no_grad():
                original = tensor[index].item()
                tensor[index] = original + eps
                plus = objective().item()
                tensor[index] = original - eps
                minus = objective().item()
                tensor[index] = original
            numeric = (plus - minus) / (2 * eps)
            assert np.isclose(tensor.grad[index].item(), numeric, rtol=1e-5, atol=1e-7), (key, index)
            checked += 1
    assert checked == 3 * len(module.free)


def test_the_fused_einsum_kernel_gives_the_same_module() -> None:
    # issue 14's Triton kernel (its interpreter on the CPU) has its backward registered: the module
    # built on a plan with fused einsum ops gives the same values and gradients as the matmul one
    pytest.importorskip("triton")
    x = torch.as_tensor(np.random.default_rng(0).integers(0, 2, (6, 4)).astype(np.float64))
    x[0, 1] = float("nan")
    results = {}
    for kernel in ("matmul", "fused"):
        model = einc.compile("examples/tiny.pc", dtype="float64", seed=0,
                             options=einc.CompileOptions(einsum_kernel=kernel))
        assert {getattr(op, "kernel", kernel) for op in model.plan.ops} == {kernel}
        module = model.module()
        value = module(x)
        value.sum().backward()
        results[kernel] = (value.detach().numpy(), {n: p.grad.numpy() for n, p in module.named_parameters()})
    np.testing.assert_allclose(results["fused"][0], results["matmul"][0], rtol=1e-12)
    for key, grad in results["matmul"][1].items():
        np.testing.assert_allclose(results["fused"][1][key], grad, rtol=1e-10, atol=1e-14, err_msg=key)


def test_parameters_are_shared_with_the_model() -> None:
    model = einc.compile("examples/tiny.pc", dtype="float64", seed=0)
    module = model.module()
    assert model.module() is module
    x = np.array([[0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    before = model.log_likelihood(x)
    initial = model.parameters()
    optimiser = torch.optim.Adam(module.parameters(), lr=0.1)
    for _ in range(5):
        optimiser.zero_grad()
        (-module(torch.as_tensor(x)).mean()).backward()
        optimiser.step()
    after = model.log_likelihood(x)
    assert after.mean() > before.mean() + 0.1  # the model sees the optimiser's steps
    np.testing.assert_allclose(after, module(torch.as_tensor(x)).detach().numpy(), rtol=1e-12)
    # and the module sees the model's changes: set_parameters, EM training, saving
    model.set_parameters(initial)
    np.testing.assert_allclose(module(torch.as_tensor(x)).detach().numpy(), before, rtol=1e-10)
    model.fit(x, epochs=2, batch_size=3)
    np.testing.assert_allclose(module(torch.as_tensor(x)).detach().numpy(), model.log_likelihood(x), rtol=1e-10)
    for value in model.parameters().values():
        assert np.all(np.isfinite(value))


def test_module_needs_the_torch_backend() -> None:
    model = einc.compile("examples/tiny.pc", backend="numpy")
    with pytest.raises(EincError, match="needs the torch backend"):
        model.module()


def test_module_runs_under_torch_compile() -> None:
    # the default (inductor) compiler, on the smallest circuit: a cold compile takes a while
    model = einc.compile("examples/tiny.pc", dtype="float64", seed=3)
    module = model.module()
    x = torch.as_tensor(np.random.default_rng(2).integers(0, 2, (8, 4)).astype(np.float64))
    x[0, 3] = float("nan")
    compiled = torch.compile(module)
    out = compiled(x)
    np.testing.assert_allclose(out.detach().numpy(), module(x).detach().numpy(), rtol=1e-10)
    out.sum().backward()
    assert all(p.grad is not None and torch.all(torch.isfinite(p.grad)) for p in module.parameters())


def test_a_hadamard_module_runs_under_torch_compile() -> None:
    # the ahead-of-time autograd tracer with eager kernels: the same tracing as the inductor
    model = einc.compile("examples/tiny_hadamard.pc", dtype="float64", seed=4)
    module = model.module()
    compiled = torch.compile(module, backend="aot_eager")
    for rows in (6, 9):
        x = torch.as_tensor(np.random.default_rng(rows).integers(0, 2, (rows, 5)).astype(np.float64))
        x[0, 2] = float("nan")
        out = compiled(x)
        np.testing.assert_allclose(out.detach().numpy(), model.log_likelihood(x.numpy()), rtol=1e-10)
        out.sum().backward()
    assert all(p.grad is not None and torch.all(torch.isfinite(p.grad)) for p in module.parameters())


def test_a_vae_module_runs_under_torch_compile() -> None:
    # the inductor compiles this in minutes on two cores: the ahead-of-time autograd tracer
    # with eager kernels checks the same tracing (randn inside the graph, symbolic batches)
    text = "var x[4] : binary\nleaf x ~ vae(latent = 2, hidden = [4])\ninputs 2\nx -> x[0:2] * x[2:4]\n"
    model = einc.compile(text, seed=0)
    compiled = torch.compile(model.module(), backend="aot_eager")
    for rows in (5, 7):
        x = torch.as_tensor(np.random.default_rng(rows).integers(0, 2, (rows, 4)).astype(np.float32))
        out = compiled(x)
        assert out.shape == (rows,) and torch.all(torch.isfinite(out)) and torch.all(out < 0.5)
        out.sum().backward()


def test_the_readme_training_loop_runs(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # the example of README's "The circuit as a torch.nn.Module", run as written
    root = Path(__file__).resolve().parent.parent
    section = (root / "README.md").read_text().split("### The circuit as a `torch.nn.Module`")[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None, "README: the module section lost its python example"
    monkeypatch.chdir(root)
    exec(compile(code.group(1), "README.md", "exec"), {})
    printed = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert -6.3 < printed < -5.9  # the comment's "about -6.05" (-9.6 before training): the model saw the steps


# ---------------------------------------------------------------------------------------------
# .to() / .double() / .half(): the model moves with its module, or nothing moves (issue 19)


def test_double_and_float_move_the_model_with_its_module() -> None:
    model = einc.compile(MIXED, seed=2)  # float32
    x = _data(12, 1)
    x[::4, 2] = np.nan
    reference = einc.compile(MIXED, dtype="float64", seed=2).log_likelihood(x)
    module = model.module()
    assert module.double() is module
    assert (model.dtype, model.device) == ("float64", "cpu")
    assert all(p.dtype == torch.float64 for p in module.parameters())
    np.testing.assert_allclose(model.log_likelihood(x), reference, rtol=1e-6)  # float32 parameters, widened
    out = module(torch.as_tensor(x))
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.detach().numpy(), model.log_likelihood(x), rtol=1e-12)
    # every query and training run at the new dtype; the module sees the training
    assert model.sample(5, seed=0).shape == (5, 4)
    model.fit(x, epochs=1, batch_size=4)
    model.fit(x, epochs=1, batch_size=4, method="adam")
    np.testing.assert_allclose(module(torch.as_tensor(x)).detach().numpy(), model.log_likelihood(x), rtol=1e-12)
    for move in (lambda m: m.float(), lambda m: m.to(torch.float64), lambda m: m.to("cpu", torch.float32)):
        move(module)
        assert model.dtype == str(next(module.parameters()).dtype).removeprefix("torch.")
        assert module(torch.as_tensor(x)).dtype == next(module.parameters()).dtype
        assert np.all(np.isfinite(model.log_likelihood(x)))
    assert model.dtype == "float32"


@pytest.mark.parametrize("move, message", [
    (lambda m: m.half(), "float32 or float64, not float16"),
    (lambda m: m.bfloat16(), "float32 or float64, not bfloat16"),
    (lambda m: m.to(torch.float16), "float32 or float64, not float16"),
    (lambda m: m.to("meta"), "'cpu' or 'cuda', not 'meta'"),
], ids=["half", "bfloat16", "to-float16", "to-meta"])
def test_unsupported_conversions_are_refused_and_change_nothing(move, message) -> None:
    model = einc.compile("examples/tiny.pc", seed=0)
    module = model.module()
    x = np.zeros((1, 4))
    before = model.log_likelihood(x)
    with pytest.raises(einc.BackendError, match=re.escape(message)):
        move(module)
    assert (model.dtype, model.device) == ("float32", "cpu")
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in module.parameters())
    np.testing.assert_array_equal(model.log_likelihood(x), before)
    np.testing.assert_array_equal(module(torch.zeros(1, 4)).detach().numpy(), before)


def test_a_module_inside_a_users_module_moves_with_it() -> None:
    model = einc.compile("examples/tiny.pc", seed=0)
    outer = torch.nn.Sequential(torch.nn.Identity(), model.module()).double()
    assert model.dtype == "float64"
    np.testing.assert_allclose(outer(torch.zeros(2, 4, dtype=torch.float64)).detach().numpy(),
                               model.log_likelihood(np.zeros((2, 4))), rtol=1e-12)


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_a_copied_module_computes_the_same_and_trains_on_its_own(how) -> None:
    """``copy.deepcopy`` (keeping the best model so far) and ``torch.save``/``torch.load`` of a
    whole module, on an HCLT (hadamard products, whose executor tables are keyed by the plan's
    ops): the copy gives the same log-likelihoods and gradients, and a step on it leaves the
    original as it was."""
    import copy
    import io
    source = Path("examples/nltcs_hclt.pc").read_text().replace("sums 16", "sums 3").replace("inputs 16", "inputs 3")
    model = einc.compile(source, dtype="float64", seed=3)
    module = model.module()
    x = torch.as_tensor(np.random.default_rng(0).integers(0, 2, (10, 16)).astype(np.float64))
    before = module(x)
    before.sum().backward()
    if how == "deepcopy":
        twin = copy.deepcopy(module)
    else:
        buffer = io.BytesIO()
        torch.save(module, buffer)
        buffer.seek(0)
        twin = torch.load(buffer, weights_only=False)
    twin.zero_grad()
    out = twin(x)
    out.sum().backward()
    torch.testing.assert_close(out, before, rtol=1e-12, atol=1e-12)
    for (name, mine), (_, theirs) in zip(module.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(theirs.grad, mine.grad, rtol=1e-12, atol=1e-12, msg=name)
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.add_(0.1)
    assert not torch.allclose(twin(x), before)
    torch.testing.assert_close(module(x), before, rtol=0, atol=0)

# ---------------------------------------------------------------------------------------------
# values outside a variable's domain: probability 0, −inf, no NaN in gradients (issue 19)


def test_out_of_domain_values_give_minus_infinity_per_row() -> None:
    model = einc.compile(MIXED, dtype="float64", seed=1)
    module = model.module()
    good = _data(8, 3)
    x = good.copy()
    x[0, 0] = 3        # binary A = 3
    x[1, 1] = 1.5      # categorical B, not an integer
    x[2, 1] = 3        # categorical(3): 0..2
    x[3, 3] = -1       # a negative count
    x[4, 2] = np.inf   # a real must be finite
    x[5, 0] = np.nan   # missing, not out of domain
    out = module(torch.as_tensor(x))
    assert out.shape == (8, 2)
    assert torch.all(out[:5] == -torch.inf)
    np.testing.assert_allclose(out[5:].detach().numpy(), model.log_likelihood(x[5:]), rtol=1e-12)
    with pytest.raises(DataError, match="outside the domain"):  # the model's queries still refuse
        model.log_likelihood(x)
    # the in-domain rows' gradients are those of the same rows alone, finite
    def gradients(rows: np.ndarray, keep: slice) -> list[torch.Tensor]:
        module.zero_grad()
        module(torch.as_tensor(rows))[keep].sum().backward()
        return [p.grad.clone() for p in module.parameters()]

    for mixed, alone in zip(gradients(x, slice(5, None)), gradients(x[5:], slice(None))):
        assert torch.all(torch.isfinite(mixed))
        torch.testing.assert_close(mixed, alone)
    module.zero_grad()
    loss = -module(torch.as_tensor(x)).sum()
    assert loss.item() == np.inf
    loss.backward()
    assert all(torch.all(torch.isfinite(p.grad)) for p in module.parameters())


def test_binary_three_is_not_a_finite_log_likelihood() -> None:
    """The reproduction of issue 19: module()(x) with a binary variable = 3 gave −1.71."""
    model = einc.compile("examples/tiny.pc", seed=0)
    out = model.module()(torch.tensor([[3.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2]]))
    assert out[0] == -torch.inf and out[2] == -torch.inf and torch.isfinite(out[1])
