"""k-fold cross-validation (issue #7): real runs on digits (lenet5_bn, 2 epochs, 3 folds).

One uninterrupted deterministic run (a subprocess, module-scoped) is the reference: the report's
numbers are checked against the files the folds wrote, a run killed during fold 2 and resumed must
reproduce it exactly, and so must a run assembled from single-fold jobs (``--kfold.fold i``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import BIN, REPO, run_cli, run_torchrun

from lit_recipes.commands.kfold import (
    KFoldOptions,
    build_report,
    config_fingerprint,
    report_main,
    run_kfold,
)
from lit_recipes.commands.kfold.rundir import PROBS, REPORT_JSON, REPORT_PNG, RESULT
from lit_recipes.commands.kfold.runner import _prepare_datamodule
from lit_recipes.commands.main import main as cli_main
from lit_recipes.contracts import ContractError
from lit_recipes.datamodules import DigitsDataModule, array_source

CONFIG = str(REPO / "lit_recipes" / "configs" / "digits_lenet.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.accelerator=cpu"]
# the reference recipe of this module: 3 stratified folds, 2 epochs, deterministic, no logger
ARGS = ["--config", CONFIG, "--trainer.logger=false", "--trainer.max_epochs=2", "--trainer.deterministic=true", *QUIET]
K = 3
ENV = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def _kfold_cmd(run_dir: Path, *extra: str) -> list[str]:
    return ["kfold", *ARGS, f"--kfold.num_folds={K}", f"--kfold.run_dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted 3-fold run in a subprocess."""
    run_dir = tmp_path_factory.mktemp("kfold") / "reference"
    proc = run_cli(*_kfold_cmd(run_dir), env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir / "stdout.txt").write_text(proc.stdout)
    return run_dir


def _fold_metrics(report: dict) -> list[dict]:
    return [f["metrics"] for f in sorted(report["folds"], key=lambda f: f["fold"])]


def _load(run_dir: Path) -> dict:
    return json.loads((run_dir / REPORT_JSON).read_text())


# ------------------------------------------------------------------------------------ the report
def test_report_aggregates_what_the_folds_wrote(reference_run: Path) -> None:
    report = _load(reference_run)
    assert report["num_folds"] == K and report["folds_done"] == [0, 1, 2]
    assert report["std"] == "sample standard deviation over folds (ddof=1)"

    pool = DigitsDataModule()
    pool.setup("fit")
    n_pool = len(pool.train_targets)
    val_sizes = [f["val_size"] for f in report["folds"]]
    assert sum(val_sizes) == n_pool  # the validation folds partition the pool
    assert all(f["train_size"] + f["val_size"] == n_pool for f in report["folds"])

    for key in ("val/acc", "val/loss", "test/acc", "test/loss"):
        values = np.array([m[key] for m in _fold_metrics(report)])
        assert report["summary"][key]["mean"] == pytest.approx(values.mean())
        assert report["summary"][key]["std"] == pytest.approx(values.std(ddof=1))
    assert report["summary"]["test/acc"]["mean"] > 0.8  # 2 epochs of LeNet-5 on digits do learn

    # each fold's val/acc comes from validating its best checkpoint: it reproduces the monitored score
    for i in range(K):
        res = json.loads((reference_run / f"fold_{i}" / RESULT).read_text())
        assert Path(res["best_model_path"]).is_file()
        assert res["metrics"]["val/acc"] == pytest.approx(res["best_model_score"], abs=1e-6)

    # the ensemble: the mean of the saved softmax outputs, on the same untouched test split
    probs, accs = [], []
    for i in range(K):
        with np.load(reference_run / f"fold_{i}" / PROBS) as z:
            probs.append(z["probs"])
            targets, indices = z["targets"], z["indices"]
        assert probs[-1].shape == (360, 10) and np.allclose(probs[-1].sum(1), 1, atol=1e-5)
        assert np.array_equal(indices, np.arange(360))
        accs.append((probs[-1].argmax(1) == targets).mean())
        assert accs[-1] == pytest.approx(report["folds"][i]["metrics"]["test/acc"], abs=1e-6)
    ens = report["ensemble"]
    assert ens["test/acc"] == pytest.approx((np.mean(probs, 0).argmax(1) == targets).mean())
    assert ens["mean_single_fold_test/acc"] == pytest.approx(np.mean(accs))
    assert ens["gain"] == pytest.approx(ens["test/acc"] - np.mean(accs))

    png = (reference_run / REPORT_PNG).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    out = (reference_run / "stdout.txt").read_text()
    assert "3-fold cross-validation" in out and "ensemble" in out and "std" in out
    assert f"{ens['test/acc']:.4f}" in out


