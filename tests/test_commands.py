"""One test per README command, run the way a user types it (the ``lit-recipes`` console script or torchrun),
with tiny settings. Each asserts what the command produced: files written, metrics read back with margins."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import cifar_subset, run_cli, run_torchrun

from lit_recipes.commands.kfold.rundir import REPORT_JSON, RESULT

DIGITS = "lit_recipes/configs/digits_lenet.yaml"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ENV = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu"]


def csv_logger(save_dir: Path) -> list[str]:
    return ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={save_dir}"]


def logged(save_dir: Path) -> dict[str, float]:
    """The last value of every metric a CSVLogger wrote under ``save_dir``."""
    out: dict[str, float] = {}
    (path,) = save_dir.rglob("metrics.csv")
    with open(path) as fh:
        for row in csv.DictReader(fh):
            out.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return out


def ok(proc) -> str:
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    """``lit-recipes fit --config digits_lenet.yaml`` for 2 epochs: the run folder, its checkpoints, its scores."""
    tmp = tmp_path_factory.mktemp("fit")
    ok(run_cli("fit", "--config", DIGITS, "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp / 'runs'}",
               "--trainer.callbacks=[]", *QUIET, *csv_logger(tmp / "logs"), env=ENV))  # fmt: skip
    (best,) = [p for p in tmp.rglob("checkpoints/epoch*.ckpt")]
    return {"tmp": tmp, "best": best, "last": best.with_name("last.ckpt"), "metrics": logged(tmp / "logs")}


def test_fit_writes_checkpoints_and_tests_the_best(fitted) -> None:
    m = fitted["metrics"]
    assert fitted["last"].is_file() and "val_acc" in fitted["best"].name
    assert m["val/acc"] > 0.8 and m["test/acc"] > 0.8  # 2 epochs of LeNet-5 on digits; chance is 0.1


def test_test_and_validate_from_ckpt_path(fitted, tmp_path) -> None:
    """``test`` / ``validate --ckpt_path`` score exactly the checkpoint's weights."""
    best = fitted["best"]
    ok(run_cli("test", "--config", DIGITS, f"--ckpt_path={best}", *QUIET, *csv_logger(tmp_path / "t"),
               f"--trainer.default_root_dir={tmp_path / 'runs'}", env=ENV))  # fmt: skip
    assert logged(tmp_path / "t")["test/acc"] == pytest.approx(fitted["metrics"]["test/acc"], abs=1e-6)
    ok(run_cli("validate", "--config", DIGITS, f"--ckpt_path={best}", *QUIET, *csv_logger(tmp_path / "v"),
               f"--trainer.default_root_dir={tmp_path / 'runs'}", env=ENV))  # fmt: skip
    val_acc = float(best.stem.split("val_acc")[1])  # the score ModelCheckpoint wrote into the file name
    assert logged(tmp_path / "v")["val/acc"] == pytest.approx(val_acc, abs=1e-4)


def test_predict_from_ckpt_path(fitted, tmp_path) -> None:
    out = ok(run_cli("predict", "--config", DIGITS, f"--ckpt_path={fitted['best']}", "--trainer.logger=false",
                     *QUIET, f"--trainer.default_root_dir={tmp_path / 'runs'}", env=ENV))  # fmt: skip
    assert f"Loaded model weights from the checkpoint at {fitted['best']}" in out  # Lightning's own line


def test_kfold_with_refit_then_kfold_report(tmp_path) -> None:
    run_dir = tmp_path / "kf"
    ok(run_cli("kfold", "--config", DIGITS, "--kfold.num_folds", "2", "--kfold.refit", "true",
               f"--kfold.run_dir={run_dir}", "--trainer.max_epochs=2", "--trainer.logger=false", *QUIET, env=ENV))  # fmt: skip
    report = json.loads((run_dir / REPORT_JSON).read_text())
    assert report["num_folds"] == 2 and report["folds_done"] == [0, 1]
    refit = json.loads((run_dir / "refit" / RESULT).read_text())
    assert refit["train_size"] == 1437 and refit["metrics"]["test/acc"] > 0.8  # the whole pool, no hold-out
    assert report["refit"]["metrics"]["test/acc"] == refit["metrics"]["test/acc"]
    assert report["summary"]["test/acc"]["mean"] > 0.8

    # `kfold-report DIR` rebuilds the same report from the folders alone
    (run_dir / REPORT_JSON).unlink()
    out = ok(run_cli("kfold-report", str(run_dir), "--no-wandb", env=ENV))
    again = json.loads((run_dir / REPORT_JSON).read_text())
    assert again["summary"] == report["summary"] and again["ensemble"] == report["ensemble"]
    assert "refit" in out and f"{report['ensemble']['test/acc']:.4f}" in out


