"""Call arguments, bound like Python binds them: one small binder for the domains, leaf families,
generators and latent generators of the ``.pc`` language, with "did you mean" suggestions.

Each of those is a call (``categorical(4)``, ``poon_domingos(delta = [7], over = img)``); its
parameters are a tuple of ``Param`` (name, kind, default) and ``bind`` reports every mismatch as a
located diagnostic: an unknown keyword, a missing or doubled argument, a value of the wrong kind.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from einc.ir.diagnostics import DiagnosticSink, Note, Span
from einc.ir.program import Call, ListValue, Name, Number, Value

# Words people reach for that are not ours, mapped to ours; difflib catches plain misspellings.
DOMAIN_SYNONYMS = {
    "bool": "binary",
    "boolean": "binary",
    "bit": "binary",
    "int": "count",
    "integer": "count",
    "nat": "count",
    "natural": "count",
    "float": "real",
    "continuous": "real",
    "gaussian": "real",
    "discrete": "categorical",
    "categories": "categorical",
}
FAMILY_SYNONYMS = {
    "gaussian": "normal",
    "gauss": "normal",
    "multinomial": "categorical",
    "discrete": "categorical",
    "binary": "bernoulli",
    "bool": "bernoulli",
}

PRODUCT_SYNONYMS = {
    "elementwise": "hadamard",
    "element_wise": "hadamard",
    "cp": "hadamard",
    "einsum": "outer",
    "kronecker": "outer",
}


REQUIRED = object()


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "int" | "number" | "name" | "ints" (a number or a list of them)
    default: object = REQUIRED


@dataclass(frozen=True)
class Bound:
    """Bound arguments: the Python value and where it was written (the call, for defaults)."""

    values: dict[str, object]
    spans: dict[str, Span]


def did_you_mean(
    word: str, candidates: Sequence[str], synonyms: dict[str, str] | None = None
) -> str:
    """`` — did you mean X?`` for a close candidate or a known synonym, else ``""``."""
    synonyms = synonyms or {}
    guess = synonyms.get(word.lower())
    if guess is None:  # a candidate that differs only in case (BINARY, Left), else the closest spelling
        guess = {c.lower(): c for c in candidates if c != word}.get(word.lower())
    if guess is None:
        close = difflib.get_close_matches(word, [*candidates, *synonyms], n=1, cutoff=0.6)
        guess = synonyms.get(close[0], close[0]) if close else None
    return f" — did you mean {guess}?" if guess else ""


def one_of(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else "one of " + ", ".join(words)


def convert(value: Value, kind: str, what: str, sink: DiagnosticSink) -> object | None:
    """A parsed value as the Python value ``kind`` asks for; report and return None if it is not."""
    if kind == "name":
        if isinstance(value, Name):
            return value.text
        sink.error(f"{what} must be a name, found {value_text(value)}", value.span)
        return None
    if kind == "ints" and isinstance(value, ListValue):
        items = [convert(item, "int", what, sink) for item in value.items]
        return None if any(i is None for i in items) else tuple(items)
    if isinstance(value, Number):
        if kind == "number":
            return value.value
        if value.is_integer:
            return (value.value,) if kind == "ints" else value.value
    expected = "a whole number" if kind in ("int", "ints") else "a number"
    if kind == "ints":
        expected += " or a list of them, e.g. [7, 4]"
    sink.error(f"{what} must be {expected}, found {value_text(value)}", value.span)
    return None


def value_text(value: Value, width: int = 60) -> str:
    """The value as written, cut to ``width`` characters for a one-line message."""
    if isinstance(value, Number):
        text = value.text
    elif isinstance(value, Name):
        text = f"'{value.text}'"
    else:
        text = "[" + ", ".join(value_text(item, width) for item in value.items[:20]) + "]"
    return text if len(text) <= width else text[: width - 3] + "..."


def bind(call: Call, params: Sequence[Param], sink: DiagnosticSink) -> Bound | None:
    """Match a call's arguments to ``params`` like Python does; report every mismatch."""
    what = call.name.text
    values: dict[str, object] = {}
    spans: dict[str, Span] = {}
    ok = True
    seen_keyword = False
    # Parameters a misspelt keyword was matched to: "did you mean depth?" already says that
    # depth is missing, so do not report it twice.
    suggested: set[str] = set()
    for position, argument in enumerate(call.arguments):
        if argument.keyword is None:
            if seen_keyword:
                sink.error(
                    f"a positional argument cannot follow keyword arguments in {what}(...)",
                    argument.span,
                )
                ok = False
                continue
            if position >= len(params):
                takes = f"takes {len(params)} argument{'s' if len(params) != 1 else ''}"
                sink.error(f"{what} {takes}, found {len(call.arguments)}", argument.span)
                ok = False
                continue
            param = params[position]
        else:
            seen_keyword = True
            names = [p.name for p in params]
            matches = [p for p in params if p.name == argument.keyword.text]
            if not matches:
                expected = one_of(names) if names else "no arguments"
                suggested.update(difflib.get_close_matches(argument.keyword.text, names, n=1))
                sink.error(
                    f"unknown argument '{argument.keyword.text}' of {what}; expected {expected}"
                    + did_you_mean(argument.keyword.text, names),
                    argument.keyword.span,
                )
                ok = False
                continue
            param = matches[0]
        if param.name in spans:
            sink.error(
                f"argument '{param.name}' of {what} given twice",
                argument.span,
                Note("first given here", spans[param.name]),
            )
            ok = False
            continue
        converted = convert(argument.value, param.kind, param.name, sink)
        spans[param.name] = argument.value.span
        if converted is None:
            ok = False
            continue
        values[param.name] = converted
    for param in params:
        if param.name in spans:
            continue
        if param.default is REQUIRED:
            if param.name not in suggested:
                sink.error(f"{what} needs argument '{param.name}'", call.span)
            ok = False
            continue
        values[param.name] = param.default
        spans[param.name] = call.span
    return Bound(values, spans) if ok else None
