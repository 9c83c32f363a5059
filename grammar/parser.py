"""Text to ``Program``: the LALR parser for ``.pc`` files and its syntax diagnostics.

    >>> from einc.grammar.parser import parse
    >>> program = parse("circuit ab\\nvar A, B : binary\\n", "ab.pc")
    >>> program.statements[1].decls[1].name.text
    'B'

Syntax errors are collected, not only the first: statements are lines, so after an error the
parser blanks that line and parses again, which resumes at the next statement with every position
unchanged. All errors are raised together as one ``PcSyntaxError``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from einc.ir.diagnostics import Diagnostic, PcSyntaxError, Span, shorten
from einc.ir.program import (
    Argument,
    Call,
    CircuitStatement,
    Index,
    LatentGeneratorStatement,
    LatentStatement,
    LeafStatement,
    ListValue,
    Name,
    Number,
    PartitionStatement,
    ProductStatement,
    Program,
    RegionProductStatement,
    RegionStatement,
    ScopeExpr,
    RegionSizeStatement,
    SizeStatement,
    Statement,
    StructureStatement,
    Value,
    VariableDecl,
    VariableRef,
    VarStatement,
)
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.tree import Meta

# Enough to show everything wrong in a hand-written file without re-parsing forever on garbage.
MAX_SYNTAX_ERRORS = 50
# Longer numeric literals are syntax errors: every size, index and seed fits in far fewer digits.
MAX_NUMBER_LENGTH = 100
# Deeper bracket nesting is a syntax error (the tree transformer recurses once per level).
MAX_NESTING = 50

KEYWORDS = (
    "circuit", "var", "leaf", "sums", "inputs", "heads", "structure", "product", "region", "latent",
)


@lru_cache(maxsize=1)
def _parser() -> Lark:
    # Built on first use (not at import) and kept: building the LALR tables is the slow part.
    grammar = resources.files("einc.grammar").joinpath("pc.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def parse(text: str, filename: str) -> Program:
    """Parse ``.pc`` source text into a ``Program``; raise ``PcSyntaxError`` with every error."""
    too_deep = _nesting_error(text, filename)
    if too_deep is not None:
        raise PcSyntaxError([too_deep], {filename: text})
    source = text if text.endswith("\n") else text + "\n"
    original_lines = source.split("\n")
    diagnostics, tree = _parse_collecting_errors(original_lines, filename)
    if diagnostics or tree is None:
        raise PcSyntaxError(diagnostics, {filename: text})
    try:
        statements = _ToProgram(filename).transform(tree)
    except PcSyntaxError as error:
        # raised by a tree method (a number too long): add the source text, so that it prints
        # the line and a caret
        raise PcSyntaxError(error.diagnostics, {filename: text}) from None
    return Program(filename=filename, statements=tuple(statements), source=text)


def _nesting_error(text: str, filename: str) -> Diagnostic | None:
    """A located error at the first bracket nested deeper than ``MAX_NESTING`` (else None)."""
    for line_number, line in enumerate(text.split("\n"), start=1):
        depth = 0
        for column, char in enumerate(line.split("#", 1)[0], start=1):
            if char in "([{":
                depth += 1
                if depth > MAX_NESTING:
                    span = Span(filename, line_number, column, line_number, column)
                    return Diagnostic(
                        f"brackets nested more than {MAX_NESTING} levels deep; "
                        f"expected a value such as 7 or [7, 4]",
                        span,
                    )
            elif char in ")]}":
                depth = max(depth - 1, 0)
    return None


def _parse_collecting_errors(
    lines: list[str], filename: str
) -> tuple[list[Diagnostic], Tree | None]:
    """Every syntax error (up to ``MAX_SYNTAX_ERRORS``), or none and the parse tree.

    After an error the parser blanks that line and goes on. It resumes at the next line on its
    own when no bracket is open there (statements are lines; only a list runs over several):
    then the text before it is not parsed again, so collecting errors costs one parse of the file
    in all, not one per error (50 errors after 40,000 good lines took minutes). Inside an open
    list it parses again from the last such line, so that the list's context is kept.
    """
    lines = list(lines)
    depth_change = [_bracket_change(line) for line in lines]
    diagnostics: list[Diagnostic] = []
    start = 0  # 0-based index of the first line of this attempt; no bracket is open before it
    while len(diagnostics) < MAX_SYNTAX_ERRORS:
        try:
            tree = _parser().parse("\n".join(lines[start:]))
        except UnexpectedInput as error:
            line = error.line + start if error.line > 0 else error.line
            diagnostics.append(_syntax_diagnostic(error, lines, filename, line))
            if not 1 <= line <= len(lines) or not lines[line - 1].strip():
                break  # nothing left to skip: do not loop on the same error
            lines[line - 1] = " " * len(lines[line - 1])
            depth_change[line - 1] = 0
            if sum(depth_change[start:line]) == 0:
                start = line
            continue
        return diagnostics, None if diagnostics else tree
    return diagnostics, None


def _bracket_change(line: str) -> int:
    """Brackets a line opens minus those it closes (comments excluded)."""
    code = line.split("#", 1)[0]
    return sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")


# ---------------------------------------------------------------------------------------------
# Tree -> Program


def _span(filename: str, meta: Meta | Token) -> Span:
    # Lark columns are 1-based with an exclusive end; Span ends are inclusive.
    assert meta.line is not None and meta.column is not None
    assert meta.end_line is not None and meta.end_column is not None
    return Span(filename, meta.line, meta.column, meta.end_line, meta.end_column - 1)


_INTEGER = re.compile(r"[+-]?\d+")


class _ToProgram:
    """Builds ``ir.program`` dataclasses; method names are the grammar's rule aliases.

    A plain recursive walk rather than a lark ``Transformer``: lark's ``v_args`` wraps the method
    anew on every node (``functools.update_wrapper`` each time), which was a sixth of the time
    of a 40,000-statement file. The recursion is as deep as the brackets nest (``MAX_NESTING``).
    """

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def transform(self, tree: Tree) -> object:
        children = [
            self.transform(child) if isinstance(child, Tree) else child for child in tree.children
        ]
        return getattr(self, str(tree.data))(tree.meta, children)

    def _name(self, token: Token) -> Name:
        return Name(str(token), _span(self.filename, token))

    # statements -----------------------------------------------------------------------------

    def start(self, meta: Meta, children: list) -> list[Statement]:
        return list(children)

    def circuit(self, meta: Meta, children: list) -> CircuitStatement:
        _keyword, name = children
        return CircuitStatement(self._name(name), _span(self.filename, meta))

    def var(self, meta: Meta, children: list) -> VarStatement:
        *decls, domain = children[1:]
        return VarStatement(tuple(decls), domain, _span(self.filename, meta))

    def leaf(self, meta: Meta, children: list) -> LeafStatement:
        *targets, family = children[1:]
        return LeafStatement(tuple(targets), family, _span(self.filename, meta))

    def _size(self, keyword: str, meta: Meta, children: list) -> SizeStatement:
        return SizeStatement(keyword, children[1], _span(self.filename, meta))

    def sums(self, meta: Meta, children: list) -> SizeStatement:
        return self._size("sums", meta, children)

    def inputs(self, meta: Meta, children: list) -> SizeStatement:
        return self._size("inputs", meta, children)

    def heads(self, meta: Meta, children: list) -> SizeStatement:
        return self._size("heads", meta, children)

    def region_sums(self, meta: Meta, children: list) -> RegionSizeStatement:
        return RegionSizeStatement("sums", children[1], children[2], _span(self.filename, meta))

    def region_inputs(self, meta: Meta, children: list) -> RegionSizeStatement:
        return RegionSizeStatement("inputs", children[1], children[2], _span(self.filename, meta))

    def structure(self, meta: Meta, children: list) -> StructureStatement:
        return StructureStatement(children[1], _span(self.filename, meta))

    def product(self, meta: Meta, children: list) -> ProductStatement:
        _keyword, kind = children
        return ProductStatement(self._name(kind), _span(self.filename, meta))

    def region_product(self, meta: Meta, children: list) -> RegionProductStatement:
        _keyword, region, kind = children
        return RegionProductStatement(region, self._name(kind), _span(self.filename, meta))

    def region(self, meta: Meta, children: list) -> RegionStatement:
        _keyword, name, scope = children
        return RegionStatement(self._name(name), scope, _span(self.filename, meta))

    def partition(self, meta: Meta, children: list) -> PartitionStatement:
        region, *parts = children
        return PartitionStatement(region, tuple(parts), _span(self.filename, meta))

    def latent(self, meta: Meta, children: list) -> LatentStatement:
        _keyword, name, region = children
        return LatentStatement(self._name(name), region, _span(self.filename, meta))

    def latent_generator(self, meta: Meta, children: list) -> LatentGeneratorStatement:
        return LatentGeneratorStatement(children[1], _span(self.filename, meta))

    # pieces ---------------------------------------------------------------------------------

    def var_decl(self, meta: Meta, children: list) -> VariableDecl:
        name, *shape = children
        return VariableDecl(self._name(name), tuple(shape), _span(self.filename, meta))

    def var_ref(self, meta: Meta, children: list) -> VariableRef:
        name, *indices = children
        return VariableRef(
            self._name(name), tuple(indices) if indices else None, _span(self.filename, meta)
        )

    def at(self, meta: Meta, children: list) -> Index:
        return Index(children[0], None, False, _span(self.filename, meta))

    def slice(self, meta: Meta, children: list) -> Index:
        start, stop = children
        return Index(start, stop, True, _span(self.filename, meta))

    def scope(self, meta: Meta, children: list) -> ScopeExpr:
        return ScopeExpr(tuple(children), _span(self.filename, meta))

    def call(self, meta: Meta, children: list) -> Call:
        name, *arguments = children
        # `f()` leaves one None placeholder, `f` none at all: both are calls without arguments.
        return Call(
            self._name(name),
            tuple(a for a in arguments if a is not None),
            _span(self.filename, meta),
            has_parentheses=bool(arguments),
        )

    def keyword_argument(self, meta: Meta, children: list) -> Argument:
        keyword, value = children
        return Argument(self._name(keyword), value, _span(self.filename, meta))

    def positional_argument(self, meta: Meta, children: list) -> Argument:
        return Argument(None, children[0], _span(self.filename, meta))

    def name_value(self, meta: Meta, children: list) -> Name:
        return self._name(children[0])

    def list_value(self, meta: Meta, children: list) -> ListValue:
        items: tuple[Value, ...] = tuple(c for c in children if c is not None)
        return ListValue(items, _span(self.filename, meta))

    def number(self, meta: Meta, children: list) -> Number:
        text = str(children[0])
        span = _span(self.filename, meta)
        if len(text) > MAX_NUMBER_LENGTH:
            # int() refuses very long literals (and nothing in a circuit needs one)
            raise PcSyntaxError([Diagnostic(
                f"number too long ({len(text)} characters); expected at most {MAX_NUMBER_LENGTH}",
                span,
            )])
        value: int | float = int(text) if _INTEGER.fullmatch(text) else float(text)
        return Number(value, text, span)


# ---------------------------------------------------------------------------------------------
# Syntax diagnostics


@dataclass(frozen=True)
class _Context:
    """Where on its line an error happened: which statement, and inside which brackets."""

    statement: str  # a keyword, "partition", or "" at the start of a line
    open_brackets: str  # the unclosed brackets before the error, innermost last
    separators: frozenset[str]  # which of ':', '~', '=', '->' came before the error


def _context(line: str, column: int) -> _Context:
    before = line[: max(column - 1, 0)]
    stripped = before.strip()
    words = stripped.split()
    if not stripped:
        statement = ""
    elif words[0] in KEYWORDS and len(before.lstrip()) >= len(words[0]):
        statement = words[0]
    else:
        statement = "partition"
    stack: list[str] = []
    for char in before:
        if char in "([{":
            stack.append(char)
        elif char in ")]}" and stack:
            stack.pop()
    separators = frozenset(s for s in (":", "~", "=", "->") if s in before)
    return _Context(statement, "".join(stack), separators)


_STATEMENT_WORDS = {
    "circuit": "a circuit statement",
    "var": "a var statement",
    "leaf": "a leaf statement",
    "sums": "a sums statement",
    "inputs": "an inputs statement",
    "heads": "a heads statement",
    "structure": "a structure statement",
    "product": "a product statement",
    "region": "a region statement",
    "latent": "a latent statement",
    "partition": "a partition",
}

_A_STATEMENT = "a statement (" + ", ".join(KEYWORDS) + ") or a partition (region -> part * part)"


def _name_word(context: _Context) -> str:
    """What a NAME means at this point of the line, in the user's terms."""
    inner = context.open_brackets[-1:] or ""
    if inner == "(":
        return "an argument"
    if inner == "{":
        return "a variable name"
    statement, seen = context.statement, context.separators
    if statement == "circuit":
        return "a circuit name"
    if statement == "var":
        return (
            "a domain (binary, categorical(n), count, real)" if ":" in seen else "a variable name"
        )
    if statement == "leaf":
        if "~" in seen:
            return "a leaf family (bernoulli, binomial(N), categorical, indicator, normal, poisson, vae)"
        return "a variable name"
    if statement == "structure":
        return "a generator (random_binary_trees, poon_domingos, tree)"
    if statement == "product":
        return "a product kind (outer, hadamard)"
    if statement == "region":
        return "a variable name" if "=" in seen else "a region name"
    if statement == "latent":
        return "a region or variable name" if "=" in seen else "a latent name or generator (patches)"
    return "a region or variable name"


