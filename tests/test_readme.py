"""Every code block of README.md runs here, so the README cannot drift from what einc does.

A block is tested by what it is:

- a listing whose first line is ``# PATH`` (``# examples/tiny.pc``) must equal that file (a line
  ``...`` stands for any number of lines);
- a transcript (lines ``$ COMMAND``, each followed by the output it shows) runs every command in a
  scratch folder holding a copy of ``examples/`` and compares the output shown, with ``...``
  standing for any text and line breaks not counting (the README wraps long messages); a shown
  ``error:`` expects exit status 1, anything else 0;
- a block of bare commands (``einc ...``, ``python ...``) runs each one, which must exit 0;
- a ``python`` block runs as a script in that folder (in this process: torch is imported once).

A block that is none of these, or must not run as it stands, carries markers: HTML comments
right before its fence (invisible on the rendered page, plain in the source), one per line:

- ``<!-- readme-test: skip (REASON) -->``: not run; the reason says why (a GPU, the network,
  minutes of training, placeholders). Every skip is reported by pytest with its line and reason;
- ``<!-- readme-test: replace "OLD" "NEW" -->``: run with OLD replaced by NEW (a shorter run);
- ``<!-- readme-test: setup COMMAND -->``: a shell command run first in the folder (input files);
- ``<!-- readme-test: pc-syntax -->``: the block is ``.pc`` text, parsed (its names need not resolve);
- ``<!-- readme-test: output-of COMMAND -->``: the block is COMMAND's output, compared as above.

Failures name the block by its line in README.md and show the difference.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from einc import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
MARKER_KINDS = ("skip", "replace", "setup", "pc-syntax", "output-of")
COMMAND_WORDS = ("einc", "python", "nice", "torchrun", "make")
PYTHON_TIMEOUT = 300


@dataclass
class Block:
    line: int  # the opening fence's line in README.md (1-based)
    language: str
    lines: list[str]  # the body, without the fence's indentation
    markers: list[tuple[str, str]] = field(default_factory=list)  # (kind, argument)

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"

    def marker(self, kind: str) -> list[str]:
        return [argument for name, argument in self.markers if name == kind]


def read_blocks(text: str) -> list[Block]:
    lines = text.split("\n")
    blocks, number = [], 0
    while number < len(lines):
        opening = FENCE.match(lines[number])
        if not opening:
            number += 1
            continue
        indent = len(opening.group(1))
        end = number + 1
        while end < len(lines) and not re.match(r"^\s*```\s*$", lines[end]):
            end += 1
        body = [line[indent:] if not line[:indent].strip() else line for line in lines[number + 1: end]]
        block = Block(number + 1, opening.group(2), body)
        above = number - 1
        while above >= 0 and (MARKER.match(lines[above]) or not lines[above].strip()):
            found = MARKER.match(lines[above])
            if found:
                kind, _, argument = found.group(1).partition(" ")
                block.markers.insert(0, (kind, argument.strip()))
            above -= 1
        blocks.append(block)
        number = end + 1
    return blocks


BLOCKS = read_blocks(README.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Comparing shown output with real output


def matches(shown: list[str], actual: str) -> bool:
    """Whether ``actual`` is the text ``shown``: whitespace and line breaks count as one space,
    and ``...`` stands for any text."""
    segments = [" ".join(part.split()) for part in re.split(r"(?:^|(?<=\s))\.\.\.(?=\s|$)", "\n".join(shown))]
    text = " ".join(actual.split())
    if len(segments) == 1:
        return text == segments[0]
    if not text.startswith(segments[0]) or not text.endswith(segments[-1]):
        return False
    position, end = len(segments[0]), len(text) - len(segments[-1])
    for segment in segments[1:-1]:
        found = text.find(segment, position, end)
        if found < 0:
            return False
        position = found + len(segment)
    return position <= end


def difference(shown: list[str], actual: str) -> str:
    return "\n".join(difflib.unified_diff(shown, actual.rstrip("\n").split("\n"), "README shows", "einc printed",
                                          lineterm=""))


# --------------------------------------------------------------------------------------------
# Running commands


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch folder holding a copy of examples/, the working directory of every command."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # nothing reaches the user's ~/.cache
    return tmp_path


def substitute(block: Block, text: str) -> str:
    for argument in block.marker("replace"):
        old, new = shlex.split(argument)
        if old not in text and old not in "\n".join(block.lines):
            raise AssertionError(f"{block.where}: replace marker: {old!r} is not in the block")
        text = text.replace(old, new)
    return text


def shell_environment() -> dict[str, str]:
    """The environment of setup commands and subprocesses: this interpreter's `python` and `einc` first."""
    environment = dict(os.environ)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    return environment


def run_setup(block: Block, folder: Path) -> None:
    for command in block.marker("setup"):
        done = subprocess.run(["bash", "-c", command], cwd=folder, env=shell_environment(), capture_output=True,
                              text=True, timeout=PYTHON_TIMEOUT)
        assert done.returncode == 0, f"{block.where}: setup {command!r} failed: {done.stderr}"


