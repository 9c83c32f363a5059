"""The front end of einc as a flat list of stages, each a pure function of the previous IR.

    text --parse--> Program --build--> RegionGraph --verify--> (same graph) --layer--> LayeredCircuit
         --lower--> Plan

A stage returns diagnostics; this module is the boundary that turns them into the matching
``EincError`` subclass (``PcSyntaxError``, ``PcSemanticError``, ``StructureError``) carrying the
source text, so that every message prints with its line and a caret.

    >>> layered = front_end("var A, B : binary\\nleaf A, B ~ bernoulli\\n{A, B} -> A * B\\n", "ab.pc")
    >>> [type(layer).__name__ for layer in layered.layers]
    ['LeafLayer', 'ProductLayer', 'SumLayer']
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from einc.compiler import size
from einc.compiler.build import build_region_graph
from einc.compiler.layering import layer
from einc.compiler.lower import lower
from einc.compiler.verify import verify
from einc.grammar.parser import parse
from einc.ir.diagnostics import Diagnostic, EincError, PcSemanticError, StructureError
from einc.errors import ResourceError
from einc.ir.layers import LayeredCircuit
from einc.ir.plan import Plan
from einc.ir.region_graph import RegionGraph


@dataclass(frozen=True)
class CompileOptions:
    """Everything that changes what the pipeline produces, passed explicitly through it.

    ``sums``/``inputs``/``heads`` override the file's values (``None``: keep the file's), so that
    a sweep over K needs no edited copies of a ``.pc`` file. Lowering options are added here too.

    ``max_bytes`` and ``max_build_seconds`` bound what the front end agrees to build (see
    ``compiler/size.py``): the size is estimated from the declarations and generator arguments,
    with parameters counted at ``dtype``, before anything is allocated.
    """

    sums: int | None = None
    inputs: int | None = None
    heads: int | None = None
    # the device the plan is lowered for ("cpu", "cuda", "cuda:1"; None: the device the model
    # runs on, "cpu" for a bare plan): it picks the einsum kernels
    target: str | None = None
    # every einsum op's kernel: "auto" (the target's rule, compiler/kernels.py), "matmul", "fused"
    einsum_kernel: str = "auto"
    dtype: str = "float32"
    max_bytes: int = size.DEFAULT_MAX_BYTES
    max_build_seconds: float = size.DEFAULT_MAX_BUILD_SECONDS

    def __post_init__(self) -> None:
        # a value of the wrong type would surface as a TypeError deep inside the front end
        for name in ("sums", "inputs", "heads"):
            value = getattr(self, name)
            if value is not None and not _whole(value):
                raise EincError(f"CompileOptions: {name} must be a whole number (a K) or None, found {value!r}")
        if not _whole(self.max_bytes) or self.max_bytes < 1:
            raise EincError(f"CompileOptions: max_bytes must be a whole number of bytes, at least 1, found "
                            f"{self.max_bytes!r}")
        seconds = self.max_build_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.integer, np.floating)) or not seconds > 0:
            raise EincError(f"CompileOptions: max_build_seconds must be a positive number, found {seconds!r}")
        # NumPy scalars as Python numbers: the K overrides go into a model file's JSON metadata
        for name in ("sums", "inputs", "heads", "max_bytes"):
            if isinstance(getattr(self, name), np.integer):
                object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "max_build_seconds", float(seconds))

    @property
    def limits(self) -> size.SizeLimits:
        return size.SizeLimits(self.max_bytes, self.max_build_seconds, self.dtype)


def check_options(options: object) -> None:
    """``EincError`` unless ``options`` is None or a ``CompileOptions`` (a dict is a natural slip)."""
    if options is not None and not isinstance(options, CompileOptions):
        raise EincError(f"options must be an einc.CompileOptions, found a {type(options).__name__}; e.g. "
                        f"options=einc.CompileOptions(sums=4)")


def _whole(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def load_source(path: str | Path) -> tuple[str, str]:
    """``(text, filename)`` of a ``.pc`` file; the filename is the path as the user gave it. A
    UTF-8 byte-order mark (Windows editors write one) is dropped; a file that is not UTF-8 text
    is named for what it looks like (a model file, data), the usual reason it was given."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise EincError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        return raw.decode("utf-8-sig"), str(path)
    except UnicodeDecodeError as error:
        raise EincError(f"{path}: not a .pc circuit file ({_binary_kind(raw, error.start)}); expected the text "
                        "of a circuit (var, leaf and structure statements)") from None


