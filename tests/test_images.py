"""Mixtures of circuits, inpainting and pictures (issue: images), checked by brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import einc
from einc.io.images import image_mask, image_shape, inpainting_figure, inpainting_rows, save_png
from einc.mixture import MixtureModel, fit_mixture, kmeans

GRID = """
var img[2, 3] : binary
leaf img ~ bernoulli
sums 3
inputs 3
structure poon_domingos(delta = [1], axes = both, over = img)
"""

STATES = np.array(list(itertools.product([0, 1], repeat=6)), dtype=float)


def _mixture(seeds=(0, 1, 2), weights=(0.5, 0.3, 0.2)) -> MixtureModel:
    components = [einc.compile(GRID, dtype="float64", seed=s) for s in seeds]
    return MixtureModel(components, np.array(weights))


def test_mixture_is_normalised_and_weights_are_added_in_log_space():
    mixture = _mixture()
    joint = np.exp(mixture.log_likelihood(STATES))
    assert math.isclose(joint.sum(), 1.0, abs_tol=1e-10)
    direct = sum(w * np.exp(c.log_likelihood(STATES)) for w, c in zip((0.5, 0.3, 0.2), mixture.components))
    np.testing.assert_allclose(joint, direct, rtol=1e-12)


def test_mixture_marginals_and_conditionals_are_sums_and_ratios_of_joints():
    mixture = _mixture()
    joint = np.exp(mixture.log_likelihood(STATES))
    query = np.array([1, np.nan, 0, np.nan, np.nan, 1])
    consistent = np.all((STATES == query) | np.isnan(query), 1)
    assert math.isclose(np.exp(mixture.log_likelihood(query[None]))[0], joint[consistent].sum(), rel_tol=1e-10)
    given = ~np.isnan(query)
    x = STATES[consistent][3]
    conditional = np.exp(mixture.conditional_log_likelihood(x[None], given[None]))[0]
    assert math.isclose(conditional, joint[consistent][3] / joint[consistent].sum(), rel_tol=1e-10)


def test_mixture_samples_follow_the_mixture():
    mixture = _mixture()
    probs = np.exp(mixture.log_likelihood(STATES))
    draws = mixture.sample(30000, seed=4)
    index = (draws @ (2 ** np.arange(5, -1, -1))).astype(int)
    counts = np.bincount(index, minlength=64)
    expected = probs * len(draws)
    keep = expected >= 5
    chi2 = (((counts - expected) ** 2) / expected)[keep].sum()
    dof = int(keep.sum()) - 1
    assert chi2 < dof * (1 - 2 / (9 * dof) + 3.09 * math.sqrt(2 / (9 * dof))) ** 3


def test_mixture_mpe_is_the_best_component_completion():
    mixture = _mixture()
    evidence = np.array([[1, np.nan, np.nan, 0, np.nan, np.nan]])
    completion = mixture.mpe(evidence)[0]
    assert completion[0] == 1 and completion[3] == 0
    consistent = STATES[np.all((STATES == evidence[0]) | np.isnan(evidence[0]), 1)]
    # max over components, their latent choices and the hidden pixels
    scores = np.stack([c.max_log_likelihood(consistent) for c in mixture.components], 1) + mixture.log_weights
    best = scores.max()
    mine = max(
        np.log(w) + c.max_log_likelihood(completion[None])[0]
        for w, c in zip((0.5, 0.3, 0.2), mixture.components)
    )
    assert math.isclose(mine, best, abs_tol=1e-10)


def test_mixture_round_trips_through_a_file(tmp_path):
    mixture = _mixture()
    path = tmp_path / "mixture.npz"
    mixture.save(path)
    loaded = einc.load(path, dtype="float64")
    np.testing.assert_allclose(loaded.log_likelihood(STATES), mixture.log_likelihood(STATES), atol=1e-12)


def test_kmeans_separates_blobs():
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(0.0, 0.5, (150, 4)), rng.normal(5.0, 0.5, (50, 4))])
    assignment, centres = kmeans(blobs, 2, seed=0)
    assert len(set(assignment[:150])) == 1 and len(set(assignment[150:])) == 1
    assert assignment[0] != assignment[-1]
    np.testing.assert_allclose(np.sort(centres.mean(1)), [0.0, 5.0], atol=0.2)


def test_fit_mixture_uses_cluster_proportions():
    rng = np.random.default_rng(0)
    data = np.concatenate([(rng.random((150, 6)) < 0.1), (rng.random((50, 6)) < 0.9)]).astype(float)
    assignment, _ = kmeans(data, 2, seed=0)
    mixture = fit_mixture(GRID, data, 2, epochs=2, dtype="float64")
    expected = np.bincount(assignment) / len(data)
    np.testing.assert_allclose(sorted(np.exp(mixture.log_weights)), sorted(expected))
    assert math.isclose(np.exp(mixture.log_likelihood(STATES)).sum(), 1.0, abs_tol=1e-9)


def test_inpainting_samples_follow_the_exact_conditional_on_a_small_grid():
    model = einc.compile(GRID, dtype="float64", seed=3)
    joint = np.exp(model.log_likelihood(STATES))
    hidden = image_mask("top", image_shape(model.graph), 1)[0]
    assert hidden.tolist() == [True, True, True, False, False, False]
    original = np.array([[1, 0, 1, 1, 0, 1.0]])
    n = 20000
    rows = inpainting_rows(model, np.repeat(original, n, 0), np.repeat(hidden[None], n, 0), seed=2)
    assert np.all(rows["sample"][:, ~hidden] == original[0, ~hidden])
    consistent = np.all(STATES[:, ~hidden] == original[0, ~hidden], 1)
    conditional = joint[consistent] / joint[consistent].sum()
    index = {tuple(s): i for i, s in enumerate(STATES[consistent])}
    counts = np.bincount([index[tuple(r)] for r in rows["sample"]], minlength=len(conditional))
    expected = conditional * n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 26.1  # chi-square(7) 0.9999 quantile
    # the MPE completion attains the max-product value over all completions of the evidence
    best = model.max_log_likelihood(STATES[consistent]).max()
    assert math.isclose(model.max_log_likelihood(rows["mpe"][:1])[0], best, abs_tol=1e-10)


def test_inpainting_figure_is_a_png_of_four_rows(tmp_path):
    from PIL import Image

    model = einc.compile(GRID, dtype="float64", seed=3)
    data = STATES[[5, 17, 42]]
    hidden = image_mask("random:0.5", image_shape(model.graph), len(data), seed=1)
    canvas = inpainting_figure(model, inpainting_rows(model, data, hidden), hidden)
    path = tmp_path / "inpaint.png"
    save_png(path, canvas, scale=1)
    picture = np.asarray(Image.open(path))
    assert picture.shape == (4 * (2 + 2) + 2, 3 * (3 + 2) + 2, 3)


@pytest.mark.parametrize("spec", ["top", "bottom", "left", "right", "random:0.25"])
def test_masks_hide_the_requested_part(spec):
    hidden = image_mask(spec, (4, 6, 1), 2, seed=0).reshape(2, 4, 6)
    if spec == "top":
        assert hidden[:, :2].all() and not hidden[:, 2:].any()
    elif spec == "left":
        assert hidden[:, :, :3].all() and not hidden[:, :, 3:].any()
    elif spec.startswith("random"):
        assert 0 < hidden.mean() < 0.6
    with pytest.raises(einc.DataError):
        image_mask("middle", (4, 6, 1), 1)


def test_class_conditional_heads_classify():
    source = GRID.replace("sums 3", "sums 3\nheads 2")
    rng = np.random.default_rng(0)
    zeros = (rng.random((300, 6)) < 0.15).astype(float)
    ones = (rng.random((300, 6)) < 0.85).astype(float)
    data = np.concatenate([zeros, ones])
    labels = np.repeat([0, 1], 300)
    model = einc.compile(source, dtype="float64", seed=0)
    model.fit(data, labels=labels, epochs=5, batch_size=100, step_size=0.3)
    ll = model.log_likelihood(data)
    assert ll.shape == (600, 2)
    assert (ll.argmax(1) == labels).mean() > 0.95
    for head in range(2):  # every head is a normalised distribution
        assert math.isclose(np.exp(model.log_likelihood(STATES)[:, head]).sum(), 1.0, abs_tol=1e-9)
