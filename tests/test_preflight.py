"""Pre-flight checks and culprits: what can be checked before the first step is, and each fault is one
line naming its file, key or value, exit 2, with nothing printed before it and no run folder left.

`CASES` has the shape of `tests/test_bad_input.py`'s table: each row runs `lit-recipes ARGS` in this
process from an empty folder ({F} = a folder of prepared inputs, {CONFIG} = the digits recipe).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

from lit_recipes.datamodules import DigitsDataModule

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "lit_recipes" / "configs" / "digits_lenet.yaml")


class NoTestDigits(DigitsDataModule):
    """Digits without a test split (as an image folder without test_fraction)."""

    def load_sources(self):
        pool, val, _, names = super().load_sources()
        return pool, val, None, names


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("preflight")
    (tmp / "tiny.yaml").write_text(TINY)
    (tmp / "empty.yaml").write_text("")
    (tmp / "comments.yaml").write_text("# only a comment\n")
    (tmp / "list.yaml").write_text("- trainer\n- model\n")
    (tmp / "space_bs0.yaml").write_text("data.init_args.batch_size: choice(32, 0)\n")
    (tmp / "space_drop.yaml").write_text("model.init_args.dropout: uniform(0, 0.5)\n")
    (tmp / "space_lr.yaml").write_text("model.init_args.lr: log_uniform(0.01, 0)\n")
    kf = tmp / "kfold_run"  # a k-fold run whose fold 0 result.json was cut short
    (kf / "fold_0").mkdir(parents=True)
    (kf / "kfold.json").write_text(json.dumps({"num_folds": 2, "fingerprint": "abc"}))
    (kf / "fold_0" / "result.json").write_text('{"fold": 0, "metrics": {"val/acc": 0.9')
    (kf / "fold_1").mkdir()
    (kf / "fold_1" / "result.json").write_text(json.dumps({"fold": 1, "fingerprint": "abc"}))
    (tmp / "study").mkdir()
    (tmp / "study" / "study.db").write_text("this is not an SQLite file\n")
    (tmp / "study_damaged").mkdir()
    (tmp / "study_damaged" / "study.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    return tmp


def _args(args: list[str], files: Path) -> list[str]:
    return [a.replace("{F}", str(files)).replace("{CONFIG}", CONFIG) for a in args]


TINY_ARGS = ["fit", "--config", "{F}/tiny.yaml"]
SEARCH = ["search", "--config", "{F}/tiny.yaml", "--search.trials=1", "--kfold.num_folds=2"]

# (id, argv, text the error line must contain)
CASES = [
    # pre-flight: fails before training, not after the fit
    (
        "test-after-fit-without-test-split",
        [*TINY_ARGS, "--data=test_preflight.NoTestDigits", "--test_after_fit=true"],
        "test_after_fit is true but NoTestDigits has no test split",
    ),
    (
        "batch-size-larger-than-the-data",
        [*TINY_ARGS, "--data.init_args.batch_size=5000"],
        "data.init_args.batch_size 5000 is larger than the training split (1293 samples)",
    ),
    (
        "search-space-batch-size-0",
        [*SEARCH, "--search.space={F}/space_bs0.yaml", "--search.dir={F}/never"],
        "search space: data.init_args.batch_size=0 is refused: batch_size must be >= 1, got 0",
    ),
    (
        "callback-setup-fails",
        ["fit", "--config", "{CONFIG}", "--trainer.limit_val_batches=0"],
        "GapMonitor needs a validation loop to compare with, but this run has none (limit_val_batches=0)",
    ),
    # culprits: the file
    ("empty-config", ["fit", "--config", "{F}/empty.yaml"], "config file is empty ({F}/empty.yaml)"),
    ("comments-only-config", ["fit", "--config", "{F}/comments.yaml"], "config file is empty ({F}/comments.yaml)"),
    ("list-config", ["fit", "--config", "{F}/list.yaml"], "not a list ({F}/list.yaml)"),
    ("kfold-report-broken-result", ["kfold-report", "{F}/kfold_run"], "{F}/kfold_run/fold_0/result.json"),
    (
        "search-study-not-sqlite",
        [*SEARCH, "--search.space={F}/space_drop.yaml", "--search.dir={F}/study"],
        "search.storage is not a readable Optuna database (file is not a database): {F}/study/study.db",
    ),
    (
        "search-study-damaged",
        [*SEARCH, "--search.space={F}/space_drop.yaml", "--search.dir={F}/study_damaged"],
        "search.storage is not a readable Optuna database",
    ),
    # culprits: the key (no Namespace dump, no "Union subtypes")
    ("batch-size-abc", [*TINY_ARGS, "--data.init_args.batch_size=abc"], "data.init_args.batch_size: expected int"),
    (
        "optimizer-init-args-without-class",
        [*TINY_ARGS, "--model.init_args.optimizer.init_args.lr=abc"],
        "model.init_args.optimizer: Dict must include a class_path and optionally init_args, but got lr='abc'",
    ),
    (
        "scheduler-init-arg-type",
        [
            *TINY_ARGS,
            "--model.init_args.lr_scheduler={class_path: lit_recipes.schedules.OneCycle, init_args: {div: abc}}",
        ],
        "model.init_args.lr_scheduler.init_args.div: expected float",
    ),
    (
        "callback-init-arg-type",
        [
            *TINY_ARGS,
            "--trainer.callbacks=[{class_path: lit_recipes.callbacks.GapMonitor, init_args: {subset_size: x}}]",
        ],
        "trainer.callbacks.init_args.subset_size: expected int",
    ),
    (
        "list-for-a-mapping",
        [*TINY_ARGS, "--data.init_args=[1, 2]"],
        "data: expected a mapping (key: value), got a list",
    ),
    ("string-for-a-mapping", [*TINY_ARGS, "--model.init_args=5"], "model: expected a mapping (key: value), got a str"),
    (
        "list-for-a-logger",
        [*TINY_ARGS, "--trainer.logger=[1]"],
        "trainer.logger: expected a class path or a mapping with class_path",
    ),
    ("config-for-the-trainer", [*TINY_ARGS, "--trainer=[1]"], "trainer: Unable to load config"),
]


def _call(argv: list[str], capfd) -> tuple[int, str, str]:
    from lit_recipes.commands.main import main

    capfd.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capfd.readouterr()
    return code, out, err


def _assert_first_and_only_error(out: str, err: str, expected: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("lit-recipes: error: "), (out + err)[-3000:]  # nothing before it
    assert expected in lines[0], lines[0]
    assert len(lines) <= 2 and all(ln.startswith("lit-recipes: hint: ") for ln in lines[1:]), err[-3000:]
    assert out == "", out[-3000:]
    for noise in ("Traceback", "Namespace(", "NestedArg(", "Union subtypes", "usage:", "Seed set"):
        assert noise not in err


def _files(folder: Path) -> dict[Path, int]:
    # the search's lock file (.study.lock, empty, flock'ed while the study opens) aside
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.suffix != ".lock"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_preflight_is_one_line(case, files, tmp_path, capfd, monkeypatch):
    _, argv, expected = case
    monkeypatch.chdir(tmp_path)  # default_root_dir "runs" lands here: no run folder may be left behind
    monkeypatch.setenv("WANDB_MODE", "offline")  # the W&B line must not come before the error either
    monkeypatch.setenv("HOME", str(tmp_path.parent / f"{tmp_path.name}-home"))  # no ~/.netrc; W&B's logs there
    before = _files(files)
    code, out, err = _call(_args(argv, files), capfd)
    assert code == 2, (out + err)[-3000:]
    _assert_first_and_only_error(out, err, expected.replace("{F}", str(files)))
    assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))
    assert _files(files) == before  # nothing written over, nothing created
    assert not (files / "never").exists()


def test_kfold_rerun_names_a_damaged_result_before_training(files, tmp_path, capfd, monkeypatch):
    """The rerun of `kfold` checks the finished folds' result.json before it trains the others."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    argv = ["kfold", "--config", str(files / "tiny.yaml"), "--kfold.num_folds=3", "--kfold.name=kf"]
    code, out, err = _call(argv, capfd)  # a first run to get the folder and its manifest
    run = next(tmp_path.rglob("kfold.json")).parent
    assert code == 0, err[-3000:]
    result = run / "fold_0" / "result.json"
    result.write_text(result.read_text()[:20])
    (run / "fold_2" / "result.json").unlink()  # fold 2 to do again
    calls = []
    monkeypatch.setattr(
        "lit_recipes.commands.kfold.runner._run_fold", lambda plan, i: calls.append(i)
    )  # nothing may train before the check
    code, out, err = _call(argv, capfd)
    assert code == 2, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("lit-recipes: error:")]
    assert len(errors) == 1 and "kf/fold_0/result.json" in errors[0] and "not valid JSON" in errors[0], err
    assert calls == []


