"""Every code block of README.md and docs/**/*.md runs, verbatim.

How a page is run (documented for writers in docs/quickstart.md, "How the examples are tested"):

* One temporary folder per page; its blocks run there in page order, so a later block can use the
  files an earlier one wrote. The folder holds ``lit_recipes/configs/`` (the shipped configs, linked)
  and ``my.yaml`` (a copy of ``lit_recipes/configs/digits_lenet.yaml``: "your config" in the examples).
* ```python blocks: each in a fresh ``python`` process (the repo's interpreter), cwd = that folder.
* ```bash / ```sh blocks: ``bash -euo pipefail`` with the repo's ``.venv/bin`` on ``PATH``.
  ``LIT_RECIPES_DOCS_FAST=1`` is set, and ``lit-recipes`` / ``torchrun`` resolve to shims that append
  :data:`FAST_ARGS` (one epoch of two batches, no logger) to ``fit``, ``validate``, ``test`` and
  ``kfold``; ``make train`` runs the real target with those arguments (``TRAIN_ARGS``); the targets
  that run the suites (``make test``, ``test-full``, ``notebooks``, ``bench``, ``bench-gpu``, ``docs``)
  only print that CI runs them (this test is part of ``make test``).
* ```yaml blocks are parsed; one whose first line is a comment naming a file (``# my.yaml ...``) is
  also written to that file, for the blocks after it.
* Any other language (``text``, ``console``, ``ini``, none) is not run. A block preceded by
  ``<!-- docs-test: skip REASON -->`` is not run either; the reason is required.
* A block that stops on ``LIT_RECIPES_DATA`` not being set skips the page, unless
  ``LIT_RECIPES_REQUIRE_DATA=1`` (CI), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
RUN_LANGS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash", "yaml": "yaml"}
FAST_ARGS = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.logger=false",
]
FAST_SUBCOMMANDS = ("fit", "validate", "test", "kfold")
SUITE_TARGETS = ("test", "test-full", "notebooks", "bench", "bench-gpu", "docs", "lint", "format", "install", "clean")
BLOCK_TIMEOUT_S = 600  # generous: CI machines are shared; a hung block still fails
SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip\b(.*?)-->")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
FILE_COMMENT = re.compile(r"^#\s*(?P<name>[\w./-]+\.ya?ml)\b")
DATA_MISSING = "LIT_RECIPES_DATA is not set"


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str  # the info string's first word, lower case ("" when none)
    code: str
    skip_reason: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def doc_pages() -> list[Path]:
    """README.md and every Markdown page under docs/ (new pages are picked up by themselves)."""
    pages = [REPO / "README.md"] + sorted((REPO / "docs").glob("**/*.md"))
    return [p for p in pages if p.is_file()]


def parse_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one Markdown file, in order (indented fences, e.g. in lists, included)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(fence)
            and lines[i].strip().strip(fence[0]) == ""
            and lines[i].startswith(indent)
        ):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1  # the closing fence
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = SKIP_MARK.search(prev)
        lang = info.split()[0].lower().lstrip("{.").rstrip("}") if info else ""
        blocks.append(Block(path, start + 1, lang, "\n".join(body) + "\n", mark.group(1).strip() if mark else None))
    return blocks


def runnable(block: Block) -> bool:
    return block.lang in RUN_LANGS and block.skip_reason is None


SHIM = '''#!{python}
"""docs-test shim: {name} with LIT_RECIPES_DOCS_FAST=1 appends tiny-run overrides to fit/validate/test/kfold."""
import os, sys
FAST = {fast!r}
args = sys.argv[1:]
real = {real!r}
if os.environ.get("LIT_RECIPES_DOCS_FAST") == "1" and not {{"-h", "--help"}} & set(args):
    if {name!r} == "torchrun":
        # torchrun [opts] -m lit_recipes.commands.fit|entry SUBCOMMAND ... | torchrun [opts] path/to/lit-recipes SUBCOMMAND ...
        for i, a in enumerate(args):
            if a in ("lit_recipes.commands.fit", "lit_recipes.entry") or os.path.basename(a) == "lit-recipes":
                if i + 1 < len(args) and args[i + 1] in {subs!r}:
                    args = args + FAST
                break
    elif args and args[0] in {subs!r}:
        args = args + FAST
os.execv(real, [real] + args)
'''

BASH_PRELUDE = """\
export PATH="{shims}:{venv}:$PATH"
make() {{
    case "${{1:-}}" in
        train) command make -C "{repo}" -o .venv/.installed train \\
                 TRAIN_ARGS="{fast} --trainer.default_root_dir=$PWD/runs" ;;
        {suite}) echo "docs-test: 'make $1' is run by CI itself, not from the docs" ;;
        *) command make -C "{repo}" "$@" ;;
    esac
}}
"""


def _page_folder(tmp: Path) -> tuple[Path, dict[str, str], str]:
    """The page's working folder, the environment and the bash prelude."""
    work = tmp / "work"
    (work / "lit_recipes").mkdir(parents=True)
    (work / "lit_recipes" / "configs").symlink_to(REPO / "lit_recipes" / "configs")
    shutil.copy(REPO / "lit_recipes" / "configs" / "digits_lenet.yaml", work / "my.yaml")
    shims = tmp / "shims"
    shims.mkdir()
    for name in ("lit-recipes", "torchrun"):
        real = VENV_BIN / name
        shim = shims / name
        shim.write_text(
            SHIM.format(python=sys.executable, name=name, fast=FAST_ARGS, real=str(real), subs=FAST_SUBCOMMANDS)
        )
        shim.chmod(0o755)
    env = dict(os.environ)
    env.update(
        LIT_RECIPES_DOCS_FAST="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
        NO_ALBUMENTATIONS_UPDATE="1",
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
    )
    env.pop("PYTHONPATH", None)
    prelude = BASH_PRELUDE.format(
        shims=shims, venv=VENV_BIN, repo=REPO, fast=" ".join(FAST_ARGS), suite="|".join(SUITE_TARGETS)
    )
    return work, env, prelude


