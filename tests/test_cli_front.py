"""The front-end CLI (`einc check`, `einc compile --emit`) and golden files for its outputs.

Golden files live in tests/golden/front/ (dumps of tiny.pc) and tests/golden/errors/ (the exact
stderr of `einc check` on each examples/bad/*.pc, with line:col and caret). Regenerate them with
EINC_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from einc.compiler import dump as dump_module
from einc.compiler import pipeline as pipeline_module
from einc.compiler.dump import ParameterCount, parameter_count
from einc.compiler.pipeline import CompileOptions, compile_plan, front_end
from einc.ir.diagnostics import EincError, PcSemanticError, PcSyntaxError, StructureError

from einc import cli

ROOT = Path(__file__).resolve().parent.parent
BAD = sorted((ROOT / "examples" / "bad").glob("*.pc"))

Golden = Callable[[str, str], None]

# Which error class each bad example raises; every bad file must be listed here.
ERROR_KIND: dict[str, type[EincError]] = {
    "syntax": PcSyntaxError,
    "unknown_statement": PcSyntaxError,
    "not_decomposable": StructureError,
    "not_smooth": StructureError,
    "three_parts": StructureError,
    "one_part": StructureError,
    "no_root": StructureError,
    "unreachable": StructureError,
    "cycle": StructureError,
    "tree_with_outer_products": StructureError,
    "hadamard_sizes": StructureError,
    "indicator_components": StructureError,
    "latent_not_on_every_tree": StructureError,
    "latent_rules": StructureError,
    "latent_replica": StructureError,
    "vae_mixed_region": StructureError,
    "mixed_products": StructureError,
}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def _at_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # File names in messages are the paths as given; relative ones keep golden files portable.
    monkeypatch.chdir(ROOT)


# ---------------------------------------------------------------------------------------------
# Golden outputs for tiny.pc


@pytest.mark.parametrize("emit", ["ir", "layers", "dot", "plan", "backward"])
def test_compile_emit_tiny(emit: str, capsys: pytest.CaptureFixture[str], golden: Golden) -> None:
    code, out, err = run(["compile", "examples/tiny.pc", "--emit", emit], capsys)
    assert (code, err) == (0, "")
    golden(f"front/tiny.{emit}.txt", out)


def test_check_tiny(capsys: pytest.CaptureFixture[str], golden: Golden) -> None:
    code, out, err = run(["check", "examples/tiny.pc"], capsys)
    assert (code, err) == (0, "")
    golden("front/tiny.check.txt", out)


@pytest.mark.parametrize("emit", ["check", "ir", "layers", "plan", "backward"])
def test_hadamard_example_outputs(emit: str, capsys: pytest.CaptureFixture[str], golden: Golden) -> None:
    """Element-wise products: the product kind in the IR and check summary, hadamard ops with
    their arities and reads in the plan, the derived backward steps."""
    argv = ["check"] if emit == "check" else ["compile", "--emit", emit]
    code, out, err = run([*argv, "examples/tiny_hadamard.pc"], capsys)
    assert (code, err) == (0, "")
    golden(f"front/tiny_hadamard.{emit}.txt", out)


def test_learned_hclt_example_plan(capsys: pytest.CaptureFixture[str], golden: Golden) -> None:
    """The plan of a learned tree (examples/nltcs_hclt.pc): one hadamard op per tree level, every
    operand a contiguous view or two."""
    code, out, err = run(["compile", "--emit", "plan", "examples/nltcs_hclt.pc"], capsys)
    assert (code, err) == (0, "")
    golden("front/nltcs_hclt.plan.txt", out)
    assert "gather" not in out


def test_check_prints_column_order_for_arrays(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", "examples/mnist.pc"], capsys)
    assert code == 0
    assert "  columns 0-783  img[0, 0] .. img[27, 27]  categorical(256)  ~ binomial(n=255)" in out


def test_dumps_are_deterministic() -> None:
    text = (ROOT / "examples" / "nltcs.pc").read_text(encoding="utf-8")
    first, second = front_end(text, "nltcs.pc"), front_end(text, "nltcs.pc")
    assert dump_module.dump_ir(first.graph) == dump_module.dump_ir(second.graph)
    assert dump_module.dump_layers(first) == dump_module.dump_layers(second)
    assert dump_module.dump_dot(first.graph) == dump_module.dump_dot(second.graph)


def test_output_option_writes_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "tiny.dot"
    code, out, _ = run(["compile", "examples/tiny.pc", "--emit", "dot", "-o", str(target)], capsys)
    assert (code, out) == (0, "")
    assert target.read_text(encoding="utf-8").startswith('digraph "tiny" {')


# ---------------------------------------------------------------------------------------------
# Errors: golden text, exit code 1, no traceback


def test_every_bad_example_is_covered() -> None:
    assert len(BAD) >= 20
    assert set(ERROR_KIND) <= {path.stem for path in BAD}


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_examples_report_located_errors(
    path: Path, capsys: pytest.CaptureFixture[str], golden: Golden
) -> None:
    relative = path.relative_to(ROOT).as_posix()
    code, out, err = run(["check", relative], capsys)
    assert code == 1 and out == ""
    assert "Traceback" not in err
    assert err.startswith((f"{relative}:", "einc: error: "))
    golden(f"errors/{path.stem}.txt", err)

    with pytest.raises(EincError) as caught:
        front_end(path.read_text(encoding="utf-8"), relative)
    assert type(caught.value) is ERROR_KIND.get(path.stem, PcSemanticError)
    assert caught.value.sources == {relative: path.read_text(encoding="utf-8")}


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--debug", "check", "examples/bad/not_smooth.pc"], capsys)
    assert code == 1
    assert "Traceback" in err and "StructureError" in err
    assert "examples/bad/not_smooth.pc:3:1: error: partition" in err


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["check", "examples/nope.pc"], capsys)
    assert (code, out) == (1, "")
    assert err.startswith("einc: error: cannot read examples/nope.pc:")


def test_usage_errors_exit_1_with_one_message(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["compile", "examples/tiny.pc", "--emit", "nonsense"], capsys)
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1
    assert err.startswith("einc: error: argument --emit: invalid choice: 'nonsense'")
    assert err.rstrip().endswith("(see einc compile --help)")


def test_python_dash_m_einc() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "einc", "check", "examples/tiny.pc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("circuit tiny: ok")


# ---------------------------------------------------------------------------------------------
# Options, parameter counts, the subcommand table


def test_k_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", "examples/nltcs.pc", "--sums", "20"], capsys)
    assert code == 0 and "K: sums 20, inputs 20, heads 1" in out  # inputs follow sums
    graph = front_end(
        (ROOT / "examples/tiny.pc").read_text(), "tiny.pc", CompileOptions(sums=5)
    ).graph
    assert (graph.sums, graph.inputs) == (5, 3)  # tiny sets inputs itself
    code, _, err = run(["check", "examples/tiny.pc", "--heads", "0"], capsys)
    assert code == 1 and "einc: error: argument --heads: must be at least 1, found 0" in err
    with pytest.raises(PcSemanticError, match="heads must be at least 1, found 0"):
        front_end((ROOT / "examples/tiny.pc").read_text(), "tiny.pc", CompileOptions(heads=0))


def test_parameter_count_by_hand() -> None:
    # tiny: 4 leaf regions x inputs 3 x 1 bernoulli parameter; root partitions 2 x (1 x 4 x 4);
    # four inner partitions x (4 x 3 x 3); the root mixes 2 partitions: 1 x 2.
    graph = front_end((ROOT / "examples/tiny.pc").read_text(), "tiny.pc").graph
    assert parameter_count(graph) == ParameterCount(leaf=12, product=2 * 16 + 4 * 36, mixing=2)
    # categorical(n) counts n, normal 2 per real dimension
    text = (
        "var c : categorical(5)\nvar v : real(3)\nleaf c ~ categorical\nleaf v ~ normal\n"
        "sums 2\ninputs 4\nheads 3\n{c, v} -> c * v\n"
    )
    graph = front_end(text, "mixed.pc").graph
    assert parameter_count(graph) == ParameterCount(leaf=4 * 5 + 4 * 6, product=3 * 4 * 4, mixing=0)


@pytest.mark.parametrize("name", ["tiny", "nltcs", "mnist", "accidents"])
def test_parameter_count_matches_the_plan(name: str) -> None:
    text = (ROOT / "examples" / f"{name}.pc").read_text(encoding="utf-8")
    count = parameter_count(front_end(text, name).graph)
    sizes: dict[str, int] = {}
    for spec in compile_plan(text, name).params:
        sizes[spec.kind] = sizes.get(spec.kind, 0) + spec.size
    assert (sizes["einsum"], sizes.get("mixing", 0)) == (count.product, count.mixing)
    # the plan may pad leaf parameters (EiNet's D x K x R layout); it never has fewer
    assert sizes["leaf"] >= count.leaf


def test_a_subcommand_is_one_function_and_one_table_entry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def cmd_hello(args: object) -> int:
        print(f"hello {args.who}")
        return 0

    table = (*cli.COMMANDS, cli.Command("hello", "greet", cmd_hello, (cli.Arg(("who",)),)))
    args = cli.build_parser(table).parse_args(["hello", "world"])
    assert args.run(args) == 0
    assert capsys.readouterr().out == "hello world\n"


def test_docstring_examples_run() -> None:
    import doctest

    for module in (dump_module, pipeline_module):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


def test_the_readme_command_table_shows_what_each_parser_takes() -> None:
    """Every option in README's "Command line" table exists on its command, and no row shows two
    options as alternatives (`[--a | --b]`) unless the parser refuses them together."""
    import re

    section = (ROOT / "README.md").read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    subcommands = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    rows = re.findall(r"^\| `einc (\S+) ([^`]*)` \|", section, re.MULTILINE)
    assert {name for name, _ in rows} >= {"check", "compile", "train", "lvd", "sample", "eval", "query"}
    for name, usage in rows:
        known = {flag for action in subcommands[name]._actions for flag in action.option_strings}
        shown = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", usage))
        assert shown <= known, (name, sorted(shown - known))
        for first, second in re.findall(r"\[(--[\w-]+)[^\]|]*\\\|\s*(--[\w-]+)", usage):
            pytest.fail(f"einc {name}: README shows {first} and {second} as alternatives")
