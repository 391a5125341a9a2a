"""No file load can run code, and checkpoint writes are atomic.

* every ``torch.load`` in the sources says ``weights_only=True`` (an AST scan);
* a pickle whose unpickling would run a payload (``os.system("touch MARKER")``), given as a
  checkpoint, an export's ``model.pt`` or planted as a k-fold / search fold's ``last.ckpt``, never
  runs: each command prints one error line naming the file and exits 2;
* every Trainer the CLI builds has :class:`~lit_recipes.checkpoints.AtomicCheckpointIO`: a save is a
  temporary file in the target folder renamed onto the target; a full disk is one line naming the
  folder, and the previous checkpoint stays byte-identical.
"""

from __future__ import annotations

import ast
import errno
import os
import pickle
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import BIN, TINY, one_step_checkpoint
from PIL import Image

from lit_recipes.checkpoints import UnsafeCheckpoint, install_checkpoint_io, load_checkpoint
from lit_recipes.errors import DiskFull

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("lit_recipes", "callbacks", "datamodules", "benchmarks", "tests")


# ------------------------------------------------------------------------------------ the source scan
def _unsafe_loads(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, why)`` of every ``torch.load(...)`` without a literal ``weights_only=True`` and of every
    call passing ``weights_only=False``."""
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        flag = kw.get("weights_only")
        if isinstance(flag, ast.Constant) and flag.value is False:
            bad.append((node.lineno, "weights_only=False"))
        f = node.func
        is_torch_load = (
            isinstance(f, ast.Attribute)
            and f.attr == "load"
            and (
                (isinstance(f.value, ast.Name) and f.value.id == "torch")
                or (isinstance(f.value, ast.Attribute) and f.value.attr == "serialization")
            )
        )
        if is_torch_load and not (isinstance(flag, ast.Constant) and flag.value is True):
            bad.append((node.lineno, "torch.load without weights_only=True"))
    return bad


def test_scan_catches_what_it_must():
    src = (
        "import torch\ntorch.load('a')\ntorch.load('b', weights_only=True)\n"
        "torch.serialization.load('c', weights_only=flag)\ntrainer.fit(m, weights_only=False)\n"
    )
    assert _unsafe_loads(ast.parse(src)) == [
        (2, "torch.load without weights_only=True"),
        (4, "torch.load without weights_only=True"),
        (5, "weights_only=False"),
    ]


def test_every_torch_load_in_the_sources_is_weights_only():
    offenders = []
    files = [p for d in SCANNED for p in (REPO / d).rglob("*.py")]
    assert len(files) > 100  # the scan sees the project
    for path in files:
        for line, why in _unsafe_loads(ast.parse(path.read_text(), filename=str(path))):
            offenders.append(f"{path.relative_to(REPO)}:{line}: {why}")
    assert offenders == []


def test_every_torch_load_in_the_docs_and_notebooks_is_weights_only():
    """The ```python blocks of README.md and docs/ and the notebooks' code cells: what users copy."""
    import json
    import re

    sources = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)):
            sources.append((f"{page.relative_to(REPO)} block {i + 1}", block))
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "code":
                code = "".join(cell["source"])
                code = "\n".join(ln for ln in code.splitlines() if not ln.lstrip().startswith(("%", "!")))
                sources.append((f"{nb.relative_to(REPO)} cell {i}", code))
    assert len(sources) > 20
    offenders = [f"{where}:{line}: {why}" for where, code in sources for line, why in _unsafe_loads(ast.parse(code))]
    assert offenders == []


# ------------------------------------------------------------------------------------ the payload
class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real checkpoint, its export, image files, and the evil variants (checkpoint and model.pt)."""
    from lit_recipes.commands.export import export_model

    tmp = tmp_path_factory.mktemp("safe_load")
    (tmp / "tiny.yaml").write_text(TINY)
    one_step_checkpoint(tmp / "good.ckpt")
    export_model(tmp / "good.ckpt", tmp / "export")

    marker = tmp / "PWNED"
    ckpt = torch.load(tmp / "good.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["note"] = Payload(marker)  # otherwise a valid Lightning checkpoint
    torch.save(ckpt, tmp / "evil.ckpt")
    shutil.copytree(tmp / "export", tmp / "evil_export")
    state = torch.load(tmp / "export" / "model.pt", weights_only=True)
    torch.save({**state, "extra": Payload(marker)}, tmp / "evil_export" / "model.pt")
    torch.save({**state, "extra": Payload(marker)}, tmp / "evil_weights.pt")  # as pretrained weights

    (tmp / "images" / "a").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp / "images" / "a" / f"{i}.png")

    # the control: the payload is live (plain unpickling runs it)
    pickle.loads(pickle.dumps({"x": Payload(tmp / "CONTROL")}))  # noqa: S301 - our own bytes
    assert (tmp / "CONTROL").exists()
    return tmp


def _call(argv: list[str], capsys) -> tuple[int, str, str]:
    from lit_recipes.commands.main import main
    from lit_recipes.entry import main as entry_main

    if "--images" in argv:  # the console script's front door sends `predict --images` to predict_main
        main = entry_main
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("lit-recipes: ")]
    errors = [ln for ln in lines if ln.startswith("lit-recipes: error: ")]
    assert len(errors) == 1 and len(lines) <= 2, err[-3000:]
    assert "Traceback" not in err
    return errors[0]


EXPLOITS = [
    ("fit", ["fit", "--config", "{F}/tiny.yaml", "--ckpt_path={F}/evil.ckpt"], "{F}/evil.ckpt"),
    ("validate", ["validate", "--config", "{F}/tiny.yaml", "--ckpt_path={F}/evil.ckpt"], "{F}/evil.ckpt"),
    ("test", ["test", "--config", "{F}/tiny.yaml", "--ckpt_path={F}/evil.ckpt"], "{F}/evil.ckpt"),
    ("predict-cli", ["predict", "--config", "{F}/tiny.yaml", "--ckpt_path={F}/evil.ckpt"], "{F}/evil.ckpt"),
    ("export", ["export", "{F}/evil.ckpt", "{T}/out"], "{F}/evil.ckpt"),
    (
        "fit-pretrained",
        ["fit", "--config", "{F}/tiny.yaml", "--model.init_args.pretrained={F}/evil_weights.pt"],
        "{F}/evil_weights.pt",
    ),
    (
        "predict-images-ckpt",
        ["predict", "--images", "{F}/images", "--ckpt_path", "{F}/evil.ckpt", "--out", "{T}/p.csv"],
        "{F}/evil.ckpt",
    ),
    (
        "predict-images-model",
        ["predict", "--images", "{F}/images", "--model", "{F}/evil_export", "--out", "{T}/p.csv"],
        "{F}/evil_export/model.pt",
    ),
]


@pytest.mark.parametrize("case", EXPLOITS, ids=[c[0] for c in EXPLOITS])
def test_a_pickle_given_to_a_command_never_runs(case, files, tmp_path, capsys, monkeypatch):
    _, argv, culprit = case
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    argv = [a.replace("{F}", str(files)).replace("{T}", str(tmp_path)) for a in argv]
    code, _, err = _call(argv, capsys)
    assert code == 2, err[-3000:]
    line = _one_error_line(err)
    assert culprit.replace("{F}", str(files)) in line
    assert "safe load refuses" in line
    assert not (files / "PWNED").exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.csv").exists()


def test_load_exported_refuses_a_pickled_model_pt(files):
    from lit_recipes import load_exported
    from lit_recipes.errors import BadInput

    with pytest.raises(BadInput, match="safe load refuses") as info:
        load_exported(files / "evil_export")
    assert str(files / "evil_export" / "model.pt") in str(info.value)
    assert not (files / "PWNED").exists()
    assert load_exported(files / "export").num_classes == 10  # the genuine export loads


def test_torchvision_weights_file_refuses_a_pickle(files):
    from lit_recipes.models import create_model
    from lit_recipes.models.weights import WeightsError

    with pytest.raises(
        WeightsError, match=f"weights file holds Python objects a safe load refuses: {files / 'evil_weights.pt'}"
    ):
        create_model("tv:mobilenet_v3_small", num_classes=10, in_channels=1, weights=str(files / "evil_weights.pt"))
    assert not (files / "PWNED").exists()


def test_lightning_loads_go_through_the_safe_plugin(files, tmp_path):
    """``trainer.fit(ckpt_path=...)`` (what kfold/search resumes and ``ckpt_path="best"`` use) loads with
    weights_only=True through the installed plugin: the pickle is refused with the file named."""
    from lit_recipes.datamodules import DigitsDataModule
    from lit_recipes.module import ClassifierModule

    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path
    )
    install_checkpoint_io(trainer)
    model = ClassifierModule("lenet5_bn", num_classes=10, in_channels=1)
    with pytest.raises(UnsafeCheckpoint, match="evil.ckpt"):
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=32), ckpt_path=files / "evil.ckpt")
    assert not (files / "PWNED").exists()


def test_a_planted_kfold_last_ckpt_never_runs(files, tmp_path, capsys, monkeypatch):
    """An unfinished fold's last.ckpt is read to resume it: a pickle planted there is one error line,
    rc 2, before any fold trains (here the second fold's), and it is neither loaded nor deleted."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = tmp_path / "kf"
    planted = run_dir / "fold_1" / "checkpoints" / "last.ckpt"
    planted.parent.mkdir(parents=True)
    shutil.copyfile(files / "evil.ckpt", planted)
    argv = ["kfold", "--config", str(files / "tiny.yaml"), "--kfold.num_folds=2", f"--kfold.run_dir={run_dir}"]
    code, _, err = _call(argv, capsys)
    assert code == 2, err[-3000:]
    assert str(planted) in _one_error_line(err)
    assert not (files / "PWNED").exists()
    assert planted.read_bytes() == (files / "evil.ckpt").read_bytes()  # evidence kept, not "redone"
    assert not (run_dir / "fold_0").exists()  # checked before the first fold trained


def test_a_planted_search_trial_last_ckpt_never_runs(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    search = tmp_path / "search"
    planted = search / "trials" / "trial_0000" / "fold_0" / "checkpoints" / "last.ckpt"
    planted.parent.mkdir(parents=True)
    shutil.copyfile(files / "evil.ckpt", planted)
    (tmp_path / "space.yaml").write_text("model.init_args.lr: choice(0.01, 0.02)\n")
    argv = ["search", "--config", str(files / "tiny.yaml"), f"--search.space={tmp_path / 'space.yaml'}"]
    argv += ["--search.trials=1", "--search.sampler=grid", "--kfold.num_folds=2", f"--search.dir={search}"]
    code, _, err = _call(argv, capsys)
    assert code == 2, err[-3000:]
    assert str(planted) in _one_error_line(err)
    assert not (files / "PWNED").exists()


# ------------------------------------------------------------------------------------ atomic writes
def _io():
    from lit_recipes.checkpoints import AtomicCheckpointIO

    return AtomicCheckpointIO()


def test_the_cli_trainer_gets_the_atomic_plugin_and_a_users_own_stays(files, tmp_path, monkeypatch):
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    from lit_recipes.checkpoints import AtomicCheckpointIO
    from lit_recipes.commands.fit import build_cli

    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(files / "tiny.yaml"), f"--trainer.default_root_dir={tmp_path}"])
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO

    class Mine(TorchCheckpointIO):
        pass

    trainer = L.Trainer(logger=False, plugins=[Mine()], default_root_dir=tmp_path)
    install_checkpoint_io(trainer)
    assert type(trainer.strategy.checkpoint_io) is Mine


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_save_follows_the_umask_and_leaves_no_temporary_file(tmp_path, mask):
    old = os.umask(mask)
    try:
        _io().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, tmp_path / "c" / "last.ckpt")
    finally:
        os.umask(old)
    path = tmp_path / "c" / "last.ckpt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert torch.equal(_io().load_checkpoint(path)["state_dict"]["w"], torch.ones(3))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_is_one_line_naming_the_folder_and_the_old_checkpoint_stays(tmp_path, monkeypatch, capsys, code):
    """A write that fails with "no space left" (simulated at fsync, where a full disk shows on many
    file systems) is DiskFull naming the folder; last.ckpt is byte-identical and still loads."""
    from lit_recipes.artifacts import save_json
    from lit_recipes.errors import run_command

    folder = tmp_path / "run" / "checkpoints"
    io = _io()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, folder / "last.ckpt")
    before = (folder / "last.ckpt").read_bytes()

    def full(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFull) as info:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, folder / "last.ckpt")
    assert f"disk full writing {folder} " in str(info.value)
    with pytest.raises(DiskFull, match=f"disk full writing {tmp_path / 'run'} "):
        save_json(tmp_path / "run" / "metrics.json", {"a": 1})
    assert (folder / "last.ckpt").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # no temporary file left
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(folder / "last.ckpt")["state_dict"]["w"], torch.ones(3))

    def fails(argv):
        raise info.value

    assert run_command(fails, []) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"lit-recipes: error: disk full writing {folder} (") and len(err) == 2


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 2 MB tmpfs (root only; skipped with one line where mount is not allowed)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip() or proc.returncode}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_real_full_disk_keeps_the_last_good_checkpoint(small_tmpfs, tmp_path):
    """fit for one epoch on a 2 MB tmpfs, fill it, resume for a second epoch: one error line naming a
    folder on the tmpfs, rc 2, and the first epoch's last.ckpt byte-identical (it still resumes)."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    root = small_tmpfs / "runs"
    first = subprocess.run(
        [str(BIN / "lit-recipes"), "fit", "--config", str(cfg), f"--trainer.default_root_dir={root}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    (last,) = root.rglob("last.ckpt")
    good = last.read_bytes()
    free = shutil.disk_usage(small_tmpfs).free
    with open(small_tmpfs / "filler", "wb") as fh:  # leave less than one checkpoint free
        fh.write(b"\0" * max(0, free - len(good) // 4))
    resumed = subprocess.run(
        [str(BIN / "lit-recipes"), "fit", "--config", str(cfg), f"--trainer.default_root_dir={root}",
         "--trainer.max_epochs=2", f"--ckpt_path={last}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    line = _one_error_line(resumed.stderr)
    assert line.startswith(f"lit-recipes: error: disk full writing {small_tmpfs}"), line
    assert last.read_bytes() == good
    assert load_checkpoint(last)["epoch"] == 0
    assert not [p for p in small_tmpfs.rglob("*.tmp")]


def test_logging_errors_from_a_full_disk_are_folded_into_the_error_line(tmp_path, monkeypatch, capsys):
    """Python logging prints a traceback for every record a handler cannot write (W&B's debug.log on a
    full disk: dozens); the boundary's hook counts those instead and the disk-full line says so.
    Other logging errors still print."""
    import io
    import logging

    from lit_recipes import artifacts, errors

    monkeypatch.setattr(errors, "_LOGGING_DISK_ERRORS", [0])
    monkeypatch.setattr(logging.Handler, "handleError", logging.Handler.handleError)  # restored afterwards
    errors.quiet_disk_full_logging()

    class Full(io.StringIO):
        def __init__(self, code):
            super().__init__()
            self.code = code

        def write(self, text):
            raise OSError(self.code, os.strerror(self.code))

    log = logging.getLogger("test_safe_load.full")
    log.propagate = False
    for code in (errno.ENOSPC, errno.EACCES):
        handler = logging.StreamHandler(Full(code))
        log.addHandler(handler)
        log.warning("a record")
        log.removeHandler(handler)
        err = capsys.readouterr().err
        assert ("--- Logging error ---" in err) == (code == errno.EACCES), err
    assert errors._LOGGING_DISK_ERRORS == [1]
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(DiskFull, match="W&B could not write its logs either"):
        artifacts.save_json(tmp_path / "x.json", {})


def test_a_real_full_disk_with_wandb_is_one_line(small_tmpfs, tmp_path):
    """W&B (offline) on a tmpfs with 8 KB left: one error line naming a folder on it, rc 2, none of
    W&B's "Logging error" tracebacks."""
    cfg = tmp_path / "wandb.yaml"
    cfg.write_text(TINY.replace("  logger: false\n", ""))
    free = shutil.disk_usage(small_tmpfs).free
    with open(small_tmpfs / "filler", "wb") as fh:
        fh.write(b"\0" * (free - 8_000))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("WANDB_SILENT", None)
    proc = subprocess.run(
        [str(BIN / "lit-recipes"), "fit", "--config", str(cfg), f"--trainer.default_root_dir={small_tmpfs / 'runs'}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Logging error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    assert line.startswith(f"lit-recipes: error: disk full writing {small_tmpfs}/runs"), line


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