# What a binary file given for a .pc file probably is, from its first bytes.
_BINARY_KINDS = (
    (b"PK", "an .npz archive: an einc model (for eval, sample, inpaint, query, train --resume) or data (--data)"),
    (b"\x93NUMPY", "a .npy array: data, given with --data"),
    (b"\x1f\x8b", "gzip-compressed: data such as .csv.gz, given with --data"),
)


def _binary_kind(raw: bytes, bad_byte: int) -> str:
    kind = next((what for magic, what in _BINARY_KINDS if raw.startswith(magic)), None)
    return kind or f"not UTF-8 text: byte {bad_byte} is not UTF-8"


def region_graph(
    text: str, filename: str, options: CompileOptions = CompileOptions()
) -> RegionGraph:
    """Parse, build and verify: the verified ``RegionGraph`` of a ``.pc`` text, or raise."""
    sources = {filename: text}
    program = parse(text, filename)  # PcSyntaxError
    graph, diagnostics = build_region_graph(program, options.limits)  # names, domains, families
    _raise_if_errors(PcSemanticError, diagnostics, sources)
    assert graph is not None, "build returns a graph whenever it reports no error"
    graph = _apply_overrides(graph, options, filename)  # K from the command line
    _check_size(graph, options, filename)  # parameters at the final K fit the limits
    _raise_if_errors(StructureError, verify(graph), sources)  # smooth, decomposable, rooted
    return graph


def front_end(
    text: str, filename: str, options: CompileOptions = CompileOptions()
) -> LayeredCircuit:
    """Parse, build, verify and layer a ``.pc`` text; raise the matching ``EincError`` if invalid."""
    return layer(region_graph(text, filename, options))  # Algorithm 1 (appendix A)


def compile_plan(text: str, filename: str, options: CompileOptions = CompileOptions()) -> Plan:
    """The whole compiler: a ``.pc`` text to its einsum plan (what ``einc.compile`` runs)."""
    layered = front_end(text, filename, options)
    return lower(layered, target=options.target or "cpu", kernel=options.einsum_kernel)  # §3.3-3.4, app. B


def check_file(path: str | Path, options: CompileOptions = CompileOptions()) -> LayeredCircuit:
    """``front_end`` of a file on disk (what ``einc check`` runs)."""
    text, filename = load_source(path)
    return front_end(text, filename, options)


def _raise_if_errors(
    kind: type[EincError], diagnostics: list[Diagnostic], sources: dict[str, str]
) -> None:
    if any(d.severity == "error" for d in diagnostics):
        raise kind(diagnostics, sources)


def _check_size(graph: RegionGraph, options: CompileOptions, filename: str) -> None:
    """``ResourceError`` when the built structure with its parameters exceeds the limits."""
    from einc.compiler.dump import neural_row_floats, parameter_count
    from einc.ir.neural import DEFAULT_QUERY_SAMPLES

    count = parameter_count(graph)
    estimate = size.SizeEstimate(
        len(graph.variables),
        len(graph.regions),
        len(graph.partitions),
        sum(len(region.scope) for region in graph.regions),
        count.total,
        options.dtype,
        neural_row_floats(graph, DEFAULT_QUERY_SAMPLES),
    )
    what = f"{filename}: with sums {graph.sums}, inputs {graph.inputs} and heads {graph.heads}, the circuit"
    problem = size.limit_problem(estimate, options.limits, what)
    if problem is not None:
        raise ResourceError(problem)


def _apply_overrides(graph: RegionGraph, options: CompileOptions, filename: str) -> RegionGraph:
    overrides = {
        key: value
        for key, value in (
            ("sums", options.sums),
            ("inputs", options.inputs),
            ("heads", options.heads),
        )
        if value is not None
    }
    bad = [
        f"{key} must be at least 1, found {value}" for key, value in overrides.items() if value < 1
    ]
    if bad:
        raise PcSemanticError([Diagnostic(f"{filename}: {message}") for message in bad])
    if "sums" in overrides and "inputs" not in overrides and graph.inputs == graph.sums:
        # The file left inputs to default to sums (or set them equal): keep them tied.
        overrides["inputs"] = overrides["sums"]
    return replace(graph, **overrides) if overrides else graph