def test_stats_table(tmp_path) -> None:
    """``stats --data DIR`` (no --json): the table's counts, imbalance ratio and mean/std are the JSON's."""
    root = tmp_path / "imbalanced"
    shutil.copytree(cifar_subset(20, 5), root, ignore=shutil.ignore_patterns(".*"))
    for f in sorted((root / "train" / "cat").glob("*.jpg"))[:10]:
        f.unlink()  # cat: 10 training images, the others 20
    table = ok(run_cli("stats", "--data", str(root), env=ENV))
    json_run = run_cli("stats", "--data", str(root), "--json", env=ENV)
    ok(json_run)
    info = json.loads(json_run.stdout)
    assert sum(info["train_counts"]) + info["val"] == 190 and info["test"] == 50
    counts = dict(zip(info["classes"], info["train_counts"]))
    assert counts["cat"] < counts["dog"] and info["imbalance_ratio"] == pytest.approx(counts["dog"] / counts["cat"])
    assert f"imbalance ratio {info['imbalance_ratio']:.2f}" in table and info["imbalance_ratio"] > 1.5
    for name, n in counts.items():
        assert any(
            line.split() == [name, str(n), f"{100 * n / sum(counts.values()):.1f}%"] for line in table.splitlines()
        )
    assert "mean [" + ", ".join(f"{v:.4f}" for v in info["mean"]) + "]" in table


def test_cifar10_resnet20_recipe_on_real_jpegs(tmp_path) -> None:
    """The shipped CIFAR recipe, as configured (its callbacks included), on 20 JPEGs per class for 2 epochs."""
    root = cifar_subset(20, 5)
    ok(run_cli("fit", "--config", "lit_recipes/configs/cifar10_resnet20.yaml", f"--data.init_args.root={root}",
               "--data.init_args.num_workers=0", "--data.init_args.batch_size=60", "--trainer.max_epochs=2", "--trainer.log_every_n_steps=1",
               f"--trainer.default_root_dir={tmp_path / 'runs'}", *QUIET, *csv_logger(tmp_path / "logs"), env=ENV))  # fmt: skip
    m = logged(tmp_path / "logs")
    assert m["epoch"] == 2 and 0.0 <= m["test/acc"] <= 1.0  # the test row is logged after the 2 epochs
    # 6 optimizer steps prove the recipe runs end to end on real JPEGs, not that it learns (BN statistics of
    # 6 batches make the test loss anything); every class of the test split was scored
    assert math.isfinite(m["test/loss"]) and all(f"test/acc_class_{c}" in m for c in CLASSES)
    assert "perf/data_wait_frac" in m  # the recipe's DataLoadingMonitor ran
    assert list(tmp_path.rglob("confusion_matrix_test.png"))  # and its ConfusionMatrix drew the test split
    assert list(tmp_path.rglob("checkpoints/last.ckpt"))


@pytest.mark.ddp
def test_torchrun_module_cli_fit(tmp_path) -> None:
    """``torchrun --standalone --nproc_per_node=2 -m lit_recipes.commands.fit fit ... --trainer.strategy=ddp`` (gloo, CPU)."""
    proc = run_torchrun(
        ["-m", "lit_recipes.commands.fit", "fit", "--config", DIGITS, "--trainer.strategy=ddp", "--trainer.devices=2",
         "--trainer.max_epochs=2", "--trainer.callbacks=[]", f"--trainer.default_root_dir={tmp_path / 'runs'}",
         *QUIET, *csv_logger(tmp_path / "logs")],
        env={"WANDB_MODE": "disabled", "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    ok(proc)
    # rank 0 passed its run folder to rank 1 through a marker in the temp folder, and removed it at exit
    assert not list(tmp_path.glob("lit-recipes-run-*"))
    m = logged(tmp_path / "logs")  # one metrics.csv: only rank 0 logs
    assert m["test/acc"] > 0.6 and m["val/acc"] > 0.6  # half the steps of one process, still far above 0.1
    assert len(list(tmp_path.rglob("checkpoints/last.ckpt"))) == 1


def test_hard_negative_mining_appended_from_the_command_line(tmp_path) -> None:
    """The README's ``--trainer.callbacks+=lit_recipes.callbacks.HardNegativeMining --trainer.callbacks.every_n_epochs=2``."""
    ok(run_cli("fit", "--config", DIGITS, "--trainer.max_epochs=3",
               "--trainer.callbacks+=lit_recipes.callbacks.HardNegativeMining", "--trainer.callbacks.every_n_epochs=2",
               f"--trainer.default_root_dir={tmp_path / 'runs'}", *QUIET, *csv_logger(tmp_path / "logs"), env=ENV))  # fmt: skip
    (history,) = tmp_path.rglob("hard_negative_mining/history.json")
    rounds = json.loads(history.read_text())
    rounds = rounds if isinstance(rounds, list) else rounds.get("history", rounds)
    assert len(rounds) >= 1  # mined at epoch 2 (every_n_epochs=2)
    m = logged(tmp_path / "logs")
    assert m["mining/num_hard"] > 0 and m["test/acc"] > 0.8
