"""``lit-recipes lr-find``: the weight-decay sweep, its files, the YAML ``fit`` accepts, bad input;
and the ``make train`` recipe (range test -> OneCycle at the found LR) through the real CLI parser."""

from __future__ import annotations

import json

import lightning as L
import pytest
import yaml
from conftest import REPO, run_cli

from lit_recipes.callbacks import LRRangeTest
from lit_recipes.tuning import recommend

RECIPE = REPO / "lit_recipes" / "configs" / "digits_lenet.yaml"


def test_recommend_picks_largest_wd_that_keeps_a_high_lr():
    rows = [
        {"weight_decay": 1e-2, "suggestion": 0.01},
        {"weight_decay": 1e-3, "suggestion": 0.25},
        {"weight_decay": 1e-4, "suggestion": 0.4},
        {"weight_decay": 0.0, "suggestion": 0.3},
    ]
    assert recommend(rows)["weight_decay"] == 1e-3  # 0.25 >= 0.4 / 2; 1e-2's 0.01 is too low
    assert recommend([{"weight_decay": 0.0, "suggestion": None}]) is None


def test_lr_find_weight_decay_sweep_writes_table_png_json_and_fit_yaml(tmp_path):
    out = tmp_path / "lrf"
    proc = run_cli(
        "lr-find",
        "--config",
        str(RECIPE),
        "--wd",
        "1e-3",
        "0",
        "--lr_find.min_lr",
        "1e-4",
        "--lr_find.num_steps",
        "40",
        "--out",
        str(out),
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    head = next(i for i, ln in enumerate(lines) if "weight decay" in ln and "suggested lr" in ln)
    table = lines[head + 1 : head + 3]
    assert [row.split()[0] for row in table] == ["0.001", "0"]
    assert sum("<- recommended" in row for row in table) == 1
    saved = json.loads((out / "lr_find.json").read_text())
    assert [r["weight_decay"] for r in saved["rows"]] == [1e-3, 0.0]
    for r in saved["rows"]:
        assert r["lrs"][0] == pytest.approx(1e-4) and len(r["smoothed"]) == r["steps"] <= 40
        assert r["suggestion"] is not None and r["min_loss"] < r["smoothed"][0]
    best = saved["recommended"]
    assert (out / "lr_find.png").stat().st_size > 5000
    snippet = yaml.safe_load((out / "lr_find.yaml").read_text())
    assert snippet["model"]["init_args"]["lr"] == pytest.approx(best["suggestion"], rel=1e-3)
    assert snippet["model"]["init_args"]["optimizer"]["init_args"]["weight_decay"] == best["weight_decay"]
    # `fit` accepts it after the recipe and keeps the recipe's other optimizer settings
    cfg = run_cli("fit", "--config", str(RECIPE), "--config", str(out / "lr_find.yaml"), "--print_config")
    assert cfg.returncode == 0, cfg.stderr[-2000:]
    model = yaml.safe_load(cfg.stdout)["model"]["init_args"]
    assert model["lr"] == snippet["model"]["init_args"]["lr"]
    assert model["optimizer"]["init_args"]["weight_decay"] == best["weight_decay"]
    assert model["optimizer"]["init_args"]["momentum"] == 0.9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--wd", "-1"], "--wd: weight decay must be a number >= 0, got -1.0"),
        (
            ["--lr_find.min_lr", "10", "--lr_find.max_lr", "1"],
            "LRRangeTest: need min_lr < max_lr, got min_lr=10.0, max_lr=1.0",
        ),
        (["--lr_find.num_steps", "3"], "LRRangeTest: num_steps must be an integer >= 10, got 3"),
    ],
)
def test_lr_find_bad_input_is_one_line(args, message, capsys):
    from lit_recipes.cli import main

    assert main(["lr-find", "--config", str(RECIPE), *args]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"lit-recipes: error: {message}"


def test_lr_find_needs_a_config(capsys):
    from lit_recipes.cli import main

    assert main(["lr-find", "--wd", "0"]) == 2
    assert "lr-find needs --config" in capsys.readouterr().err


MAKE_TRAIN_SNIPPET = """
trainer:
  callbacks:
    - class_path: lit_recipes.callbacks.LRRangeTest
      init_args:
        min_lr: 1.0e-05
        max_lr: 10.0
        num_steps: 100
model:
  init_args:
    lr_scheduler:
      class_path: lit_recipes.schedules.OneCycle
      init_args:
        max_lr: auto
        div: 10
        annihilation_pct: 0.1
"""


class PeakProbe(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_make_train_recipe_runs_range_test_then_onecycle_at_the_found_lr(tmp_path):
    from lit_recipes.cli import build_cli

    extra = tmp_path / "range_test.yaml"
    extra.write_text(MAKE_TRAIN_SNIPPET)
    cli = build_cli(
        [
            "--config",
            str(RECIPE),
            "--config",
            str(extra),
            "--trainer.logger=false",
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=5",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        save_config_callback=None,
    )
    finder = next(c for c in cli.trainer.callbacks if isinstance(c, LRRangeTest))
    probe = PeakProbe()
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    found = finder.results["suggestion"]
    assert found is not None and cli.model.lr == found
    assert len(probe.lrs) == 10
    assert max(probe.lrs) == pytest.approx(found, rel=1e-9)  # the peak of the cycle is the found LR
    assert probe.lrs[0] == pytest.approx(found / 10, rel=1e-9)
    assert (tmp_path / "lr_find.json").is_file() and (tmp_path / "lr_find.png").is_file()
