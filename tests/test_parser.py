"""The .pc parser: statements and spans, recovery from several syntax errors, friendly messages."""

from __future__ import annotations

import doctest
from importlib import resources

import pytest
from einc.grammar import parser as parser_module
from einc.grammar.parser import parse
from einc.ir import program as program_module
from einc.ir.diagnostics import PcSyntaxError, Span
from einc.ir.program import (
    CircuitStatement,
    LeafStatement,
    ListValue,
    Name,
    Number,
    PartitionStatement,
    RegionStatement,
    ScopeExpr,
    SizeStatement,
    StructureStatement,
    VariableRef,
    VarStatement,
)

FULL = """\
circuit demo   # a comment
var A, B : binary

var x[16] : categorical(3)
var img[28, 28] : real(3)
leaf A, x[0:4] ~ normal(min_var = 1e-4, max_var=10)
sums 12
inputs 7
heads 2
structure poon_domingos(delta = [7, 4], axes = vertical, over = img)
region all = {A, B}
all -> {A} * B
{x[:8]} -> x[0:4] * x[4:]
"""


def _errors(text: str) -> list[str]:
    with pytest.raises(PcSyntaxError) as caught:
        parse(text, "bad.pc")
    return [d.message for d in caught.value.diagnostics]


def test_every_statement_kind() -> None:
    statements = parse(FULL, "demo.pc").statements
    kinds = [type(s) for s in statements]
    assert kinds == [
        CircuitStatement,
        VarStatement,
        VarStatement,
        VarStatement,
        LeafStatement,
        SizeStatement,
        SizeStatement,
        SizeStatement,
        StructureStatement,
        RegionStatement,
        PartitionStatement,
        PartitionStatement,
    ]
    circuit, var_ab, var_x, var_img, leaf, sums, inputs, heads, structure, region, p1, p2 = (
        statements
    )
    assert circuit.name.text == "demo"
    assert [d.name.text for d in var_ab.decls] == ["A", "B"]
    assert [n.value for n in var_img.decls[0].shape] == [28, 28]
    assert var_x.domain.name.text == "categorical" and var_x.domain.arguments[0].value.value == 3
    assert [(s.keyword, s.value.value) for s in (sums, inputs, heads)] == [
        ("sums", 12),
        ("inputs", 7),
        ("heads", 2),
    ]
    family = leaf.family
    assert [a.keyword.text for a in family.arguments if a.keyword] == ["min_var", "max_var"]
    assert family.arguments[0].value == Number(1e-4, "1e-4", Span("demo.pc", 6, 35, 6, 38))
    delta = structure.generator.arguments[0].value
    assert isinstance(delta, ListValue) and [n.value for n in delta.items] == [7, 4]
    assert isinstance(structure.generator.arguments[1].value, Name)
    assert region.name.text == "all" and isinstance(region.scope, ScopeExpr)
    # bare references and slices with an open end
    assert isinstance(p1.region, VariableRef) and p1.region.indices is None
    slice_open = p2.parts[1].indices[0]
    assert slice_open.is_slice and slice_open.start.value == 4 and slice_open.stop is None
    head = p2.region.items[0].indices[0]
    assert head.is_slice and head.start is None and head.stop.value == 8


def test_spans_are_one_based_and_inclusive() -> None:
    program = parse(FULL, "demo.pc")
    var_x = program.statements[2]
    assert var_x.span == Span("demo.pc", 4, 1, 4, 26)
    assert var_x.decls[0].span == Span("demo.pc", 4, 5, 4, 9)  # `x[16]`
    partition = program.statements[-1]
    assert partition.region.span == Span("demo.pc", 13, 1, 13, 7)  # `{x[:8]}`
    assert program.sources == {"demo.pc": FULL}


def test_numbers_keep_their_type_and_sign() -> None:
    statements = parse("sums -3\ninputs 2.5\nheads 1e3\n", "n.pc").statements
    values = [s.value for s in statements]
    assert [v.value for v in values] == [-3, 2.5, 1000.0]
    assert [v.is_integer for v in values] == [True, False, False]


def test_layout_is_forgiving() -> None:
    # no final newline, CRLF line ends, blank lines, comment-only lines, tabs
    text = "# header\r\n\r\nvar A,\tB : binary\r\n   # indented comment\nleaf A, B ~ bernoulli"
    statements = parse(text, "crlf.pc").statements
    assert [type(s) for s in statements] == [VarStatement, LeafStatement]


