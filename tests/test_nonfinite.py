"""A non-finite training loss: ``on_nonfinite: stop`` (default) ends the run at once, one error line,
exit 2, no checkpoint with non-finite weights, and the doctor says it diverged; ``warn`` trains on.

``NanAtStep`` is a ClassifierModule whose loss turns nan at a known global step, so the expectations
are exact; one run uses a real divergence (``lr=1e6``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY

from lit_recipes.errors import NonFiniteLoss
from lit_recipes.module import ClassifierModule


class NanAtStep(ClassifierModule):
    """The training loss is nan from global step ``nan_step`` on."""

    def __init__(self, *args, nan_step: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nan_step = nan_step

    def training_loss(self, batch):
        loss, logits, targets = super().training_loss(batch)
        if self.trainer.global_step >= self.nan_step:
            loss = loss * float("nan")
        return loss, logits, targets


class NanOnOneRank(NanAtStep):
    """Under DDP, the loss turns nan on rank ``nan_rank`` only."""

    def __init__(self, *args, nan_rank: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nan_rank = nan_rank

    def training_loss(self, batch):
        if self.trainer.global_rank != self.nan_rank:
            return ClassifierModule.training_loss(self, batch)
        return super().training_loss(batch)


def _fit(argv: list[str], capsys) -> tuple[int, str, str]:
    from lit_recipes.commands.main import main

    capsys.readouterr()
    code = main(["fit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("lit-recipes: error:")]


def _only_run(root: Path) -> Path:
    runs = [p.parent for p in root.rglob("run.json")]
    assert len(runs) == 1, runs
    return runs[0]


def _all_finite(path: Path) -> bool:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


# 3 batches per epoch: step 7 is the second batch of epoch 2; epochs 0 and 1 ended with finite weights
NAN_ARGS = [
    "--model=test_nonfinite.NanAtStep",
    "--model.init_args.model=lenet5_bn",
    "--model.init_args.nan_step=7",
    "--trainer.max_epochs=4",
    "--trainer.limit_train_batches=3",
]


def test_stop_at_the_first_nonfinite_step(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY)
    code, _, err = _fit(["--config", "tiny.yaml", *NAN_ARGS, "--trainer.default_root_dir=out"], capsys)
    assert code == 2, err[-3000:]
    errors = _errors(err)
    assert errors == ["lit-recipes: error: training loss is not finite (nan) at epoch 2, step 7 (lr 0.05)"], err
    hints = [ln for ln in err.splitlines() if ln.startswith("lit-recipes: hint:")]
    assert len(hints) == 1 and "lr-find" in hints[0]
    assert "Traceback" not in err
    run = _only_run(tmp_path / "out")
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (1, 6)  # the end of the last finished epoch
    for ckpt in run.rglob("*.ckpt"):  # no checkpoint of the run holds a non-finite tensor
        assert _all_finite(ckpt), ckpt


def test_real_divergence_stops_and_the_doctor_says_why(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gap_monitor = (
        "  limit_train_batches: 10\n"
        "  callbacks:\n"
        "    - class_path: lit_recipes.callbacks.GapMonitor\n"
        "      init_args:\n"
        "        subset_size: 100\n"
        "        print_report: false\n"
    )
    config = TINY.replace("  limit_train_batches: 2\n", gap_monitor, 1)
    (tmp_path / "tiny.yaml").write_text(config)
    argv = ["--config", "tiny.yaml", "--model.init_args.lr=1e6", "--trainer.max_epochs=8"]
    code, _, err = _fit([*argv, "--trainer.default_root_dir=out"], capsys)
    assert code == 2, err[-3000:]
    errors = _errors(err)
    assert len(errors) == 1, err
    match = re.fullmatch(
        r"lit-recipes: error: training loss is not finite \((nan|inf)\) at epoch 0, step (\d+) .*", errors[0]
    )
    assert match, errors[0]
    run = _only_run(tmp_path / "out")
    diagnosis = json.loads((run / "diagnosis.json").read_text())
    final = diagnosis["final"]
    assert final["verdict"] == "not_converging" and final["diverged"] is True
    assert f"step {match.group(2)}" in final["evidence"] and "diverged" in final["evidence"]
    assert diagnosis["stopped_epoch"] == 0
    assert not list(run.rglob("*.ckpt"))  # it diverged in its first epoch: nothing to keep


def test_warn_trains_on(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY)
    argv = ["--config", "tiny.yaml", *NAN_ARGS, "--model.init_args.on_nonfinite=warn"]
    with pytest.warns(UserWarning, match=r"not finite \(nan\) at epoch 2, step 7 .*on_nonfinite: warn") as caught:
        code, _, err = _fit([*argv, "--trainer.default_root_dir=out"], capsys)
    assert code == 0, err[-3000:]
    assert len([w for w in caught if "training goes on" in str(w.message)]) == 1  # once, not every step
    saved = torch.load(_only_run(tmp_path / "out") / "checkpoints" / "last.ckpt", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (3, 12)  # every epoch ran


def test_no_checkpoint_with_nonfinite_weights(tmp_path):
    """The guard behind deferred checks (GPU): saving non-finite weights raises, nothing is written."""
    model = ClassifierModule("lenet5_bn", num_classes=10, in_channels=1)
    from lit_recipes.datamodules import DigitsDataModule

    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    trainer.save_checkpoint(tmp_path / "ok.ckpt")
    assert _all_finite(tmp_path / "ok.ckpt")
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("inf"))
    with pytest.raises(NonFiniteLoss, match="weights are not finite"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()
    model.on_nonfinite = "warn"  # warn: today's behaviour, the file is written
    trainer.save_checkpoint(tmp_path / "warned.ckpt")
    assert not _all_finite(tmp_path / "warned.ckpt")


def test_on_nonfinite_is_checked():
    with pytest.raises(ValueError, match="on_nonfinite must be 'stop' or 'warn', got 'ignore'"):
        ClassifierModule("lenet5_bn", num_classes=10, in_channels=1, on_nonfinite="ignore")


@pytest.mark.ddp
def test_ddp_ranks_stop_together(tmp_path):
    """A nan on rank 1 only: rank 0 stops at the same check (no rank left waiting in an all-reduce),
    with one error line naming rank 1's step, exit 2."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent), "WANDB_MODE": "disabled"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    args = [
        "--config", "tiny.yaml", "--model=test_nonfinite.NanOnOneRank", "--model.init_args.model=lenet5_bn",
        "--model.init_args.nan_step=4", "--trainer.max_epochs=3", "--trainer.limit_train_batches=3",
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.default_root_dir=out",
    ]  # fmt: skip
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m",
         "lit_recipes.commands.fit", "fit", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    errors = [ln for ln in proc.stderr.splitlines() if "lit-recipes: error:" in ln]
    assert proc.returncode != 0, proc.stderr[-3000:]  # torchrun's own status: 1 when a worker fails
    assert "exitcode  : 2" in proc.stderr  # the bad-input status, not a crash or a timeout
    # rank 0 saw no nan itself: its line names rank 1's step because the ranks' records are gathered
    assert errors == ["lit-recipes: error: training loss is not finite (nan) at epoch 1, step 4 (lr 0.05)"]
    for ckpt in (tmp_path / "out").rglob("*.ckpt"):
        assert _all_finite(ckpt), ckpt