def test_folds_use_fresh_callbacks_and_the_same_seed(reference_run: Path) -> None:
    """No state leaks between folds: each fold's checkpoint callback starts empty (only its own
    checkpoints in its own directory), and every fold trained the full schedule from epoch 0."""
    for i in range(K):
        res = json.loads((reference_run / f"fold_{i}" / RESULT).read_text())
        ckpts = sorted(p.name for p in (reference_run / f"fold_{i}" / "checkpoints").iterdir())
        assert "last.ckpt" in ckpts and len(ckpts) == 2, ckpts
        assert res["best_model_path"].startswith(str(reference_run / f"fold_{i}"))
        assert res["epochs"] == 2 and res["seed"] == 42
        assert res["global_step"] == 2 * -(-res["train_size"] // 64)


# ------------------------------------------------------------------------------------ resume
def _kill_during_fold_2(run_dir: Path, log_path: Path, wait_for: str) -> None:
    """Start the k-fold run and SIGKILL it once fold 2 has written ``wait_for`` (a glob)."""
    fold_1 = run_dir / "fold_1"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "lit-recipes"), *_kfold_cmd(run_dir)],
            cwd=REPO,
            env={**os.environ, **ENV},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while not list(fold_1.glob(wait_for)):
                assert proc.poll() is None, "the run ended before fold 2 wrote a checkpoint"
                assert time.monotonic() < deadline, "fold 2 never wrote a checkpoint"
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)  # mid-training of fold 2
        finally:
            proc.wait()
    assert (run_dir / "fold_0" / RESULT).is_file()
    assert not (fold_1 / RESULT).is_file(), "fold 2 finished before the kill; the test did not interrupt it"
    assert not (run_dir / REPORT_JSON).exists()