def test_calls_with_and_without_parentheses() -> None:
    statements = parse("var A : binary\nvar B : binary()\nleaf A ~ bernoulli\n", "c.pc").statements
    assert not statements[0].domain.has_parentheses
    assert statements[1].domain.has_parentheses and statements[1].domain.arguments == ()


def test_empty_file_parses_to_no_statements() -> None:
    assert parse("", "empty.pc").statements == ()
    assert parse("\n# only a comment\n", "empty.pc").statements == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "var A B : binary",
            "syntax error in a var statement; expected ',', ':' or '[', found 'B'",
        ),
        (
            "var A, B :",
            (
                "syntax error in a var statement; expected a domain (binary, categorical(n), count, "
                "real), found end of line"
            ),
        ),
        (
            "leaf A ~",
            (
                "syntax error in a leaf statement; expected a leaf family (bernoulli, binomial(N), "
                "categorical, indicator, normal, poisson, vae), found end of line"
            ),
        ),
        ("{A, B -> A", "syntax error in a partition; expected ',' or '}', found '->'"),
        ("A -> {}", "syntax error in a partition; expected a variable name, found '}'"),
        ("var x[16 : binary", "syntax error in a var statement; expected ',' or ']', found ':'"),
        ("sums", "syntax error in a sums statement; expected a region or variable name, a number or '{', found end of line"),
        (
            "region all {A}",
            "syntax error in a region statement; expected '=', found '{'",
        ),
        (
            "A -> B, C",
            (
                "syntax error in a partition; expected '*' or end of line, found ',' (the parts of a "
                "partition are joined with '*', e.g. all -> {A, B} * {C, D})"
            ),
        ),
        (
            "leaf A : bernoulli",
            (
                "syntax error in a leaf statement; expected ',', '[' or '~', found ':' (a leaf family "
                "is given with '~', e.g. leaf A ~ bernoulli)"
            ),
        ),
        (
            "@",
            (
                "unexpected character; expected a statement (circuit, var, leaf, sums, inputs, heads, "
                "structure, product, region, latent) or a partition (region -> part * part), found '@'"
            ),
        ),
        (
            "vars A : binary",
            (
                "unknown statement 'vars'; expected a statement (circuit, var, leaf, sums, inputs, "
                "heads, structure, product, region, latent) or a partition (region -> part * part), found 'vars' — "
                "did you mean 'var'?"
            ),
        ),
    ],
)
def test_syntax_messages_say_what_was_expected(text: str, message: str) -> None:
    assert _errors(text) == [message]


def test_every_bad_line_is_reported_with_its_location() -> None:
    text = "var A B : binary\nvar C : binary\nleaf A ~\nsums 3\n{A -> B\n"
    with pytest.raises(PcSyntaxError) as caught:
        parse(text, "many.pc")
    spans = [(d.span.line, d.span.col) for d in caught.value.diagnostics]
    assert spans == [(1, 7), (3, 9), (5, 4)]
    rendered = str(caught.value)
    assert rendered.startswith("many.pc:1:7: error: syntax error in a var statement")
    assert "    1 | var A B : binary\n      |       ^" in rendered
    assert caught.value.sources == {"many.pc": text}


def test_the_caret_covers_the_offending_token() -> None:
    with pytest.raises(PcSyntaxError) as caught:
        parse("{A, B -> A\n", "caret.pc")
    assert caught.value.diagnostics[0].span == Span("caret.pc", 1, 7, 1, 8)


def test_errors_inside_the_transformer_are_unwrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    class Boom(Exception):
        pass

    def explode(*args: object) -> None:
        raise Boom("from a transformer method")

    monkeypatch.setattr(parser_module._ToProgram, "number", explode)
    with pytest.raises(Boom):
        parse("sums 3\n", "boom.pc")


def test_grammar_ships_as_package_data() -> None:
    grammar = resources.files("einc.grammar").joinpath("pc.lark")
    assert grammar.is_file() and "start:" in grammar.read_text(encoding="utf-8")
    options = parser_module._parser().options
    assert options.parser == "lalr" and options.propagate_positions


def test_docstring_examples_run() -> None:
    for module in (parser_module, program_module):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0
