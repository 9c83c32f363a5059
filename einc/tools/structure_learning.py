"""Learned structures: Chow–Liu trees and hidden Chow–Liu trees (HCLT), written as ``.pc`` files.

The compiler stays data-free: ``einc learn-structure hclt|chow_liu --data TRAIN -o OUT.pc`` reads
the data once, learns a tree over the variables and writes a complete, verified ``.pc`` file whose
structure is the tree in the language (``structure tree(parents = [...])``, readable and editable);
``einc train OUT.pc ...`` then trains it like any circuit.

1. Pairwise mutual information from pairwise counts with a pseudocount α, on binned values: a
   variable with at most ``bins`` values is used as is, one with more (256-level pixels, counts,
   reals) is cut into ``bins`` equal-width bins. Missing entries leave their pairs out.
2. A maximum spanning tree of the mutual information (Prim's algorithm; ties go to the smallest
   variable index, so the tree is deterministic), rooted at its centre (the node of smallest
   eccentricity, smallest index among equals), which keeps the circuit shallow.
3. The circuit (Liu & Van den Broeck 2021):

   - ``hclt``: each tree node v gets a hidden variable with K states; v's region is its subtree,
     with one partition: v's own variable times each child's subtree, an element-wise
     (``hadamard``) product; each region holds K sums, one per state of its parent's hidden
     variable. The leaves are the data's families with K components (a tree leaf's component k is
     p(x | its parent's state k), as in PyJuice's HCLT).
   - ``chow_liu``: the same region graph with each tree node's variable as its own latent: inner
     nodes get ``indicator`` leaves (K = their number of categories, which must be one number),
     tree leaves their family with
     one component per parent value, so the sums and leaves are the conditional probability
     tables p(x_v | x_parent). One full-batch EM step from any start gives their closed form.

    >>> import numpy as np
    >>> x = np.array([[0, 0, 1], [1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=float)
    >>> learn_tree(x, [2, 2, 2]).parents
    (-1, 0, 0)
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from einc.compiler.pipeline import load_source, region_graph
from einc.io.data import prepare, read_data
from einc.grammar.parser import parse
from einc.errors import DataError, EincError
from einc.ir.program import LeafStatement, PartitionStatement, StructureStatement, VarStatement
from einc.ir.region_graph import Domain, LeafFamily, RegionGraph, Variable

KINDS = ("hclt", "chow_liu")
DEFAULT_BINS = 16
DEFAULT_MI_PSEUDOCOUNT = 1.0
DEFAULT_HIDDEN_STATES = 16
# Elements of one block of pairwise joint counts (variables a, all b, bins, bins) held at once
# (float64, 64 MiB: big enough for an efficient matrix product, small enough for a loaded machine).
_BLOCK_ELEMENTS = 2**23


# ---------------------------------------------------------------------------------------------
# Binning and mutual information


def bin_codes(data: np.ndarray, variables: Sequence[Variable], bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes (N, V) int, −1 where missing; levels (V,) the number of codes of each variable).

    Values of a binary/categorical(n)/count variable with at most ``bins`` levels are their own
    codes; otherwise they go to ``bins`` equal-width bins (of 0..n−1 for categorical, of the
    observed range for counts and reals; a real(d) variable by the mean of its d columns).
    """
    rows = len(data)
    codes = np.full((rows, len(variables)), -1, dtype=np.int64)
    levels = np.zeros(len(variables), dtype=np.int64)
    for index, variable in enumerate(variables):
        columns = data[:, variable.column : variable.column + variable.domain.columns]
        value = columns.mean(1) if columns.shape[1] > 1 else columns[:, 0]
        observed = ~np.isnan(value)
        kind = variable.domain.kind
        if kind in ("binary", "categorical"):
            low, count = 0.0, (2 if kind == "binary" else variable.domain.size)
        elif observed.any():
            low, high = float(value[observed].min()), float(value[observed].max())
            integer = kind == "count" or bool(np.all(value[observed] == np.round(value[observed])))
            count = int(high - low) + 1 if integer and high - low + 1 <= bins else 0
            if count == 0:  # many values: equal-width bins of the observed range
                width = (high - low) / bins or 1.0
                scaled = np.floor((value[observed] - low) / width)
                codes[observed, index] = np.clip(scaled, 0, bins - 1).astype(np.int64)
                levels[index] = bins
                continue
        else:
            low, count = 0.0, 1
        if count <= bins:
            codes[observed, index] = (value[observed] - low).astype(np.int64)
            levels[index] = count
        else:
            codes[observed, index] = np.minimum((value[observed] * bins) // count, bins - 1).astype(np.int64)
            levels[index] = bins
    return codes, levels


def mutual_information(codes: np.ndarray, levels: np.ndarray, pseudocount: float = DEFAULT_MI_PSEUDOCOUNT) -> np.ndarray:
    """(V, V) mutual information in nats of every pair of variables, from pairwise counts.

    For variables a, b with counts C(i, j) over the N_ab rows where both are observed,
    p(i, j) = (C(i, j) + α) / (N_ab + α·n_a·n_b); the marginals are its sums, so the estimate is
    the mutual information of a proper distribution (≥ 0; 0 for empirically independent columns
    at α = 0, the entropy for duplicated ones). The diagonal is each variable's entropy.

    Cost: one float32 matrix product over the rows (exact counts below 2^24 rows) of indicator
    columns for every code except each variable's most frequent one, and only for pairs a ≤ b.
    The dropped column is implied: C(i, ref) = C_a(i | b observed) − Σ_j≠ref C(i, j). On MNIST
    (black pixels ~80% of entries, border pixels never anything else) this leaves a third of the
    one-hot columns, so the product is ~9× cheaper than a full one-hot product, and the float64
    entropy pass runs on blocks small enough to stay in cache-friendly sizes.
    """
    rows, count = codes.shape
    levels = np.asarray(levels, dtype=np.int64)
    out = np.zeros((count, count))
    if count == 0:
        return out
    width = int(levels.max())
    observed = codes >= 0
    row_index, variable_index = np.nonzero(observed)
    flat = variable_index * width + codes[observed]
    frequency = np.bincount(flat, minlength=count * width).reshape(count, width)
    reference = frequency.argmax(1)  # the most frequent code: its column is implied by the others
    # slot of code c of variable v: the reference goes to slot 0 and code 0 to the reference's slot
    # (a relabelling, which leaves every mutual information as it is); slot 0 is never a column
    slot = np.tile(np.arange(width), (count, 1))
    slot[np.arange(count), reference] = 0
    slot[np.arange(count), 0] = reference
    present = np.zeros((count, width), dtype=bool)
    present[np.arange(count)[:, None], slot] = frequency > 0
    present[:, 0] = False
    column = np.full((count, width), -1, dtype=np.int64)  # (variable, slot) -> indicator column
    column[present] = np.arange(int(present.sum()))
    # (N, C) indicators of the non-reference codes that occur
    dtype = np.float32 if rows < 2**24 else np.float64
    # (C, N): transposed, so that a block of columns (numbered in variable order) is a slice
    indicators = np.zeros((int(present.sum()), rows), dtype=dtype)
    entry_column = column[variable_index, slot[variable_index, codes[observed]]]
    hit = entry_column >= 0
    indicators[entry_column[hit], row_index[hit]] = 1.0
    first = np.concatenate([[0], np.cumsum(present.sum(1))])  # variable v's columns: first[v]:first[v+1]
    if observed.all():  # the common case: no extra products for the observed masks
        marginal = None
        both = np.full((count, count), float(rows))
    else:
        mask = observed.astype(dtype)
        marginal = (indicators @ mask).astype(np.float64)  # (C, V): C_a(i | b observed)
        both = (mask.T @ mask).astype(np.float64)  # (V, V): N_ab
    valid = (np.arange(width)[None, :] < levels[:, None]).astype(np.float64)  # (V, W) real codes
    by_slot = _frequency_slots(frequency, slot)
    chunk = max(1, _BLOCK_ELEMENTS // max(1, count * width * width))
    for start in range(0, count, chunk):
        stop = min(count, start + chunk)
        a, b = stop - start, count - start  # pairs (a in [start, stop), b in [start, count))
        mine, theirs = column[start:stop], column[start:]
        # (a·, N) x (N, b·) -> (a·, b·): joint counts of the non-reference codes, padded to slots
        padded = np.zeros((a * width, b * width))
        padded[np.ix_(np.flatnonzero(mine.ravel() >= 0), np.flatnonzero(theirs.ravel() >= 0))] = (
            indicators[first[start] : first[stop]] @ indicators[first[start] :].T)
        joint = padded.reshape(a, width, b, width).transpose(0, 2, 1, 3).copy()  # (a, b, W, W)
        # the implied reference row and column, then the reference-reference cell
        if marginal is None:  # given_b[a, b, s] = C_a(s | b observed), here C_a(s)
            given_b = np.broadcast_to(by_slot[start:stop, None, :], (a, b, width))
            given_a = np.broadcast_to(by_slot[None, start:, :], (a, b, width))
        else:
            given_b = _slot_marginal(marginal, column[start:stop], start, count)  # (a, b, W)
            given_a = _slot_marginal(marginal, column[start:], start, count)[:, :a].transpose(1, 0, 2)
        joint[..., 1:, 0] = given_b[..., 1:] - joint[..., 1:, 1:].sum(3)
        joint[..., 0, 1:] = given_a[..., 1:] - joint[..., 1:, 1:].sum(2)
        pairs = both[start:stop, start:]
        joint[..., 0, 0] = pairs - joint.sum((2, 3))
        if pseudocount:
            joint += pseudocount * (valid[start:stop, None, :, None] * valid[None, start:, None, :])
        total = joint.sum((2, 3))  # N_ab + α·n_a·n_b
        # MI = (Σ x log x − Σ x_a log x_a − Σ x_b log x_b) / T + log T for the counts x = T·p
        information = _x_log_x(joint).sum((2, 3))
        information -= _x_log_x(joint.sum(3)).sum(2) + _x_log_x(joint.sum(2)).sum(2)
        with np.errstate(divide="ignore", invalid="ignore"):
            information = np.where(total > 0, information / np.where(total > 0, total, 1.0) + np.log(
                np.where(total > 0, total, 1.0)), 0.0)
        information = np.maximum(information, 0.0)
        out[start:stop, start:] = information
    # a block computes its own pairs both ways (equal up to rounding): its upper triangle wins,
    # so the matrix is exactly symmetric and Prim's tie-breaking sees one value per pair
    return np.triu(out) + np.triu(out, 1).T


def _frequency_slots(frequency: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """(V, W) code counts of each variable arranged by slot (the reference in slot 0)."""
    out = np.zeros_like(frequency, dtype=np.float64)
    out[np.arange(len(slot))[:, None], slot] = frequency
    return out


def _slot_marginal(marginal: np.ndarray, column: np.ndarray, start: int, count: int) -> np.ndarray:
    """(n, V − start, W): C_v(slot | u observed) for the variables v whose column map is given."""
    out = np.zeros((len(column), count - start, column.shape[1]))
    v, s = np.nonzero(column >= 0)
    out[v, :, s] = marginal[column[v, s], start:]
    return out


def _x_log_x(x: np.ndarray) -> np.ndarray:
    return x * np.log(np.where(x > 0, x, 1.0))


# ---------------------------------------------------------------------------------------------
# The tree


def maximum_spanning_tree(weights: np.ndarray) -> list[tuple[int, int]]:
    """Edges (parent in growth order, child) of a maximum spanning tree of the complete graph.

    Prim's algorithm from variable 0: the next vertex is the one with the heaviest edge into the
    tree, the smallest index among equals; a vertex's best edge changes only for a strictly
    heavier one. So ties are broken the same way on every run and machine.
    """
    count = len(weights)
    if count == 0:
        return []
    in_tree = np.zeros(count, dtype=bool)
    in_tree[0] = True
    best = np.array(weights[0], dtype=np.float64)
    link = np.zeros(count, dtype=np.int64)
    edges = []
    for _ in range(count - 1):
        candidates = np.where(in_tree, -np.inf, best)
        v = int(np.argmax(candidates))  # the first maximum: the smallest index
        edges.append((int(link[v]), v))
        in_tree[v] = True
        heavier = (weights[v] > best) & ~in_tree
        best = np.where(heavier, weights[v], best)
        link = np.where(heavier, v, link)
    return edges


def tree_centre(edges: Sequence[tuple[int, int]], count: int) -> int:
    """The vertex of smallest eccentricity (longest path to any other), smallest index among
    equals: rooted there, the tree (and the circuit's depth) is as shallow as it gets."""
    neighbours = _neighbours(edges, count)
    eccentricity = [max(_distances(neighbours, v)) for v in range(count)]
    return int(np.argmin(eccentricity))


def parents_from_edges(edges: Sequence[tuple[int, int]], count: int, root: int) -> tuple[int, ...]:
    """The parent of every vertex when the tree is rooted at ``root`` (−1 there)."""
    neighbours = _neighbours(edges, count)
    parents = [-2] * count
    parents[root] = -1
    queue = deque([root])
    while queue:
        v = queue.popleft()
        for u in neighbours[v]:
            if parents[u] == -2:
                parents[u] = v
                queue.append(u)
    assert -2 not in parents, "the edges span every vertex"
    return tuple(parents)


def _neighbours(edges: Sequence[tuple[int, int]], count: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(count)]
    for a, b in edges:
        out[a].append(b)
        out[b].append(a)
    for row in out:
        row.sort()
    return out


def _distances(neighbours: list[list[int]], start: int) -> list[int]:
    distance = [-1] * len(neighbours)
    distance[start] = 0
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for u in neighbours[v]:
            if distance[u] < 0:
                distance[u] = distance[v] + 1
                queue.append(u)
    return distance


@dataclass(frozen=True)
class LearnedTree:
    parents: tuple[int, ...]  # parents[v], −1 at the root
    root: int
    depth: int  # edges from the root to the deepest node
    weight: float  # total mutual information of the tree's edges (nats)
    information: np.ndarray  # (V, V) pairwise mutual information


def learn_tree(data: np.ndarray, levels_or_variables: Sequence[int] | Sequence[Variable],
               bins: int = DEFAULT_BINS, pseudocount: float = DEFAULT_MI_PSEUDOCOUNT) -> LearnedTree:
    """The Chow–Liu tree of ``data`` rooted at its centre.

    ``levels_or_variables``: the circuit's variables (then values are binned as ``bin_codes``
    says), or for data that are already codes 0..n−1 with NaN missing, each column's n.
    """
    if levels_or_variables and isinstance(levels_or_variables[0], Variable):
        codes, levels = bin_codes(data, levels_or_variables, bins)  # type: ignore[arg-type]
    else:
        levels = np.asarray(levels_or_variables, dtype=np.int64)
        codes = np.where(np.isnan(data), -1, np.nan_to_num(data)).astype(np.int64)
    information = mutual_information(codes, levels, pseudocount)
    count = len(levels)
    edges = maximum_spanning_tree(information)
    root = tree_centre(edges, count)
    parents = parents_from_edges(edges, count, root)
    depth = max(_distances(_neighbours(edges, count), root))
    weight = float(sum(information[a, b] for a, b in edges))
    return LearnedTree(parents, root, depth, weight, information)


# ---------------------------------------------------------------------------------------------
# The .pc file


@dataclass(frozen=True)
class VariableSpec:
    """The circuit's variables (domains, families, data columns) and the `var`/`leaf` lines."""

    graph: RegionGraph
    var_lines: tuple[str, ...]
    leaf_lines: tuple[str, ...]
    source: str  # where they came from, for the file's header


def binary_variables(columns: int) -> VariableSpec:
    """What learn-structure assumes without --variables: every column a binary variable."""
    if columns < 2:
        raise DataError(f"learn-structure needs at least 2 data columns (a tree over variables); found {columns}")
    var_lines = (f"var x[{columns}] : binary",)
    leaf_lines = ("leaf x ~ bernoulli",)
    return VariableSpec(_variables_graph(var_lines, leaf_lines, "<binary data>"), var_lines, leaf_lines,
                        "every column a binary variable")


def variables_from_file(path: str | Path) -> VariableSpec:
    """The `var` and `leaf` lines of an existing .pc file (its structure, if any, is ignored)."""
    text, filename = load_source(path)
    program = parse(text, filename)
    lines = text.splitlines()

    def source_of(statement: object) -> str:
        span = statement.span  # type: ignore[attr-defined]
        return "\n".join(lines[span.line - 1 : span.end_line]).split("#", 1)[0].rstrip()

    var_lines = tuple(source_of(s) for s in program.statements if isinstance(s, VarStatement))
    leaf_lines = tuple(source_of(s) for s in program.statements if isinstance(s, LeafStatement))
    if not any(isinstance(s, (StructureStatement, PartitionStatement)) for s in program.statements):
        # only var and leaf lines: any structure lets the front end check them, located in the file
        text = text.rstrip("\n") + "\nstructure random_binary_trees(depth = 1, replicas = 1)\n"
    graph = region_graph(text, filename)
    return VariableSpec(graph, var_lines, leaf_lines, f"var and leaf lines of {filename}")


def _variables_graph(var_lines: Sequence[str], leaf_lines: Sequence[str], filename: str) -> RegionGraph:
    text = "\n".join([*var_lines, *leaf_lines, "structure random_binary_trees(depth = 1, replicas = 1)", ""])
    return region_graph(text, filename)


def circuit_source(kind: str, name: str, spec: VariableSpec, tree: LearnedTree, hidden_states: int,
                   header: Sequence[str]) -> str:
    """The .pc text of the learned circuit (verified by the caller)."""
    graph = spec.graph
    children = [0] * len(tree.parents)
    for parent in tree.parents:
        if parent >= 0:
            children[parent] += 1
    root_name = graph.variables[tree.root].name
    lines = [f"# {line}" if line else "#" for line in header]
    lines += ["", f"circuit {name}", "", *spec.var_lines]
    if kind == "hclt":
        lines += list(spec.leaf_lines)
        k = hidden_states
    else:
        inner = [v for v in range(len(children)) if children[v]]
        leaves = [v for v in range(len(children)) if not children[v]]
        sizes = sorted({_categories(graph.variables[v].domain) for v in inner})
        if len(sizes) > 1:
            raise EincError(
                f"chow_liu makes every inner tree node's variable its own latent, so they need one number "
                f"of categories (a circuit has one K); the learned tree's inner nodes have {sizes}; "
                "use `learn-structure hclt`"
            )
        k = sizes[0]
        lines.append("# inner nodes: each variable is its own latent (indicators of its values)")
        lines.append(f"leaf {', '.join(_references(graph.variables, inner))} ~ indicator")
        lines.append("# tree leaves: p(x | parent's value), one component per parent value")
        for family, members in _by_family(graph.variables, leaves):
            lines.append(f"leaf {', '.join(_references(graph.variables, members))} ~ {family}")
    lines += [
        "",
        "product hadamard",
        f"sums {k}",
        f"inputs {k}",
        "",
        f"# the tree: parents[v] is the parent of variable v (declaration order), -1 at the root {root_name}",
        "structure tree(parents = [",
    ]
    per_line = 16
    for start in range(0, len(tree.parents), per_line):
        chunk = tree.parents[start : start + per_line]
        first, last = graph.variables[start].name, graph.variables[start + len(chunk) - 1].name
        lines.append("  " + ", ".join(str(p) for p in chunk) + f",  # {first} .. {last}")
    lines += ["])", ""]
    return "\n".join(lines)


def _categories(domain: Domain) -> int:
    if domain.kind not in ("binary", "categorical"):
        raise EincError(
            f"chow_liu needs variables with finitely many values (binary or categorical) at inner "
            f"tree nodes; found a {domain} variable; use `learn-structure hclt` for it"
        )
    return 2 if domain.kind == "binary" else domain.size


def _by_family(variables: Sequence[Variable], members: Sequence[int]) -> list[tuple[LeafFamily, list[int]]]:
    groups: dict[LeafFamily, list[int]] = {}
    for v in members:
        groups.setdefault(variables[v].family, []).append(v)
    return sorted(groups.items(), key=lambda item: item[1][0])


_ELEMENT = re.compile(r"^(?P<base>[A-Za-z_][A-Za-z0-9_]*)\[(?P<index>[^\]]*)\]$")


def _references(variables: Sequence[Variable], members: Sequence[int]) -> list[str]:
    """Variable references for a `leaf` line: runs along an array's last axis become slices."""
    out: list[str] = []
    run: tuple[str, tuple[int, ...], int, int] | None = None  # base, leading indices, start, stop

    def flush() -> None:
        if run is None:
            return
        base, lead, start, stop = run
        last = f"{start}" if stop == start + 1 else f"{start}:{stop}"
        out.append(f"{base}[{', '.join([*map(str, lead), last])}]")

    for v in sorted(members):
        match = _ELEMENT.match(variables[v].name)
        if match is None:  # a scalar variable
            flush()
            run = None
            out.append(variables[v].name)
            continue
        *lead, last = (int(i) for i in match.group("index").split(","))
        key = (match.group("base"), tuple(lead))
        if run is not None and (run[0], run[1]) == key and run[3] == last:
            run = (run[0], run[1], run[2], last + 1)
            continue
        flush()
        run = (key[0], key[1], last, last + 1)
    flush()
    return out


def learn_structure(kind: str, data_path: str | Path | np.ndarray, output: str | Path, hidden_states: int | None = None,
                    variables: str | Path | None = None, bins: int = DEFAULT_BINS,
                    pseudocount: float = DEFAULT_MI_PSEUDOCOUNT, max_rows: int | None = None,
                    seed: int = 0) -> tuple[str, LearnedTree]:
    """Learn a ``kind`` structure from a data file (or an array) and return (verified .pc text, tree)."""
    if kind not in KINDS:
        raise EincError(f"unknown structure '{kind}'; expected one of {', '.join(KINDS)}")
    if kind == "chow_liu" and hidden_states is not None:
        raise EincError(
            "--sums sets the hidden states of an hclt; a Chow-Liu tree's states are its variables' own "
            "values (K = their number of categories)"
        )
    if hidden_states is not None and hidden_states < 1:
        raise EincError(f"--sums must be at least 1, found {hidden_states}")
    if bins < 2:
        raise EincError(f"--bins must be at least 2, found {bins}")
    if not pseudocount >= 0:
        raise EincError(f"--pseudocount must be at least 0, found {pseudocount}")
    if isinstance(data_path, np.ndarray):
        dataset: Any = np.asarray(data_path, dtype=np.float64)
        data, data_label = dataset, "an array"
    else:  # the Dataset, so that a bad value is placed at its file line (file.csv:12:3)
        dataset = read_data(data_path)
        data, data_label = dataset.values, str(data_path)
    spec = variables_from_file(variables) if variables else binary_variables(data.shape[1])
    try:
        prepare(spec.graph, dataset, None, data_label)  # every value in its variable's domain
    except DataError as error:
        if variables:
            raise
        raise DataError(f"{str(error).removeprefix('error: ')} (without --variables every column is a binary "
                        f"variable: give yours with --variables SPEC.pc, whose var and leaf lines are used, "
                        f"e.g. --variables examples/mnist_categorical.pc)") from None
    rows = len(data)
    if max_rows is not None and rows > max_rows:
        data = data[np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))]
    tree = learn_tree(data, spec.graph.variables, bins, pseudocount)
    k = DEFAULT_HIDDEN_STATES if hidden_states is None else hidden_states
    title = "hidden Chow-Liu tree (HCLT)" if kind == "hclt" else "Chow-Liu tree"
    header = [
        f"A {title} learned by `einc learn-structure {kind}` from {data_label}",
        f"({len(data)} of {rows} rows, {time.strftime('%Y-%m-%d')}); variables: {spec.source}.",
        f"Tree: maximum spanning tree of pairwise mutual information (pseudocount {pseudocount:g}, "
        f"{bins} bins for many-valued variables), total {tree.weight:.4f} nats,",
        f"rooted at its centre {spec.graph.variables[tree.root].name} (depth {tree.depth}). Each node's region is its subtree,",
        "split into the node's own variable times each child's subtree (an element-wise product).",
    ]
    if kind == "hclt":
        header.append(f"Every node has a hidden variable with K = {k} states (`sums`): edit K, or the tree, freely.")
    else:
        header.append("Every inner node's variable is its own latent; one full-batch EM step gives the CPTs.")
    name = _identifier(Path(output).name.split(".")[0])
    text = circuit_source(kind, name, spec, tree, k, header)
    region_graph(text, str(output))  # the written file must verify: raise (located) if not
    return text, tree


def _identifier(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem) or "learned"
    return name if not name[0].isdigit() else f"c_{name}"
