"""Reliability, round 2 (issue 19): hangs and tracebacks on bad inputs aimed at the newer features.

Each test targets a class of failure, not one case: reporting that was errors x lines, syntax
recovery that re-parsed the file per error, memory estimates that ignored vae samples, k-means on
huge finite values, resumed optimiser states, torch dtypes NumPy lacks, missing masks, converted
modules. Wrong answers, lost work and limits: ``test_reliability_round2_files.py``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from einc.errors import DataError, EincError, ModelFileError, ResourceError
from hypothesis import given, settings
from hypothesis import strategies as st

import einc
from einc.grammar import parser as parser_module
from einc.ir.diagnostics import MAX_REPORTED, PcSemanticError, PcSyntaxError, format_diagnostics
from einc.mixture import kmeans, nearest_centre

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "examples" / "tiny.pc"
VAE = """circuit v
var x[4] : binary
leaf x ~ vae(latent = {latent}, hidden = [4])
sums 2
inputs 2
structure random_binary_trees(depth = 1, replicas = 1)
"""


# ---------------------------------------------------------------------------------------------
# Hangs: reporting is O(lines + errors), syntax recovery one parse in all


def test_forty_thousand_repeated_statements_report_twenty_and_a_count() -> None:
    # every repeated `var A` is an error; reporting them split the source once per diagnostic
    text = TINY.read_text() + "var A : binary\n" * 40_000
    with pytest.raises(PcSemanticError) as caught:
        einc.compile(text)
    error = caught.value
    assert len(error.diagnostics) == 40_000
    rendered = error.render("einc")
    assert rendered.count(": error: ") == MAX_REPORTED
    assert rendered.splitlines()[-1] == (
        f"einc: note: {40_000 - MAX_REPORTED:,} more not shown (40,000 errors in all; the first {MAX_REPORTED} are above)")
    assert "   22 | var A : binary" in rendered  # excerpts are still the right lines


def test_a_short_report_is_unchanged() -> None:
    with pytest.raises(PcSemanticError) as caught:
        einc.compile(TINY.read_text() + "var A : binary\n" * 3)
    assert "more not shown" not in caught.value.render() and caught.value.render().count(": error: ") == 3


def test_syntax_errors_after_many_good_lines_parse_the_file_about_once(monkeypatch: pytest.MonkeyPatch) -> None:
    good = TINY.read_text() + "{A, C} -> A * C\n" * 3_000
    text = good + "var : binary\n" * 80
    parsed: list[int] = []
    real = parser_module._parser()

    class Counting:
        terminals = real.terminals

        def parse(self, source: str):
            parsed.append(len(source))
            return real.parse(source)

    monkeypatch.setattr(parser_module, "_parser", lambda: Counting())
    with pytest.raises(PcSyntaxError) as caught:
        parser_module.parse(text, "many.pc")
    lines = [d.span.line for d in caught.value.diagnostics]
    first_bad = good.count("\n") + 1
    assert lines == list(range(first_bad, first_bad + parser_module.MAX_SYNTAX_ERRORS))
    # each retry starts after the line it blanked: the characters parsed stay about one file's worth
    assert sum(parsed) < 2 * len(text), (sum(parsed), len(text))


def test_an_error_inside_an_open_list_keeps_the_list_context() -> None:
    text = ("circuit t\nvar A, B, C : binary\nleaf A, B, C ~ bernoulli\n"
            "structure tree(parents = [-1,\n  0 0,\n  1])\nvar : binary\n")
    with pytest.raises(PcSyntaxError) as caught:
        parser_module.parse(text, "list.pc")
    lines = [d.span.line for d in caught.value.diagnostics]
    assert lines[0] == 5 and 7 in lines


def test_a_model_file_whose_stored_source_repeats_a_statement_is_refused_with_a_count(tmp_path: Path) -> None:
    model = einc.compile(TINY)
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays["meta"]))
    meta["source"] = TINY.read_text() + "leaf A ~ bernoulli\n" * 5_000
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(ModelFileError) as caught:
        einc.load(path)
    assert "does not compile" in str(caught.value) and "4,980 more not shown" in str(caught.value)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["var : binary", "leaf A ~", "all -> A *", "sums", "region = {A}", "{A, B",
                                 "var A : binary", "all -> left * right", "# comment", "",
                                 "structure tree(parents = [", "0])"]), max_size=120))
def test_fuzz_broken_lines_give_located_errors_and_never_a_traceback(lines: list[str]) -> None:
    text = TINY.read_text() + "\n".join(lines) + "\n"
    try:
        einc.compile(text)
    except EincError as error:
        count = text.count("\n") + 1
        for diagnostic in error.diagnostics:
            assert diagnostic.span is None or 1 <= diagnostic.span.line <= count
        assert len(format_diagnostics(error.diagnostics, error.sources).splitlines()) <= 4 * MAX_REPORTED + 1


# ---------------------------------------------------------------------------------------------
# Tracebacks: memory of vae samples, k-means, optimiser states, seeds, dtypes, masks, modules


def test_a_vae_latent_too_large_for_one_row_is_refused_before_building() -> None:
    with pytest.raises(ResourceError) as caught:
        einc.compile(VAE.format(latent=3_000_000))
    assert "vae networks holding" in str(caught.value) and "per data row" in str(caught.value)


def test_iwae_samples_are_counted_in_the_batch_memory_check() -> None:
    model = einc.compile(VAE.format(latent=2000))
    x = np.zeros((50, 4))
    with pytest.raises(ResourceError) as caught:  # was an allocator RuntimeError
        model.fit(x, epochs=1, samples=1_000_000)
    assert "1,000,000 IWAE samples" in str(caught.value) and "even one row does not fit" in str(caught.value)
    with pytest.raises(ResourceError):
        model.log_likelihood(x, samples=10**7)
    with pytest.raises(ResourceError):
        model.sample(2000)  # sampling draws every sample at once (no chunks)
    assert np.isfinite(model.log_likelihood(x[:2], samples=10)).all()


def test_kmeans_on_huge_finite_embeddings_is_finite_and_scale_free() -> None:
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(0, 1, (50, 3)), rng.normal(10, 1, (50, 3))])
    reference, _ = kmeans(blobs, 2, seed=1)
    for scale in (1e300, 1e-300, 1.7e308 / 20):
        with np.errstate(all="raise"):
            assignment, centres = kmeans(blobs * scale, 2, seed=1)
        np.testing.assert_array_equal(assignment, reference)
        assert np.isfinite(centres).all()
        np.testing.assert_array_equal(nearest_centre(blobs * scale, centres), reference)


def test_lvd_teacher_features_with_huge_values_are_assigned(tmp_path: Path) -> None:
    from einc.train.lvd import assign_latents

    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 2, 3)) * 1e305
    z, codebook = assign_latents(features, 3, latents=2)
    assert z.shape == (40, 2) and set(np.unique(z)) <= {0, 1, 2} and np.isfinite(codebook.centres).all()


@pytest.fixture(scope="module")
def adam_archive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    model = einc.compile(TINY, dtype="float64")
    model.fit(np.random.default_rng(0).integers(0, 2, (30, 4)), epochs=1, method="adam")
    path = tmp_path_factory.mktemp("adam") / "m.npz"
    model.save(path)
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files}


def _optimiser_key(arrays: dict[str, np.ndarray], slot: str) -> str:
    return next(k for k in sorted(arrays) if k.startswith("training/optimizer/") and k.endswith("/" + slot))


def _training_meta(arrays: dict[str, np.ndarray], **changes: object) -> None:
    meta = json.loads(str(arrays["meta"]))
    meta.update({k: v for k, v in changes.items() if not k.startswith("training_")})
    meta["training"].update({k[len("training_"):]: v for k, v in changes.items() if k.startswith("training_")})
    arrays["meta"] = np.array(json.dumps(meta))


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda a: a.update({_optimiser_key(a, "exp_avg"): np.zeros(3)}), "has shape (3,)"),
    (lambda a: a.update({_optimiser_key(a, "step"): np.zeros(2)}), "expected ()"),
    (lambda a: a.update({"training/optimizer/nonsense/exp_avg": np.zeros(2)}), "names no parameter"),
    (lambda a: a.update({_optimiser_key(a, "exp_avg").rsplit("/", 1)[0] + "/momentum": np.zeros(1)}), "unknown slot"),
    (lambda a: a.pop(_optimiser_key(a, "exp_avg_sq")), "is missing"),
    (lambda a: a.update({_optimiser_key(a, "exp_avg_sq"): -np.abs(a[_optimiser_key(a, "exp_avg_sq")]) - 1}),
     "is negative"),
    (lambda a: a.update({_optimiser_key(a, "exp_avg"): np.full(a[_optimiser_key(a, "exp_avg")].shape, "x")}),
     "dtype <U1"),
    (lambda a: _training_meta(a, seed=-3), "metadata 'seed' is -3"),
    (lambda a: _training_meta(a, training_epoch=-1), "epoch count is -1"),
    (lambda a: _training_meta(a, training_best_epoch=9), "best_epoch is 9"),
    (lambda a: _training_meta(a, training_stale_epochs=-2), "stale_epochs is -2"),
    (lambda a: _training_meta(a, training_method="sgd"), "method is 'sgd'"),
    (lambda a: _training_meta(a, training_momentum=1), "unknown entry 'momentum'"),
])
def test_resumable_state_is_checked_against_the_parameters(adam_archive: dict[str, np.ndarray], edit,
                                                           fragment: str, tmp_path: Path) -> None:
    arrays = dict(adam_archive)
    edit(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ModelFileError) as caught:
        einc.load(path)
    assert fragment in str(caught.value), str(caught.value)


def test_the_untouched_adam_state_loads_and_resumes(adam_archive: dict[str, np.ndarray], tmp_path: Path) -> None:
    path = tmp_path / "good.npz"
    np.savez(path, **adam_archive)
    model = einc.load(path)
    model.fit(np.random.default_rng(0).integers(0, 2, (30, 4)), epochs=2, method="adam", resume=True)
    assert model.training.epoch == 2


def test_a_negative_seed_is_refused_by_compile() -> None:
    with pytest.raises(EincError, match="seed must be a whole number of at least 0"):
        einc.compile(TINY, seed=-1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.bool, torch.uint8, torch.float64])
def test_torch_inputs_of_every_real_dtype_are_read(dtype: torch.dtype) -> None:
    model = einc.compile(TINY, dtype="float64")
    x = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1]]).to(dtype)
    np.testing.assert_allclose(model.log_likelihood(x), model.log_likelihood(x.to(torch.float64).numpy()))
    mask = torch.tensor([[True, False, False, False]] * 2).to(dtype)
    assert np.isfinite(model.log_likelihood(x, missing=mask)).all()


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex32])
def test_complex_torch_input_is_refused(dtype: torch.dtype) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex32 is "experimental" in torch
        x = torch.zeros((2, 4), dtype=dtype)
    with pytest.raises(DataError, match="complex"):
        einc.compile(TINY).log_likelihood(x)


@pytest.mark.parametrize(("mask", "fragment"), [
    ([[True, False], [True, False, True, False]], "rows of different lengths"),
    (np.zeros((2, 3), bool), "has shape (2, 3)"),
    (np.full((2, 4), 0.5), "is 0.5"),
    (np.full((2, 4), 2), "is 2"),
    (np.full((2, 4), np.nan), "is nan"),
    (np.full((2, 4), "yes"), "holds text"),
    (np.array([[None] * 4] * 2), "not booleans"),
    ("all", "found a str"),
    ({"A": True}, "found a dict"),
])
def test_bad_missing_masks_are_data_errors(mask: object, fragment: str) -> None:
    with pytest.raises(DataError) as caught:
        einc.compile(TINY).log_likelihood(np.zeros((2, 4)), missing=mask)
    assert "missing mask" in str(caught.value) and fragment in str(caught.value), str(caught.value)


@settings(max_examples=40, deadline=None)
@given(st.one_of(
    st.lists(st.lists(st.one_of(st.booleans(), st.integers(-2, 3), st.floats(allow_nan=True), st.text(max_size=2)),
                      max_size=5), max_size=3),
    st.sampled_from([np.zeros((2, 4), bool), np.ones((2, 4), int), np.zeros((2, 4), np.float32)])))
def test_fuzz_missing_masks_never_traceback(mask: object) -> None:
    try:
        result = einc.compile(TINY).log_likelihood(np.zeros((2, 4)), missing=mask)
    except DataError:
        return
    assert result.shape == (2,) and not np.isnan(result).any()


@pytest.mark.parametrize("convert", [torch.float64, torch.float16, torch.bfloat16])
def test_tensors_converted_behind_the_modules_back_are_refused_by_queries_and_save(convert: torch.dtype,
                                                                                    tmp_path: Path) -> None:
    """``module.double()``/``.to()`` move the model with its module, and ``.half()`` is refused
    before anything changes (tests/test_module.py, issue 19). Tensors converted without the
    module knowing (``p.data = ...``) are still caught: every query, ``save`` and ``fit`` refuse
    them with a message, and converting them back makes the model usable again."""
    model = einc.compile(TINY)
    before = model.log_likelihood(np.zeros((1, 4)))
    model.save(tmp_path / "m.npz")
    module = model.module()
    for parameter in module.parameters():
        parameter.data = parameter.data.to(convert)
    for query in (lambda: model.log_likelihood(np.zeros((1, 4))), lambda: model.sample(2), lambda: model.mpe(n=1),
                  lambda: model.save(tmp_path / "m.npz"), lambda: model.fit(np.zeros((4, 4)), epochs=1)):
        with pytest.raises(EincError, match="module was converted to"):
            query()
    assert np.isfinite(einc.load(tmp_path / "m.npz").log_likelihood(np.zeros((1, 4)))).all()  # file untouched
    for parameter in module.parameters():
        parameter.data = parameter.data.float()
    np.testing.assert_allclose(model.log_likelihood(np.zeros((1, 4))), before, rtol=1e-2)


def test_region_lookups_do_not_rebuild_the_root_scope_per_call() -> None:
    # size() compared every region with a freshly built tuple(range(variables)): a 16,384-partition
    # explicit file spent most of its 34 s there; the root is now computed once per graph
    graph = einc.compile(TINY).graph
    assert graph.root is graph.root and graph.full_scope is graph.full_scope
    assert graph.size(graph.root) == graph.heads
