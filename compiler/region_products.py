"""``product REGION = KIND``: the product kind of one region's partitions, and the kind of each
partition of the circuit.

A circuit has a default product kind (``product hadamard``; ``outer`` when not given). A region
may combine its parts another way: ``product {A, B, C} = hadamard`` makes every partition of that
region an element-wise product while the rest stay outer products — e.g. hidden Chow–Liu trees
(HCLTs) as the patch circuits under an outer-product circuit over the patches, which
``patch_trees(patch_product = hadamard)`` generates. A partition's kind is, in order: its region's
``product R = KIND`` statement, the kind its generator gave it, the circuit's ``product``. Kinds
equal to the circuit's are stored as None (``Partition.product``), so that a circuit that does not
mix kinds is the same graph whichever way it was written.

A scope with several generated copies (RAT-SPN replicas) names the first copy, as ``sums R = K``
and a latent do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from einc.compiler.binding import PRODUCT_SYNONYMS, did_you_mean, one_of
from einc.compiler.region_sizes import first_copies
from einc.compiler.scopes import Scopes
from einc.ir.diagnostics import Note, Span
from einc.ir.program import Name, RegionProductStatement
from einc.ir.products import PRODUCT_KINDS
from einc.ir.region_graph import Partition, RegionId


def product_kind(scopes: Scopes, kind: Name) -> str | None:
    """The product kind ``kind`` names; None after reporting an unknown one at its span."""
    if kind.text in PRODUCT_KINDS:
        return kind.text
    scopes.sink.error(
        f"unknown product kind '{kind.text}'; expected {one_of(list(PRODUCT_KINDS))}"
        + did_you_mean(kind.text, list(PRODUCT_KINDS), PRODUCT_SYNONYMS),
        kind.span,
    )
    return None


def resolve_region_products(scopes: Scopes, statements: Sequence[object],
                            structure: tuple | None) -> dict[RegionId, str]:
    """The regions given a product kind of their own, with located errors: a kind that does not
    exist, a scope that is not a region, a leaf region (it has no partitions), a region given
    twice."""
    given = [(s, scopes.region_scope(s.region), product_kind(scopes, s.kind))
             for s in statements if isinstance(s, RegionProductStatement)]
    if structure is None:
        return {}
    regions, partitions, _generator = structure
    internal = {p.region for p in partitions}
    first = first_copies(regions)
    kinds: dict[RegionId, str] = {}
    where: dict[RegionId, Span] = {}
    for statement, scope, kind in given:
        if scope is None or kind is None:
            continue  # reported above
        region = first.get(scope)
        if region is None:
            scopes.sink.error(f"product names {scopes.scope_text(scope)}, which is not a region of the circuit",
                              statement.span)
        elif region not in internal:
            scopes.sink.error(f"{scopes.scope_text(scope)} is a leaf region: it has no partitions to give a "
                              f"product kind (a leaf region multiplies its variables' densities)", statement.span)
        elif region in kinds:
            scopes.sink.error(f"the product kind of {scopes.scope_text(scope)} is given twice", statement.span,
                              Note("first given here", where[region]))
        else:
            kinds[region] = kind
            where[region] = statement.span
    return kinds


def partition_kinds(partitions: Sequence[Partition], regions: dict[RegionId, str],
                    default: str) -> list[Partition]:
    """``partitions`` with each one's kind resolved (region statement, else its generator's) and
    stored only where it differs from the circuit's ``default``."""
    out = []
    for partition in partitions:
        kind = regions.get(partition.region, partition.product or default)
        own = None if kind == default else kind
        out.append(partition if own == partition.product else replace(partition, product=own))
    return out

