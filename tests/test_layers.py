"""The import direction of the layers (docs/architecture.md): no import points up a layer.

    models  ->  module (+ schedules, metrics), datamodules  ->  callbacks  ->  commands

Every ``import`` statement of every source file counts, including the ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: source folder -> the package it is installed as (pyproject.toml's package-dir)
PACKAGE_DIRS = {
    "lit_recipes": "lit_recipes",
    "callbacks": "lit_recipes.callbacks",
    "datamodules": "lit_recipes.datamodules",
}
LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric")
#: the modules that implement `lit-recipes` commands (top layer)
COMMANDS = (
    "lit_recipes.commands",
    "lit_recipes.entry",
)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def module_name(path: Path, root: Path = REPO) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    parts[0] = PACKAGE_DIRS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    return sorted(p for folder in PACKAGE_DIRS for p in (REPO / folder).rglob("*.py"))


def imports_of(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file; ``from a import b`` yields ``a.b`` too."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def rule_violations(module: str, imported: str) -> list[str]:
    """The layer rules one import breaks (empty: allowed)."""
    broken = []
    if _under(module, ("lit_recipes.models",)):
        if _under(imported, LIGHTNING):
            broken.append("models/ must not import Lightning")
        elif _under(imported, ("lit_recipes",)) and not _under(imported, ("lit_recipes.models",)):
            if imported != "lit_recipes":
                broken.append("models/ must import nothing of lit_recipes above it")
    if _under(module, ("lit_recipes.datamodules",)) and _under(imported, ("lit_recipes.models", "lit_recipes.module")):
        broken.append("datamodules/ must not import the models or the module")
    if _under(module, ("lit_recipes.callbacks", "lit_recipes.datamodules")) and _under(imported, COMMANDS):
        broken.append("callbacks/ and datamodules/ must not import a command module")
    if module in (
        "lit_recipes.module",
        "lit_recipes.optimization",
        "lit_recipes.schedules",
        "lit_recipes.metrics",
    ) and _under(imported, ("lit_recipes.callbacks",) + COMMANDS):
        broken.append(f"{module} must not import callbacks or commands")
    return broken


def all_violations() -> list[str]:
    out = []
    for path in source_files():
        module = module_name(path)
        for line, imported in imports_of(path):
            for rule in rule_violations(module, imported):
                out.append(f"{path.relative_to(REPO)}:{line} imports {imported}: {rule}")
    return sorted(set(out))


def test_no_import_points_up_a_layer() -> None:
    violations = all_violations()
    assert not violations, "imports that point up a layer:\n  " + "\n  ".join(violations)


def test_the_scanner_sees_the_tree() -> None:
    names = {module_name(p) for p in source_files()}
    assert {"lit_recipes.module", "lit_recipes.models", "lit_recipes.callbacks", "lit_recipes.datamodules"} <= names
    assert any(n.startswith("lit_recipes.callbacks.") for n in names)


@pytest.mark.parametrize(
    ("module", "imported", "expected"),
    [
        ("lit_recipes.models.vgg", "lightning.pytorch", "models/ must not import Lightning"),
        ("lit_recipes.models.vgg", "lit_recipes.module", "models/ must import nothing of lit_recipes above it"),
        ("lit_recipes.models.vgg", "lit_recipes.models.registry", None),
        ("lit_recipes.models.vgg", "torch.nn", None),
        ("lit_recipes.datamodules.cifar", "lit_recipes.models.registry", "datamodules/ must not import the models"),
        ("lit_recipes.datamodules.cifar", "lit_recipes.commands.kfold", "must not import a command module"),
        ("lit_recipes.callbacks.gap_monitor", "lit_recipes.commands.fit", "must not import a command module"),
        ("lit_recipes.callbacks.gap_monitor", "lit_recipes.commands.kfold.runner", "must not import a command module"),
        ("lit_recipes.callbacks.gap_monitor", "lit_recipes.module", None),
        ("lit_recipes.callbacks.gap_monitor", "lit_recipes.datamodules.base", None),
        ("lit_recipes.module", "lit_recipes.callbacks.lr_finder", "must not import callbacks or commands"),
        ("lit_recipes.commands.kfold", "lit_recipes.callbacks", None),
        ("lit_recipes.commands.fit", "lit_recipes.commands.kfold", None),
    ],
)
def test_rules_on_constructed_imports(module: str, imported: str, expected: str | None) -> None:
    broken = rule_violations(module, imported)
    if expected is None:
        assert broken == []
    else:
        assert len(broken) == 1 and expected in broken[0]


def test_relative_and_function_level_imports_are_seen(tmp_path: Path) -> None:
    pkg = tmp_path / "callbacks"
    pkg.mkdir()
    (pkg / "x.py").write_text(
        "from .base import A\nfrom ..commands.kfold import run\n\ndef f():\n    import lightning\n"
    )
    got = imports_of(pkg / "x.py", root=tmp_path)
    assert (1, "lit_recipes.callbacks.base") in got and (1, "lit_recipes.callbacks.base.A") in got
    assert (2, "lit_recipes.commands.kfold") in got and (5, "lightning") in got
    assert rule_violations("lit_recipes.callbacks.x", "lit_recipes.commands.kfold")
