"""A true last checkpoint, identical resume, and interruptions (SIGINT, SIGTERM, SIGKILL).

* ``last.ckpt`` follows every epoch, not only the improvements of the monitored metric
  (:class:`lit_recipes.resume.LastCheckpoint`), and carries the generator states;
* a ``lit-recipes fit`` killed for real and resumed from ``last.ckpt`` ends with the same weights,
  bit for bit, as the uninterrupted run (deterministic CPU config);
* Ctrl-C / SIGTERM: the summary, ``lit-recipes: interrupted — resume with: <command>``, 130 / 143,
  and the printed command continues the run;
* a search worker killed mid-trial: the rerun completes every grid point once, same pick.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lit_recipes.resume import RNG_KEY, LastCheckpoint

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))  # test_resume.Throttle

# deterministic on CPU: seeded, plain shuffling (torch's global generator), SGD with momentum and a
# per-step schedule (optimizer and scheduler state must come back too), 6 short epochs slowed down by
# Throttle, so that a signal sent after epoch 1's checkpoint always lands well before the end
FIT_YAML = """\
seed_everything: 7
trainer:
  max_epochs: 6
  limit_train_batches: 10
  limit_val_batches: 2
  enable_progress_bar: false
  enable_model_summary: false
  logger: false
  accelerator: cpu
  default_root_dir: runs
  callbacks:
    - class_path: test_resume.Throttle
model:
  class_path: lit_recipes.module.ClassifierModule
  init_args:
    model: lenet5_bn
    lr: 0.05
    optimizer:
      class_path: torch.optim.SGD
      init_args: {lr: 0.05, momentum: 0.9}
    lr_scheduler:
      class_path: lit_recipes.schedules.OneCycle
data:
  class_path: lit_recipes.datamodules.DigitsDataModule
  init_args:
    batch_size: 32
    val_fraction: 0.1
"""
MAX_EPOCHS = 6


class Throttle(Callback):
    """Sleeps after every training batch (no random numbers, no state): the test's kill window."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(0.05)


