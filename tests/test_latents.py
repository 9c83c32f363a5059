"""Latent variables (``latent`` statements): clamping is a log-mask on the latent region's row.

Proved against brute force in float64 on both CPU backends: summing log p(x, z) over every z
gives log p(x) (one to three latents, a region with several partitions, DAGs, hadamard trees);
log p(x, z) equals the naive recursive evaluator with the region clamped; the posterior equals
p(x, z) / p(x); verify accepts a latent exactly when the sum over its states is the marginal; with
every latent of a tree-shaped circuit observed, one full-batch EM step is closed-form counting;
EM on log p(x, z) never decreases it; samples with clamped latents follow p(x | z) (χ²); MPE with
clamped latents is the arg-max; torch and NumPy agree.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from einc.backends.base import Batch, create_backend
from einc.compiler.params import init_parameters
from einc.compiler.verify import verify
from einc.errors import DataError, EincError
from einc.ir.plan import EinsumOp, InputOp
from einc.ir.region_graph import Latent, Partition, Region, RegionGraph
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles import (
    BACKENDS,
    rid,
    BERNOULLI,
    CATEGORICAL3,
    chi_square,
    chi_square_threshold,
    enumerate_states,
    explicit_graph,
    make_graph,
    oracle_log_density,
    pd_graph,
    plan_of,
    random_data,
    tree_graph,
)
from test_random_circuits import region_graphs

import einc

def with_latents(graph: RegionGraph, *scopes: tuple[int, ...]) -> RegionGraph:
    latents = tuple(Latent(f"z{index}", (tuple(scope), 0)) for index, scope in enumerate(scopes))
    return replace(graph, latents=latents)


def mixing_graph(families, k: int = 2, inputs: int = 3) -> RegionGraph:
    """5 variables; {1,2,3,4} has two partitions (a mixing region below the root) and the leaf
    regions {1}..{4} are each read by two partitions (a DAG)."""
    scopes = [(0, 1, 2, 3, 4), (0,), (1, 2, 3, 4), (1, 2), (3, 4), (1, 3), (2, 4), (1,), (2,), (3,), (4,)]
    partitions = [
        Partition(rid(0, 1, 2, 3, 4), (rid(0), rid(1, 2, 3, 4))),
        Partition(rid(1, 2, 3, 4), (rid(1, 2), rid(3, 4))),
        Partition(rid(1, 2, 3, 4), (rid(1, 3), rid(2, 4))),
        Partition(rid(1, 2), (rid(1), rid(2))),
        Partition(rid(3, 4), (rid(3), rid(4))),
        Partition(rid(1, 3), (rid(1), rid(3))),
        Partition(rid(2, 4), (rid(2), rid(4))),
    ]
    return make_graph(families, [Region(s) for s in scopes], partitions, k=k, inputs=inputs)


def binary_tree_graph(families, k: int = 2, inputs: int = 3) -> RegionGraph:
    """A tree-shaped circuit (one partition per region) over 4 variables."""
    scopes = [(0, 1, 2, 3), (0, 1), (2, 3), (0,), (1,), (2,), (3,)]
    partitions = [
        Partition(rid(0, 1, 2, 3), (rid(0, 1), rid(2, 3))),
        Partition(rid(0, 1), (rid(0), rid(1))),
        Partition(rid(2, 3), (rid(2), rid(3))),
    ]
    return make_graph(families, [Region(s) for s in scopes], partitions, k=k, inputs=inputs)


# name -> a verified graph with one to three latents
CASES = {
    "one latent, a region shared by two partitions (DAG)": lambda: with_latents(
        explicit_graph([BERNOULLI, CATEGORICAL3, BERNOULLI, CATEGORICAL3], k=2), (2, 3)),
    "two latents, a leaf region and a region with several partitions": lambda: with_latents(
        mixing_graph([BERNOULLI, CATEGORICAL3, BERNOULLI, BERNOULLI, CATEGORICAL3]), (1, 2, 3, 4), (0,)),
    "three latents, the mixing region and two shared leaves": lambda: with_latents(
        mixing_graph([BERNOULLI] * 5, k=3, inputs=2), (1, 2, 3, 4), (1,), (4,)),
    "three latents on Poon-Domingos pixels (DAG)": lambda: with_latents(
        pd_graph([BERNOULLI] * 6, 2, 3, k=2), (0,), (4,), (5,)),
    "two latents in a hidden Chow-Liu tree (hadamard)": lambda: with_latents(
        tree_graph([BERNOULLI, CATEGORICAL3, BERNOULLI, BERNOULLI], [-1, 0, 0, 1], k=2), (1, 3), (2,)),
}


def _setup(graph: RegionGraph, backend_name: str, seed: int = 0):
    assert verify(graph) == []
    plan = plan_of(graph)
    backend = create_backend(backend_name, plan, dtype="float64")
    return plan, backend, backend.put(init_parameters(plan, seed=seed))


def _data(graph: RegionGraph, n: int, seed: int, missing: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    x = random_data(graph, n, seed)
    observed = np.random.default_rng(seed + 1).random(x.shape) > missing
    return np.where(observed, x, 0.0), observed


def _all_states(plan) -> list[tuple[int, ...]]:
    return list(itertools.product(*[range(slot.states) for slot in plan.latents]))


def _ll(backend, params, values, observed, latents=None) -> np.ndarray:
    return backend.log_likelihood(params, Batch(values, observed, None, latents))[:, 0]


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_summing_out_every_latent_gives_the_marginal(case: str, backend_name: str) -> None:
    graph = CASES[case]()
    plan, backend, params = _setup(graph, backend_name)
    values, observed = _data(graph, 7, seed=1)
    n = len(values)
    marginal = _ll(backend, params, values, observed)
    total = np.full(n, -np.inf)
    for state in _all_states(plan):
        joint = _ll(backend, params, values, observed, np.tile(state, (n, 1)))
        total = np.logaddexp(total, joint)
    np.testing.assert_allclose(total, marginal, rtol=0, atol=1e-10)
    # all latents given as −1 is the marginal too
    summed_out = _ll(backend, params, values, observed, np.full((n, len(plan.latents)), -1))
    np.testing.assert_allclose(summed_out, marginal, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_joint_equals_the_recursive_evaluator_with_the_region_clamped(case: str, backend_name: str) -> None:
    graph = CASES[case]()
    plan, backend, params = _setup(graph, backend_name, seed=3)
    host = backend.get(params)
    values, observed = _data(graph, 4, seed=2)
    rng = np.random.default_rng(0)
    for _ in range(3):
        # each latent clamped to a random state or summed out (−1)
        z = np.stack([rng.integers(-1, slot.states, len(values)) for slot in plan.latents], 1)
        got = _ll(backend, params, values, observed, z)
        expected = [
            oracle_log_density(plan, host, values[b], observed[b],
                               clamped={slot.region: int(z[b, j]) for j, slot in enumerate(plan.latents)})[0]
            for b in range(len(values))
        ]
        # −inf where the clamped states are incompatible (in a hidden Chow-Liu tree two latents
        # can be one hidden variable: a hadamard product of them clamped to different states)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_posterior_is_the_joint_over_the_marginal(case: str, backend_name: str) -> None:
    graph = CASES[case]()
    plan, backend, params = _setup(graph, backend_name, seed=5)
    values, observed = _data(graph, 6, seed=4)
    n = len(values)
    heads = np.zeros(n, dtype=int)
    marginal = _ll(backend, params, values, observed)
    posterior = backend.latent_posterior(params, Batch(values, observed), heads)
    assert len(posterior) == len(plan.latents)
    for j, slot in enumerate(plan.latents):
        assert posterior[j].shape == (n, slot.states)
        for k in range(slot.states):
            z = np.full((n, len(plan.latents)), -1)
            z[:, j] = k
            ratio = np.exp(_ll(backend, params, values, observed, z) - marginal)
            np.testing.assert_allclose(posterior[j][:, k], ratio, rtol=0, atol=1e-10)
    # conditioned on the first latent: p(z_j | x, z_0) = p(x, z_0, z_j) / p(x, z_0)
    clamp = np.full((n, len(plan.latents)), -1)
    clamp[:, 0] = plan.latents[0].states - 1
    conditional = backend.latent_posterior(params, Batch(values, observed, None, clamp), heads)
    np.testing.assert_allclose(conditional[0][:, -1], 1.0, atol=1e-12)
    given = _ll(backend, params, values, observed, clamp)
    for j in range(1, len(plan.latents)):
        for k in range(plan.latents[j].states):
            z = clamp.copy()
            z[:, j] = k
            ratio = np.exp(_ll(backend, params, values, observed, z) - given)
            np.testing.assert_allclose(conditional[j][:, k], ratio, rtol=0, atol=1e-10)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(region_graphs(), st.data())
def test_verify_accepts_a_latent_exactly_when_summing_it_out_is_the_marginal(case, data) -> None:
    """Sufficiency and necessity of "every induced tree passes through the region", on random
    smooth, decomposable DAGs: accepted latents sum out to p(x); rejected ones (with K ≥ 2)
    count the avoiding trees once per state, so the sum exceeds p(x)."""
    graph, seed = case
    candidates = [r.id for r in graph.regions if r.id != graph.root]
    if not candidates:
        return
    region = data.draw(st.sampled_from(candidates))
    graph = replace(graph, latents=(Latent("z", region),))
    diagnostics = verify(graph)
    accepted = diagnostics == []
    if not accepted:
        assert len(diagnostics) == 1 and "not every induced tree" in diagnostics[0].message
    plan = plan_of(graph)
    backend = create_backend("numpy", plan, dtype="float64")
    params = backend.put(init_parameters(plan, seed=seed))
    states = enumerate_states(graph)[:16]
    everything = np.ones_like(states, dtype=bool)
    marginal = _ll(backend, params, states, everything)
    total = np.full(len(states), -np.inf)
    for k in range(plan.latents[0].states):
        total = np.logaddexp(total, _ll(backend, params, states, everything, np.full((len(states), 1), k)))
    if accepted:
        np.testing.assert_allclose(total, marginal, rtol=0, atol=1e-10)
    elif plan.latents[0].states > 1:
        assert np.all(total > marginal + 1e-9)


def test_a_replica_region_is_rejected_with_its_location() -> None:
    text = ("var x[8] : binary\nleaf x ~ bernoulli\nstructure random_binary_trees(depth = 2, replicas = 2)\n"
            "latent z = {x[0], x[3]}\n")
    with pytest.raises(einc.StructureError) as caught:
        einc.compile(text)
    message = str(caught.value)
    assert "<string>:4:1: error: latent 'z'" in message and "not every induced tree" in message


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_full_batch_em_with_every_latent_of_a_tree_observed_is_counting(backend_name: str) -> None:
    """With every non-root region's latent observed in a tree-shaped circuit, the induced tree of
    each sample is known: one full EM step (step 1, no pseudocount) sets every weight to the
    normalised counts of (z_region, z_left, z_right) and every leaf to the per-state averages."""
    families = [BERNOULLI, CATEGORICAL3, BERNOULLI, CATEGORICAL3]
    graph = binary_tree_graph(families, k=2, inputs=3)
    graph = with_latents(graph, (0, 1), (2, 3), (0,), (1,), (2,), (3,))
    plan, backend, params = _setup(graph, backend_name, seed=7)
    n = 3000
    rng = np.random.default_rng(1)
    x = random_data(graph, n, seed=2)
    z = np.stack([rng.integers(0, slot.states, n) for slot in plan.latents], 1)
    observed = np.ones_like(x, dtype=bool)
    old = backend.get(params)
    stats = backend.statistics(params, Batch(x, observed, None, z))
    new = backend.get(backend.em_update(params, stats, 1.0, 0.0))
    state_of = {slot.region: z[:, j] for j, slot in enumerate(plan.latents)}
    state_of[graph.root] = np.zeros(n, dtype=int)
    for op in plan.ops:
        if isinstance(op, EinsumOp):
            for row, index in enumerate(op.partitions):
                partition = graph.partitions[index]
                left, right = partition.parts
                counts = np.zeros(new[op.param][row].shape)
                np.add.at(counts, (state_of[partition.region], state_of[left], state_of[right]), 1)
                totals = counts.sum((1, 2), keepdims=True)
                expected = np.where(totals > 0, counts / np.maximum(totals, 1), old[op.param][row])
                np.testing.assert_allclose(new[op.param][row], expected, rtol=0, atol=1e-10)
        elif isinstance(op, InputOp):
            for block in op.blocks:
                for row, region in enumerate(op.regions):
                    for position, column in enumerate(block.columns[row]):
                        if column < 0:
                            continue
                        zl = state_of[region]
                        for k in range(op.k):
                            values = x[zl == k, column]
                            if block.family.name == "bernoulli":
                                expected = [values.mean()]
                            else:
                                expected = np.bincount(values.astype(int), minlength=3) / len(values)
                            np.testing.assert_allclose(new[block.param][row, position, k], expected, atol=1e-10)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_full_batch_em_on_the_joint_never_decreases_it(backend_name: str) -> None:
    graph = CASES["three latents, the mixing region and two shared leaves"]()
    plan, backend, params = _setup(graph, backend_name, seed=11)
    values, observed = _data(graph, 400, seed=6)
    rng = np.random.default_rng(3)
    # some latents observed, some summed out (−1), per sample
    z = np.stack([rng.integers(-1, slot.states, len(values)) for slot in plan.latents], 1)
    batch = Batch(values, observed, None, z)
    previous = -np.inf
    for _ in range(12):
        total = float(_ll(backend, params, values, observed, z).sum())
        assert total >= previous - 1e-9
        previous = total
        params = backend.em_update(params, backend.statistics(params, batch), 1.0, 0.0)


def _conditional_draws(backend, params, graph, latents, evidence, n=40000, seed=5):
    states = enumerate_states(graph)
    given = ~np.isnan(evidence)
    values = np.where(given, evidence, 0.0)
    everything = np.ones_like(states, dtype=bool)
    joint = np.exp(_ll(backend, params, states, everything, np.tile(latents, (len(states), 1))))
    consistent = np.all((states == values) | ~given, 1)
    conditional = joint[consistent] / joint[consistent].sum()
    batch = Batch(np.tile(values, (n, 1)), np.tile(given, (n, 1)), None, np.tile(latents, (n, 1)))
    draws = backend.backtrack(params, batch, False, "sample", np.zeros(n, dtype=int), seed=seed)
    assert np.all(draws[:, given] == values[given])
    index = {tuple(s): i for i, s in enumerate(states[consistent])}
    counts = np.bincount([index[tuple(d)] for d in draws], minlength=len(conditional))
    return counts, conditional, n


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_samples_with_clamped_latents_follow_p_x_given_z(backend_name: str) -> None:
    graph = CASES["three latents, the mixing region and two shared leaves"]()
    _plan, backend, params = _setup(graph, backend_name, seed=2)
    free = np.full(graph.num_columns, np.nan)
    for latents in ([2, 1, 0], [0, -1, 1]):
        statistic, dof = chi_square(*_conditional_draws(backend, params, graph, np.array(latents), free))
        assert statistic < chi_square_threshold(dof)
    # with evidence as well: p(free variables | evidence, z)
    evidence = free.copy()
    evidence[2] = 1.0
    statistic, dof = chi_square(*_conditional_draws(backend, params, graph, np.array([1, 0, -1]), evidence))
    assert statistic < chi_square_threshold(dof)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_mpe_with_clamped_latents_is_the_argmax_consistent_with_them(backend_name: str) -> None:
    graph = CASES["two latents, a leaf region and a region with several partitions"]()
    _plan, backend, params = _setup(graph, backend_name, seed=4)
    states = enumerate_states(graph)
    everything = np.ones_like(states, dtype=bool)
    for latents in ([0, 1], [1, -1], [-1, 2]):
        z = np.array(latents)
        scores = backend.log_likelihood(params, Batch(states, everything, None, np.tile(z, (len(states), 1))),
                                        max_product=True)[:, 0]
        free = Batch(np.zeros((1, graph.num_columns)), np.zeros((1, graph.num_columns), dtype=bool), None, z[None])
        completion = backend.backtrack(params, free, True, "mode", np.zeros(1, dtype=int), seed=0)
        value = backend.log_likelihood(params, Batch(completion, np.ones_like(completion, dtype=bool), None, z[None]),
                                       max_product=True)[0, 0]
        assert abs(value - scores.max()) < 1e-10
        assert abs(backend.log_likelihood(params, free, max_product=True)[0, 0] - scores.max()) < 1e-10


@pytest.mark.parametrize("case", list(CASES))
def test_torch_and_numpy_agree_on_every_latent_query(case: str) -> None:
    graph = CASES[case]()
    plan = plan_of(graph)
    values, observed = _data(graph, 50, seed=8)
    rng = np.random.default_rng(9)
    z = np.stack([rng.integers(-1, slot.states, len(values)) for slot in plan.latents], 1)
    batch = Batch(values, observed, None, z)
    heads = np.zeros(len(values), dtype=int)
    results = {}
    for name in BACKENDS:
        backend = create_backend(name, plan, dtype="float64")
        params = backend.put(init_parameters(plan, seed=1))
        stats = backend.statistics(params, batch)
        results[name] = (
            backend.log_likelihood(params, batch),
            backend.log_likelihood(params, batch, max_product=True),
            backend.latent_posterior(params, Batch(values, observed), heads),
            backend.latent_posterior(params, batch, heads),
            {k: backend.get({k: v})[k] for k, v in stats.weights.items()},
            backend.get(backend.em_update(params, stats, 1.0, 0.01)),
        )
    torch_result, numpy_result = results["torch"], results["numpy"]
    for a, b in zip(torch_result[:2], numpy_result[:2]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    for posteriors_a, posteriors_b in zip(torch_result[2:4], numpy_result[2:4]):
        for a, b in zip(posteriors_a, posteriors_b):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    for a, b in zip(torch_result[4:], numpy_result[4:]):
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# The model API


SOURCE = """\
var A, B, C, D : binary
leaf A, B, C, D ~ bernoulli
sums 2
inputs 3
region all = {A, B, C, D}
region left = {A, B}
all -> left * {C, D}
left -> A * B
{C, D} -> C * D
latent z1 = left
latent z2 = D
"""


def test_model_api_clamps_infers_samples_and_trains() -> None:
    model = einc.compile(SOURCE, dtype="float64", seed=3)
    assert [(slot.name, slot.states) for slot in model.latents] == [("z1", 2), ("z2", 3)]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (300, 4)).astype(float)
    z = np.stack([rng.integers(0, 2, 300), rng.integers(0, 3, 300)], 1)
    marginal = model.log_likelihood(x)
    total = np.logaddexp.reduce(
        [model.log_likelihood(x, latents=np.tile(s, (300, 1))) for s in itertools.product(range(2), range(3))], 0)
    np.testing.assert_allclose(total, marginal, atol=1e-10)
    posterior = model.latent_posterior(x)
    assert [p.shape for p in posterior] == [(300, 2), (300, 3)]
    np.testing.assert_allclose(posterior[0].sum(1), 1.0, atol=1e-12)
    # NaN in latents means summed out, like NaN in x
    np.testing.assert_allclose(model.log_likelihood(x, latents=np.full((300, 2), np.nan)), marginal, atol=1e-12)

    history = model.fit(x, latents=z, epochs=3, batch_size=50, seed=0)
    assert history[-1].train_ll == pytest.approx(model.log_likelihood(x, latents=z).mean(), abs=1e-9)
    model.fit(x, epochs=1, update="epoch", step_size=1.0)  # fine-tuning on x alone

    draws = model.sample(latents=np.tile([1, 2], (5, 1)), seed=1)
    assert draws.shape == (5, 4)
    completion = model.mpe(evidence=[[1, np.nan, np.nan, 0]], latents=[[0, 1]])
    assert completion[0, 0] == 1 and completion[0, 3] == 0
    assert model.max_log_likelihood(completion, latents=[[0, 1]])[0] == pytest.approx(
        model.max_log_likelihood([[1, np.nan, np.nan, 0]], latents=[[0, 1]])[0], abs=1e-10)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_full_batch_fit_on_the_joint_is_monotone(backend_name: str) -> None:
    rng = np.random.default_rng(6)
    x = rng.integers(0, 2, (300, 4)).astype(float)
    z = np.stack([rng.integers(-1, 2, 300), rng.integers(0, 3, 300)], 1)
    model = einc.compile(SOURCE, backend=backend_name, dtype="float64", seed=3)
    history = model.fit(x, latents=z, epochs=6, update="epoch", step_size=1.0, pseudocount=0, batch_size=128)
    lls = [record.train_ll for record in history]
    assert all(b >= a - 1e-10 for a, b in itertools.pairwise(lls))


def test_gradient_training_maximises_the_joint_too() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2, (200, 4)).astype(float)
    z = np.stack([rng.integers(0, 2, 200), rng.integers(0, 3, 200)], 1)
    model = einc.compile(SOURCE, dtype="float64", seed=1)
    before = model.log_likelihood(x, latents=z).mean()
    history = model.fit(x, latents=z, method="adam", learning_rate=0.05, epochs=5, batch_size=50)
    assert history[-1].train_ll == pytest.approx(model.log_likelihood(x, latents=z).mean(), abs=1e-9)
    assert history[-1].train_ll > before + 0.1


def test_resident_training_with_latents_agrees_across_backends() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, (200, 4)).astype(float)
    z = np.stack([rng.integers(-1, 2, 200), rng.integers(0, 3, 200)], 1)
    params = []
    for backend in BACKENDS:
        model = einc.compile(SOURCE, backend=backend, dtype="float64", seed=2)
        model.fit(x, latents=z, valid=x[:50], valid_latents=z[:50], epochs=2, batch_size=64, seed=0,
                  keep_best=False)
        params.append(model.parameters())
    for key in params[0]:
        np.testing.assert_allclose(params[0][key], params[1][key], atol=1e-10)


def test_bad_latents_are_data_errors_that_say_where() -> None:
    model = einc.compile(SOURCE, dtype="float64")
    x = np.zeros((3, 4))
    with pytest.raises(DataError, match=r"shape \(3, 1\); expected \(3, 2\).*z1, z2"):
        model.log_likelihood(x, latents=[[0], [1], [0]])
    with pytest.raises(DataError, match=r"row 2, column 2 \(latent z2\): 3 is not a state; expected an integer in 0..2"):
        model.log_likelihood(x, latents=[[0, 0], [1, 3], [0, 0]])
    with pytest.raises(DataError, match=r"row 1, column 1 \(latent z1\): 0.5 is not a state"):
        model.latent_posterior(x, latents=[[0.5, 0], [1, 1], [0, 0]])
    with pytest.raises(EincError, match="valid_latents"):
        model.fit(x, valid_latents=[[0, 0]] * 3)
    plain = einc.compile("var A, B : binary\nleaf A, B ~ bernoulli\n{A, B} -> A * B\n")
    with pytest.raises(DataError, match="declares no latent variables"):
        plain.log_likelihood([[0, 1]], latents=[[0]])
    with pytest.raises(DataError, match="declares no latent variables"):
        plain.latent_posterior([[0, 1]])
    single = einc.compile(SOURCE.replace("latent z2 = D\n", ""), dtype="float64")
    np.testing.assert_allclose(single.log_likelihood(x, latents=[0, 1, -1]),
                               single.log_likelihood(x, latents=[[0], [1], [-1]]))


def test_saved_models_keep_their_latents(tmp_path) -> None:
    model = einc.compile(SOURCE, dtype="float64", seed=4)
    model.save(tmp_path / "m.npz")
    loaded = einc.load(tmp_path / "m.npz")
    assert loaded.latents == model.latents
    x = np.ones((2, 4))
    np.testing.assert_allclose(loaded.log_likelihood(x, latents=[[1, 0], [0, 2]]),
                               model.log_likelihood(x, latents=[[1, 0], [0, 2]]), atol=1e-12)


def test_patches_generator_declares_one_latent_per_pd_leaf_patch() -> None:
    text = ("var img[4, 6] : binary\nleaf img ~ bernoulli\nsums 2\n"
            "structure poon_domingos(delta = [2], over = img)\nlatent patches(over = img, size = [2, 2])\n")
    model = einc.compile(text, dtype="float64")
    names = [slot.name for slot in model.latents]
    assert names == [f"patches[{r}, {c}]" for r in range(2) for c in range(3)]
    graph = model.graph
    assert [graph.scope_names(slot.region[0]) for slot in model.latents][1] == (
        "{img[0, 2], img[0, 3], img[1, 2], img[1, 3]}")
    x = np.random.default_rng(0).integers(0, 2, (3, 24)).astype(float)
    total = np.full(3, -np.inf)
    for state in itertools.product(range(2), repeat=6):
        total = np.logaddexp(total, model.log_likelihood(x, latents=np.tile(state, (3, 1))))
    np.testing.assert_allclose(total, model.log_likelihood(x), atol=1e-10)


def test_dumps_show_the_latents_and_where_they_live() -> None:
    from einc.compiler import dump
    from einc.compiler.pipeline import front_end

    text = ("var img[4, 6] : binary\nleaf img ~ bernoulli\nsums 2\n"
            "structure poon_domingos(delta = [2], over = img)\nlatent patches(over = img, size = [2, 2])\n")
    layered = front_end(text, "p.pc")
    ir = dump.dump_ir(layered.graph)
    assert "latents: 6 (declaration order: the columns of latents=z)" in ir
    assert "z[:, 1]  patches[0, 1]" in ir
    assert "latents: 6 (patches[0, 0] .. patches[1, 2]), 2 states each" in dump.summary(layered)
    assert 'latent patches[0, 0]"' in dump.dump_dot(layered.graph)
    plan = einc.compile(text).plan
    table = plan.table()
    for slot in plan.latents:
        assert f"latent {slot.name}: v{slot.value}[{slot.row}], 2 states" in table
        assert plan.region_rows[[r for r, _v, _row in plan.region_rows].index(slot.region)][1:] == (slot.value, slot.row)
