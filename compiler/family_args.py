"""The arguments of the language's domains and leaf families: one table entry each, checks beside it.

A domain (``var x : categorical(4)``) and a leaf family (``leaf x ~ binomial(8)``) are calls; each
kind is a ``DomainArguments`` or ``FamilyArguments`` entry naming its parameters, the checks of
their values (with located messages) and, for a family, the domain kinds it fits and the sizes
within them. A new family is a new entry here (and its maths in ``ir/families.py``), never a new
branch of the builder. The ``vae`` family's decoder is resolved per variable later
(``compiler/leaves.py``), since it depends on each variable's domain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from einc.compiler.binding import FAMILY_SYNONYMS, DOMAIN_SYNONYMS, Bound, Param, bind, did_you_mean, one_of
from einc.ir import neural
from einc.ir.diagnostics import DiagnosticSink
from einc.ir.program import Call
from einc.ir.region_graph import Domain, LeafFamily

DEFAULT_MIN_VAR = 1e-4
DEFAULT_MAX_VAR = 10.0

# ---------------------------------------------------------------------------------------------
# domains


@dataclass(frozen=True)
class DomainArguments:
    params: tuple[Param, ...]
    # the domain from bound arguments, or None after reporting a bad value
    make: Callable[[Bound, DiagnosticSink], Domain | None]


def _at_least(bound: Bound, sink: DiagnosticSink, name: str, low: int, message: str) -> int | None:
    value = int(bound.values[name])  # type: ignore[call-overload]
    if value < low:
        sink.error(message.format(value=value), bound.spans[name])
        return None
    return value


def _categorical_domain(bound: Bound, sink: DiagnosticSink) -> Domain | None:
    n = _at_least(bound, sink, "n", 2, "categorical needs at least 2 categories, found {value}")
    return None if n is None else Domain("categorical", n)


def _real_domain(bound: Bound, sink: DiagnosticSink) -> Domain | None:
    d = _at_least(bound, sink, "d", 1, "real(d) needs d of at least 1, found {value}")
    return None if d is None else Domain("real", d)


DOMAIN_ARGUMENTS: dict[str, DomainArguments] = {
    "binary": DomainArguments((), lambda bound, sink: Domain("binary", 2)),
    "categorical": DomainArguments((Param("n", "int"),), _categorical_domain),
    "count": DomainArguments((), lambda bound, sink: Domain("count", 1)),
    "real": DomainArguments((Param("d", "int", 1),), _real_domain),
}
DOMAINS = ("binary", "categorical(n)", "count", "real", "real(d)")  # as a message lists them


def lookup(table: dict[str, Any], call: Call, sink: DiagnosticSink, what: str, listing: Sequence[str],
           synonyms: dict[str, str]) -> Any:
    """The table entry a call names, or None after an "unknown ... — did you mean" diagnostic."""
    entry = table.get(call.name.text)
    if entry is None:
        sink.error(f"unknown {what} '{call.name.text}'; expected {one_of(listing)}"
                   + did_you_mean(call.name.text, list(table), synonyms), call.name.span)
    return entry


def parse_domain(call: Call, sink: DiagnosticSink) -> Domain | None:
    entry = lookup(DOMAIN_ARGUMENTS, call, sink, "domain", DOMAINS, DOMAIN_SYNONYMS)
    bound = None if entry is None else bind(call, entry.params, sink)
    return None if bound is None else entry.make(bound, sink)


# ---------------------------------------------------------------------------------------------
# leaf families


def _categories(domain: Domain) -> int:
    return 2 if domain.kind == "binary" else domain.size


@dataclass(frozen=True)
class FamilyArguments:
    params: tuple[Param, ...]
    make: Callable[[Bound, DiagnosticSink], LeafFamily | None]
    domains: tuple[str, ...]  # the domain kinds the family accepts
    # within those kinds: does it fit this domain (``required``: categorical(n)'s n, if written)?
    fits: Callable[[LeafFamily, int | None, Domain], bool]
    # what fits, as a message says it
    fitting: Callable[[LeafFamily, int | None], str]


def _plain(name: str) -> Callable[[Bound, DiagnosticSink], LeafFamily | None]:
    return lambda bound, sink: LeafFamily(name)


def _any(family: LeafFamily, required: int | None, domain: Domain) -> bool:
    return True


def _binomial(bound: Bound, sink: DiagnosticSink) -> LeafFamily | None:
    n = _at_least(bound, sink, "n", 1, "binomial(N) needs N of at least 1, found {value}")
    return None if n is None else LeafFamily("binomial", (("n", float(n)),))


def _normal(bound: Bound, sink: DiagnosticSink) -> LeafFamily | None:
    low, high = float(bound.values["min_var"]), float(bound.values["max_var"])  # type: ignore[arg-type]
    if not low > 0:
        sink.error(f"min_var must be positive, found {low:g}", bound.spans["min_var"])
        return None
    if not high >= low:
        sink.error(f"max_var must be at least min_var ({low:g}), found {high:g}", bound.spans["max_var"])
        return None
    return LeafFamily("normal", (("min_var", low), ("max_var", high)))


def _vae(bound: Bound, sink: DiagnosticSink) -> LeafFamily | None:
    """``vae(latent, hidden, decoder)``, its decoder still unresolved (it depends on the domain of
    each variable the statement names: ``compiler.leaves.neural_families``)."""
    latent = int(bound.values["latent"])  # type: ignore[call-overload]
    hidden = tuple(int(h) for h in bound.values["hidden"])  # type: ignore[attr-defined]
    decoder = bound.values["decoder"]
    ok = True
    if latent < 1:
        sink.error(f"latent (the size of z) must be at least 1, found {latent}", bound.spans["latent"])
        ok = False
    if any(h < 1 for h in hidden):
        sink.error(f"hidden sizes must be at least 1, found {[*hidden]}; write hidden = [] for networks without "
                   f"hidden layers", bound.spans["hidden"])
        ok = False
    if decoder is not None and decoder not in neural.DECODERS:
        sink.error(f"unknown decoder '{decoder}'; expected {one_of(neural.DECODERS)}"
                   + did_you_mean(str(decoder), neural.DECODERS, FAMILY_SYNONYMS), bound.spans["decoder"])
        ok = False
    if not ok:
        return None
    args: tuple = (("latent", float(latent)), ("hidden", hidden))
    if decoder is not None:
        args += (("decoder", LeafFamily(str(decoder))),)
    return LeafFamily("vae", args)


def _categorical_fitting(family: LeafFamily, required: int | None) -> str:
    return f"a categorical({required}) variable" if required is not None else "a binary or categorical(n) variable"


def _binomial_fitting(family: LeafFamily, required: int | None) -> str:
    return (f"a binary, count or categorical(n) variable with n at most N + 1 = "
            f"{int(family.arg('n')) + 1}")


def _text(words: str) -> Callable[[LeafFamily, int | None], str]:
    return lambda family, required: words


DISCRETE = ("binary", "categorical")
FAMILY_ARGUMENTS: dict[str, FamilyArguments] = {
    "bernoulli": FamilyArguments(
        (), _plain("bernoulli"), DISCRETE, lambda family, required, domain: _categories(domain) == 2,
        _text("a binary or categorical(2) variable")),
    "binomial": FamilyArguments(
        (Param("n", "int"),), _binomial, (*DISCRETE, "count"),
        lambda family, required, domain: domain.kind == "count" or _categories(domain) <= family.arg("n") + 1,
        _binomial_fitting),
    # categorical's n comes from the domain; an explicit categorical(n) is checked against it
    "categorical": FamilyArguments(
        (Param("n", "int", None),), _plain("categorical"), DISCRETE,
        lambda family, required, domain: required is None or _categories(domain) == required,
        _categorical_fitting),
    "indicator": FamilyArguments((), _plain("indicator"), DISCRETE, _any,
                                 _text("a binary or categorical(n) variable")),
    "normal": FamilyArguments(
        (Param("min_var", "number", DEFAULT_MIN_VAR), Param("max_var", "number", DEFAULT_MAX_VAR)), _normal,
        ("real",), _any, _text("a real variable")),
    "poisson": FamilyArguments((), _plain("poisson"), (*DISCRETE, "count"), _any,
                               _text("a binary, categorical(n) or count variable")),
    # a neural family fits every domain its decoder fits (ir.neural.resolve_decoder)
    "vae": FamilyArguments(
        (Param("latent", "int", neural.DEFAULT_LATENT), Param("hidden", "ints", neural.DEFAULT_HIDDEN),
         Param("decoder", "name", None)), _vae, (*DISCRETE, "count", "real"), _any,
        _text("a variable its decoder fits")),
}
FAMILIES = ("bernoulli", "binomial(N)", "categorical", "indicator", "normal", "poisson",
            "vae(latent, hidden, decoder)")  # as a message lists them
SUGGESTED_FAMILY = {"binary": "bernoulli", "categorical": "categorical", "count": "poisson", "real": "normal"}


def parse_family(call: Call, sink: DiagnosticSink) -> tuple[LeafFamily | None, int | None]:
    """The normalised family, and the category count ``categorical(n)`` insists on."""
    entry = lookup(FAMILY_ARGUMENTS, call, sink, "leaf family", FAMILIES, FAMILY_SYNONYMS)
    if entry is None:
        return None, None
    bound = bind(call, entry.params, sink)
    family = None if bound is None else entry.make(bound, sink)
    required = bound.values.get("n") if bound is not None and call.name.text == "categorical" else None
    return family, None if required is None else int(required)  # type: ignore[call-overload]


def family_fits(family: LeafFamily, required: int | None, domain: Domain) -> bool:
    entry = FAMILY_ARGUMENTS[family.name]
    return domain.kind in entry.domains and entry.fits(family, required, domain)


def fitting_domains(family: LeafFamily, required: int | None) -> str:
    return FAMILY_ARGUMENTS[family.name].fitting(family, required)
