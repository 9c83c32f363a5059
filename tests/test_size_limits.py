"""The front end estimates what it would build and refuses the absurd before allocating (issue 11).

The estimates are checked against what the generators actually build (exact for RAT, exact for
PD while the axes are counted completely); absurd requests are refused quickly, with a located
diagnostic that gives the estimate; the limits are configurable.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from einc.compiler import size
from einc.compiler.dump import parameter_count
from einc.compiler.generators import poon_domingos, random_binary_trees
from einc.compiler.pipeline import CompileOptions, front_end, region_graph
from einc.errors import ResourceError
from hypothesis import given, settings
from hypothesis import strategies as st

import einc

RAT = "var x[{v}] : binary\nleaf x ~ bernoulli\nsums {k}\nstructure random_binary_trees(depth = {d}, replicas = {r})\n"
PD = "var img[{h}, {w}] : binary\nleaf img ~ bernoulli\nsums 2\nstructure poon_domingos(delta = {delta}, axes = {axes}, over = img)\n"


@settings(max_examples=25, deadline=None, derandomize=True)
@given(variables=st.integers(2, 64), depth=st.integers(1, 5), replicas=st.integers(1, 6))
def test_rat_estimate_is_exact(variables: int, depth: int, replicas: int) -> None:
    if 2**depth > variables:
        depth = variables.bit_length() - 1
    regions, partitions = random_binary_trees(variables, depth, replicas, 0)
    estimate = size.estimate_random_binary_trees(variables, depth, replicas, "float32")
    assert (estimate.regions, estimate.partitions) == (len(regions), len(partitions))
    assert estimate.scope_entries == sum(len(r.scope) for r in regions)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(height=st.integers(1, 12), width=st.integers(2, 12), deltas=st.lists(st.integers(1, 4), min_size=1, max_size=2),
       axes=st.sampled_from(["both", "vertical", "horizontal"]))
def test_pd_estimate_is_exact(height: int, width: int, deltas: list[int], axes: str) -> None:
    rows = deltas if axes in ("both", "horizontal") else []
    columns = deltas if axes in ("both", "vertical") else []
    if any(height % d for d in rows) or any(width % d for d in columns):
        return  # the generator refuses deltas that do not divide the axis
    grid = np.arange(height * width).reshape(height, width)
    try:
        regions, partitions = poon_domingos(grid, deltas, axes)
    except Exception:  # noqa: BLE001 - e.g. no cut inside the grid; counted elsewhere
        return
    estimate = size.estimate_poon_domingos(height, width, rows, columns, "float32", budget=10**6)
    assert (estimate.regions, estimate.partitions) == (len(regions), len(partitions))
    assert estimate.scope_entries == sum(len(r.scope) for r in regions)


def test_counting_an_absurd_axis_stops_at_the_budget() -> None:
    started = time.perf_counter()
    count = size.count_axis(10**9, [1], budget=10_000)
    assert not count.complete and count.cuts >= 10_000 // 3
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("text", "column", "fragments"),
    [
        (RAT.format(v=16, k=2, d=2, r=1_000_000), 11, ["3,000,000 partitions", "--max-build-seconds"]),
        (PD.format(h=28, w=28, delta="[1]", axes="both"), 11, ["2,967,048 partitions", "building it would take about 76.8 s"]),
        ("var x[100000000] : binary\nleaf x ~ bernoulli\nstructure random_binary_trees(depth = 1, replicas = 1)\n",
         5, ["'x' would have 100,000,000 variables", "GiB at float32"]),
        (("var a[10] : binary\nvar x[100000, 100000, 100000] : binary\nleaf a, x ~ bernoulli\n"
          "structure random_binary_trees(depth = 1, replicas = 1)\n"), 5, ["the variables up to 'x'", "1.00e+15 variables"]),
    ],
)
def test_absurd_structures_are_refused_before_building_with_a_located_estimate(text: str, column: int,
                                                                              fragments: list[str]) -> None:
    started = time.perf_counter()
    with pytest.raises(ResourceError) as caught:
        front_end(text, "big.pc")
    assert time.perf_counter() - started < 1.5
    diagnostic = caught.value.diagnostics[0]
    assert diagnostic.span is not None and diagnostic.span.col == column
    message = str(caught.value)
    assert message.startswith(f"big.pc:{diagnostic.span.line}:{column}: error: ") and "\n" in message  # caret
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("text", "options", "fragment"),
    [
        (RAT.format(v=16, k=100_000, d=2, r=2), CompileOptions(), "with sums 100000, inputs 100000"),
        (RAT.format(v=16, k=2, d=2, r=2), CompileOptions(sums=100_000), "with sums 100000"),
        ("var x[16] : categorical(1000000000)\nleaf x ~ categorical\nstructure random_binary_trees(depth = 2, replicas = 2)\n",
         CompileOptions(), "parameters: about"),
        (RAT.format(v=16, k=20, d=2, r=2), CompileOptions(heads=10**9), "heads 1000000000"),
    ],
)
def test_too_many_parameters_are_refused_with_the_estimate(text: str, options: CompileOptions, fragment: str) -> None:
    with pytest.raises(ResourceError) as caught:
        region_graph(text, "big.pc", options)
    assert fragment in str(caught.value) and "more than the limit of 4.0 GiB" in str(caught.value)


def test_limits_are_configurable_and_count_at_the_dtype() -> None:
    text = RAT.format(v=16, k=32, d=2, r=40)  # 80 partitions of 32 x 32 x 32 weights and more
    graph = region_graph(text, "ok.pc")
    count = parameter_count(graph)
    counts = (16, len(graph.regions), len(graph.partitions), sum(len(r.scope) for r in graph.regions),
              count.leaf + count.product + count.mixing)
    bytes32 = size.SizeEstimate(*counts, "float32").bytes
    bytes64 = size.SizeEstimate(*counts, "float64").bytes
    assert bytes64 - bytes32 == 4 * counts[4]
    between = (bytes32 + bytes64) // 2
    region_graph(text, "ok.pc", CompileOptions(max_bytes=between))
    with pytest.raises(ResourceError, match="at float64; that is more than the limit"):
        region_graph(text, "ok.pc", CompileOptions(max_bytes=between, dtype="float64"))
    with pytest.raises(ResourceError, match="more than the limit of 1.0 MiB"):
        region_graph(text, "ok.pc", CompileOptions(max_bytes=2**20))
    with pytest.raises(ResourceError, match="more than the limit of 0.001 s"):
        region_graph(text, "ok.pc", CompileOptions(max_build_seconds=0.001))


def test_the_examples_fit_the_default_limits() -> None:
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.pc")):
        estimate_ok = region_graph(path.read_text(), path.name)  # raises if refused
        assert estimate_ok.regions


def test_the_api_passes_the_limits_and_dtype(tmp_path) -> None:
    path = tmp_path / "wide.pc"
    path.write_text(RAT.format(v=16, k=16, d=2, r=40))
    with pytest.raises(ResourceError, match="at float32"):
        einc.compile(str(path), options=CompileOptions(max_bytes=2**20))
    with pytest.raises(ResourceError, match="at float64"):
        einc.compile(str(path), dtype="float64", options=CompileOptions(max_bytes=2**20))
    model = einc.compile(str(path), dtype="float64")
    assert model.dtype == "float64"


def test_a_slice_of_a_huge_array_in_explicit_scopes_is_refused_at_the_reference() -> None:
    n = 100_000  # each line below names about 2n variables; 20 lines are over the time limit
    lines = [f"x[0:{n - i}] -> x[0:{n - i - 1}] * x[{n - i - 1}]" for i in range(40)]
    text = f"var x[{n}] : binary\nleaf x ~ bernoulli\nsums 1\n" + "\n".join(lines) + "\n"
    started = time.perf_counter()
    with pytest.raises(ResourceError) as caught:
        region_graph(text, "slices.pc")
    assert time.perf_counter() - started < 4.0
    assert 4 < caught.value.diagnostics[0].span.line < 40
    assert "variables listed in scopes" in str(caught.value)


def test_deep_nesting_and_long_lines_give_short_located_messages() -> None:
    from einc.ir.diagnostics import PcSyntaxError

    deep = ("var x[16] : binary\nleaf x ~ bernoulli\n"
            "structure random_binary_trees(depth = 2, replicas = 2, seed = " + "[" * 5000 + "1" + "]" * 5000 + ")\n")
    with pytest.raises(PcSyntaxError, match="brackets nested more than 50 levels deep") as caught:
        front_end(deep, "deep.pc")
    assert max(len(line) for line in str(caught.value).splitlines()) < 300
    long = "var x[16] : binary\nleaf x ~ bernoulli\n" + "x" * 100_000 + " y\n"
    with pytest.raises(PcSyntaxError) as caught:
        front_end(long, "long.pc")
    assert max(len(line) for line in str(caught.value).splitlines()) < 400


def test_sampling_or_batches_beyond_the_memory_limit_are_refused() -> None:
    model = einc.compile(RAT.format(v=16, k=2, d=1, r=2))
    with pytest.raises(ResourceError, match="100000000000 samples would need about"):
        model.sample(10**11)
    model.max_bytes = 2**20
    with pytest.raises(ResourceError, match="a training batch of 5000 samples"):
        model.fit(np.zeros((5000, 16)), batch_size=10**6, epochs=1)
    assert model.log_likelihood(np.zeros((10, 16)), batch_size=10**6).shape == (10,)


def test_large_counts_do_not_build_a_huge_table_in_the_numpy_backend() -> None:
    text = "var c : count\nvar d : count\nleaf c, d ~ poisson\nsums 2\n{c, d} -> c * d\n"
    x = [[1e7, 3.0], [2.0, 1e8]]
    numpy_ll = einc.compile(text, backend="numpy", dtype="float64").log_likelihood(x)
    torch_ll = einc.compile(text, backend="torch", dtype="float64").log_likelihood(x)
    np.testing.assert_allclose(numpy_ll, torch_ll, rtol=1e-10)
