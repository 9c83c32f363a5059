"""precision="fp32"|"tf32" (backends/precision.py): refused where TF32 cannot apply, scoped where it can.

The CUDA effect itself is checked in tests/test_gpu.py (marked gpu); here: the refusals, the
scoped setting and its restoration (also when a call fails, and under either of torch's two
precision APIs), the wrapper's pass-through, and the CLI flag.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import einc
from einc.backends.precision import Scoped, check_precision, matmul_precision, with_precision
from einc.errors import BackendError

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "examples" / "tiny.pc")


@pytest.mark.parametrize(("backend", "device", "dtype", "words"), [
    ("torch", "cpu", "float32", "needs a CUDA device"),
    ("numpy", "cpu", "float32", "the numpy backend computes in IEEE float32"),
    ("cupy", "cuda", "float32", "the cupy backend"),
    ("torch", "cuda", "float64", "applies to float32 matmuls"),
])
def test_tf32_is_refused_where_it_cannot_apply(backend: str, device: str, dtype: str, words: str) -> None:
    with pytest.raises(BackendError, match=words):
        check_precision("tf32", backend, device, dtype)
    check_precision("fp32", backend, device, dtype)  # the default is accepted everywhere


def test_compile_refuses_tf32_on_the_cpu_and_unknown_precisions() -> None:
    with pytest.raises(BackendError, match="precision 'tf32' needs a CUDA device"):
        einc.compile(TINY, precision="tf32")
    with pytest.raises(BackendError, match="unknown precision 'bf16'"):
        einc.compile(TINY, precision="bf16")
    model = einc.compile(TINY)
    assert model.precision == "fp32"
    assert not isinstance(model.backend, Scoped)  # nothing to steer on the CPU: the backend itself


def test_the_scope_sets_and_restores_torch_setting_even_on_errors() -> None:
    before = torch.get_float32_matmul_precision()
    with matmul_precision("tf32"):
        assert torch.get_float32_matmul_precision() == "high"
        with matmul_precision("fp32"):
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(ZeroDivisionError), matmul_precision("tf32"):
        1 / 0
    assert torch.get_float32_matmul_precision() == before


def test_the_scope_keeps_to_torch_newer_api_when_the_process_used_it() -> None:
    """After ``torch.backends.cuda.matmul.fp32_precision = ...`` torch refuses the older getter;
    the scope then reads and restores through the newer API (own process: the state is sticky)."""
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("this torch has only the older precision API")
    code = (
        "import torch\n"
        "from einc.backends.precision import matmul_precision\n"
        "m = torch.backends.cuda.matmul\n"
        "m.fp32_precision = 'ieee'\n"
        "with matmul_precision('tf32'):\n"
        "    assert m.fp32_precision == 'tf32', m.fp32_precision\n"
        "assert m.fp32_precision == 'ieee', m.fp32_precision\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


class _Recorder:
    """A stand-in backend whose methods report the precision torch had when they ran."""

    name = "torch"
    device = "cuda"
    fuse = True

    def log_likelihood(self, x: np.ndarray) -> str:
        return torch.get_float32_matmul_precision()

    def gradient_trainer(self) -> "_Recorder":
        return _Recorder()

    def failing(self) -> None:
        raise ValueError("boom")


def test_the_wrapper_scopes_every_call_and_passes_attributes_through() -> None:
    before = torch.get_float32_matmul_precision()
    backend = with_precision(_Recorder(), "tf32")
    assert isinstance(backend, Scoped)
    assert backend.log_likelihood(np.zeros(2)) == "high"
    assert backend.log_likelihood.__name__ == "log_likelihood"
    trainer = backend.gradient_trainer()  # objects that run passes later are scoped too
    assert isinstance(trainer, Scoped) and trainer.log_likelihood(None) == "high"
    assert with_precision(_Recorder(), "fp32").log_likelihood(None) == "highest"  # fp32 enforced on CUDA
    assert backend.fuse is True and backend.name == "torch"
    backend.fuse = False  # writes reach the backend
    assert backend._target.fuse is False
    with pytest.raises(ValueError, match="boom"):
        backend.failing()
    assert torch.get_float32_matmul_precision() == before


def test_cli_train_refuses_tf32_on_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from einc.cli import main

    data = tmp_path / "d.csv"
    np.savetxt(data, np.random.default_rng(0).integers(0, 2, (20, 4)), delimiter=",", fmt="%d")
    code = main(["train", TINY, "--data", str(data), "--epochs", "1", "--precision", "tf32", "-o", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("einc: error:") and "precision 'tf32' needs a CUDA device" in err
    assert "Traceback" not in err and not (tmp_path / "m.npz").exists()
