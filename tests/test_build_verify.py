"""Building region graphs from programs and verifying them.

Oracles: hand-computed graphs for small files; the generators called directly; hypothesis-drawn
random region graphs (trees and DAGs) printed as .pc text, which must verify, and the same graphs
with one part grown (an overlap) or shrunk (a gap), which must be reported as not decomposable /
not smooth, naming exactly the variable that was moved.
"""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest
from einc.compiler import build as build_module
from einc.compiler import generators
from einc.compiler import verify as verify_module
from einc.compiler.build import build_region_graph
from einc.compiler.layering import layer
from einc.compiler.pipeline import front_end
from einc.compiler.verify import verify
from einc.grammar.parser import parse
from einc.ir.diagnostics import Diagnostic, Span
from einc.ir.layers import LeafLayer, SumLayer
from einc.ir.region_graph import (
    Domain,
    LeafFamily,
    Partition,
    Region,
    RegionGraph,
    Variable,
    region_sort_key,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def build(text: str, filename: str = "t.pc") -> tuple[RegionGraph | None, list[Diagnostic]]:
    return build_region_graph(parse(text, filename))


def built(text: str, filename: str = "t.pc") -> RegionGraph:
    graph, diagnostics = build(text, filename)
    assert diagnostics == [] and graph is not None, [d.message for d in diagnostics]
    return graph


def messages(text: str) -> list[str]:
    graph, diagnostics = build(text)
    assert graph is None and diagnostics
    return [d.message for d in diagnostics]


def structure_messages(text: str) -> list[str]:
    return [d.message for d in verify(built(text))]


AB = "var A, B : binary\nleaf A, B ~ bernoulli\n"
ABCD = "var A, B, C, D : binary\nleaf A, B, C, D ~ bernoulli\n"


# ---------------------------------------------------------------------------------------------
# Variables, columns, families, sizes


def test_variables_in_declaration_order_arrays_row_major() -> None:
    graph = built(
        "var b : binary\nvar rgb[2, 2] : real(3)\nvar age : real\nvar n : count\n"
        "leaf b ~ bernoulli\nleaf rgb, age ~ normal\nleaf n ~ poisson\n"
        "{b, rgb, age, n} -> b * {rgb, age, n}\n"
    )
    assert [v.name for v in graph.variables] == [
        "b",
        "rgb[0, 0]",
        "rgb[0, 1]",
        "rgb[1, 0]",
        "rgb[1, 1]",
        "age",
        "n",
    ]
    # a real(3) variable occupies 3 data columns; Variable.column is its first one
    assert [v.column for v in graph.variables] == [0, 1, 4, 7, 10, 13, 14]
    assert graph.num_columns == 15
    assert graph.variables[1].domain == Domain("real", 3)
    assert graph.variables[6].domain == Domain("count", 1)
    assert graph.variables[1].span == Span("t.pc", 2, 5, 2, 13)


def test_defaults_sizes_and_name() -> None:
    graph = built(AB + "{A, B} -> A * B\n", "models/my_model.pc")
    assert (graph.name, graph.sums, graph.inputs, graph.heads) == ("my_model", 10, 10, 1)
    graph = built("circuit named\nsums 7\n" + AB + "{A, B} -> A * B\n")
    assert (graph.name, graph.sums, graph.inputs, graph.heads) == ("named", 7, 7, 1)
    graph = built("sums 7\ninputs 3\nheads 2\n" + AB + "{A, B} -> A * B\n")
    assert (graph.sums, graph.inputs, graph.heads) == (7, 3, 2)


@pytest.mark.parametrize(
    ("family", "domain", "expected"),
    [
        ("bernoulli", "binary", LeafFamily("bernoulli")),
        ("poisson", "count", LeafFamily("poisson")),
        ("categorical", "categorical(4)", LeafFamily("categorical")),
        ("categorical(4)", "categorical(4)", LeafFamily("categorical")),
        ("binomial(255)", "categorical(256)", LeafFamily("binomial", (("n", 255.0),))),
        ("binomial(n = 3)", "count", LeafFamily("binomial", (("n", 3.0),))),
    ],
)
def test_families_are_normalised(family: str, domain: str, expected: LeafFamily) -> None:
    graph = built(f"var A, B : {domain}\nleaf A, B ~ {family}\n{{A, B}} -> A * B\n")
    assert graph.variables[0].family == expected


def test_normal_defaults_and_arguments() -> None:
    text = "var u, v : real\nleaf u ~ normal\nleaf v ~ normal(max_var = 2, min_var = 0.5)\nu -> u * v\n"
    text = text.replace("u -> u * v", "{u, v} -> u * v")
    graph = built(text)
    assert graph.variables[0].family == LeafFamily("normal", (("min_var", 1e-4), ("max_var", 10.0)))
    assert graph.variables[1].family == LeafFamily("normal", (("min_var", 0.5), ("max_var", 2.0)))


@pytest.mark.parametrize(
    ("family", "domain", "fits"),
    [
        ("bernoulli", "binary", True),
        ("bernoulli", "categorical(2)", True),
        ("bernoulli", "categorical(3)", False),
        ("bernoulli", "real", False),
        ("bernoulli", "count", False),
        ("categorical", "binary", True),
        ("categorical", "categorical(7)", True),
        ("categorical(7)", "categorical(8)", False),
        ("categorical", "count", False),
        ("binomial(255)", "categorical(256)", True),
        ("binomial(254)", "categorical(256)", False),
        ("binomial(3)", "count", True),
        ("binomial(1)", "binary", True),
        ("binomial(3)", "real", False),
        ("poisson", "count", True),
        ("poisson", "categorical(5)", True),
        ("poisson", "binary", True),
        ("poisson", "real(2)", False),
        ("normal", "real", True),
        ("normal", "real(3)", True),
        ("normal", "binary", False),
        ("normal", "count", False),
    ],
)
def test_family_fits_domain(family: str, domain: str, fits: bool) -> None:
    text = f"var A, B : {domain}\nleaf A, B ~ {family}\n{{A, B}} -> A * B\n"
    graph, diagnostics = build(text)
    assert (graph is not None) == fits
    if not fits:
        assert all(
            d.message.startswith("leaf family ") and "does not fit" in d.message
            for d in diagnostics
        )
        assert diagnostics[0].span == Span("t.pc", 2, 13, 2, 12 + len(family))


# ---------------------------------------------------------------------------------------------
# Scopes, region names, partitions


def test_scope_expressions_slices_and_whole_arrays() -> None:
    graph = built(
        "var x[8] : binary\nvar img[4, 4] : binary\nleaf x, img ~ bernoulli\n"
        "{x, img} -> {x} * img\n"
        "{x} -> {x[0:4]} * {x[4:]}\n"
        "{x[:4]} -> x[0:2] * {x[2], x[3]}\n"
        "img -> {img[0:2, 0:4]} * img[2:4, :]\n"
        "{img[0:2, 0:4]} -> img[0:2, 0:2] * img[0:2, 2:4]\n"
    )
    scopes = {r.scope for r in graph.regions}
    assert tuple(range(24)) in scopes  # the root: x then img
    assert tuple(range(8, 16)) in scopes  # img rows 0-1
    assert (8, 9, 12, 13) in scopes  # img[0:2, 0:2], row-major: 8 + 4*row + col
    assert (10, 11, 14, 15) in scopes
    assert verify(graph) == []


def test_region_names_and_bare_references() -> None:
    graph = built(
        ABCD + "region all = {A, B, C, D}\nregion left = {A, B}\n"
        "all -> left * {C, D}\nleft -> A * B\n{C, D} -> C * D\n"
    )
    names = {graph.scope_names(r.scope): r.name for r in graph.regions}
    assert names["{A, B, C, D}"] == "all" and names["{A, B}"] == "left" and names["{C, D}"] is None
    # a named region's span is its `region` statement
    all_region = graph.region_by_id[graph.root]
    assert all_region.span == Span("t.pc", 3, 1, 3, 25)
    assert verify(graph) == []


def test_regions_and_partitions_are_canonical() -> None:
    forward = built(ABCD + "{A, B, C, D} -> {A, B} * {C, D}\n{A, B} -> A * B\n{C, D} -> C * D\n")
    shuffled = built(ABCD + "{D, C} -> D * C\n{B, A} -> B * A\n{D, C, B, A} -> {C, D} * {B, A}\n")
    assert [r.id for r in forward.regions] == [r.id for r in shuffled.regions]
    assert [(p.region, p.parts) for p in forward.partitions] == [
        (p.region, p.parts) for p in shuffled.partitions
    ]
    ids = [r.id for r in forward.regions]
    assert ids == sorted(ids, key=region_sort_key)


def test_variable_order_in_columns_is_declaration_order_not_name_order() -> None:
    graph = built("var Z, A : binary\nleaf Z, A ~ bernoulli\n{A, Z} -> A * Z\n")
    assert [(v.name, v.column) for v in graph.variables] == [("Z", 0), ("A", 1)]


# ---------------------------------------------------------------------------------------------
# Semantic errors: all of them, located


def test_all_semantic_errors_are_reported_in_source_order() -> None:
    text = (
        "var A, B : binary\n"
        "var A : real\n"  # duplicate
        "leaf A, B ~ gaussian\n"  # unknown family
        "sums 0\n"  # K < 1
        "{A, B} -> A * E\n"  # unknown variable
    )
    graph, diagnostics = build(text)
    assert graph is None
    assert [(d.span.line, d.message.split(";")[0]) for d in diagnostics] == [
        (2, "variable 'A' is declared twice"),
        (3, "unknown leaf family 'gaussian'"),
        (
            4,
            (
                "sums (K, the number of densities per internal region) must be a whole number of at "
                "least 1, found 0"
            ),
        ),
        (5, "unknown variable 'E'"),
    ]
    duplicate = diagnostics[0]
    assert duplicate.notes[0].message == "first declared here"
    assert duplicate.notes[0].span == Span("t.pc", 1, 5, 1, 5)
    assert "did you mean normal?" in diagnostics[1].message


def test_index_and_slice_errors() -> None:
    found = messages(
        "var x[8] : binary\nvar A : binary\nleaf x, A ~ bernoulli\n"
        "{x, A} -> {x[8]} * {x[0:9]}\n{x} -> x[3:3] * x[1, 2]\n{A} -> A[0] * x[2.5]\n"
    )
    assert found == [
        "index 8 out of range for 'x', declared x[8]; expected 0..7",
        "slice 0:9 out of range for 'x', declared x[8]; expected bounds in 0..8",
        "empty slice 3:3; expected start < stop",
        "'x' has 1 dimension (declared x[8]); expected 1 index, found 2",
        "'A' is a scalar variable and takes no index",
        "an index must be a whole number, found 2.5",
    ]


def test_missing_family_names_the_variables() -> None:
    found = messages(
        "var A, B : binary\nvar x[6] : count\nleaf A ~ bernoulli\nleaf x[0] ~ poisson\n"
        "structure random_binary_trees(depth = 1, replicas = 1)\n"
    )
    assert found == [
        "variable 'B' has no leaf family; add e.g. `leaf B ~ bernoulli`",
        "variables x[1], x[2], x[3] and 2 more have no leaf family; add e.g. `leaf x[1:6] ~ poisson`",
    ]


def test_generator_and_partitions_conflict() -> None:
    found = messages(
        AB + "structure random_binary_trees(depth = 1, replicas = 1)\n{A, B} -> A * B\n"
    )
    assert found[0].startswith("a circuit has either a structure generator or explicit regions")


@pytest.mark.parametrize(
    ("arguments", "message", "column"),
    [
        ("depth = 5, replicas = 2", "depth 5 needs at least 32 variables, the circuit has 16; expected depth at most 4", 39),
        ("depth = 0, replicas = 2", "depth must be at least 1, found 0", 39),
        ("depth = 2, replicas = 0", "replicas must be at least 1, found 0", 53),
        ("depth = 2.5, replicas = 2", "depth must be a whole number, found 2.5", 39),
        ("depth = 2", "random_binary_trees needs argument 'replicas'", 11),
        (
            "dpeth = 2, replicas = 2",
            (
                "unknown argument 'dpeth' of random_binary_trees; expected one of depth, replicas, "
                "seed — did you mean depth?"
            ),
            31,
        ),
        ("2, 3, 4, 5", "random_binary_trees takes 3 arguments, found 4", 40),
        (
            "depth = 2, depth = 2, replicas = 1",
            "argument 'depth' of random_binary_trees given twice",
            42,
        ),
    ],
)
def test_generator_argument_errors_point_at_the_argument(
    arguments: str, message: str, column: int
) -> None:
    text = f"var x[16] : binary\nleaf x ~ bernoulli\nstructure random_binary_trees({arguments})\n"
    graph, diagnostics = build(text)
    assert graph is None
    assert diagnostics[0].message == message
    assert (diagnostics[0].span.line, diagnostics[0].span.col) == (3, column)


def test_poon_domingos_arguments() -> None:
    grid = "var img[28, 28] : categorical(256)\nleaf img ~ binomial(255)\n"
    found = messages(grid + "structure poon_domingos(delta = 5, axes = vertical, over = img)\n")
    assert found == ["delta 5 does not divide the 28 columns of 'img'"]
    found = messages(grid + "structure poon_domingos(delta = 7, axes = diagonal)\n")
    assert found == ["unknown axes 'diagonal'; expected one of vertical, horizontal, both"]
    found = messages(
        grid + "var y : binary\nleaf y ~ bernoulli\n"
        "structure poon_domingos(delta = 7, over = img)\n"
    )
    assert found[0].startswith("poon_domingos over 'img' needs 'img' to be the circuit's only")
    found = messages("var x[16] : binary\nleaf x ~ bernoulli\nstructure poon_domingos(delta = 4)\n")
    assert found[0].startswith("poon_domingos needs `over = NAME`")
    found = messages(grid + "structure poon_domingos(delta = [7, 4.5], over = imgs)\n")
    assert found == [
        "delta must be a whole number, found 4.5",
    ]


def test_generators_build_the_generators_graphs() -> None:
    graph = built(
        "var x[16] : binary\nleaf x ~ bernoulli\n"
        "structure random_binary_trees(depth = 3, replicas = 4, seed = 7)\n"
    )
    regions, partitions = generators.random_binary_trees(16, 3, 4, 7)
    assert [r.id for r in graph.regions] == [r.id for r in regions]
    assert [(p.region, p.parts) for p in graph.partitions] == [
        (p.region, p.parts) for p in partitions
    ]
    assert graph.generator == "random_binary_trees(depth=3, replicas=4, seed=7)"
    # generated structure is located at the structure statement
    assert {p.span for p in graph.partitions} == {Span("t.pc", 3, 1, 3, 64)}
    assert verify(graph) == []

    graph = built(
        "var img[8, 8] : binary\nleaf img ~ bernoulli\nstructure poon_domingos(delta = 4)\n"
    )
    regions, partitions = generators.poon_domingos(np.arange(64).reshape(8, 8), [4], "both")
    assert [r.id for r in graph.regions] == [r.id for r in regions]
    assert len(graph.partitions) == len(partitions)
    assert graph.generator == "poon_domingos(delta=[4], axes=both, over=img)"


# ---------------------------------------------------------------------------------------------
# Verification of hand-made graphs


def test_not_decomposable_names_shared_variables() -> None:
    found = structure_messages(
        ABCD + "{A, B, C, D} -> {A, B, C} * {B, C, D}\n{A, B, C} -> A * {B, C}\n"
        "{B, C, D} -> {B, C} * D\n{B, C} -> B * C\n"
    )
    assert found == [
        (
            "partition {A, B, C, D} -> {A, B, C} * {B, C, D} is not decomposable: parts {A, B, C} "
            "and {B, C, D} share B, C"
        )
    ]


def test_not_smooth_names_missing_and_extra_variables() -> None:
    found = structure_messages(
        ABCD + "{A, B, C, D} -> {A, B} * C\n{A, B} -> A * {B, D}\n"
        "{A, B, C, D} -> {A, B} * {C, D}\n{C, D} -> C * D\n"
    )
    assert found == [
        (
            "partition {A, B, C, D} -> {A, B} * {C} is not smooth: its parts do not cover exactly "
            "{A, B, C, D}; missing D"
        ),
        (
            "partition {A, B} -> {A} * {B, D} is not smooth: its parts do not cover exactly {A, B}; "
            "D not in the region"
        ),
    ]


def test_partitions_into_more_than_two_parts_are_rejected() -> None:
    graph = built("var A, B, C : binary\nleaf A, B, C ~ bernoulli\n{A, B, C} -> A * B * C\n")
    [diagnostic] = verify(graph)
    assert "has 3 parts; `product outer` multiplies exactly 2 children" in diagnostic.message
    assert "{A, B, C} -> {A} * {B, C} and {B, C} -> {B} * {C}" in diagnostic.message
    assert diagnostic.span == Span("t.pc", 3, 1, 3, 22)


def test_one_part_and_self_part() -> None:
    found = structure_messages(AB + "{A, B} -> A * B\n{A} -> A\n")
    assert found[0].startswith("partition {A} -> {A} has 1 part; a partition splits its region")
    assert found[1].startswith("partition {A} -> {A} has the region itself as a part")


def test_cycles_are_reported() -> None:
    found = structure_messages(
        "var A, B, C : binary\nleaf A, B, C ~ bernoulli\n{A, B, C} -> {A, B} * C\n"
        "{A, B} -> {A, B, C} * A\n"
    )
    assert any(
        m.startswith("the region graph has a cycle: {A, B, C} -> {A, B} -> {A, B, C}")
        for m in found
    )


def test_no_root_and_unreachable_regions() -> None:
    found = structure_messages(ABCD + "{A, B} -> A * B\n{C, D} -> C * D\n")
    assert found == [
        (
            "no root: no region covers every variable of circuit t (top regions: {A, B} and {C, D}); "
            "add a partition of the root, e.g. {A, B, C, D} -> ..."
        )
    ]
    graph = built(
        ABCD + "region spare = {A, C}\n{A, B, C, D} -> {A, B} * {C, D}\n"
        "{A, B} -> A * B\n{C, D} -> C * D\nspare -> A * C\n"
    )
    [diagnostic] = verify(graph)
    assert diagnostic.message == (
        "region spare is not reachable from the root: no partition below the root "
        "{A, B, C, D} has it as a part"
    )
    assert diagnostic.span == Span("t.pc", 3, 1, 3, 21)


def _variables(n: int) -> tuple[Variable, ...]:
    return tuple(
        Variable(i, f"x{i}", Domain("binary", 2), LeafFamily("bernoulli"), column=i)
        for i in range(n)
    )


def test_several_roots_and_unknown_parts_in_hand_built_graphs() -> None:
    full = (0, 1)
    regions = (Region(full, 0), Region(full, 1), Region((0,), 0), Region((1,), 0))
    partitions = (
        Partition((full, 0), (((0,), 0), ((1,), 0))),
        Partition((full, 1), (((0,), 0), ((1,), 0))),
        Partition((full, 0), (((0,), 0), ((1,), 7))),
    )
    graph = RegionGraph("g", _variables(2), regions, partitions, sums=2, inputs=2)
    found = [d.message for d in verify(graph)]
    assert (
        "partition {x0, x1} -> {x0} * {x1}#7 refers to regions that do not exist: {x1}#7" in found
    )
    assert (
        "region {x0, x1}#1 is a second root: no partition below the root {x0, x1} has it as a part"
        in found
    )


def test_verify_never_raises_on_odd_graphs() -> None:
    empty = RegionGraph("empty", _variables(2), (), (), sums=1, inputs=1)
    assert [d.message for d in verify(empty)] == ["circuit empty has no regions"]
    lonely = RegionGraph("lonely", _variables(1), (Region((0,), 0),), (), sums=1, inputs=1)
    assert [d.message for d in verify(lonely)] == [
        "the root {x0} has no partitions; a circuit needs at least one partition of its root"
    ]


# ---------------------------------------------------------------------------------------------
# Random region graphs (hypothesis): valid ones verify; overlaps and gaps are named


Triple = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


@st.composite
def random_region_graphs(draw: st.DrawFn) -> tuple[int, list[Triple]]:
    """A random smooth, decomposable region graph over n variables: a tree, or a DAG when a
    region gets several partitions whose parts are shared. Returns (n, [(region, left, right)])."""
    n = draw(st.integers(2, 7))
    triples: list[Triple] = []
    expanded: set[tuple[int, ...]] = set()
    pending = [tuple(range(n))]
    while pending:
        scope = pending.pop()
        if scope in expanded:
            continue
        expanded.add(scope)
        count = draw(st.integers(1, 2)) if len(scope) > 2 else 1
        for _ in range(count):
            order = draw(st.permutations(scope))
            cut = draw(st.integers(1, len(scope) - 1))
            left, right = sorted(order[:cut]), sorted(order[cut:])
            triple = (scope, tuple(min(left, right)), tuple(max(left, right)))
            if triple in triples:
                continue
            triples.append(triple)
            for part in triple[1:]:
                # parts with two or more variables are split further, or stay leaf regions
                if len(part) > 1 and (draw(st.booleans()) or len(scope) == n):
                    pending.append(part)
    return n, triples


def render(n: int, triples: list[Triple], data: st.DataObject | None = None) -> str:
    """Print a region graph as .pc text, with scopes and parts in random order when ``data``."""

    def scope_text(scope: tuple[int, ...]) -> str:
        names = [f"V{v}" for v in scope]
        if data is not None:
            names = data.draw(st.permutations(names))
            if len(names) == 1 and data.draw(st.booleans()):
                return names[0]  # a bare variable is a singleton region
        return "{" + ", ".join(names) + "}"

    lines = [
        f"var {', '.join(f'V{v}' for v in range(n))} : binary",
        f"leaf {', '.join(f'V{v}' for v in range(n))} ~ bernoulli",
    ]
    body = []
    for region, left, right in triples:
        parts = [scope_text(left), scope_text(right)]
        if data is not None and data.draw(st.booleans()):
            parts.reverse()
        body.append(f"{scope_text(region)} -> {parts[0]} * {parts[1]}")
    if data is not None:
        body = data.draw(st.permutations(body))
    return "\n".join(lines + list(body)) + "\n"


@settings(max_examples=40, deadline=None)
@given(random_region_graphs(), st.data())
def test_random_valid_region_graphs_verify(
    graph_spec: tuple[int, list[Triple]], data: st.DataObject
) -> None:
    n, triples = graph_spec
    graph = built(render(n, triples, data))
    assert verify(graph) == []
    assert {(p.region[0], *(q[0] for q in p.parts)) for p in graph.partitions} == set(triples)
    layered = layer(graph)
    placed = [
        r for lay in layered.layers if isinstance(lay, (LeafLayer, SumLayer)) for r in lay.regions
    ]
    assert sorted(placed) == sorted(r.id for r in graph.regions)


@settings(max_examples=40, deadline=None)
@given(random_region_graphs(), st.data())
def test_random_overlaps_are_not_decomposable(
    graph_spec: tuple[int, list[Triple]], data: st.DataObject
) -> None:
    n, triples = graph_spec
    index = data.draw(st.integers(0, len(triples) - 1))
    region, left, right = triples[index]
    moved = data.draw(st.sampled_from(right))
    grown = tuple(sorted(left + (moved,)))
    mutated = [*triples[:index], (region, grown, right), *triples[index + 1 :]]
    diagnostics = verify(built(render(n, mutated)))
    expected_line = index + 3  # after the var and leaf lines
    hits = [d for d in diagnostics if "is not decomposable" in d.message]
    assert len(hits) == 1
    assert hits[0].message.endswith(f"share V{moved}")
    assert hits[0].span is not None and hits[0].span.line == expected_line
    assert not any("is not smooth" in d.message for d in diagnostics)


@settings(max_examples=40, deadline=None)
@given(random_region_graphs(), st.data())
def test_random_gaps_are_not_smooth(
    graph_spec: tuple[int, list[Triple]], data: st.DataObject
) -> None:
    n, triples = graph_spec
    candidates = [i for i, (_, left, right) in enumerate(triples) if max(len(left), len(right)) > 1]
    assume(candidates)  # a graph of singleton parts only has nothing to shrink
    index = data.draw(st.sampled_from(candidates))
    region, left, right = triples[index]
    bigger, other = (left, right) if len(left) > 1 else (right, left)
    removed = data.draw(st.sampled_from(bigger))
    shrunk = tuple(v for v in bigger if v != removed)
    mutated = [*triples[:index], (region, shrunk, other), *triples[index + 1 :]]
    diagnostics = verify(built(render(n, mutated)))
    hits = [d for d in diagnostics if "is not smooth" in d.message]
    assert len(hits) == 1
    assert hits[0].message.endswith(f"missing V{removed}")
    assert hits[0].span is not None and hits[0].span.line == index + 3
    assert not any("is not decomposable" in d.message for d in diagnostics)


# ---------------------------------------------------------------------------------------------
# Examples and docs


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.pc")), ids=lambda p: p.name)
def test_every_example_verifies(path: Path) -> None:
    layered = front_end(path.read_text(encoding="utf-8"), str(path))
    assert verify(layered.graph) == []
    assert layered.graph.name == path.stem


def test_examples_are_the_expected_datasets() -> None:
    expected_columns = {
        "nltcs": 16,
        "plants": 69,
        "baudio": 100,
        "bnetflix": 100,
        "accidents": 111,
        "pumsb_star": 163,
        "mnist": 784,
        "tiny": 4,
    }
    for name, columns in expected_columns.items():
        graph = front_end((EXAMPLES / f"{name}.pc").read_text(encoding="utf-8"), name).graph
        assert graph.num_columns == columns, name


def test_docstring_examples_run() -> None:
    for module in (build_module, verify_module):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------------------------
# Product kinds, the tree generator, indicator leaves


def test_product_kind_is_parsed_and_defaults_to_outer() -> None:
    assert built(AB + "{A, B} -> A * B\n").product == "outer"
    graph = built(ABCD + "product hadamard\n{A, B, C, D} -> A * B * {C, D}\n{C, D} -> C * D\n")
    assert graph.product == "hadamard" and verify(graph) == []
    assert [len(p.parts) for p in graph.partitions] == [3, 2]


def test_unknown_and_repeated_product_kinds_are_located() -> None:
    found = messages(AB + "product cp\nproduct outer\n{A, B} -> A * B\n")
    assert found == [
        "unknown product kind 'cp'; expected one of outer, hadamard — did you mean hadamard?",
        "product is given twice; a circuit has one product kind",
    ]


def test_lists_may_run_over_several_lines_with_comments() -> None:
    text = (
        "var x[6] : binary\nleaf x ~ bernoulli\nproduct hadamard\n"
        "structure tree(parents = [\n  -1, 0, 0,   # x[0..2]\n  1, 1, 2,    # x[3..5]\n])\n"
    )
    graph = built(text)
    assert graph.generator == "tree(parents=[6 entries], root=x[0])"
    assert verify(graph) == []


def test_tree_generator_regions_are_subtrees() -> None:
    graph = built("var x[5] : binary\nleaf x ~ bernoulli\nproduct hadamard\nstructure tree(parents = [1, -1, 1, 0, 0])\n")
    partitions = {p.region[0]: sorted(part[0] for part in p.parts) for p in graph.partitions}
    # x[1] is the root with children x[0] (which has x[3], x[4]) and x[2]
    assert partitions == {(0, 1, 2, 3, 4): [(0, 3, 4), (1,), (2,)], (0, 3, 4): [(0,), (3,), (4,)]}
    assert verify(graph) == []


@pytest.mark.parametrize(
    "parents, message",
    [
        ("[-1, 0, 0]", "parents has 3 entries; expected one per variable (4), in declaration order, -1 for the root"),
        ("[-1, 1, 0, 0]", "parents[1] = 1: variable x[1] cannot be its own parent"),
        ("[-1, 0, 7, 0]", "parents[2] = 7 is not a variable; expected -1 (the root) or 0..3"),
        ("[-1, 0, -1, 0]", "a tree has exactly one root (parent -1); found 2 (x[0], x[2])"),
        ("[1, 2, 0, 0]", "a tree has exactly one root (parent -1); found none"),
        ("[-1, 2, 3, 1]", "parents make a cycle, not a tree: x[1] -> x[2] -> x[3] -> x[1]"),
        ("[-1, 0.5, 0, 0]", "parents must be a whole number, found 0.5"),
    ],
)
def test_tree_generator_arguments_are_checked_and_located(parents: str, message: str) -> None:
    text = f"var x[4] : binary\nleaf x ~ bernoulli\nproduct hadamard\nstructure tree(parents = {parents})\n"
    graph, diagnostics = build(text)
    assert graph is None and [d.message for d in diagnostics] == [message]
    assert diagnostics[0].span.line == 4 and diagnostics[0].span.col >= 26


def test_hadamard_parts_must_have_equal_sizes_reported_once_per_statement() -> None:
    text = "var x[6] : binary\nleaf x ~ bernoulli\nproduct hadamard\nsums 4\ninputs 2\nstructure tree(parents = [-1, 0, 1, 2, 2, 2])\n"
    [diagnostic] = verify(built(text))
    assert "multiplies parts of different sizes" in diagnostic.message
    assert "(and 1 more partitions like it)" in diagnostic.message
    assert "expected inputs = sums, found inputs 2 and sums 4" in diagnostic.message
    assert diagnostic.span.line == 6


def test_outer_products_accept_binary_trees_and_reject_n_ary_ones() -> None:
    chain = "var x[3] : binary\nleaf x ~ bernoulli\nstructure tree(parents = [-1, 0, 1])\n"
    assert verify(built(chain)) == []  # every node has one child: binary partitions
    star = "var x[4] : binary\nleaf x ~ bernoulli\nstructure tree(parents = [-1, 0, 0, 0])\n"
    [diagnostic] = verify(built(star))
    assert "has 4 parts; `product outer` multiplies exactly 2 children" in diagnostic.message


def test_indicator_leaves_need_a_component_per_category_after_overrides() -> None:
    from einc.compiler.pipeline import CompileOptions, region_graph
    from einc.ir.diagnostics import StructureError

    text = "var c : categorical(3)\nvar b : binary\nleaf c ~ indicator\nleaf b ~ bernoulli\nsums 3\n{c, b} -> c * b\n"
    assert region_graph(text, "t.pc").inputs == 3
    with pytest.raises(StructureError) as error:
        region_graph(text, "t.pc", CompileOptions(sums=2))  # inputs follow sums
    assert "t.pc:3:10: error: indicator leaves need exactly one component per category" in str(error.value)
    with pytest.raises(Exception, match="leaf family indicator does not fit"):
        region_graph("var r : real\nvar b : binary\nleaf r ~ indicator\nleaf b ~ bernoulli\n{r, b} -> r * b\n", "t.pc")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=11))
def test_random_trees_verify_with_hadamard_products(draws: list[int]) -> None:
    # a random tree: node v + 1 hangs under one of the nodes 0..v; then the labels are shuffled
    count = len(draws) + 1
    parents = [-1] + [draw % (v + 1) for v, draw in enumerate(draws)]
    relabel = np.random.default_rng(draws[0]).permutation(count)
    shuffled = [-1] * count
    for v, parent in enumerate(parents):
        shuffled[relabel[v]] = -1 if parent < 0 else int(relabel[parent])
    regions, partitions = generators.tree(shuffled)
    inner = {p for p in shuffled if p >= 0}
    assert len(partitions) == len(inner) and len(regions) == count + len(inner)
    variables = tuple(Variable(i, f"x{i}", Domain("binary", 2), LeafFamily("bernoulli"), column=i) for i in range(count))
    graph = RegionGraph("t", variables, tuple(regions), tuple(partitions), sums=2, inputs=2, product="hadamard")
    assert verify(graph) == []
    layered = layer(graph)
    assert isinstance(layered.layers[0], LeafLayer)
