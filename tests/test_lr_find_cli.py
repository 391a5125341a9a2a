"""``lit-recipes lr-find``: the weight-decay sweep, its files, the YAML ``fit`` accepts, bad input;
and the ``make train`` recipe (range test -> OneCycle at the found LR) through the real CLI parser."""

from __future__ import annotations

import json

import lightning as L
import pytest
import yaml
from conftest import REPO, run_cli

from lit_recipes.callbacks import LRRangeTest
from lit_recipes.commands.lr_find import NO_CLEAR_WINNER, recommend, recommend_over_seeds, stable_pick

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


def test_stable_pick_needs_two_of_three_seeds():
    assert stable_pick([1e-3, 1e-3, 0.0]) == (1e-3, 2)
    assert stable_pick([1e-3, 1e-4, 0.0]) == (None, 1)  # a different dip on every seed: no winner
    assert stable_pick([None, 1e-4, 1e-4]) == (1e-4, 2)
    assert stable_pick([None, None, 1e-4]) == (None, 1)
    assert stable_pick([0.0]) == (0.0, 1)
    assert stable_pick([1e-3, 0.0]) == (None, 1)  # 2 seeds: both must agree
    with pytest.raises(ValueError, match="no picks"):
        stable_pick([])


def _rows(per_seed):
    """Rows of a constructed sweep: ``{seed: {wd: suggestion}}``."""
    return [
        {"seed": seed, "weight_decay": wd, "suggestion": lr}
        for seed, by_wd in per_seed.items()
        for wd, lr in by_wd.items()
    ]


def test_recommend_over_seeds_follows_the_majority_not_a_noise_dip():
    # seed 1's 1e-3 suggestion dips below half the best: that seed alone picks 1e-4
    rows = _rows(
        {
            0: {1e-3: 0.30, 1e-4: 0.40, 0.0: 0.35},
            1: {1e-3: 0.15, 1e-4: 0.40, 0.0: 0.35},
            2: {1e-3: 0.32, 1e-4: 0.38, 0.0: 0.30},
        }
    )
    best = recommend_over_seeds(rows)
    assert best["clear"] and best["weight_decay"] == 1e-3 and best["votes"] == 2 and best["seeds"] == 3
    assert best["picks"] == [1e-3, 1e-4, 1e-3]
    assert best["suggestion"] == pytest.approx(0.30)  # the median of 0.30, 0.15, 0.32
    # every seed picks another weight decay: no clear winner, no LR
    rows = _rows(
        {
            0: {1e-3: 0.30, 1e-4: 0.10, 0.0: 0.10},
            1: {1e-3: 0.10, 1e-4: 0.30, 0.0: 0.10},
            2: {1e-3: 0.10, 1e-4: 0.10, 0.0: 0.30},
        }
    )
    best = recommend_over_seeds(rows)
    assert not best["clear"] and best["weight_decay"] is None and best["suggestion"] is None
    # the config's weight decay only (no --wd): its LR, nothing to vote on
    best = recommend_over_seeds([{"seed": None, "weight_decay": None, "suggestion": 0.2}])
    assert best["clear"] and best["weight_decay"] is None and best["suggestion"] == 0.2
    assert recommend_over_seeds([{"seed": None, "weight_decay": None, "suggestion": None}]) is None


def test_plain_lr_find_without_wd_works(tmp_path):
    """The README's first command, verbatim (run from an empty folder: its output goes to ./runs)."""
    proc = run_cli("lr-find", "--config", str(RECIPE), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if "weight decay" in ln and "suggested lr" in ln)
    row = lines[head + 1].split()
    assert row[0] == "config" and float(row[1]) > 0
    out = tmp_path / "runs" / "lr_find"
    saved = json.loads((out / "lr_find.json").read_text())
    assert [r["weight_decay"] for r in saved["rows"]] == [None] and saved["rows"][0]["rule"] == "knee"
    snippet = yaml.safe_load((out / "lr_find.yaml").read_text())
    assert snippet == {"model": {"init_args": {"lr": pytest.approx(saved["recommended"]["suggestion"], rel=1e-3)}}}
    assert (out / "lr_find.png").stat().st_size > 5000