def run_command(command: str, folder: Path) -> tuple[int, str]:
    """Run one README command line; (exit status, stdout and stderr as printed)."""
    words = shlex.split(command)
    while words and words[0] == "nice":
        words = words[1:]
    if words[0] == "einc":
        threads = torch.get_num_threads()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            status = cli.main(words[1:])
        torch.set_num_threads(threads)  # --threads auto may change the process-wide setting
        return status, printed.getvalue()
    if words[0] == "python":
        done = subprocess.run([sys.executable, *words[1:]], cwd=folder, env=shell_environment(),
                              capture_output=True, text=True, timeout=PYTHON_TIMEOUT)
        return done.returncode, done.stdout + done.stderr
    raise AssertionError(f"no rule to run {words[0]!r}; mark the block")


def logical_lines(lines: list[str]) -> list[tuple[int, str]]:
    """(offset of the first line, the line with its backslash continuations joined)."""
    joined, offset, current = [], 0, None
    for index, line in enumerate(lines):
        if current is None:
            offset, current = index, ""
        current += line[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            joined.append((offset, current))
            current = None
    if current is not None:
        joined.append((offset, current))
    return joined


def strip_comment(command: str) -> str:
    """A command without its trailing ``# comment`` (outside quotes)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=False)
    lexer.whitespace_split, lexer.commenters = True, "#"
    return shlex.join(list(lexer))


def check_transcript(block: Block, folder: Path) -> None:
    entries: list[tuple[int, str, list[str]]] = []  # (line, command, output shown)
    for offset, line in logical_lines(block.lines):
        if line.startswith("$ "):
            entries.append((block.line + 1 + offset, line[2:], []))
        elif entries:
            entries[-1][2].append(line)
        elif line.strip():
            raise AssertionError(f"{block.where}: text before the first `$ ` command: {line!r}")
    for line, shown_command, shown in entries:
        command = substitute(block, strip_comment(shown_command))
        status, printed = run_command(command, folder)
        while shown and not shown[-1].strip():
            shown.pop()
        expected_status = 1 if any("error:" in text for text in shown) else 0
        assert status == expected_status, (f"README.md:{line}: `{command}` exited {status}, expected "
                                           f"{expected_status}; it printed:\n{printed}")
        if shown:
            assert matches(shown, printed), (f"README.md:{line}: `{command}`: the output differs from the "
                                             f"README's:\n{difference(shown, printed)}")


def check_commands(block: Block, folder: Path) -> None:
    for offset, line in logical_lines(block.lines):
        command = strip_comment(line)
        if not command:
            continue
        command = substitute(block, command)
        status, printed = run_command(command, folder)
        assert status == 0, f"README.md:{block.line + 1 + offset}: `{command}` exited {status}:\n{printed}"


def check_listing(block: Block, path: str) -> None:
    file = ROOT / path
    assert file.is_file(), f"{block.where}: the listing names {path}, which does not exist"
    shown = [line.rstrip() for line in block.lines[1:]]
    while shown and not shown[-1]:
        shown.pop()
    actual = [line.rstrip() for line in file.read_text(encoding="utf-8").rstrip("\n").split("\n")]
    assert lines_match(shown, actual), (
        f"{block.where}: the listing differs from {path}:\n"
        + "\n".join(difflib.unified_diff(shown, actual, "README shows", path, lineterm="")))


def lines_match(shown: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` is ``shown`` line for line, a line ``...`` standing for any number of lines."""
    segments, current = [], []
    for line in shown:
        if line.strip() == "...":
            segments.append(current)
            current = []
        else:
            current.append(line)
    segments.append(current)
    first, last = segments[0], segments[-1]
    if len(segments) == 1:
        return actual == first
    if actual[: len(first)] != first or (last and actual[-len(last):] != last):
        return False
    position, end = len(first), len(actual) - len(last)
    for segment in segments[1:-1]:
        found = next((i for i in range(position, end - len(segment) + 1) if actual[i: i + len(segment)] == segment), None)
        if found is None:
            return False
        position = found + len(segment)
    return position <= end


def check_pc_syntax(block: Block) -> None:
    from einc.grammar.parser import parse
    from einc.ir.diagnostics import EincError

    text = "\n".join(line for line in block.lines if line.strip() != "...")
    try:
        parse(text, f"README.md:{block.line}")
    except EincError as error:
        raise AssertionError(f"{block.where}: the .pc text does not parse:\n{error.render('einc')}") from None


def check_python(block: Block, folder: Path) -> None:
    """Run the block as a script, in this process (torch is imported once, with one thread; the
    working directory is ``folder``); a traceback names README.md and the block's lines."""
    code = substitute(block, "\n" * block.line + "\n".join(block.lines))  # line numbers as in README.md
    threads = torch.get_num_threads()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, str(README), "exec"), {"__name__": "__main__"})  # noqa: S102 - the README's own code
    except Exception:  # noqa: BLE001 - any failure of the block is the finding
        import traceback

        raise AssertionError(f"{block.where}: the python block failed:\n{printed.getvalue()}"
                             f"{traceback.format_exc()}") from None
    finally:
        torch.set_num_threads(threads)


