"""`lit-recipes` end to end in subprocesses: W&B offline, config round-trip, export, bad input."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
import yaml

from lit_recipes.models import create_model
from lit_recipes.tracking import read_offline_run

CONFIG = "lit_recipes/configs/digits_lenet.yaml"
SMALL = ["--trainer.max_epochs=2", "--trainer.enable_progress_bar=false", "--test_after_fit=true"]


def _no_wandb_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), WANDB_SILENT="true", NETRC=str(tmp_path / "no-netrc"))
    # any attempt to reach the network fails fast instead of hanging
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    return env


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    """One `lit-recipes fit` in a subprocess with no API key, no WANDB_MODE and no network."""
    from conftest import run_cli

    tmp = tmp_path_factory.mktemp("fit")
    (tmp / "home").mkdir()
    proc = run_cli(
        "fit",
        "--config",
        str(Path(CONFIG).resolve()),
        *SMALL,
        f"--trainer.logger.init_args.save_dir={tmp}/runs",
        env=_no_wandb_env(tmp),
        cwd=tmp,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc


def test_fit_goes_offline_and_logs_metrics(fitted_run):
    tmp, proc = fitted_run
    out = proc.stdout + proc.stderr
    assert "W&B: no API key found, logging offline" in out and "wandb sync" in out
    offline = sorted((tmp / "runs" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
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
    run_dirs = [p for p in (tmp / "runs" / "lit-recipes").iterdir() if p.is_dir()]
    assert len(run_dirs) == 1
    run = run_dirs[0]
    assert (run / "config.yaml").is_file()
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(n.startswith("epoch") and "val_acc" in n for n in ckpts)


def test_export_and_load_without_lightning(fitted_run, tmp_path):
    from conftest import run_cli

    tmp, _ = fitted_run
    ckpt = next((tmp / "runs" / "lit-recipes").glob("*/checkpoints/last.ckpt"))
    proc = run_cli("export", str(ckpt), str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    # the README's two-line snippet
    spec = json.loads((tmp_path / "out" / "model.json").read_text())
    net = create_model(
        spec["model"], num_classes=spec["num_classes"], in_channels=spec["in_channels"], **spec["model_kwargs"]
    )
    net.load_state_dict(torch.load(tmp_path / "out" / "model.pt", weights_only=True))
    assert spec == {"model": "lenet5_bn", "num_classes": 10, "in_channels": 1, "model_kwargs": {}}
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
    ckpt = next((tmp / "runs" / "lit-recipes").glob("*/checkpoints/last.ckpt"))
    proc = run_cli("export", str(ckpt), target)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "export directory" in proc.stderr and target in proc.stderr


def call_main(args, capsys) -> tuple[int, str, str]:
    """Run ``lit-recipes ARGS`` in this process; returns (exit code, stdout, stderr)."""
    from lit_recipes.cli import main

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
    from lit_recipes.cli import build_cli

    cli = build_cli(["--config", CONFIG, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"])
    assert (cli.model.num_classes, cli.model.in_channels) == (10, 1)
    assert cli.model.model.classifier.out_features == 10


def test_progress_bar_refreshes_every_10_steps_by_default(tmp_path):
    """Each refresh reads the logged values back from the device (a GPU sync): the CLI's bar refreshes every
    10 steps; `--progress_bar.refresh_rate` changes it; no bar, or the config's own bar, replaces it."""
    from lightning.pytorch.callbacks import ProgressBar

    from lit_recipes.cli import build_cli

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
