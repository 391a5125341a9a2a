"""No import circles between the project's modules.

Every ``import`` of every source file of ``lit_recipes/``, ``callbacks/`` (``lit_recipes.callbacks``) and
``datamodules/`` (``lit_recipes.datamodules``) is an edge of a graph, including the imports inside functions
and the ones under ``if TYPE_CHECKING:``: a circle closed at call time or only for the type checker is
still a circle (neither module can be understood, tested or moved without the other). Only the body of
``if __name__ == "__main__":`` is left out: it runs when the file is a script (``python -m``), as a module
named ``__main__`` that the other modules never import.

``from a import b`` is an edge to ``a.b`` when ``a.b`` is a project module, else to ``a``; relative imports
are resolved against the importing module's package. A circle is a strongly connected component of more
than one module; the test names each one with the import lines that close it.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: source folder -> the package it is installed as (pyproject.toml's package-dir)
PACKAGE_DIRS = {
    "lit_recipes": "lit_recipes",
    "callbacks": "lit_recipes.callbacks",
    "datamodules": "lit_recipes.datamodules",
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    parts[0] = PACKAGE_DIRS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path) -> dict[str, Path]:
    """module name -> source file, for every ``*.py`` under the package folders present in ``root``."""
    return {
        module_name(p, root): p
        for folder in PACKAGE_DIRS
        if (root / folder).is_dir()
        for p in sorted((root / folder).rglob("*.py"))
    }


def _is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``"""
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1):
        return False
    sides = [node.test.left, *node.test.comparators]
    return isinstance(node.test.ops[0], ast.Eq) and {
        (type(s).__name__, getattr(s, "id", getattr(s, "value", None))) for s in sides
    } == {("Name", "__name__"), ("Constant", "__main__")}


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, outside the module-level ``if __name__ == "__main__":``."""
    found: list[ast.Import | ast.ImportFrom] = []
    for top in tree.body:
        if _is_main_guard(top):
            continue
        found += [n for n in ast.walk(top) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def import_edges(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the first import of it}."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}

        def add(target: str, line: int, _edges: dict[str, int] = edges, _self: str = name) -> None:
            if target in modules and target != _self:
                _edges.setdefault(target, line)

        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node.lineno)
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in modules else source, node.lineno)
        graph[name] = dict(sorted(edges.items()))
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        # iterative DFS: (node, iterator over its successors)
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(graph.get(succ, {}))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def describe(component: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path], root: Path) -> str:
    members = set(component)
    lines = [" <-> ".join(component)]
    for name in component:
        for target, line in graph[name].items():
            if target in members:
                lines.append(f"    {modules[name].relative_to(root)}:{line} imports {target}")
    return "\n".join(lines)


def test_no_import_circles() -> None:
    modules = project_modules(REPO)
    graph = import_edges(modules)
    found = cycles(graph)
    assert not found, f"{len(found)} import circle(s):\n" + "\n".join(describe(c, graph, modules, REPO) for c in found)


def test_the_scanner_sees_the_tree() -> None:
    graph = import_edges(project_modules(REPO))
    assert "lit_recipes.commands.kfold.runner" in graph and "lit_recipes.callbacks.gap_monitor" in graph
    assert "lit_recipes.datamodules.base" in graph["lit_recipes.datamodules.digits"]
    assert "lit_recipes.commands.kfold.options" in graph["lit_recipes.commands.kfold.runner"]


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_circles_found_through_every_kind_of_import(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "lit_recipes/__init__.py": "",
            "lit_recipes/a.py": "from lit_recipes import b\n",  # `from pkg import submodule`
            "lit_recipes/b.py": "def f():\n    from .c import X\n",  # relative, inside a function
            "lit_recipes/c.py": "import lit_recipes.a\nX = 1\n",  # plain import: a -> b -> c -> a
            "lit_recipes/d.py": "from lit_recipes.e import Y\nZ = 1\n",
            "lit_recipes/e.py": "from typing import TYPE_CHECKING\nY = 1\nif TYPE_CHECKING:\n    from .d import Z\n",
            "callbacks/__init__.py": "",
            "callbacks/p.py": "from ..datamodules.q import W\n",  # relative across the package-dir map
            "datamodules/__init__.py": "",
            "datamodules/q.py": "from lit_recipes.callbacks import p\nW = 1\n",
        },
    )
    modules = project_modules(tmp_path)
    graph = import_edges(modules)
    assert graph["lit_recipes.a"] == {"lit_recipes.b": 1}
    assert graph["lit_recipes.b"] == {"lit_recipes.c": 2}
    assert graph["lit_recipes.e"] == {"lit_recipes.d": 4}  # under TYPE_CHECKING: counted too
    assert cycles(graph) == [
        ["lit_recipes.a", "lit_recipes.b", "lit_recipes.c"],
        ["lit_recipes.callbacks.p", "lit_recipes.datamodules.q"],
        ["lit_recipes.d", "lit_recipes.e"],
    ]
    assert describe(cycles(graph)[1], graph, modules, tmp_path) == (
        "lit_recipes.callbacks.p <-> lit_recipes.datamodules.q\n"
        "    callbacks/p.py:1 imports lit_recipes.datamodules.q\n"
        "    datamodules/q.py:1 imports lit_recipes.callbacks.p"
    )


def test_a_tree_without_circles_passes(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "lit_recipes/__init__.py": "",
            "lit_recipes/mid.py": "from .low import SHARED\n",
            "lit_recipes/top.py": "from lit_recipes.mid import SHARED\nfrom lit_recipes import low\n",
            # the script entry of low.py imports top: not an edge (it runs as __main__, not as lit_recipes.low)
            "lit_recipes/low.py": 'SHARED = 1\nif __name__ == "__main__":\n    from lit_recipes.top import SHARED\n',
        },
    )
    graph = import_edges(project_modules(tmp_path))
    assert graph["lit_recipes.low"] == {} and graph["lit_recipes.top"] == {"lit_recipes.low": 2, "lit_recipes.mid": 1}
    assert cycles(graph) == []