def _terminal_word(terminal: str, context: _Context) -> tuple[int, str]:
    """A friendly word for a lark terminal, with a rank that orders the expected-list."""
    if terminal == "NAME":
        return (0, _name_word(context))
    if terminal == "NUMBER":
        return (1, "a number")
    if terminal == "_NL":
        return (4, "end of line")
    if terminal == "$END":
        return (5, "end of file")
    for definition in _parser().terminals:
        if definition.name == terminal and definition.pattern.type == "str":
            literal = definition.pattern.value
            return (3 if literal in KEYWORDS else 2, f"'{literal}'")
    return (6, terminal.lower())


def _join_words(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def _found(error: UnexpectedInput, line: str) -> tuple[str, int]:
    """The offending text as the user sees it, and its width in columns."""
    if isinstance(error, UnexpectedToken):
        token = error.token
        if token.type == "_NL":
            return ("end of line", 1)
        if token.type == "$END":
            return ("end of file", 1)
        return (f"'{shorten(str(token))}'", max(len(str(token)), 1))
    char = line[error.column - 1] if 0 < error.column <= len(line) else "?"
    return (f"'{char}'", 1)


# (expected literal, found text) -> a hint for slips people actually make
_HINTS: dict[tuple[str, str], str] = {
    ("'*'", "','"): "the parts of a partition are joined with '*', e.g. all -> {A, B} * {C, D}",
    ("'~'", "':'"): "a leaf family is given with '~', e.g. leaf A ~ bernoulli",
    ("':'", "'~'"): "a domain is given with ':', e.g. var A : binary",
    ("'='", "':'"): "a region is named with '=', e.g. region all = {A, B}",
}
# the same slips where a statement words the hint its own way
_STATEMENT_HINTS: dict[str, dict[tuple[str, str], str]] = {
    "latent": {("'='", "':'"): "a latent is named with '=', e.g. latent z = {A, B}"},
    "sums": {("'='", "':'"): "a region's own K is given with '=', e.g. sums {A, B} = 12"},
    "inputs": {("'='", "':'"): "a leaf region's own K is given with '=', e.g. inputs A = 4"},
    "product": {("'='", "':'"): "a region's own product kind is given with '=', e.g. product {A, B} = hadamard"},
}
# ... and inside the parentheses of a generator, family or domain, whatever the statement
_ARGUMENT_HINTS: dict[tuple[str, str], str] = {
    ("'='", "':'"): "an argument is given with '=', e.g. depth = 2",
}


def _syntax_diagnostic(
    error: UnexpectedInput, lines: list[str], filename: str, line_number: int
) -> Diagnostic:
    """The diagnostic of ``error``, found at ``line_number`` of ``lines`` (the whole file)."""
    line = lines[line_number - 1] if 0 < line_number <= len(lines) else ""
    context = _context(line, error.column)
    found, width = _found(error, line)
    span = Span(filename, line_number, error.column, line_number, error.column + width - 1)

    unknown_statement = _unknown_statement(line, filename, line_number)
    if unknown_statement is not None:
        return unknown_statement

    if isinstance(error, UnexpectedToken):
        terminals = set(error.accepts or error.expected)
    elif isinstance(error, UnexpectedCharacters):
        terminals = set(error.allowed or ())
    else:
        terminals = set()
    if not context.statement:
        expected = _A_STATEMENT
    else:
        ranked = sorted({_terminal_word(t, context) for t in terminals})
        expected = _join_words([word for _rank, word in ranked])

    what = "unexpected character" if isinstance(error, UnexpectedCharacters) else "syntax error"
    where = _STATEMENT_WORDS.get(context.statement, "")
    message = f"{what} in {where}" if where else what
    message += f"; expected {expected}, found {found}" if expected else f"; found {found}"
    hints = {**_HINTS, **_STATEMENT_HINTS.get(context.statement, {}),
             **(_ARGUMENT_HINTS if context.open_brackets.endswith("(") else {})}
    for (wanted, slip), hint in hints.items():
        if found == slip and wanted in expected:
            message += f" ({hint})"
    return Diagnostic(message, span)


def _unknown_statement(line: str, filename: str, line_number: int) -> Diagnostic | None:
    """``vars A : binary`` — a misspelt keyword, which the grammar reads as a broken partition."""
    code = line.split("#", 1)[0]
    match = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s+[A-Za-z_{]", code)
    if match is None or "->" in code or match.group(1) in KEYWORDS:
        return None
    word = match.group(1)
    column = match.start(1) + 1
    span = Span(filename, line_number, column, line_number, column + len(word) - 1)
    guess = difflib.get_close_matches(word.lower(), KEYWORDS, n=1, cutoff=0.6)  # VAR, Leaf
    message = f"unknown statement '{shorten(word)}'; expected {_A_STATEMENT}, found '{shorten(word)}'"
    if guess:
        message += f" — did you mean '{guess[0]}'?"
    return Diagnostic(message, span)
