"""Neural leaf families: leaf regions whose densities are small VAEs (SPVAE; Tan & Peharz, ICML 2019).

``leaf img ~ vae(latent = 5, hidden = [32, 32], decoder = binomial)`` makes every leaf region over
those variables ``inputs`` VAE experts, each a density over the region's whole scope R:

    p_k(x_R) = ∫ p_θk(x_R | z) N(z; 0, I) dz                      (paper eq. 3)

- The decoder ``p_θk(x_R | z)`` factorises over the region's data columns; each column is one
  exponential family of ``ir.families`` (bernoulli, binomial(N), categorical, normal, poisson)
  whose unconstrained parameters (logits, log-probabilities, mean and log-variance, log-rate) are
  the outputs of an MLP of z with softplus hidden layers (the paper's MLPs).
- The encoder ``q_φk(z | x_R) = N(μ(x_R), diag σ²(x_R))`` is an MLP of the region's values.

A region's density is not tractable: queries use the importance-weighted (IWAE) estimate with k
samples, ``log 1/k Σ_i p(x, z_i) / q(z_i | x)``, which the circuit combines into a lower bound of
log p(x) in expectation (paper Theorems 1-2). This module holds what the language-level stages
need (arguments, which decoder fits which domain, layer shapes, parameter counts); lowering makes
a ``VaeOp`` of them and ``backends/torch_ops/vae.py`` runs it.

    >>> spec = VaeSpec(latent=2, hidden=(8,), decoder=LeafFamily("bernoulli"))
    >>> [(layer.fan_in, layer.fan_out) for layer in spec.layers(4, Domain("binary", 2))]
    [(4, 8), (8, 4), (2, 8), (8, 4)]
"""

from __future__ import annotations

from dataclasses import dataclass

from .families import FAMILIES
from .region_graph import Domain, LeafFamily

# The names a .pc file may give as a neural family.
NEURAL_FAMILIES = frozenset({"vae"})
# Decoders: exponential families of ir.families, each over one data column given z.
DECODERS = ("bernoulli", "binomial", "categorical", "normal", "poisson")
# The decoder a domain gets when the leaf statement names none.
DEFAULT_DECODERS = {"binary": "bernoulli", "categorical": "categorical", "count": "poisson", "real": "normal"}
DEFAULT_LATENT = 5
DEFAULT_HIDDEN = (32, 32)
# IWAE samples per leaf: the paper's k for training (§4); what plan costs are quoted at.
DEFAULT_TRAINING_SAMPLES = 5
# IWAE samples of a query that names none (Model.log_likelihood, einc eval).
DEFAULT_QUERY_SAMPLES = 100
# Elements of the decoder outputs (L·K·samples·B·D·t) a query materialises at once: a forward
# pass streams the IWAE samples in chunks of this size (backends/torch_ops/vae.py).
SAMPLE_CHUNK_ELEMENTS = 2**24
# Normal decoders keep their variance inside these bounds (as normal leaves do by default).
DECODER_MIN_VAR = 1e-4
DECODER_MAX_VAR = 10.0


def is_neural(family: LeafFamily) -> bool:
    """True for a neural leaf family (its densities are networks over a whole leaf region)."""
    return family.name in NEURAL_FAMILIES


def observation_family(family: LeafFamily) -> LeafFamily:
    """The exponential family that scores one data column of a variable: the leaf family itself,
    or a neural family's decoder. Data checks and image scaling read this."""
    return VaeSpec.of(family).decoder if is_neural(family) else family


def resolve_decoder(name: str | None, domain: Domain, subject: str = "") -> tuple[LeafFamily | None, str | None]:
    """The decoder family for a variable of ``domain`` (``name`` None: the domain's default), or
    a message saying why that decoder does not fit (``subject`` names the variable in it)."""
    chosen = name or DEFAULT_DECODERS[domain.kind]
    if chosen not in DECODERS:
        return None, f"unknown decoder '{chosen}'; expected one of {', '.join(DECODERS)}"
    if not _fits(chosen, domain):
        fitting = [d for d in DECODERS if _fits(d, domain)]
        listed = fitting[0] if len(fitting) == 1 else ", ".join(fitting[:-1]) + " or " + fitting[-1]
        what = f"{subject}, a {domain} variable" if subject else f"a {domain} variable"
        return None, (f"decoder {chosen} does not fit {what}; expected {listed} "
                      f"(default {DEFAULT_DECODERS[domain.kind]}), found {chosen}")
    categories = 2 if domain.kind == "binary" else domain.size
    if chosen == "binomial":
        return LeafFamily("binomial", (("n", float(categories - 1)),)), None
    if chosen == "normal":
        return LeafFamily("normal", (("min_var", DECODER_MIN_VAR), ("max_var", DECODER_MAX_VAR))), None
    return LeafFamily(chosen), None


