"""Install layout: callbacks/ and datamodules/ live only under lit_recipes; the Makefile lists its targets."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_bare_top_level_packages_are_not_importable_outside_the_repo(tmp_path):
    code = (
        "import importlib.util as u; print(u.find_spec('callbacks'), u.find_spec('datamodules'), u.find_spec('tests'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "None", "None"]
    assert importlib.util.find_spec("lit_recipes.callbacks") is not None
    assert importlib.util.find_spec("lit_recipes.datamodules") is not None


@pytest.mark.slow
def test_wheel_holds_only_the_lit_recipes_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("lit_recipes-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"lit_recipes"}
    assert "lit_recipes/callbacks/__init__.py" in names and "lit_recipes/datamodules/base.py" in names
    assert "lit_recipes/configs/digits_lenet.yaml" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "lit-recipes = lit_recipes.entry:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_make_help_lists_every_target():
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for target in ["install", "train", "test", "test-full", "lint", "format", "notebooks", "bench", "clean"]:
        assert f" {target} " in out, target


@pytest.mark.slow
def test_sdist_then_wheel_build_ships_the_configs_without_a_setuptools_warning(tmp_path):
    """pip installs from the sdist: building its wheel warned (~35 lines) that ``lit_recipes.configs``
    is an importable package absent from ``packages``; it is listed, and its YAML files still ship."""
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file() and not name.startswith(("benchmarks/", "notebooks/")):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((REPO / name).read_bytes())
    out = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "absent from the `packages` configuration" not in out.stdout + out.stderr
    wheel = next((tmp_path / "dist").glob("lit_recipes-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n for n in names if n.startswith("lit_recipes/configs/")} == {
        f"lit_recipes/configs/{p.name}" for p in (REPO / "lit_recipes" / "configs").glob("*.yaml")
    }
