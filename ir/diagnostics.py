"""Source spans, located diagnostics and the root of the one error hierarchy of einc.

Every user-facing error is a ``Diagnostic`` (or several) rendered as

    model.pc:12:5: error: <what is wrong>; expected <...>, found <...>
       12 | all -> {A, B} * {B, C}
          |     ^

Stages *return* diagnostics; the public boundary (``einc.compile``, the CLI) raises ``EincError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache


@dataclass(frozen=True, order=True)
class Span:
    """A 1-based line/column range in a named source file (end is inclusive of the last char)."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Note:
    """A secondary location attached to a diagnostic, e.g. 'first declared here'."""

    message: str
    span: Span | None = None


@dataclass(frozen=True)
class Diagnostic:
    message: str
    span: Span | None = None
    severity: str = "error"
    notes: tuple[Note, ...] = ()

    def format(self, sources: Mapping[str, str] | None = None, program: str = "") -> str:
        """Render as ``file:line:col: error: message`` plus the source line and a caret.

        Without a location the headline is ``error: message``, or ``einc: error: message`` with
        ``program="einc"`` (how the command line names itself, like other tools do).
        """
        lines = [_headline(self.severity, self.message, self.span, program)]
        lines += _excerpt(self.span, sources)
        for note in self.notes:
            lines.append(_headline("note", note.message, note.span))
            lines += _excerpt(note.span, sources)
        return "\n".join(lines)


def _headline(severity: str, message: str, span: Span | None, program: str = "") -> str:
    where = f"{span}: " if span is not None else f"{program}: " if program else ""
    return f"{where}{severity}: {message}"


def _excerpt(span: Span | None, sources: Mapping[str, str] | None) -> list[str]:
    if span is None or sources is None or span.file not in sources:
        return []
    text_lines = _lines(sources[span.file])
    if not 1 <= span.line <= len(text_lines):
        return []
    text = text_lines[span.line - 1]
    gutter = f"{span.line:>5} | "
    width = 1
    if span.end_line == span.line and span.end_col >= span.col:
        width = span.end_col - span.col + 1
    column = span.col
    if len(text) > _EXCERPT_WIDTH:
        # a very long line: show a window around the column, marked with "..." where cut
        start = max(0, min(span.col - 1 - _EXCERPT_WIDTH // 4, len(text) - _EXCERPT_WIDTH))
        shown = text[start : start + _EXCERPT_WIDTH]
        prefix = "..." if start else ""
        text = prefix + shown + ("..." if start + _EXCERPT_WIDTH < len(text) else "")
        column = span.col - start + len(prefix)
        width = min(width, _EXCERPT_WIDTH - (column - 1 - len(prefix)))
    caret = " " * (len(gutter) - 2) + "| " + " " * (column - 1) + "^" + "~" * (max(width, 1) - 1)
    return [gutter + text, caret]


# Longest source excerpt printed under a diagnostic (a longer line is cut around the column).
_EXCERPT_WIDTH = 120

# Most diagnostics rendered in one report; the rest are counted in a closing line. A file with
# 40,000 repeated mistakes would otherwise print 120,000 lines that nobody reads.
MAX_REPORTED = 20


@lru_cache(maxsize=8)
def _lines(text: str) -> tuple[str, ...]:
    """The lines of a source, split once: every excerpt of a report looks its line up here.

    Splitting per diagnostic made reporting errors x lines (minutes for 40,000 repeated
    statements). ``str`` caches its hash and the cache compares by identity first, so a
    lookup costs O(1) after the first split of the same text object.
    """
    return tuple(text.splitlines())


def shorten(text: str, width: int = 40) -> str:
    """Text quoted in a one-line message: control characters escaped, long text cut."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= width else text[: width - 3] + "..."


def format_diagnostics(
    diagnostics: Sequence[Diagnostic], sources: Mapping[str, str] | None, program: str = ""
) -> str:
    """The first ``MAX_REPORTED`` diagnostics, then one line counting the others."""
    shown = [d.format(sources, program) for d in diagnostics[:MAX_REPORTED]]
    hidden = diagnostics[MAX_REPORTED:]
    if hidden:
        errors = sum(d.severity == "error" for d in diagnostics)
        what = f"{errors:,} errors" if errors == len(diagnostics) else f"{len(diagnostics):,} diagnostics"
        shown.append(
            _headline("note", f"{len(hidden):,} more not shown ({what} in all; "
                      f"the first {MAX_REPORTED} are above)", None, program)
        )
    return "\n".join(shown)


class EincError(Exception):
    """Root of every error einc reports to a user. Carries located diagnostics when it has them."""

    def __init__(
        self,
        message_or_diagnostics: str | Sequence[Diagnostic],
        sources: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(message_or_diagnostics, str):
            self.diagnostics: tuple[Diagnostic, ...] = (Diagnostic(message_or_diagnostics),)
        else:
            self.diagnostics = tuple(message_or_diagnostics)
        self.sources = dict(sources or {})
        super().__init__(format_diagnostics(self.diagnostics, self.sources))

    def render(self, program: str = "") -> str:
        """The message as a command line prints it (``einc: error: ...`` for unlocated ones)."""
        return format_diagnostics(self.diagnostics, self.sources, program)


class PcSyntaxError(EincError):
    """The .pc text does not parse."""


class PcSemanticError(EincError):
    """The .pc text parses but names, domains, families or arguments are wrong."""


class StructureError(EincError):
    """The region graph is not a valid smooth and decomposable circuit."""








@dataclass
class DiagnosticSink:
    """Collects diagnostics during one pass so that all errors are reported, not only the first."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, span: Span | None = None, *notes: Note) -> None:
        self.diagnostics.append(Diagnostic(message, span, "error", tuple(notes)))

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)
