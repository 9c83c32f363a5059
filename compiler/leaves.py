"""Leaf statements: the family of every variable, checked against its domain.

``leaf x[0:8] ~ binomial(8)`` gives each variable it names a family, parsed by the family table
(``compiler/family_args.py``); a family that does not fit a variable's domain, a variable given
two families or none, are located diagnostics. Neural (``vae``) families get their decoder here,
per variable, from its domain.
"""

from __future__ import annotations

import itertools

import numpy as np

from einc.compiler.family_args import SUGGESTED_FAMILY, family_fits, fitting_domains, parse_family
from einc.compiler.scopes import Group, Scopes
from einc.ir import neural
from einc.ir.diagnostics import Note, Span
from einc.ir.neural import is_neural
from einc.ir.program import Call, LeafStatement, VariableRef
from einc.ir.region_graph import Domain, LeafFamily


def leaf_families(scopes: Scopes, statements: list[LeafStatement]) -> dict[int, LeafFamily]:
    families: dict[int, LeafFamily] = {}
    given_at: dict[int, Span] = {}
    for statement in statements:
        family, categories = parse_family(statement.family, scopes.sink)
        for target in statement.targets:
            indices = scopes.resolve(target)
            if indices is None:
                continue
            again = [i for i in indices if i in given_at]
            if again:
                scopes.sink.error(
                    f"{scopes.subject(again)} already "
                    f"{'has' if len(again) == 1 else 'have'} a leaf family",
                    target.span,
                    Note("first given here", given_at[again[0]]),
                )
                continue
            for i in indices:
                given_at[i] = target.span
                scopes.family_spans[i] = statement.family.span
            if family is None:
                continue
            if is_neural(family):
                families.update(neural_families(scopes, family, statement.family, indices))
                continue
            check_fit(scopes, family, categories, statement.family, target, indices)
            families.update((i, family) for i in indices)
    missing = [i for i in range(len(scopes.group_of)) if i not in given_at]
    for group, members in itertools.groupby(missing, key=lambda i: scopes.group_of[i]):
        members_list = list(members)
        suggestion = SUGGESTED_FAMILY[group.domain.kind]
        if group.shape and len(members_list) == group.size:
            subject = f"the variables of '{group.name}' have"
        else:
            have = "has" if len(members_list) == 1 else "have"
            subject = f"{scopes.subject(members_list)} {have}"
        # name exactly the variables without a family: `leaf x ~ ...` for part of x would give the
        # others a second family, the next error
        references = missing_references(group, members_list)
        shown = ", ".join(references[:_SHOWN_REFERENCES])
        more = len(references) - _SHOWN_REFERENCES
        scopes.sink.error(
            f"{subject} no leaf family; add e.g. `leaf {shown} ~ {suggestion}`"
            + (f" (and {more} more references like these)" if more > 0 else ""),
            group.span,
        )
    return families


_SHOWN_REFERENCES = 4  # a suggested `leaf` line names at most this many references


def missing_references(group: Group, members: list[int]) -> list[str]:
    """References (``x``, ``x[4:10]``, ``img[2:4, :]``, ``x[0], x[5]``) that name exactly
    ``members``, ascending variable indices of ``group``: the whole group, one box of indices, or
    runs along the last axis, one per run."""
    if not group.shape or len(members) == group.size:
        return [group.name]
    offsets = np.asarray(members, dtype=np.int64) - group.first
    positions = np.stack(np.unravel_index(offsets, group.shape), axis=1)  # (members, dims)
    low, high = positions.min(axis=0), positions.max(axis=0) + 1
    if int(np.prod(high - low)) == len(members):  # they fill one box
        return [_box(group, low, high)]
    references, start = [], 0
    for end in range(1, len(members) + 1):
        run_ends = end == len(members) or offsets[end] != offsets[end - 1] + 1 or \
            (positions[end, :-1] != positions[start, :-1]).any()
        if run_ends:
            references.append(_box(group, positions[start], positions[end - 1] + 1))
            start = end
    return references


def _box(group: Group, low: np.ndarray, high: np.ndarray) -> str:
    """``name[i, a:b, :]``: an index where the box is one wide, ``:`` where it is the whole axis."""
    parts = []
    for a, b, extent in zip(low.tolist(), high.tolist(), group.shape):
        parts.append(str(a) if b == a + 1 else ":" if (a, b) == (0, extent) else f"{a}:{b}")
    return f"{group.name}[{', '.join(parts)}]"


def neural_families(
    scopes: Scopes, family: LeafFamily, call: Call, indices: list[int]
) -> dict[int, LeafFamily]:
    """A neural family per variable, its decoder resolved for the variable's domain; a
    decoder that does not fit is reported at the decoder argument (or the call)."""
    written = dict(family.args).get("decoder")
    span = next(
        (a.value.span for a in call.arguments if a.keyword and a.keyword.text == "decoder"),
        call.span,
    )
    out: dict[int, LeafFamily] = {}
    reported: set[Domain] = set()
    for i in indices:
        group = scopes.group_of[i]
        decoder, problem = neural.resolve_decoder(written.name if written else None, group.domain,
                                                  f"'{group.name}'")
        if decoder is None:
            if group.domain not in reported:
                reported.add(group.domain)
                scopes.sink.error(
                    str(problem),
                    span,
                    Note(f"'{group.name}' declared here", group.span),
                )
            continue
        out[i] = neural.vae_family(int(family.arg("latent")), family.arg("hidden"), decoder)
    return out


def check_fit(
    scopes: Scopes,
    family: LeafFamily,
    categories: int | None,
    call: Call,
    target: VariableRef,
    indices: list[int],
) -> None:
    misfits = [
        i for i in indices if not family_fits(family, categories, scopes.group_of[i].domain)
    ]
    if not misfits:
        return
    group = scopes.group_of[misfits[0]]
    subject = (
        f"'{group.name}'"
        if len(misfits) == group.size and target.indices is None
        else scopes.variable_text(misfits)
    )
    scopes.sink.error(
        f"leaf family {family} does not fit {subject}; expected "
        f"{fitting_domains(family, categories)}, found {group.domain}",
        call.span,
        Note(f"'{group.name}' declared here", group.span),
    )