def test_kill_during_fold_2_and_restart_equals_uninterrupted(reference_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "resumed"
    _kill_during_fold_2(run_dir, tmp_path / "killed.log", "checkpoints/*.ckpt")

    proc = run_cli(*_kfold_cmd(run_dir, "--kfold.resume=restart"), env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "folds 0 already done, skipping" in log
    assert "fold_1 is unfinished, redoing it from scratch" in log

    resumed, reference = _load(run_dir), _load(reference_run)
    assert _fold_metrics(resumed) == _fold_metrics(reference)  # bit-for-bit on CPU, deterministic
    assert resumed["summary"] == reference["summary"]
    assert resumed["ensemble"] == reference["ensemble"]


def test_kill_during_fold_2_and_resume_from_last_ckpt(reference_run: Path, tmp_path: Path) -> None:
    """The default ``resume: last`` continues the killed fold from its last.ckpt: it trains only the epochs
    that were left (same total steps as the uninterrupted fold) and ends with the same metrics."""
    run_dir = tmp_path / "resumed_last"
    _kill_during_fold_2(run_dir, tmp_path / "killed.log", "checkpoints/last.ckpt")
    killed_at = torch.load(run_dir / "fold_1" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert killed_at["epoch"] == 0  # the kill came after the first of the two epochs

    proc = run_cli(*_kfold_cmd(run_dir), env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "folds 0 already done, skipping" in log
    assert f"fold_1 is unfinished, resuming from {run_dir / 'fold_1' / 'checkpoints' / 'last.ckpt'} (epoch 0" in log
    assert "Restoring states from the checkpoint path" in log  # Lightning's own message: a real resume

    resumed, reference = _load(run_dir), _load(reference_run)
    res = json.loads((run_dir / "fold_1" / RESULT).read_text())
    ref = json.loads((reference_run / "fold_1" / RESULT).read_text())
    assert res["resumed_from"].endswith("last.ckpt") and "resumed_from" not in ref
    assert res["global_step"] == ref["global_step"] and res["epochs"] == ref["epochs"]  # not trained twice
    assert _fold_metrics(resumed)[0] == _fold_metrics(reference)[0]  # fold 1 untouched
    # last.ckpt is the end of the last finished epoch and carries the RNG state: the same numbers
    assert res["metrics"] == ref["metrics"]
    assert _fold_metrics(resumed) == _fold_metrics(reference)
    assert (run_dir / REPORT_JSON).is_file()


def test_resume_option_is_checked() -> None:
    with pytest.raises(ValueError, match="kfold.resume must be 'last' or 'restart', got 'latest'"):
        KFoldOptions(resume="latest")


# ------------------------------------------------------------------------------------ cluster mode
def test_single_fold_jobs_then_kfold_report(reference_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """``--kfold.fold i`` runs one fold (a SLURM array task); ``kfold-report`` aggregates."""
    run_dir = tmp_path / "array"
    run_dir.mkdir()
    # folds 0 and 1 "ran on other machines": their directories are copied from the reference run
    shutil.copy(reference_run / "kfold.json", run_dir / "kfold.json")
    for i in (0, 1):
        shutil.copytree(reference_run / f"fold_{i}", run_dir / f"fold_{i}")

    with pytest.raises(ValueError, match=r"fold\(s\) 2 of 3 not finished"):
        build_report(run_dir)

    monkeypatch.setenv("WANDB_MODE", "disabled")
    try:
        args = [*ARGS, f"--kfold.num_folds={K}", f"--kfold.run_dir={run_dir}"]
        assert run_kfold(args, fold=2) is None  # one fold: no report
        assert (run_dir / "fold_2" / RESULT).is_file() and not (run_dir / REPORT_JSON).exists()
        assert run_kfold(args, fold="refit") is None
    finally:
        torch.use_deterministic_algorithms(False)  # Trainer(deterministic=True) sets it process-wide

    assert report_main([str(run_dir), "--no-wandb"]) == 0
    out = capsys.readouterr().out
    assert "refit" in out and "ensemble" in out
    report, reference = _load(run_dir), _load(reference_run)
    for got, want in zip(_fold_metrics(report), _fold_metrics(reference), strict=True):
        assert got == pytest.approx(want, rel=1e-6)
    # in-process (2 threads) vs the subprocess (OMP_NUM_THREADS=1): float sums may differ in the last bits
    assert report["ensemble"]["test/acc"] == reference["ensemble"]["test/acc"]
    assert report["ensemble"]["test/nll"] == pytest.approx(reference["ensemble"]["test/nll"], rel=1e-6)

    refit = json.loads((run_dir / "refit" / RESULT).read_text())
    assert refit["train_size"] == 1437  # the whole training pool, no validation hold-out
    assert "val/acc" not in refit["metrics"] and refit["metrics"]["test/acc"] > 0.8
    assert report["refit"]["metrics"]["test/acc"] == refit["metrics"]["test/acc"]


# ------------------------------------------------------------------------------------ bad input
def _cli_error(capsys, *argv: str) -> str:
    assert cli_main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kfold.num_folds=1"], "kfold.num_folds must be an integer >= 2, got 1"),
        (["--kfold.num_folds=3", "--kfold.fold=3"], "kfold.fold must be in [0, 3) or 'refit', got 3"),
        (["--kfold.fold=0", "--kfold.overwrite=true"], "cannot be combined with kfold.fold"),
    ],
)
def test_bad_kfold_options(capsys, tmp_path, flags, message) -> None:
    line = _cli_error(capsys, "kfold", *ARGS, f"--kfold.run_dir={tmp_path}", *flags)
    assert message in line
    assert not any(tmp_path.iterdir())  # nothing was trained or written


class NamedDigits(DigitsDataModule):
    """Digits with word class names and only 3 training samples of 'seven'."""

    def load_sources(self):
        pool, val, test, _ = super().load_sources()
        keep = np.concatenate([np.flatnonzero(pool.targets != 7), np.flatnonzero(pool.targets == 7)[:3]])
        images = np.stack([pool.get(int(i))[0] for i in keep])
        names = "zero one two three four five six seven eight nine".split()
        return array_source(images, pool.targets[keep]), val, test, names


def test_too_many_folds_for_a_class_names_the_class(capsys, tmp_path) -> None:
    line = _cli_error(
        capsys,
        "kfold",
        *ARGS,
        "--data=test_kfold.NamedDigits",
        "--kfold.num_folds=4",
        f"--kfold.run_dir={tmp_path / 'run'}",
    )
    assert "class 'seven' (index 7)" in line and "3 training samples" in line and "stratified false" in line


def test_datamodule_without_set_fold() -> None:
    class Plain(L.LightningDataModule):
        pass

    with pytest.raises(ContractError, match=r"kfold needs data\.set_fold, which Plain lacks \(build the datamodule on"):
        _prepare_datamodule(Plain(), 0, KFoldOptions(num_folds=3))


def test_run_dir_of_another_config_is_refused(reference_run: Path, capsys) -> None:
    line = _cli_error(capsys, *_kfold_cmd(reference_run), "--model.init_args.lr=0.01")
    assert f"{reference_run} holds a k-fold run of a different config" in line
    assert "--kfold.overwrite true" in line
    # the same config with other logging/output settings is the same run (nothing to redo)
    done = reference_run / "fold_0" / RESULT
    before = done.stat().st_mtime_ns
    assert run_kfold([*ARGS, f"--kfold.run_dir={reference_run}", f"--kfold.num_folds={K}"], fold=0) is None
    assert done.stat().st_mtime_ns == before


def test_fingerprint_ignores_output_keys_only() -> None:
    base = "trainer:\n  max_epochs: 2\n  default_root_dir: a\n  logger: false\nkfold:\n  num_folds: 3\n  fold: 0\n"
    same = base.replace("default_root_dir: a", "default_root_dir: b").replace("fold: 0", "fold: 2")
    assert config_fingerprint(base) == config_fingerprint(same)
    assert config_fingerprint(base) != config_fingerprint(base.replace("max_epochs: 2", "max_epochs: 3"))
    assert config_fingerprint(base) != config_fingerprint(base.replace("num_folds: 3", "num_folds: 4"))


def test_kfold_report_bad_dir(capsys, tmp_path) -> None:
    line = _cli_error(capsys, "kfold-report", str(tmp_path))
    assert line == f"lit-recipes: error: not a k-fold run directory (no kfold.json): {tmp_path}"


# ------------------------------------------------------------------------------------ W&B
def test_wandb_one_run_per_fold_in_one_group_and_a_summary_run(tmp_path, monkeypatch) -> None:
    """What each W&B run holds, read through W&B's public ``Run`` object just before ``finish`` (the installed
    wandb has no Python reader for offline ``.wandb`` files): one run per fold and a summary run, one group."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    runs: dict[str, dict] = {}
    run_cls = getattr(wandb, "Run", None) or wandb.sdk.wandb_run.Run  # public as wandb.Run since 0.19
    finish = run_cls.finish

    def recording_finish(self, *args, **kwargs):
        summary = {k: self.summary[k] for k in self.summary.keys()}
        runs[self.job_type] = {"id": self.id, "group": self.group, "summary": summary, "offline": self.offline}
        runs[self.job_type]["exit_code"] = kwargs.get("exit_code", args[0] if args else None)
        return finish(self, *args, **kwargs)

    monkeypatch.setattr(run_cls, "finish", recording_finish)
    run_dir = tmp_path / "wb"
    report = run_kfold(
        ["--config", CONFIG, "--trainer.max_epochs=1", "--trainer.limit_train_batches=4", *QUIET],
        num_folds=2,
        name="wbexp",
        run_dir=str(run_dir),
    )
    assert wandb.run is None  # every run was finished
    assert set(runs) == {"fold0", "fold1", "summary"}
    assert {r["group"] for r in runs.values()} == {"wbexp"} and all(r["offline"] for r in runs.values())
    assert len({r["id"] for r in runs.values()}) == 3 and all(r["exit_code"] in (None, 0) for r in runs.values())
    # each run was written to disk under the run directory, one transaction log per run
    logs = {p.resolve() for p in run_dir.rglob("run-*.wandb")}
    assert {p.stem.removeprefix("run-") for p in logs} == {r["id"] for r in runs.values()}
    for i in (0, 1):
        assert runs[f"fold{i}"]["summary"]["test/acc"] == pytest.approx(report["folds"][i]["metrics"]["test/acc"])
    summary = runs["summary"]["summary"]
    assert summary["test/acc/mean"] == pytest.approx(report["summary"]["test/acc"]["mean"])
    assert summary["test/acc/std"] == pytest.approx(report["summary"]["test/acc"]["std"])
    assert summary["ensemble/test/acc"] == pytest.approx(report["ensemble"]["test/acc"])
    assert json.loads((run_dir / "kfold.json").read_text())["logger"]["wandb"] is True


# ------------------------------------------------------------------------------------ DDP
@pytest.mark.ddp
def test_ddp_folds_agree_with_single_process(tmp_path) -> None:
    """2 CPU processes (gloo, batch 32 each) vs one process (batch 64): the same folds, the whole
    test split scored once, and fold metrics within tolerance: different BN batches and sample order
    make the runs close, not equal. Tolerance: 0.05 per fold, 0.03 on the mean; single-process runs
    of this recipe with seeds 42/43/44 spread over 0.931-0.975 per fold (measured)."""
    common = [
        "--config", CONFIG, "--trainer.logger=false", "--trainer.max_epochs=6", *QUIET,
        "--kfold.num_folds=2",
    ]  # fmt: skip
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    proc = run_torchrun(
        [
            str(BIN / "lit-recipes"),
            "kfold",
            *common,
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
            "--data.init_args.batch_size=32",
            f"--kfold.run_dir={ddp_dir}",
        ],  # fmt: skip
        env={"WANDB_MODE": "disabled"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("2-fold cross-validation") == 1  # only rank 0 reports
    proc = run_cli(*["kfold", *common, f"--kfold.run_dir={single_dir}"], env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ddp, single = _load(ddp_dir), _load(single_dir)
    for a, b in zip(ddp["folds"], single["folds"]):
        assert (a["train_size"], a["val_size"]) == (b["train_size"], b["val_size"])
        assert a["metrics"]["test/acc"] == pytest.approx(b["metrics"]["test/acc"], abs=0.05)
        assert a["metrics"]["val/acc"] == pytest.approx(b["metrics"]["val/acc"], abs=0.05)
    assert ddp["summary"]["test/acc"]["mean"] == pytest.approx(single["summary"]["test/acc"]["mean"], abs=0.03)
    assert ddp["summary"]["test/acc"]["mean"] > 0.9
    assert ddp["ensemble"]["num_test_samples"] == 360

    # the gathered DDP probabilities are exactly what one process computes from the same checkpoint
    from lit_recipes.module import ClassifierModule

    res = json.loads((ddp_dir / "fold_1" / RESULT).read_text())
    module = ClassifierModule.load_from_checkpoint(res["best_model_path"], map_location="cpu").eval()
    dm = DigitsDataModule()
    dm.set_fold(1, 2)
    dm.setup("fit")
    with torch.no_grad():
        probs = torch.cat([torch.softmax(module(x), -1) for x, _, _ in dm.eval_dataloader("test")]).numpy()
    with np.load(ddp_dir / "fold_1" / PROBS) as z:
        assert np.array_equal(z["indices"], np.arange(360))
        np.testing.assert_allclose(z["probs"], probs, atol=1e-5)
