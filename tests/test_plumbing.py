"""The plumbing written once (plumbing.py, artifacts.atomic_write), the contracts (contracts.py) and
the rule that only lightning_compat.py touches Lightning's private members."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest
import torch

from lit_recipes import lightning_compat as compat
from lit_recipes.artifacts import atomic_write
from lit_recipes.contracts import (
    ContractError,
    FoldTooSmallError,
    IndexedDataModule,
    RecipeModule,
    check_contract,
    contract_members,
    missing_members,
)
from lit_recipes.plumbing import eval_mode, finish_wandb, gather_by_index, swapped_argv

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("lit_recipes", "callbacks", "datamodules")


# ------------------------------------------------------------------------------------ eval_mode
def test_eval_mode_restores_every_submodule_flag_also_on_error() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Dropout())
    net.train()
    net[1].eval()  # a frozen BN inside a training model
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, False, True]
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == [True, True, False, True]


def test_eval_mode_several_modules() -> None:
    a, b = torch.nn.Dropout(), torch.nn.Dropout()
    b.eval()
    with eval_mode(a, b):
        assert not a.training and not b.training
    assert a.training and not b.training


# ------------------------------------------------------------------------------------ argv
def test_swapped_argv_hides_and_restores() -> None:
    saved = list(sys.argv)
    with swapped_argv(["--x", "1"]):
        assert sys.argv[1:] == ["--x", "1"] and sys.argv[0] == saved[0]
    assert sys.argv == saved
    with pytest.raises(KeyError), swapped_argv():
        assert sys.argv[1:] == []
        raise KeyError
    assert sys.argv == saved


# ------------------------------------------------------------------------------------ gather
class FakeStrategy:
    """``all_gather`` as seen from rank 0 of a 2-process run: the other rank's tensors (``[index, *values]``,
    unpadded) are given up front; call ``k`` gathers the ``k``-th of them, padded like rank 0's."""

    def __init__(self, other_rank: list[torch.Tensor]) -> None:
        self.world_size = 2
        self.other = other_rank
        self.calls = 0

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        src = self.other[self.calls]
        fill = -1 if self.calls == 0 else 0  # index padding is -1, value padding 0 (as gather_by_index does)
        padded = torch.cat([src, src.new_full((t.shape[0] - src.shape[0], *src.shape[1:]), fill)])
        self.calls += 1
        return torch.stack([t, padded])


def test_gather_by_index_single_process_is_identity() -> None:
    i, v = torch.tensor([3, 1]), torch.tensor([[0.5, 0.5], [0.1, 0.9]])
    out = gather_by_index(None, i, v, total=2)
    assert out[0] is i and out[1] is v


def test_gather_by_index_pads_gathers_and_drops_padding() -> None:
    # 5 samples on 2 ranks (strided shards): rank 0 has 0, 2, 4; rank 1 has 1, 3
    strategy = FakeStrategy([torch.tensor([1, 3]), torch.tensor([[1.0, 1.0], [3.0, 3.0]])])
    i0, v0 = torch.tensor([0, 2, 4]), torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, 4.0]])
    idx, val = gather_by_index(strategy, i0, v0, total=5)
    assert idx.tolist() == [0, 2, 4, 1, 3]
    assert val[:, 0].tolist() == [0.0, 2.0, 4.0, 1.0, 3.0]


def test_gather_by_index_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="2 values for 3 indices"):
        gather_by_index(None, torch.arange(3), torch.zeros(2), total=3)
    strategy = FakeStrategy([torch.arange(1)])
    with pytest.raises(ValueError, match="larger than ceil"):
        gather_by_index(strategy, torch.arange(4), total=5)