# ------------------------------------------------------------------ last.ckpt follows every epoch
class _Scripted(LightningModule):
    """Trains a linear layer (its weights change every epoch) and logs a scripted val/acc."""

    def __init__(self, val_acc: list[float]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.val_acc = val_acc

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", self.val_acc[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)


def _fit_scripted(tmp_path: Path, callback: ModelCheckpoint) -> _Scripted:
    model = _Scripted([0.5, 0.9, 0.8, 0.7, 0.6])  # best at epoch 1, then no improvement
    trainer = Trainer(
        max_epochs=5,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(model, train_dataloaders=_loader(), val_dataloaders=_loader())
    return model


def _ckpt_kwargs(dirpath: Path) -> dict:
    return dict(dirpath=dirpath, monitor="val/acc", mode="max", save_top_k=1, save_last=True, filename="best")


def test_last_ckpt_is_the_final_epoch_when_val_acc_stops_improving(tmp_path: Path) -> None:
    model = _fit_scripted(tmp_path, LastCheckpoint(**_ckpt_kwargs(tmp_path / "ours")))
    last = torch.load(tmp_path / "ours" / "last.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(tmp_path / "ours" / "best.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 4 and best["epoch"] == 1  # the best stays a file of its own
    for key, value in model.state_dict().items():
        assert torch.equal(last["state_dict"][key], value)  # the final weights
    assert not torch.equal(best["state_dict"]["layer.weight"], model.layer.weight)
    assert set(last["callbacks"]) == set(best["callbacks"])
    (state,) = [s for k, s in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert state[RNG_KEY]["torch"].dtype == torch.uint8 and state["best_model_path"].endswith("best.ckpt")

    # Lightning's own callback, same settings: last.ckpt stays at the last improvement (why ours exists)
    _fit_scripted(tmp_path, ModelCheckpoint(**_ckpt_kwargs(tmp_path / "plain")))
    assert torch.load(tmp_path / "plain" / "last.ckpt", weights_only=True)["epoch"] == 1


# -------------------------------------------------------------- real runs, killed and resumed
def _last_epoch(path: str) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - not written yet
        return -1


def _default_sigint() -> None:
    """In the child: SIGINT as a terminal gives it. A shell's background job (``cmd &``, as a CI
    script may start pytest) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_fit(cwd: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "lit-recipes"), "fit", *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def _signal_after_epoch(proc: subprocess.Popen, cwd: Path, sig: int, epoch: int = 1) -> tuple[str, str]:
    """Send ``sig`` once a ``last.ckpt`` of ``epoch`` (or later) exists; the process's output."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        found = glob.glob(str(cwd / "runs" / "*" / "*" / "checkpoints" / "last.ckpt"))
        if found and _last_epoch(found[0]) >= epoch:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return out, err


def _final_state(cwd: Path) -> dict[str, torch.Tensor]:
    (last,) = glob.glob(str(cwd / "runs" / "*" / "*" / "checkpoints" / "last.ckpt"))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == MAX_EPOCHS - 1
    return ckpt["state_dict"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after the resume: {different[:5]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted run's final weights."""
    cwd = tmp_path_factory.mktemp("reference")
    (cwd / "fit.yaml").write_text(FIT_YAML)
    proc = _start_fit(cwd, ["--config", "fit.yaml"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return _final_state(cwd)


def test_sigkill_after_an_epoch_then_resume_gives_identical_weights(reference, tmp_path: Path) -> None:
    (tmp_path / "fit.yaml").write_text(FIT_YAML)
    proc = _start_fit(tmp_path, ["--config", "fit.yaml"])
    _signal_after_epoch(proc, tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    (last,) = glob.glob(str(tmp_path / "runs" / "*" / "*" / "checkpoints" / "last.ckpt"))
    killed_at = _last_epoch(last)
    assert 1 <= killed_at < MAX_EPOCHS - 1
    proc = _start_fit(tmp_path, ["--config", "fit.yaml", "--ckpt_path", os.path.relpath(last, tmp_path)])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    _assert_same_weights(reference, _final_state(tmp_path))


@pytest.mark.parametrize("sig, rc", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupt_prints_summary_and_a_resume_command_that_works(reference, tmp_path: Path, sig, rc) -> None:
    (tmp_path / "fit.yaml").write_text(FIT_YAML)
    proc = _start_fit(tmp_path, ["--config", "fit.yaml"])
    out, err = _signal_after_epoch(proc, tmp_path, sig)
    assert proc.returncode == rc, err[-2000:]
    assert "── lit-recipes fit: summary ──" in out and "interrupted" in out
    lines = [ln for ln in err.splitlines() if ln.startswith("lit-recipes:")]
    assert len(lines) == 1 and lines[0].startswith("lit-recipes: interrupted — resume with: lit-recipes fit "), err
    assert "Traceback" not in err
    command = shlex.split(lines[0].split("resume with: ", 1)[1])
    ckpt_path = tmp_path / command[command.index("--ckpt_path") + 1]
    assert ckpt_path.name == "last.ckpt"
    epoch = int(torch.load(ckpt_path, map_location="cpu", weights_only=True)["epoch"])  # loads safely
    assert 1 <= epoch < MAX_EPOCHS - 1
    proc = _start_fit(
        tmp_path, command[2:]
    )  # the printed command (after `lit-recipes fit`), run where the first one ran
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    _assert_same_weights(reference, _final_state(tmp_path))
    run = json.loads((ckpt_path.parents[1] / "run.json").read_text())
    assert run.get("resumes"), run  # the same run folder, its resume recorded


# ----------------------------------------------------------- search: a worker killed mid-trial
def _edit(yaml: str, old: str, new: str) -> str:
    assert old in yaml
    return yaml.replace(old, new)


SEARCH_YAML = _edit(
    _edit(FIT_YAML, "max_epochs: 6", "max_epochs: 2"), "limit_train_batches: 10", "limit_train_batches: 8"
)
GRID = (0.02, 0.05)


def _search_args(cwd: Path) -> list[str]:
    return [
        "search", "--config", str(cwd / "fit.yaml"), "--search.space", str(cwd / "space.yaml"),
        "--search.trials", "2", "--search.sampler", "grid", "--search.pruner", "none", "--search.final", "none",
        "--search.dir", str(cwd / "search"), "--kfold.num_folds", "2",
    ]  # fmt: skip


def _search_outcome(cwd: Path) -> tuple[dict, dict]:
    import optuna

    study = optuna.load_study(study_name="fit-space", storage=f"sqlite:///{cwd / 'search' / 'study.db'}")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    values = {t.params["model.init_args.lr"]: [t.intermediate_values[k] for k in sorted(t.intermediate_values)]
              for t in done}  # fmt: skip
    report = json.loads((cwd / "search" / "search_results.json").read_text())
    return {"completed": sorted(t.params["model.init_args.lr"] for t in done), "values": values}, report


def test_search_worker_killed_mid_trial_is_requeued_and_ends_like_an_uninterrupted_search(
    tmp_path: Path, monkeypatch
) -> None:
    from lit_recipes.commands.main import main as cli_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ("ref", "killed"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "fit.yaml").write_text(SEARCH_YAML)
        (tmp_path / name / "space.yaml").write_text(f"model.init_args.lr: choice({GRID[0]}, {GRID[1]})\n")
    monkeypatch.chdir(tmp_path / "ref")
    assert cli_main(_search_args(tmp_path / "ref")) == 0  # the uninterrupted search, in-process
    reference, ref_report = _search_outcome(tmp_path / "ref")
    assert reference["completed"] == sorted(GRID)

    cwd = tmp_path / "killed"
    proc = subprocess.Popen(
        [str(BIN / "lit-recipes"), *_search_args(cwd)], cwd=cwd, env={**ENV, "WANDB_MODE": "disabled"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 240
    # the second trial's first fold has finished an epoch: the worker dies in the middle of that trial
    while time.time() < deadline and proc.poll() is None:
        found = glob.glob(str(cwd / "search" / "trials" / "trial_0001" / "fold_0" / "checkpoints" / "last.ckpt"))
        if found and _last_epoch(found[0]) >= 0:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the search ended before it could be killed"
    proc.kill()
    proc.wait()
    assert not (cwd / "search" / "trials" / "trial_0001" / "fold_1" / "result.json").exists()

    monkeypatch.chdir(cwd)
    assert cli_main(_search_args(cwd)) == 0  # the same command again
    got, report = _search_outcome(cwd)
    assert got["completed"] == sorted(GRID)  # every grid point completed exactly once
    assert got["values"] == reference["values"]  # fold for fold, the same numbers
    assert report["chosen_params"] == ref_report["chosen_params"]
    retried = [t for t in report["trials"] if t.get("retry_of") is not None]
    assert [t["dir"] for t in retried] == ["trial_0001"] and retried[0]["state"] == "COMPLETE"


# ------------------------------------------------------------- what counts as an interruption
def test_interrupt_signal_recognises_each_way_lightning_reports_one() -> None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lit_recipes.errors import Interrupted, interrupt_signal

    assert interrupt_signal(KeyboardInterrupt()) == signal.SIGINT
    assert interrupt_signal(SIGTERMException()) == signal.SIGTERM
    assert interrupt_signal(Interrupted(signal.SIGTERM, "lit-recipes kfold")) == signal.SIGTERM
    try:  # what Trainer.fit does after Ctrl-C: on_exception hooks, then sys.exit(1)
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)
    except SystemExit as exc:
        assert interrupt_signal(exc) == signal.SIGINT
    assert interrupt_signal(SystemExit(1)) is None and interrupt_signal(SystemExit(0)) is None
    assert interrupt_signal(ValueError("x")) is None


def test_interrupted_line_and_exit_status(capsys) -> None:
    from lit_recipes.errors import Interrupted, run_command

    def stopped(argv):
        raise Interrupted(signal.SIGTERM, "lit-recipes kfold --config a.yaml")

    assert run_command(stopped, []) == 143
    assert capsys.readouterr().err == "lit-recipes: interrupted — resume with: lit-recipes kfold --config a.yaml\n"

    def ctrl_c(argv):
        raise KeyboardInterrupt

    assert run_command(ctrl_c, []) == 130
    assert capsys.readouterr().err == "lit-recipes: interrupted\n"


def test_rerun_command_drops_kfold_overwrite() -> None:
    from lit_recipes.commands.main import _without_overwrite

    args = ["--config", "a.yaml", "--kfold.overwrite", "true", "--kfold.num_folds=3", "--kfold.overwrite=true"]
    assert _without_overwrite(args) == ["--config", "a.yaml", "--kfold.num_folds=3"]


def test_kfold_ctrl_c_names_the_same_command_and_the_rerun_resumes_the_fold(tmp_path: Path) -> None:
    (tmp_path / "fit.yaml").write_text(_edit(FIT_YAML, "max_epochs: 6", "max_epochs: 3"))
    # one fold of two (the rerun has less to do); the whole-run case differs only in what is left
    args = ["kfold", "--config", "fit.yaml", "--kfold.num_folds", "2", "--kfold.fold", "0", "--kfold.run_dir", "kf"]
    env = {**ENV, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [str(BIN / "lit-recipes"), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=_default_sigint,
    )  # fmt: skip
    last = tmp_path / "kf" / "fold_0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and _last_epoch(str(last)) < 0:
        time.sleep(0.05)
    assert proc.poll() is None, "k-fold ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("lit-recipes:")]
    expected = "lit-recipes " + " ".join(args)
    assert lines == [f"lit-recipes: interrupted — resume with: {expected}"], err[-2000:]
    assert not (tmp_path / "kf" / "fold_0" / "result.json").exists()
    epoch = _last_epoch(str(last))
    assert epoch >= 0

    rerun = subprocess.run(
        [str(BIN / "lit-recipes"), *shlex.split(expected)[1:]], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming from kf/fold_0/checkpoints/last.ckpt (epoch {epoch}" in rerun.stdout + rerun.stderr
    result = json.loads((tmp_path / "kf" / "fold_0" / "result.json").read_text())
    assert result["resumed_from"].endswith("last.ckpt") and result["epochs"] == 3
