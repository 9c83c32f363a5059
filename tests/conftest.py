"""Shared pytest fixtures. Keep this file small: several test modules add to it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

GOLDEN_DIR = Path(__file__).parent / "golden"

# Without a CUDA device, Triton kernels (backends/fused_einsum.py) run under Triton's interpreter,
# which is read when a kernel is defined: set it before any test imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="session")
def _temporary_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests write only into temporary folders: whatever defaults to the user's home (the data
    cache ~/.cache/einc, downloads, Triton's cache) goes to a fresh HOME, for this process and
    every command a test starts. A test that means to use a cache passes its own folder."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
        patch.delenv("EINC_DATA", raising=False)  # the data folder then defaults inside HOME too
        yield home


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tests run many tiny tensors on 2 shared cores: torch's intra-op pool then only contends
    (an index_add of 500 floats took 70 ms with 2 threads under load, 15 µs with one)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def golden() -> Callable[[str, str], None]:
    """``golden(name, text)``: compare ``text`` with ``tests/golden/<name>``.

    Regenerate the files with ``EINC_UPDATE_GOLDEN=1 pytest ...`` (then review the diff); without
    that flag a missing or different file fails the test.
    """
    update = os.environ.get("EINC_UPDATE_GOLDEN") == "1"

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"no golden file {path}; run with EINC_UPDATE_GOLDEN=1 to create it"
        expected = path.read_text(encoding="utf-8")
        assert text == expected, f"output differs from {path} (EINC_UPDATE_GOLDEN=1 regenerates it)"

    return check
