"""Defects a new user hits trying the README on the shipped examples (issue 21c).

Each test names the mistake a first-time user makes and checks the message einc gives for it:
one located error per mistake, no cascade of false ones, no traceback.
"""

from __future__ import annotations

from pathlib import Path

from einc.compiler.build import build_region_graph
from einc.grammar.parser import parse

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def build_messages(text: str) -> list[str]:
    graph, diagnostics = build_region_graph(parse(text, "t.pc"))
    assert graph is None and diagnostics
    return [d.message for d in diagnostics]


def test_a_bad_domain_is_one_error_not_a_cascade_through_named_regions() -> None:
    # examples/tiny.pc with a misspelt domain: its named regions (all, left, right) cannot be
    # built, and every partition naming them used to add a false "unknown variable 'all'".
    tiny = (EXAMPLES / "tiny.pc").read_text()
    for wrong in ("bool", "categorical(1)", "categorical(x)"):
        text = tiny.replace("var A, B, C, D : binary", f"var A, B, C, D : {wrong}")
        found = build_messages(text)
        assert len(found) == 1, found
        assert "unknown variable" not in found[0], found


def test_a_region_over_a_misspelt_variable_is_one_error() -> None:
    text = "var A, B : binary\nleaf A, B ~ bernoulli\nregion top = {A, Bee}\ntop -> A * B\n"
    found = build_messages(text)
    assert len(found) == 1 and "unknown" in found[0] and "'Bee'" in found[0], found