def test_lr_find_with_out_and_a_second_config(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  init_args:\n    lr: 0.1\n")
    out = tmp_path / "elsewhere"
    proc = run_cli(
        "lr-find",
        "--config",
        str(RECIPE),
        "--config",
        str(extra),
        "--lr_find.num_steps",
        "40",
        "--out",
        str(out),
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "lr_find.json").is_file() and (out / "lr_find.png").is_file() and (out / "lr_find.yaml").is_file()
    saved = json.loads((out / "lr_find.json").read_text())
    assert saved["rows"][0]["lr_before"] == 0.1 and saved["rows"][0]["steps"] <= 40  # the second config counted
    assert not (tmp_path / "lr_find").exists()


def test_lr_find_missing_config_file_is_one_line(tmp_path, capsys):
    from lit_recipes.commands.main import main

    missing = tmp_path / "nope.yaml"
    assert main(["lr-find", "--config", str(RECIPE), "--config", str(missing)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"lit-recipes: error: --config: file not found: {missing}"]


def _fit_recipe(tmp_path, *extra):
    return run_cli(
        "fit",
        "--config",
        str(RECIPE),
        *extra,
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    )


def test_an_explicit_lr_wins_over_the_range_test_and_one_line_says_so(tmp_path):
    """The policy: an LR given on the command line is kept (the range test still runs and plots);
    an LR that only the config file sets is replaced, with one line naming both values."""
    proc = _fit_recipe(tmp_path / "explicit", "--model.init_args.lr", "0.1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = (proc.stdout + proc.stderr).splitlines()
    said = [ln for ln in out if "--model.init_args.lr=0.1 given" in ln]
    assert len(said) == 1 and "does not change the LR" in said[0]
    assert not [ln for ln in out if "overrides" in ln]
    found = json.loads(next((tmp_path / "explicit").rglob("lr_find.json")).read_text())
    assert found["lr_before"] == 0.1 and not found["applied"] and found["suggestion"] is not None


def test_the_range_test_replacing_the_configs_lr_says_so_in_one_line(tmp_path):
    proc = _fit_recipe(tmp_path / "config")  # the recipe's own lr: 0.05 is replaced, said once
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(next((tmp_path / "config").rglob("lr_find.json")).read_text())
    said = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "overrides" in ln]
    assert said == [
        f"LRRangeTest: range test overrides lr=0.05 with {found['suggestion']:.3g}; set update_lr: false to keep yours"
    ]
    assert found["applied"]


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
    assert all(len(row.split()[1].split("/")) == 3 for row in table)  # one suggestion per seed
    saved = json.loads((out / "lr_find.json").read_text())
    assert [r["weight_decay"] for r in saved["rows"]] == [1e-3, 0.0] * 3
    assert [r["seed"] for r in saved["rows"]] == [42, 42, 43, 43, 44, 44]  # the recipe's seed_everything + 0, 1, 2
    for r in saved["rows"]:
        assert r["lrs"][0] == pytest.approx(1e-4) and len(r["smoothed"]) == r["steps"] <= 40
        assert r["suggestion"] is not None and r["min_loss"] < r["smoothed"][0]
    assert (out / "lr_find.png").stat().st_size > 5000
    best = saved["recommended"]
    if not best["clear"]:  # a possible outcome on 40-step sweeps (the pick is voted on); then no YAML
        assert NO_CLEAR_WINNER in proc.stdout and not (out / "lr_find.yaml").exists()
        return
    assert sum("<- recommended" in row for row in table) == 1 and best["votes"] >= 2
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
    from lit_recipes.commands.main import main

    assert main(["lr-find", "--config", str(RECIPE), *args]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"lit-recipes: error: {message}"


def test_lr_find_needs_a_config(capsys):
    from lit_recipes.commands.main import main

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
    from lit_recipes.commands.fit import build_cli

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