def _run_block(block: Block, work: Path, env: dict[str, str], prelude: str, scripts: Path) -> None:
    if block.lang == "yaml":
        try:
            yaml.safe_load(block.code)
        except yaml.YAMLError as err:
            pytest.fail(f"{block.where}: invalid YAML: {err}", pytrace=False)
        m = FILE_COMMENT.match(block.code.lstrip())
        if m:
            target = work / m["name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
        return
    kind = RUN_LANGS[block.lang]
    if kind == "python":
        script = scripts / f"block_{block.line}.py"
        script.write_text(block.code)
        cmd = [sys.executable, str(script)]
    else:
        script = scripts / f"block_{block.line}.sh"
        script.write_text(prelude + "set -euo pipefail\n" + block.code)
        cmd = ["bash", str(script)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.where}: the {block.lang} block ran over {BLOCK_TIMEOUT_S} s", pytrace=False)
    sys.stdout.write(f"{block.where}: {block.lang} block, {time.perf_counter() - started:.1f} s\n")  # -s shows it
    if proc.returncode != 0:
        output = proc.stdout[-3000:] + proc.stderr[-3000:]
        if DATA_MISSING in output and os.environ.get("LIT_RECIPES_REQUIRE_DATA", "").strip() in ("", "0"):
            pytest.skip(f"{block.where}: needs the local CIFAR-10 JPEGs (set LIT_RECIPES_DATA)")
        pytest.fail(
            f"{block.where}: the {block.lang} block exited {proc.returncode}\n--- block ---\n{block.code}"
            f"--- output (tail) ---\n{output}",
            pytrace=False,
        )


PAGES = [p for p in doc_pages() if any(runnable(b) for b in parse_blocks(p))]


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_page_code_blocks_run(page: Path, tmp_path: Path) -> None:
    work, env, prelude = _page_folder(tmp_path)
    scripts = tmp_path / "blocks"
    scripts.mkdir()
    for block in parse_blocks(page):
        if runnable(block):
            _run_block(block, work, env, prelude, scripts)


def test_every_skip_marker_gives_a_reason() -> None:
    missing = [b.where for p in doc_pages() for b in parse_blocks(p) if b.skip_reason == ""]
    assert not missing, "docs-test skip markers without a reason: " + ", ".join(missing)


def test_parser_reads_fences_languages_markers_and_file_comments(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\nprint(1)\n```\n\n<!-- docs-test: skip needs a GPU -->\n```bash\nnvidia-smi\n```\n\n"
        "1. a list item\n\n    ```yaml\n    # my.yaml\n    a: 1\n    ```\n\n```\nplain\n```\n````text\n```\n````\n"
    )
    blocks = parse_blocks(page)
    assert [(b.lang, b.line) for b in blocks] == [("python", 3), ("bash", 8), ("yaml", 14), ("", 19), ("text", 22)]
    assert blocks[0].code == "print(1)\n"
    assert blocks[1].skip_reason == "needs a GPU" and not runnable(blocks[1])
    assert blocks[2].code == "# my.yaml\na: 1\n" and FILE_COMMENT.match(blocks[2].code)["name"] == "my.yaml"
    assert blocks[4].code == "```\n"
    assert [runnable(b) for b in blocks] == [True, False, True, False, False]