def test_tv_weights_that_need_a_download_are_one_line(files, tmp_path, capfd, monkeypatch):
    """No network (torchvision's download raises what urllib raises offline): one line naming the
    setting and the URL, nothing before it, no run folder."""
    import urllib.error

    import torchvision

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty cache
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    argv = [
        *_args(TINY_ARGS, files),
        "--model.init_args.model=tv:resnet18",
        "--model.init_args.model_kwargs={weights: DEFAULT}",
    ]
    code, out, err = _call(argv, capfd)
    assert code == 2, err[-3000:]
    expected = "tv:resnet18 weights 'DEFAULT' (model_kwargs.weights) need a download from https://"
    _assert_first_and_only_error(out, err, expected)
    assert "Name or service not known" in err
    assert not (tmp_path / "runs").exists()


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(cwd / "home"), "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)
    env.pop("WANDB_API_KEY", None)
    code = "import sys; from lit_recipes.commands.main import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_notices_wait_for_the_checks_on_the_real_console(files, tmp_path):
    """On the console (a real process, W&B offline by itself): a failed check prints only its line;
    a run that passes prints "Seed set to 42" and the W&B line as before."""
    (tmp_path / "home").mkdir()
    bad = _cli(["fit", "--config", str(files / "tiny.yaml"), "--data.init_args.batch_size=5000",
                "--trainer.logger={class_path: lit_recipes.tracking.WandbLogger}"], tmp_path)  # fmt: skip
    assert bad.returncode == 2, bad.stderr[-3000:]
    _assert_first_and_only_error(bad.stdout, bad.stderr, "data.init_args.batch_size 5000")
    assert not (tmp_path / "runs").exists()
    good = _cli(["fit", "--config", str(files / "tiny.yaml"),
                 "--trainer.logger={class_path: lit_recipes.tracking.WandbLogger}"], tmp_path)  # fmt: skip
    assert good.returncode == 0, good.stderr[-3000:]
    assert "Seed set to 42" in good.stderr and "W&B: no API key found, logging offline" in good.stderr
    assert good.stderr.index("Seed set to 42") < good.stderr.index("`Trainer.fit` stopped")