def _fits(decoder: str, domain: Domain) -> bool:
    if domain.kind not in FAMILIES[decoder].domains:
        return False
    if decoder == "bernoulli":
        return domain.kind == "binary" or domain.size == 2
    # binomial(N) needs the N a bounded domain gives
    return not (decoder == "binomial" and domain.kind == "count")


def vae_family(latent: int, hidden: tuple[int, ...], decoder: LeafFamily) -> LeafFamily:
    """The IR form of ``vae(latent, hidden, decoder)`` with its decoder resolved for a domain."""
    return LeafFamily("vae", (("latent", float(latent)), ("hidden", tuple(hidden)), ("decoder", decoder)))


@dataclass(frozen=True)
class Layer:
    """One affine map of an expert's MLP: (fan_in -> fan_out), softplus after it unless last."""

    fan_in: int
    fan_out: int
    last: bool


@dataclass(frozen=True)
class VaeSpec:
    """A VAE leaf family's arguments, read from its ``LeafFamily``."""

    latent: int
    hidden: tuple[int, ...]
    decoder: LeafFamily

    @staticmethod
    def of(family: LeafFamily) -> VaeSpec:
        return VaeSpec(int(family.arg("latent")), tuple(family.arg("hidden")), family.arg("decoder"))

    def outputs_per_column(self, domain: Domain) -> int:
        """Decoder outputs per data column: the decoder family's unconstrained parameters."""
        return FAMILIES[self.decoder.name].stat_dim(self.decoder, domain)

    def encoder_layers(self, width: int) -> tuple[Layer, ...]:
        """x_R (width) -> hidden... -> (μ, pre-softplus σ) (2·latent)."""
        return _chain((width, *self.hidden, 2 * self.latent))

    def decoder_layers(self, width: int, domain: Domain) -> tuple[Layer, ...]:
        """z (latent) -> hidden reversed... -> decoder parameters (width · outputs per column)."""
        return _chain((self.latent, *reversed(self.hidden), width * self.outputs_per_column(domain)))

    def layers(self, width: int, domain: Domain) -> tuple[Layer, ...]:
        return self.encoder_layers(width) + self.decoder_layers(width, domain)

    def parameter_count(self, width: int, domain: Domain) -> int:
        """Weights and biases of one expert over ``width`` data columns."""
        return sum(layer.fan_in * layer.fan_out + layer.fan_out for layer in self.layers(width, domain))

    def pass_floats(self, experts: int, width: int, domain: Domain, batch: int, samples: int,
                    chunked: bool) -> int:
        """Floats ``experts`` experts over ``width`` columns hold in one pass over ``batch`` rows
        with ``samples`` IWAE samples: what the memory checks count besides the circuit's values.

        Per row and expert: the encoder's activations, μ and σ, then per sample the noise ε and
        z (latent each), the decoder's activations and outputs, and the per-column densities.
        A forward query (``chunked``) holds only one chunk of samples at a time; training keeps
        every sample for the backward pass, and sampling/MPE draw all samples at once.
        """
        outputs = width * self.outputs_per_column(domain)
        encoder = sum(self.hidden) + 4 * self.latent + 2 * width
        per_sample = 3 * self.latent + sum(self.hidden) + 2 * outputs + width
        live = samples
        if chunked:
            widest = max((*self.hidden, outputs))
            live = max(1, min(samples, SAMPLE_CHUNK_ELEMENTS // max(1, experts * batch * widest)))
        return experts * batch * (encoder + live * per_sample)


def _chain(sizes: tuple[int, ...]) -> tuple[Layer, ...]:
    return tuple(
        Layer(sizes[i], sizes[i + 1], i == len(sizes) - 2) for i in range(len(sizes) - 1)
    )
