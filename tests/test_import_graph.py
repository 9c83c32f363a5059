"""The einc package's import graph has no cycles, and no module takes another's private names.

Read from the source with ``ast``: every ``import`` and ``from ... import`` of an einc module,
module level or inside a function (a lazy import still ties two modules together), except those
under ``if TYPE_CHECKING:``. A package's ``__init__`` counts as a module of its own. The two
compatibility modules that re-export a wing's module under its documented path
(``einc/distributed.py``, ``einc/data.py``) are edges like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import einc

ROOT = Path(__file__).resolve().parent.parent
# the package's folders (pyproject's package-dir: einc.ir is ir/, ...)
FOLDERS = {"einc": ROOT / "einc", "einc.grammar": ROOT / "grammar", "einc.ir": ROOT / "ir",
           "einc.compiler": ROOT / "compiler", "einc.backends": ROOT / "backends"}


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import outside TYPE_CHECKING blocks."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    private: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for target, names in _imports(tree, name, path.name == "__init__.py"):
            for imported in [f"{target}.{n}" for n in names] + [target]:
                if imported in modules and imported != name:
                    edges[name].add(imported)
                    break
            if target in modules:
                private += [f"{name} takes {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    return edges, private


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(edges[node]):
            if state.get(child) == 1:
                return stack[stack.index(child):] + [child]
            if child not in state:
                found = visit(child)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_is_where_the_graph_is_read():
    assert Path(einc.__file__).resolve().parent == FOLDERS["einc"]


def test_no_import_cycles():
    edges, _ = _graph()
    assert sum(len(e) for e in edges.values()) > 100  # the graph was read
    cycle = _cycle(edges)
    assert cycle is None, " -> ".join(cycle or [])


def test_no_private_names_taken_across_modules():
    _, private = _graph()
    assert private == []


def test_the_stages_do_not_import_the_facade():
    """ir imports nothing of einc; grammar and compiler only stages below them; backends no
    facade module (einc.errors, the leaf module of run-time errors, is for everyone)."""
    edges, _ = _graph()
    allowed = {"einc.ir": ("einc.ir",), "einc.grammar": ("einc.ir", "einc.grammar", "einc.errors"),
               "einc.compiler": ("einc.ir", "einc.grammar", "einc.compiler", "einc.errors"),
               "einc.backends": ("einc.ir", "einc.backends", "einc.errors")}
    for module, targets in edges.items():
        stage = next((s for s in allowed if module == s or module.startswith(s + ".")), None)
        if stage is None:
            continue
        wrong = [t for t in targets if not any(t == a or t.startswith(a + ".") for a in allowed[stage])]
        assert wrong == [], f"{module} imports {wrong}"