def test_deferred_check_names_the_first_nonfinite_step(monkeypatch):
    """The GPU/DDP path: losses are only kept per step, folded every 256 steps, read back at a check.
    A nan at step 300 (in the second fold) then an inf: the check at step 599 names step 300."""
    from types import SimpleNamespace

    import lit_recipes.module as module

    strategy = SimpleNamespace(all_gather=lambda t: t, root_device=torch.device("cpu"))  # one "rank"
    trainer = SimpleNamespace(global_step=0, current_epoch=3, world_size=2, optimizers=[], strategy=strategy)
    monkeypatch.setattr(module, "attached_trainer", lambda _: trainer)
    model = ClassifierModule("lenet5_bn", num_classes=10, in_channels=1)
    values = {300: float("nan"), 301: float("inf")}
    for step in range(599):
        trainer.global_step = step
        model._watch_loss(torch.tensor(values.get(step, 1.0)), check=False)  # never raises between checks
    assert len(model._nonfinite.chunks) == 2 and len(model._nonfinite.pending) == 599 - 512
    trainer.global_step = 599
    with pytest.raises(NonFiniteLoss, match=r"^training loss is not finite \(nan\) at epoch 3, step 300$") as err:
        model._watch_loss(torch.tensor(1.0), check=True)
    assert (err.value.epoch, err.value.step) == (3, 300)
    clean = ClassifierModule("lenet5_bn", num_classes=10, in_channels=1)
    for step in range(300):
        trainer.global_step = step
        clean._watch_loss(torch.tensor(0.5), check=step == 299)  # a check with nothing found: goes on
    assert clean._nonfinite.found is None and clean._nonfinite.chunks == [] and clean._nonfinite.pending == []
