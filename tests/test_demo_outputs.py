"""The demos leave the checkout as it was: what they write goes to a folder git ignores, and only
``make docs-images`` (run on purpose) replaces the README's pictures."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def demo_images_module():
    """examples/demo_images.py (a script, not a package module), loaded for its constants."""
    spec = importlib.util.spec_from_file_location("demo_images", ROOT / "examples" / "demo_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_demo_images_write_into_an_ignored_folder() -> None:
    target = demo_images_module().DEFAULT_OUT / "mnist_samples.png"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(target)], cwd=ROOT)
    assert ignored.returncode == 0, f"{target.relative_to(ROOT)} is not ignored by git"


def test_docs_images_copies_only_the_tracked_pictures() -> None:
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^DOCS_IMAGES := (.*)$", makefile, re.MULTILINE).group(1).split()
    shipped = sorted(path.name for path in (ROOT / "docs" / "images").glob("*.png"))
    assert sorted(listed) == shipped  # no picture added beside the tracked ones, none left stale
