"""Leaf families: exponential families in expectation parameters (EiNet paper §3.4).

One table keyed by family name. Each family is a univariate exponential family over one data
column,  log f(x) = log h(x) + T(x)·θ − A(θ),  kept in expectation parameters φ = E[T(x)] so that
the EM M-step is a ratio of accumulated statistics (paper eq. 7). The math is written once against
an array namespace ``xp`` (``numpy``, ``cupy`` or ``torch``) using only calls the three share
positionally, so every backend uses the same formulas. Parameters are laid out ``(..., t)`` with
the statistic index last.

Data-independent per-family facts (stat dimension, domains, parameter count) are what the
compiler needs; the ``xp`` functions are what backends need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from .region_graph import Domain, LeafFamily

# Probabilities are kept inside [EPS, 1 − EPS] so that natural parameters stay finite in float32.
PROB_EPS = 1e-6
# log 0 of an indicator leaf: finite, so 0·LOG_ZERO = 0 for unobserved entries (−inf would give
# NaN), and exp(LOG_ZERO − max) is exactly 0 in float32 and float64.
LOG_ZERO = -1e30
# A log-density at or below this is probability 0 (an indicator mismatch somewhere below it): no
# genuine density reaches it, and its posterior is undefined, so the E-step skips such samples.
ZERO_PROBABILITY = LOG_ZERO / 2


def _astype(xp: Any, x: Any, like: Any) -> Any:
    """Cast ``x`` to the floating dtype of ``like`` on any backend."""
    if hasattr(x, "to"):  # torch: also move to the device of ``like`` (arange starts on the CPU)
        return x.to(device=like.device, dtype=like.dtype)
    return x.astype(like.dtype, copy=False)


def _levels(xp: Any, count: int, like: Any) -> Any:
    """0, 1, ..., count−1 as floats on the device of ``like`` (created there, never copied)."""
    if hasattr(like, "device") and hasattr(xp, "lgamma"):  # torch
        return xp.arange(count, device=like.device, dtype=like.dtype)
    return xp.arange(count, dtype=like.dtype)


def _log_factorial(xp: Any, x: Any) -> Any:
    """log(x!) for integer-valued float arrays, via lgamma where the backend has it."""
    if hasattr(xp, "lgamma"):  # torch
        return xp.lgamma(x + 1.0)
    # numpy/cupy: a cumulative table up to the largest value present (counts are usually small);
    # past _LOG_FACTORIAL_TABLE the table would be large, so use math.lgamma on the host instead.
    top = int(xp.max(x)) if x.size else 0
    if top > _LOG_FACTORIAL_TABLE:
        host = x.get() if hasattr(x, "get") else x  # cupy arrays come to the host
        values = np.frompyfunc(lambda v: math.lgamma(v + 1.0), 1, 1)(np.asarray(host, dtype=np.float64))
        return xp.asarray(values.astype(np.float64)).astype(x.dtype)
    table = xp.concatenate([xp.zeros(1, dtype=x.dtype), xp.cumsum(xp.log(xp.arange(1, top + 1, dtype=x.dtype)))])
    return table[x.astype(np.int64)]


_LOG_FACTORIAL_TABLE = 1 << 16


@dataclass(frozen=True)
class FamilyRule:
    """The table entry for one leaf family. ``spec`` is the circuit's LeafFamily (its arguments)."""

    name: str
    domains: frozenset[str]
    stat_dim: Callable[[LeafFamily, Domain], int]
    sufficient_statistics: Callable[[Any, Any, LeafFamily, Domain], Any]  # x (...) -> (..., t)
    log_base_measure: Callable[[Any, Any, LeafFamily], Any]  # x (...) -> (...)
    natural: Callable[[Any, Any, LeafFamily], Any]  # φ (..., t) -> θ (..., t)
    log_normalizer: Callable[[Any, Any, LeafFamily], Any]  # φ (..., t) -> A (...)
    project: Callable[[Any, Any, LeafFamily], Any]  # φ -> φ inside the valid set
    mode: Callable[[Any, Any, LeafFamily], Any]  # φ (..., t) -> x (...)
    mean: Callable[[Any, Any, LeafFamily], Any]  # φ (..., t) -> E[x] (...)
    sample: Callable[[Any, Any, LeafFamily], Any]  # (sampler, φ (..., t)) -> x (...)
    init: Callable[[np.random.Generator, tuple[int, ...], LeafFamily, Domain], np.ndarray]
    # the domain check, elementwise: (xp, x (...), spec, domain) -> bool (...); NumPy for data read
    # by einc, torch for CircuitModule.forward (so a tensor is checked where it lives)
    valid_values: Callable[[Any, Any, LeafFamily, Domain], Any]
    domain_text: Callable[[LeafFamily, Domain], str]
    # unconstrained reparameterisation for gradient training: φ = constrained(unconstrained(φ))
    unconstrained: Callable[[Any, Any, LeafFamily], Any]  # φ (..., t) -> u (..., t')
    constrained: Callable[[Any, Any, LeafFamily], Any]  # u -> φ
    # T(x) is the one-hot vector of x: backends may look θ[x] up instead of a one-hot matmul
    one_hot_statistics: bool = False
    # log h(x) is 0 for every x: the input layer then carries no log h feature (a column of zeros
    # would cost a quarter of a normal leaf's features and a third of a bernoulli's)
    zero_log_base: Callable[[LeafFamily], bool] = lambda spec: False
    # parameters fixed by the component index (indicator leaves): never updated, not counted
    fixed: bool = False
    # Laplace smoothing of the M-step per unit of pseudocount α, which is α pseudo-observations
    # spread evenly over the outcomes: (added to each Σ p·T, added to Σ p); None where no
    # conjugate count prior is defined (normal, poisson)
    pseudocounts: Callable[[LeafFamily, Domain], tuple[float, float]] | None = None
    # an error message when the circuit's `inputs` K does not fit this family (None: any K)
    check_components: Callable[[LeafFamily, Domain, int], str | None] | None = None

    def max_log_density(self, xp: Any, phi: Any, spec: LeafFamily, domain: Domain) -> Any:
        """max_x log f(x): the value of an unobserved variable in a max-product (MPE) pass."""
        x = self.mode(xp, phi, spec)
        stats = self.sufficient_statistics(xp, x, spec, domain)
        theta = self.natural(xp, phi, spec)
        return (
            self.log_base_measure(xp, x, spec)
            + xp.sum(stats * theta, -1)
            - self.log_normalizer(xp, phi, spec)
        )

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickled by name (its formulas are lambdas, which pickle not): a pickled or
        ``torch.save``d model or module finds the same table entry when it is loaded."""
        return _family_named, (self.name,)


# ---------------------------------------------------------------- bernoulli / binomial(n)
def _binomial_n(spec: LeafFamily) -> float:
    return spec.arg("n") if spec.name == "binomial" else 1.0


def _count_stats(xp: Any, x: Any, spec: LeafFamily, domain: Domain) -> Any:
    return x[..., None]


def _binomial_p(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return xp.clip(phi[..., 0] / _binomial_n(spec), PROB_EPS, 1.0 - PROB_EPS)


def _binomial_natural(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    p = _binomial_p(xp, phi, spec)
    return (xp.log(p) - xp.log(1.0 - p))[..., None]


def _binomial_log_normalizer(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return -_binomial_n(spec) * xp.log(1.0 - _binomial_p(xp, phi, spec))


def _binomial_log_base(xp: Any, x: Any, spec: LeafFamily) -> Any:
    n = _binomial_n(spec)
    if n == 1.0:
        return x * 0.0
    # log C(n, x), with x clipped so that unobserved (zeroed) entries stay finite
    x = xp.clip(x, 0.0, n)
    return math.lgamma(n + 1.0) - _log_factorial(xp, x) - _log_factorial(xp, n - x)


def _binomial_project(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    n = _binomial_n(spec)
    return xp.clip(phi, n * PROB_EPS, n * (1.0 - PROB_EPS))


def _binomial_mode(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    n = _binomial_n(spec)
    p = _binomial_p(xp, phi, spec)
    return xp.clip(xp.floor((n + 1.0) * p), 0.0, n)


def _binomial_mean(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return phi[..., 0]


def _binomial_sample(sampler: Any, phi: Any, spec: LeafFamily) -> Any:
    return sampler.binomial(_binomial_n(spec), _binomial_p(sampler.xp, phi, spec))


def _binomial_pseudocounts(spec: LeafFamily, domain: Domain) -> tuple[float, float]:
    # α/2 pseudo-successes and α/2 pseudo-failures on p = φ/n: p = (Σp·x + α/2)/(n·Σp + α),
    # i.e. φ = (Σp·x + α/2)/(Σp + α/n); bernoulli (n = 1): (Σp·x + α/2)/(Σp + α)
    return 0.5, 1.0 / _binomial_n(spec)


def _binomial_init(rng: np.random.Generator, shape: tuple[int, ...], spec: LeafFamily, domain: Domain) -> np.ndarray:
    # EiNet draws uniform random means; keep away from the boundary so early EM steps are stable.
    return (_binomial_n(spec) * rng.uniform(0.2, 0.8, size=shape))[..., None]


def _integer_values(xp: Any, x: Any, high: float | None) -> Any:
    ok = xp.isfinite(x) & (x >= 0) & (xp.floor(x) == x)
    if high is not None:
        ok &= x <= high
    return ok


def _binomial_valid(xp: Any, x: Any, spec: LeafFamily, domain: Domain) -> Any:
    return _integer_values(xp, x, _binomial_n(spec))


def _binomial_domain_text(spec: LeafFamily, domain: Domain) -> str:
    n = int(_binomial_n(spec))
    return "0 or 1" if n == 1 else f"an integer in 0..{n}"


# ---------------------------------------------------------------- categorical
def _categories(domain: Domain) -> int:
    return 2 if domain.kind == "binary" else domain.size


def _categorical_stats(xp: Any, x: Any, spec: LeafFamily, domain: Domain) -> Any:
    # one-hot; unobserved entries are zero rows (they are masked out by the caller anyway)
    levels = _levels(xp, _categories(domain), x)
    return _astype(xp, x[..., None] == levels, x)


def _categorical_natural(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return xp.log(xp.clip(phi, PROB_EPS, 1.0))


def _categorical_log_normalizer(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    # φ is kept normalised, so the over-complete parameterisation θ = log φ has A(θ) = 0.
    return phi[..., 0] * 0.0


def _categorical_project(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    phi = xp.clip(phi, PROB_EPS, 1.0)
    return phi / xp.sum(phi, -1)[..., None]


def _categorical_mode(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return _astype(xp, xp.argmax(phi, -1), phi)


def _categorical_mean(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    levels = _levels(xp, phi.shape[-1], phi)
    return xp.sum(phi * levels, -1)


def _categorical_sample(sampler: Any, phi: Any, spec: LeafFamily) -> Any:
    return sampler.categorical(phi)


def _categorical_pseudocounts(spec: LeafFamily, domain: Domain) -> tuple[float, float]:
    # α/n added to every category's count: φ_c = (Σp·[x=c] + α/n)/(Σp + α)
    return 1.0 / _categories(domain), 1.0


def _categorical_init(rng: np.random.Generator, shape: tuple[int, ...], spec: LeafFamily, domain: Domain) -> np.ndarray:
    raw = rng.uniform(0.5, 1.5, size=(*shape, _categories(domain)))
    return raw / raw.sum(-1, keepdims=True)


def _categorical_valid(xp: Any, x: Any, spec: LeafFamily, domain: Domain) -> Any:
    return _integer_values(xp, x, _categories(domain) - 1)


def _categorical_domain_text(spec: LeafFamily, domain: Domain) -> str:
    return f"an integer in 0..{_categories(domain) - 1}"


# ---------------------------------------------------------------- indicator
# Component k is the point mass at category k: log f_k(x) = 0 if x = k, else log 0. The circuit's
# `inputs` K must be the number of categories: fewer leave values no component explains, more
# leave components that match no value, and a sum weight on such a dead component is probability
# mass the circuit loses. These are the literals of a Chow-Liu tree written as a circuit: a
# variable that is its own latent.
def _indicator_natural(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return (1.0 - phi) * LOG_ZERO  # φ is exactly one-hot (or all zero for k ≥ n)


def _indicator_init(rng: np.random.Generator, shape: tuple[int, ...], spec: LeafFamily, domain: Domain) -> np.ndarray:
    categories = _categories(domain)
    components = np.arange(shape[-1])  # K = n once verified; a graph built by hand may differ
    one_hot = (components[:, None] == np.arange(categories)[None, :]).astype(np.float64)  # (K, n)
    return np.broadcast_to(one_hot, (*shape, categories)).copy()


def _indicator_fixed(xp: Any, u: Any, spec: LeafFamily) -> Any:
    # rounding has a zero gradient: gradient training leaves indicators as they are
    return xp.floor(u + 0.5)


def _indicator_components(spec: LeafFamily, domain: Domain, inputs: int) -> str | None:
    categories = _categories(domain)
    if inputs == categories:
        return None
    return (
        f"indicator leaves need exactly one component per category: inputs K must be "
        f"{categories} for a {domain} variable, found {inputs}; set `inputs {categories}`"
    )


# ---------------------------------------------------------------- normal(min_var, max_var)
def _normal_stats(xp: Any, x: Any, spec: LeafFamily, domain: Domain) -> Any:
    return xp.stack([x, x * x], -1)


def _normal_variance(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return xp.clip(phi[..., 1] - phi[..., 0] ** 2, spec.arg("min_var"), spec.arg("max_var"))


def _normal_natural(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    var = _normal_variance(xp, phi, spec)
    return xp.stack([phi[..., 0] / var, -0.5 / var], -1)


def _normal_log_normalizer(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    # includes the base measure's −½ log 2π, so h(x) = 1
    var = _normal_variance(xp, phi, spec)
    return 0.5 * phi[..., 0] ** 2 / var + 0.5 * xp.log(2.0 * math.pi * var)


def _normal_project(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    mu = phi[..., 0]
    return xp.stack([mu, mu * mu + _normal_variance(xp, phi, spec)], -1)


def _normal_mean(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return phi[..., 0]


def _normal_sample(sampler: Any, phi: Any, spec: LeafFamily) -> Any:
    std = sampler.xp.sqrt(_normal_variance(sampler.xp, phi, spec))
    return phi[..., 0] + std * sampler.standard_normal(phi[..., 0])


def _normal_init(rng: np.random.Generator, shape: tuple[int, ...], spec: LeafFamily, domain: Domain) -> np.ndarray:
    mu = rng.standard_normal(size=shape)
    var = np.clip(np.ones(shape), spec.arg("min_var"), spec.arg("max_var"))
    return np.stack([mu, mu * mu + var], -1)


def _normal_valid(xp: Any, x: Any, spec: LeafFamily, domain: Domain) -> Any:
    return xp.isfinite(x)


# ---------------------------------------------------------------- poisson
def _poisson_rate(xp: Any, phi: Any) -> Any:
    return xp.clip(phi[..., 0], PROB_EPS, None)


def _poisson_natural(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return xp.log(_poisson_rate(xp, phi))[..., None]


def _poisson_log_normalizer(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return _poisson_rate(xp, phi)


def _poisson_log_base(xp: Any, x: Any, spec: LeafFamily) -> Any:
    return -_log_factorial(xp, xp.clip(x, 0.0, None))


def _poisson_project(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return _poisson_rate(xp, phi)[..., None]


def _poisson_mode(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return xp.floor(_poisson_rate(xp, phi))


def _poisson_sample(sampler: Any, phi: Any, spec: LeafFamily) -> Any:
    return sampler.poisson(_poisson_rate(sampler.xp, phi))


def _poisson_init(rng: np.random.Generator, shape: tuple[int, ...], spec: LeafFamily, domain: Domain) -> np.ndarray:
    return rng.uniform(0.5, 5.0, size=shape)[..., None]


def _poisson_valid(xp: Any, x: Any, spec: LeafFamily, domain: Domain) -> Any:
    high = _categories(domain) - 1 if domain.kind in ("binary", "categorical") else None
    return _integer_values(xp, x, high)


def _poisson_domain_text(spec: LeafFamily, domain: Domain) -> str:
    if domain.kind in ("binary", "categorical"):
        return f"an integer in 0..{_categories(domain) - 1}"
    return "a non-negative integer"


# ---------------------------------------------------------------- reparameterisations (gradient training)
def _binomial_unconstrained(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    p = _binomial_p(xp, phi, spec)
    return (xp.log(p) - xp.log(1.0 - p))[..., None]


def _binomial_constrained(xp: Any, u: Any, spec: LeafFamily) -> Any:
    return _binomial_n(spec) / (1.0 + xp.exp(-u))


def _categorical_unconstrained(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return xp.log(xp.clip(phi, PROB_EPS, 1.0))


def _categorical_constrained(xp: Any, u: Any, spec: LeafFamily) -> Any:
    shifted = xp.exp(u - xp.amax(u, -1)[..., None])  # amax: one call for numpy, cupy and torch
    return shifted / xp.sum(shifted, -1)[..., None]


def _normal_unconstrained(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return xp.stack([phi[..., 0], xp.log(_normal_variance(xp, phi, spec))], -1)


def _normal_constrained(xp: Any, u: Any, spec: LeafFamily) -> Any:
    var = xp.clip(xp.exp(u[..., 1]), spec.arg("min_var"), spec.arg("max_var"))
    return xp.stack([u[..., 0], u[..., 0] ** 2 + var], -1)


def _poisson_unconstrained(xp: Any, phi: Any, spec: LeafFamily) -> Any:
    return xp.log(_poisson_rate(xp, phi))[..., None]


def _poisson_constrained(xp: Any, u: Any, spec: LeafFamily) -> Any:
    return xp.exp(u)


FAMILIES: dict[str, FamilyRule] = {
    "binomial": FamilyRule(
        name="binomial",
        domains=frozenset({"binary", "categorical", "count"}),
        stat_dim=lambda spec, domain: 1,
        sufficient_statistics=_count_stats,
        log_base_measure=_binomial_log_base,
        natural=_binomial_natural,
        log_normalizer=_binomial_log_normalizer,
        project=_binomial_project,
        mode=_binomial_mode,
        mean=_binomial_mean,
        sample=_binomial_sample,
        init=_binomial_init,
        valid_values=_binomial_valid,
        domain_text=_binomial_domain_text,
        unconstrained=_binomial_unconstrained,
        constrained=_binomial_constrained,
        zero_log_base=lambda spec: _binomial_n(spec) == 1.0,  # bernoulli: log C(1, x) = 0
        pseudocounts=_binomial_pseudocounts,
    ),
    "categorical": FamilyRule(
        name="categorical",
        domains=frozenset({"binary", "categorical"}),
        stat_dim=lambda spec, domain: _categories(domain),
        sufficient_statistics=_categorical_stats,
        log_base_measure=lambda xp, x, spec: x * 0.0,
        natural=_categorical_natural,
        log_normalizer=_categorical_log_normalizer,
        project=_categorical_project,
        mode=_categorical_mode,
        mean=_categorical_mean,
        sample=_categorical_sample,
        init=_categorical_init,
        valid_values=_categorical_valid,
        domain_text=_categorical_domain_text,
        one_hot_statistics=True,
        unconstrained=_categorical_unconstrained,
        constrained=_categorical_constrained,
        zero_log_base=lambda spec: True,
        pseudocounts=_categorical_pseudocounts,
    ),
    "indicator": FamilyRule(
        name="indicator",
        domains=frozenset({"binary", "categorical"}),
        stat_dim=lambda spec, domain: _categories(domain),
        sufficient_statistics=_categorical_stats,
        log_base_measure=lambda xp, x, spec: x * 0.0,
        natural=_indicator_natural,
        log_normalizer=_categorical_log_normalizer,
        project=lambda xp, phi, spec: phi,
        mode=_categorical_mode,
        mean=_categorical_mode,
        sample=lambda sampler, phi, spec: _categorical_mode(sampler.xp, phi, spec),
        init=_indicator_init,
        valid_values=_categorical_valid,
        domain_text=_categorical_domain_text,
        one_hot_statistics=True,
        unconstrained=lambda xp, phi, spec: phi,
        constrained=_indicator_fixed,
        fixed=True,
        check_components=_indicator_components,
        zero_log_base=lambda spec: True,
    ),
    "normal": FamilyRule(
        name="normal",
        domains=frozenset({"real"}),
        stat_dim=lambda spec, domain: 2,
        sufficient_statistics=_normal_stats,
        log_base_measure=lambda xp, x, spec: x * 0.0,
        natural=_normal_natural,
        log_normalizer=_normal_log_normalizer,
        project=_normal_project,
        mode=_normal_mean,
        mean=_normal_mean,
        sample=_normal_sample,
        init=_normal_init,
        valid_values=_normal_valid,
        domain_text=lambda spec, domain: "a finite real number",
        unconstrained=_normal_unconstrained,
        constrained=_normal_constrained,
        zero_log_base=lambda spec: True,  # −½ log 2π lives in A
    ),
    "poisson": FamilyRule(
        name="poisson",
        domains=frozenset({"binary", "categorical", "count"}),
        stat_dim=lambda spec, domain: 1,
        sufficient_statistics=_count_stats,
        log_base_measure=_poisson_log_base,
        natural=_poisson_natural,
        log_normalizer=_poisson_log_normalizer,
        project=_poisson_project,
        mode=_poisson_mode,
        mean=lambda xp, phi, spec: _poisson_rate(xp, phi),
        sample=_poisson_sample,
        init=_poisson_init,
        valid_values=_poisson_valid,
        domain_text=_poisson_domain_text,
        unconstrained=_poisson_unconstrained,
        constrained=_poisson_constrained,
    ),
}


# bernoulli is binomial(1): the same formulas (``_binomial_n`` is 1 for it), on binary domains only
FAMILIES["bernoulli"] = replace(FAMILIES["binomial"], name="bernoulli", domains=frozenset({"binary", "categorical"}))


def family_rule(spec: LeafFamily) -> FamilyRule:
    return FAMILIES[spec.name]


def _family_named(name: str) -> FamilyRule:
    return FAMILIES[name]