# ------------------------------------------------------------------------------------ W&B
def test_finish_wandb_without_a_run_imports_nothing(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    finish_wandb(None)
    assert "wandb" not in sys.modules

    class Run:
        finished = False

        def finish(self) -> None:
            self.finished = True

    run = Run()
    finish_wandb(run)
    assert run.finished


def test_finish_wandb_trainer_skips_unstarted_loggers_and_other_ranks(tmp_path) -> None:
    from lightning.pytorch.loggers import WandbLogger

    class Trainer:
        def __init__(self, loggers, zero=True) -> None:
            self.loggers, self.is_global_zero = loggers, zero

    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    finish_wandb(Trainer([logger]))  # never started: must not start a run
    assert not compat.wandb_experiment_started(logger)

    class Started:
        finished = 0

        def finish(self) -> None:
            Started.finished += 1

    logger._experiment = Started()  # what WandbLogger.experiment sets once the run exists
    finish_wandb(Trainer([logger], zero=False))
    assert Started.finished == 0
    finish_wandb(Trainer([logger]))
    assert Started.finished == 1


# ------------------------------------------------------------------------------------ atomic
def test_atomic_write_replaces_whole_file_and_keeps_old_on_error(tmp_path) -> None:
    path = tmp_path / "a" / "x.bin"
    atomic_write(path, lambda fh: fh.write(b"one"))
    assert path.read_bytes() == b"one"

    def fail(fh) -> None:
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"one"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.bin"]  # no temporary file left
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


# ------------------------------------------------------------------------------------ contracts
def test_contracts_hold_for_the_project_classes() -> None:
    from lit_recipes.datamodules import ClassificationDataModule, DigitsDataModule
    from lit_recipes.module import ClassifierModule

    assert missing_members(DigitsDataModule(), IndexedDataModule) == []
    assert missing_members(ClassifierModule(model="lenet5_bn", num_classes=10), RecipeModule) == []
    methods = [n for n in contract_members(IndexedDataModule) if callable(getattr(IndexedDataModule, n, None))]
    assert all(callable(getattr(ClassificationDataModule, n)) for n in methods)


def test_check_contract_names_every_missing_member_in_one_line() -> None:
    class Half:
        num_classes = 3

    with pytest.raises(ContractError) as err:
        check_contract(Half(), IndexedDataModule, ("num_classes", "eval_dataloader", "set_fold"), user="X")
    assert err.value.missing == ("eval_dataloader", "set_fold")
    msg = str(err.value)
    assert "\n" not in msg and "data.eval_dataloader, data.set_fold" in msg and "Half" in msg
    with pytest.raises(ContractError, match="but there is no object"):
        check_contract(None, RecipeModule, ("lr",), role="model", user="LRRangeTest")
    with pytest.raises(ValueError, match="declares no set_foldd"):
        missing_members(Half(), IndexedDataModule, ("set_foldd",))
    check_contract(Half(), IndexedDataModule, ("num_classes",))  # nothing missing: no error


def test_fold_too_small_is_typed_and_raised_by_the_split() -> None:
    import numpy as np

    from lit_recipes.datamodules.splits import fold_indices

    targets = np.array([0] * 10 + [1] * 2)
    with pytest.raises(FoldTooSmallError) as err:
        fold_indices(targets, 0, 3, stratified=True, seed=0)
    assert (err.value.num_folds, err.value.class_index, err.value.count) == (3, 1, 2)
    assert isinstance(err.value, ValueError)


# ------------------------------------------------------------------------------------ compat
def test_lightning_compat_against_the_installed_lightning(tmp_path) -> None:
    """Every wrapper reads a member that exists in this Lightning version, with the meaning we use."""
    import lightning as L

    from lit_recipes.module import ClassifierModule

    module = ClassifierModule(model="lenet5_bn", num_classes=10)
    assert compat.attached_trainer(module) is None
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    module.trainer = trainer
    assert compat.attached_trainer(module) is trainer
    with compat.detached_trainer(module):
        assert compat.attached_trainer(module) is None
    assert compat.attached_trainer(module) is trainer
    assert compat.batches_that_stepped(trainer) == 0
    progress = compat.batch_progress(trainer)
    assert progress.current.ready == 0 and hasattr(progress, "is_last_batch")
    assert callable(trainer.fit_loop.setup_data)  # what setup_fit_data calls
    compat.request_train_dataloader_reload(trainer)  # before fit: nothing to tear down, no error
    assert trainer.fit_loop._combined_loader is None
    assert compat.epoch_batches_done(trainer) is False  # no batch has run
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class Mine(TorchCheckpointIO):
        pass

    compat.replace_default_checkpoint_io(trainer.strategy, Mine)
    assert type(trainer.strategy.checkpoint_io) is Mine
    compat.replace_default_checkpoint_io(trainer.strategy, TorchCheckpointIO)  # a non-default plugin stays
    assert type(trainer.strategy.checkpoint_io) is Mine


# ------------------------------------------------------------------------------------ the rule
PRIVATE_ATTRS = {
    "_trainer",
    "_experiment",
    "_instantiate_trainer",
    "_batches_that_stepped",
    "_results",
    "_logger_connector",
    "_checkpoint_connector",
    "_data_connector",
    "_accelerator_connector",
    "_callback_connector",
    "_parser",
    "_get",
    "_current_fx_name",
}
LOOP_ATTRS = {"fit_loop", "epoch_loop", "validate_loop", "test_loop", "predict_loop"}


def private_lightning_accesses(path: Path) -> list[str]:
    """``file:line attr`` for every access to a Lightning-private member or a loop internal, and
    every import of a private name from Lightning."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (node.attr in PRIVATE_ATTRS or node.attr in LOOP_ATTRS):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr == "_experiment":
                continue
            found.append(f"{path.relative_to(REPO)}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("lightning", "pytorch_lightning")):
            if (node.module or "").split(".")[-1].startswith("_") or any(a.name.startswith("_") for a in node.names):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} from {node.module} import ...")
    return found


def test_private_lightning_access_only_in_lightning_compat() -> None:
    offenders = []
    for folder in SOURCE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.name == "lightning_compat.py":
                continue
            offenders += private_lightning_accesses(path)
    assert offenders == [], "route these through lit_recipes/lightning_compat.py:\n" + "\n".join(offenders)


def test_the_rule_sees_a_private_access() -> None:
    bad = REPO / "tests" / "_tmp_private_access_probe.py"
    try:
        bad.write_text("def f(trainer, m):\n    trainer.fit_loop.setup_data()\n    return m._trainer\n")
        got = private_lightning_accesses(bad)
    finally:
        bad.unlink(missing_ok=True)
    assert sorted(g.split(" ")[1] for g in got) == ["._trainer", ".fit_loop"]


def test_no_source_file_over_500_lines() -> None:
    long = []
    for folder in SOURCE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            n = len(path.read_text().splitlines())
            if n > 500:
                long.append(f"{path.relative_to(REPO)}: {n} lines")
    assert long == [], "split these:\n" + "\n".join(long)


def test_a_contract_error_at_the_command_boundary_is_bad_input(capsys) -> None:
    from lit_recipes.errors import run_command

    def command(argv: list[str]) -> int:
        check_contract(object(), IndexedDataModule, ("set_fold",), user="lit-recipes kfold")
        return 0

    assert run_command(command, []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "lit-recipes kfold needs data.set_fold, which object lacks" in err[0]
