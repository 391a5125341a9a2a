"""`lit-recipes` end to end in subprocesses: W&B offline, config round-trip, export, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY

from lit_recipes.callbacks.gap_monitor import VERDICTS
from lit_recipes.models import create_model
from lit_recipes.tracking import read_offline_run

CONFIG = "lit_recipes/configs/digits_lenet.yaml"
pytestmark = pytest.mark.timeout(900)  # the module's fit subprocess takes minutes on a loaded machine
SMALL = ["--trainer.max_epochs=2", "--trainer.enable_progress_bar=false", "--test_after_fit=true"]


def _no_wandb_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), WANDB_SILENT="true", NETRC=str(tmp_path / "no-netrc"))
    # any attempt to reach the network fails fast instead of hanging
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    return env


RUN_NAME = re.compile(r"^\d{8}-\d{6}-[a-z0-9]{8}$")


def _run_folder(root: Path) -> Path:
    """The one run folder under ``root/digits_lenet``."""
    runs = [p for p in (root / "digits_lenet").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    assert RUN_NAME.match(runs[0].name), runs[0].name
    return runs[0]


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    """One `lit-recipes fit` in a subprocess with no API key, no WANDB_MODE and no network, its runs
    under a `--trainer.default_root_dir` of its own (which W&B must honour too)."""
    from conftest import run_cli

    tmp = tmp_path_factory.mktemp("fit")
    (tmp / "home").mkdir()
    proc = run_cli(
        "fit",
        "--config",
        str(Path(CONFIG).resolve()),
        *SMALL,
        f"--trainer.default_root_dir={tmp}/myruns",
        env=_no_wandb_env(tmp),
        cwd=tmp,
        timeout=600,  # about 1 min on an idle 2-core machine; allow for a loaded one
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc


def test_fit_goes_offline_and_logs_metrics(fitted_run):
    tmp, proc = fitted_run
    out = proc.stdout + proc.stderr
    assert "W&B: no API key found, logging offline" in out and "wandb sync" in out
    assert not (tmp / "runs").exists()  # default_root_dir is honoured by W&B as well
    run_folder = _run_folder(tmp / "myruns")
    offline = sorted((run_folder / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert offline[0].name.endswith("-" + run_folder.name.rsplit("-", 1)[1])  # W&B run id = the folder's id
    assert list(offline[0].glob("run-*.wandb")), "no offline run file"
    run = read_offline_run(offline[0])
    summary = run["summary"]
    assert summary["val/acc"] > 0.5 and summary["test/acc"] > 0.5 and summary["train/loss"] > 0
    epochs = [row["epoch"] for row in run["history"] if "val/acc" in row]
    assert epochs == [0, 1]  # one validation row per epoch
    assert "lenet5_bn" in run["config"]["config"]  # the resolved CLI config is logged as hyperparameters
    assert run["config"]["model"] == "lenet5_bn" and run["config"]["num_classes"] == 10


def test_fit_writes_run_dir_with_config_and_checkpoints(fitted_run):
    tmp, _ = fitted_run
    run = _run_folder(tmp / "myruns")
    assert (run / "config.yaml").is_file()
    info = json.loads((run / "run.json").read_text())
    assert info["recipe"] == "digits_lenet" and info["id"] == run.name.rsplit("-", 1)[1] and info["command"] == "fit"
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(n.startswith("epoch") and "val_acc" in n for n in ckpts)


def test_fit_ends_with_the_summary(fitted_run):
    tmp, proc = fitted_run
    run = _run_folder(tmp / "myruns")
    block = proc.stdout[proc.stdout.index("── lit-recipes fit: summary ──") :]
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in block.splitlines()[1:] if line.strip())
    assert Path(tmp / rows["run folder"]).resolve() == run.resolve()
    best, score = rows["best checkpoint"].split("  (")
    assert Path(tmp / best).resolve().parent == (run / "checkpoints").resolve() and score.startswith("val/acc 0.")
    assert rows["verdict"].split()[0] in VERDICTS  # 2 epochs: which one depends on the range test's LR
    assert "curves.png" in rows["plots"] and "lr_find.png" in rows["plots"]
    assert rows["upload with"] == f"wandb sync {rows['W&B (offline)']}"
    assert (tmp / rows["W&B (offline)"]).is_dir()


def test_export_and_load_without_lightning(fitted_run, tmp_path):
    from conftest import run_cli

    tmp, _ = fitted_run
    ckpt = _run_folder(tmp / "myruns") / "checkpoints" / "last.ckpt"
    proc = run_cli("export", str(ckpt), str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    # the README's two-line snippet
    spec = json.loads((tmp_path / "out" / "model.json").read_text())
    net = create_model(
        spec["model"], num_classes=spec["num_classes"], in_channels=spec["in_channels"], **spec["model_kwargs"]
    )
    net.load_state_dict(torch.load(tmp_path / "out" / "model.pt", weights_only=True))
    assert {k: spec[k] for k in ("model", "num_classes", "in_channels", "model_kwargs")} == {
        "model": "lenet5_bn",
        "num_classes": 10,
        "in_channels": 1,
        "model_kwargs": {},
    }
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert torch.equal(net.state_dict()["classifier.weight"], state["model.classifier.weight"])


def test_export_to_unwritable_directory_fails_cleanly(fitted_run, tmp_path):
    from conftest import run_cli

    if os.geteuid() == 0:
        target = "/proc/lit-recipes-export"  # not writable even for root
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        target = str(locked / "out")
    tmp, _ = fitted_run
    ckpt = _run_folder(tmp / "myruns") / "checkpoints" / "last.ckpt"
    proc = run_cli("export", str(ckpt), target)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "export directory" in proc.stderr and target in proc.stderr


def call_main(args, capsys) -> tuple[int, str, str]:
    """Run ``lit-recipes ARGS`` in this process; returns (exit code, stdout, stderr)."""
    from lit_recipes.commands.main import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse / jsonargparse exit
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_print_config_round_trips(tmp_path, capsys):
    code, first, err = call_main(["fit", "--config", CONFIG, "--print_config"], capsys)
    assert code == 0, err
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(first)
    code, second, err = call_main(["fit", "--config", str(dumped), "--print_config"], capsys)
    assert code == 0, err
    assert yaml.safe_load(first) == yaml.safe_load(second)
    cfg = yaml.safe_load(first)
    assert cfg["model"]["init_args"]["model"] == "lenet5_bn"
    assert cfg["trainer"]["logger"]["class_path"] == "lit_recipes.tracking.WandbLogger"


def test_num_classes_and_channels_are_linked_from_the_data(tmp_path):
    from lit_recipes.commands.fit import build_cli

    cli = build_cli(["--config", CONFIG, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"])
    assert (cli.model.num_classes, cli.model.in_channels) == (10, 1)
    assert cli.model.model.classifier.out_features == 10


def test_progress_bar_refreshes_every_10_steps_by_default(tmp_path):
    """Each refresh reads the logged values back from the device (a GPU sync): the CLI's bar refreshes every
    10 steps; `--progress_bar.refresh_rate` changes it; no bar, or the config's own bar, replaces it."""
    from lightning.pytorch.callbacks import ProgressBar

    from lit_recipes.commands.fit import build_cli

    base = ["--config", CONFIG, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]

    def bars(cli):
        return [c for c in cli.trainer.callbacks if isinstance(c, ProgressBar)]

    cli = build_cli(base)
    assert len(bars(cli)) == 1 and cli.trainer.progress_bar_callback.refresh_rate == 10
    assert build_cli([*base, "--progress_bar.refresh_rate=1"]).trainer.progress_bar_callback.refresh_rate == 1
    assert bars(build_cli([*base, "--trainer.enable_progress_bar=false"])) == []
    own = build_cli(
        [*base, "--trainer.callbacks=lightning.pytorch.callbacks.TQDMProgressBar", "--trainer.callbacks.refresh_rate=3"]
    )
    assert len(bars(own)) == 1 and own.trainer.progress_bar_callback.refresh_rate == 3
    off = build_cli(
        [
            *base,
            "--trainer.callbacks=lightning.pytorch.callbacks.TQDMProgressBar",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert bars(off) == [] and off.trainer.progress_bar_callback is None


@pytest.mark.parametrize(
    "args,message",
    [
        (["fit", "--config", CONFIG, "--model.init_args.lrr=0.1"], "lrr"),
        (["fit", "--config", CONFIG, "--trainer.max_epochz=3"], "max_epochz"),
        (
            ["fit", "--config", CONFIG, "--model.init_args.model=resnet1000", "--trainer.logger=false"],
            "unknown model 'resnet1000'",
        ),
        (
            ["fit", "--config", CONFIG, "--model.init_args.lr=0", "--trainer.logger=false"],
            "lr must be a positive number, got 0",
        ),
        (
            ["fit", "--config", CONFIG, "--ckpt_path=/nonexistent/x.ckpt", "--trainer.logger=false"],
            "checkpoint not found: /nonexistent/x.ckpt",
        ),
        (["fit", "--config", "/nonexistent.yaml"], "/nonexistent.yaml"),
        (["export", "/nonexistent/x.ckpt", "/tmp/out"], "checkpoint not found: /nonexistent/x.ckpt"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tmp_path, capsys, monkeypatch):
    args = [a.replace(CONFIG, str(Path(CONFIG).resolve())) for a in args]
    monkeypatch.chdir(tmp_path)  # nothing of a failed run may land in the repo
    code, _, err = call_main(args, capsys)
    assert code != 0
    assert message in err
    assert "Traceback" not in err


def test_test_on_a_checkpoint_writes_into_its_run(fitted_run, tmp_path, capsys, monkeypatch, recwarn):
    """`test --ckpt_path <run>/checkpoints/...` writes into <run>/test, a second one into <run>/test-2."""
    tmp, _ = fitted_run
    run = tmp_path / "copy" / "digits_lenet" / _run_folder(tmp / "myruns").name
    shutil.copytree(_run_folder(tmp / "myruns"), run, ignore=shutil.ignore_patterns("wandb"))
    config = str(Path(CONFIG).resolve())
    monkeypatch.chdir(tmp_path)
    args = ["test", "--config", config, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]
    args += ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    before = sorted(p.name for p in run.iterdir())
    code, out, err = call_main(args, capsys)
    assert code == 0, err[-3000:]
    # Lightning's ModelCheckpoint warning on loading the checkpoint: noise for a command that saves none
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]
    code, out2, err = call_main(args, capsys)
    assert code == 0, err[-3000:]
    assert sorted(p.name for p in run.iterdir()) == sorted([*before, "test", "test-2"])
    assert (run / "test" / "config.yaml").is_file() and (run / "test-2" / "config.yaml").is_file()
    assert not (tmp_path / "runs").exists()  # no new run folder for a test of an existing run
    assert "── lit-recipes test: summary ──" in out2 and "test-2" in out2 and "test/acc 0." in out2


def test_resume_continues_the_run_folder_wandb_id_and_best_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "tiny.yaml").write_text(TINY.replace("  logger: false\n", ""))  # the default W&B logger
    code, _, err = call_main(["fit", "--config", "tiny.yaml"], capsys)
    assert code == 0, err[-3000:]
    run = _run_folder_of(tmp_path / "runs" / "tiny")
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    resume = ["fit", "--config", "tiny.yaml", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]
    code, out, err = call_main([*resume, "--trainer.max_epochs=3"], capsys)
    assert code == 0, err[-3000:]
    assert [p.name for p in (tmp_path / "runs" / "tiny").iterdir()] == [run.name]  # no new folder
    assert (run / "config.yaml").is_file() and (run / "config-2.yaml").is_file()  # the first one kept
    info = json.loads((run / "run.json").read_text())
    assert len(info["resumes"]) == 1 and info["resumes"][0]["ckpt_path"].endswith("last.ckpt")
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith("-" + info["id"]) for p in offline)  # the same W&B run id
    assert sorted(p.name for p in (run / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert (first["epoch"], last["epoch"]) == (0, 2)
    key = next(k for k in last["callbacks"] if k.startswith("ModelCheckpoint"))
    before, after = first["callbacks"][key], last["callbacks"][key]
    # the best-checkpoint tracking continues: the best of all epochs, not of the resumed ones only
    assert float(after["best_model_score"]) >= float(before["best_model_score"])
    assert Path(after["best_model_path"]).parent == (run / "checkpoints").resolve()
    assert "── lit-recipes fit: summary ──" in out and f"wandb sync {Path('runs') / 'tiny' / run.name}" in out


def _run_folder_of(parent: Path) -> Path:
    runs = [p for p in parent.iterdir() if p.is_dir()]
    assert len(runs) == 1 and RUN_NAME.match(runs[0].name), runs
    return runs[0]


def test_two_runs_never_share_a_folder(tmp_path, capsys, monkeypatch):
    """Two logger-less fits with the same default_root_dir: two run folders, each with its own config."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY)
    args = ["fit", "--config", "tiny.yaml", "--trainer.default_root_dir=shared"]
    for lr in ("0.01", "0.02"):
        code, _, err = call_main([*args, f"--model.init_args.lr={lr}"], capsys)
        assert code == 0, err[-3000:]
    runs = sorted((tmp_path / "shared" / "tiny").iterdir())
    assert len(runs) == 2 and all(RUN_NAME.match(p.name) for p in runs)
    lrs = sorted(yaml.safe_load((p / "config.yaml").read_text())["model"]["init_args"]["lr"] for p in runs)
    assert lrs == [0.01, 0.02]


def test_lr_find_never_writes_over_an_earlier_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY)
    args = ["lr-find", "--config", "tiny.yaml", "--lr_find.num_steps=10", "--trainer.default_root_dir=run"]
    for _ in range(2):
        code, _, err = call_main(args, capsys)
        assert code == 0, err[-3000:]
    assert (tmp_path / "run" / "lr_find" / "lr_find.json").is_file()
    assert (tmp_path / "run" / "lr_find-2" / "lr_find.json").is_file()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["lr_find", "lr_find-2"]  # nothing else
    # --out: an earlier lr-find's folder is replaced in place; another run's folder gets a sub-folder
    code, _, err = call_main([*args, "--out", "run/lr_find"], capsys)
    assert code == 0, err[-3000:]
    assert (
        {"lr_find.json", "lr_find.png"}
        <= {p.name for p in (tmp_path / "run" / "lr_find").iterdir()}
        <= {
            "lr_find.json",
            "lr_find.png",
            "lr_find.yaml",
        }
    )
    assert not (tmp_path / "run" / "lr_find-3").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "diagnosis.json").write_text("{}")
    code, _, err = call_main([*args, "--out", "other"], capsys)
    assert code == 0, err[-3000:]
    assert (tmp_path / "other" / "diagnosis.json").read_text() == "{}"
    assert (tmp_path / "other" / "lr_find" / "lr_find.json").is_file()