def kind_of(block: Block) -> str:
    if block.marker("skip"):
        return "skip"
    if block.marker("pc-syntax"):
        return "pc-syntax"
    if block.marker("output-of"):
        return "output-of"
    if block.language == "python":
        return "python"
    if block.lines and re.fullmatch(r"# (\S+\.\w+)\s*", block.lines[0]):
        return "listing"
    if any(line.startswith("$ ") for line in block.lines):
        return "transcript"
    commands = [line for _, line in logical_lines(block.lines) if line.strip()]
    if commands and all(line.split()[0] in COMMAND_WORDS for line in commands):
        return "commands"
    return "unknown"


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_readme_block(block: Block, folder: Path) -> None:
    kind = kind_of(block)
    if kind == "skip":
        pytest.skip(f"{block.where}: {block.marker('skip')[0]}")
    assert kind != "unknown", (f"{block.where}: this block is not a listing, transcript, command block or python; "
                               f"mark what it is or why it does not run (see tests/test_readme.py)")
    run_setup(block, folder)
    if kind == "pc-syntax":
        check_pc_syntax(block)
    elif kind == "output-of":
        command = block.marker("output-of")[0]
        status, printed = run_command(substitute(block, command), folder)
        assert matches(block.lines, printed), (f"{block.where}: `{command}`: the output differs from the "
                                               f"README's:\n{difference(block.lines, printed)}")
    elif kind == "python":
        check_python(block, folder)
    elif kind == "listing":
        check_listing(block, block.lines[0][2:].strip())
    elif kind == "transcript":
        check_transcript(block, folder)
    else:
        check_commands(block, folder)


def test_markers_are_known_and_skips_say_why() -> None:
    skipped = []
    for block in BLOCKS:
        for kind, argument in block.markers:
            assert kind in MARKER_KINDS, f"{block.where}: unknown readme-test marker {kind!r}"
            if kind == "skip":
                assert re.fullmatch(r"\(.{10,}\)", argument), f"{block.where}: a skip needs a reason: skip (WHY)"
                skipped.append(block.where)
        assert len(block.marker("skip")) <= 1 and not (block.marker("skip") and len(block.markers) > 1), (
            f"{block.where}: a skipped block takes no other markers")
    # the count is part of the contract: a new skip is a visible change to this number
    print(f"README.md: {len(BLOCKS)} code blocks, {len(skipped)} skipped: {', '.join(skipped)}")
    assert len(BLOCKS) - len(skipped) >= len(skipped), "most README blocks must run"


# --------------------------------------------------------------------------------------------
# The checker itself


def test_matches_elides_and_ignores_wrapping() -> None:
    assert matches(["a b", "...", "e"], "a b\nc d\ne\n")
    assert matches(["a b ...", "e"], "a b c\n  e")
    assert matches(["a ... e"], "a e")
    assert not matches(["a b", "e"], "a b c e")
    assert not matches(["a", "...", "f"], "a b e")


def test_lines_match_elides_lines() -> None:
    assert lines_match(["a", "...", "d"], ["a", "b", "c", "d"])
    assert lines_match(["a", "...", "c", "..."], ["a", "b", "c", "d"])
    assert lines_match(["a", "..."], ["a"])
    assert not lines_match(["a", "c"], ["a", "b", "c"])
    assert not lines_match(["a", "...", "c", "...", "b"], ["a", "b", "c"])


def test_read_blocks_finds_markers_and_line_numbers() -> None:
    text = "x\n<!-- readme-test: skip (a reason here) -->\n\n```\n$ einc\n```\n  ```python\n  print(1)\n  ```\n"
    first, second = read_blocks(text)
    assert (first.line, first.markers, first.lines) == (4, [("skip", "(a reason here)")], ["$ einc"])
    assert (second.line, second.language, second.lines, second.markers) == (7, "python", ["print(1)"], [])
    (third,) = read_blocks("```python\nif x:\n    y\n```\n")
    assert third.lines == ["if x:", "    y"]  # indentation inside the block is kept


def test_a_drifted_listing_names_the_line(tmp_path: Path) -> None:
    block = Block(12, "", ["# examples/tiny.pc", "circuit tiny", "var A : binary"])
    with pytest.raises(AssertionError, match=r"README.md:12: the listing differs from examples/tiny.pc"):
        check_listing(block, "examples/tiny.pc")


def test_a_drifted_transcript_names_the_line_and_the_difference(folder: Path) -> None:
    block = Block(40, "", ["$ einc check examples/tiny.pc", "circuit tiny: ok (explicit region graph)", "...",
                           "parameters: 191 (leaf 12, einsum 176, mixing 2)"])
    with pytest.raises(AssertionError) as failure:
        check_transcript(block, folder)
    message = str(failure.value)
    assert message.startswith("README.md:41: `einc check examples/tiny.pc`: the output differs")
    assert "-parameters: 191" in message and "+parameters: 190" in message
