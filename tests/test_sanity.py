"""`lit-recipes sanity` / OverfitSanityCheck: overfit a tiny subset; PASS on a correct setup, FAIL
with the right cause on deliberately broken ones."""

from __future__ import annotations

import json
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch

from lit_recipes.callbacks import OverfitSanityCheck
from lit_recipes.callbacks.sanity import SanityCheckError, overfit_tiny_subset
from lit_recipes.callbacks.sanity_overfit import network_copy
from lit_recipes.callbacks.sanity_rules import curve_causes, probe_inputs
from lit_recipes.contracts import ContractError
from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.datamodules.sources import Source, array_source
from lit_recipes.lightning_compat import attached_trainer
from lit_recipes.module import ClassifierModule
from lit_recipes.schedules import OneCycle

CONFIG = "lit_recipes/configs/digits_lenet.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ConstantImages(DigitsDataModule):
    """Every image is the same grey square: the inputs carry no signal."""

    def load_sources(self):
        pool, val, test, names = super().load_sources()
        images = np.full((len(pool), 8, 8, 1), 128, dtype=np.uint8)
        return array_source(images, pool.targets), val, test, names


class RedrawnLabels(DigitsDataModule):
    """A buggy pipeline: each read of an image draws a fresh random label."""

    def load_sources(self):
        pool, val, test, names = super().load_sources()
        rng = np.random.default_rng(0)

        def get(i):
            image, _ = pool.get(i)
            return image, int(rng.integers(10))

        return Source(get=get, targets=pool.targets), val, test, names


def default_module(**kwargs) -> ClassifierModule:
    """The digits recipe's module: LeNet-5 BN, SGD with weight decay, OneCycle, plus regularisers
    the check must switch off."""
    kwargs = {
        "lr": 0.05,
        "init": "kaiming_normal",
        "lr_scheduler": partial(OneCycle, div=10),
        "optimizer": partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
        **kwargs,
    }
    return ClassifierModule("lenet5_bn", num_classes=10, in_channels=1, **kwargs)


def test_pass_on_correct_setup_with_regularisation_switched_off():
    L.seed_everything(0, verbose=False)
    module = default_module(dropout=0.5, label_smoothing=0.2, mixup_alpha=0.4)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    result = overfit_tiny_subset(module, DigitsDataModule(), max_steps=200)
    assert result.passed, result.report()
    assert result.n == 50 and result.final_acc == 1.0 and result.final_loss < 0.05
    assert result.initial_loss > 1.5 and result.steps < 200  # stopped as soon as it passed
    assert result.report().startswith("sanity PASS")
    assert result.causes == []
    # the user's model and random stream are untouched, and its regularisers are still on
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert torch.equal(torch.rand(3), expected_next)
    assert module.model.head_drop.p == 0.5 and module.label_smoothing == 0.2


def test_fail_constant_images():
    L.seed_everything(0, verbose=False)
    result = overfit_tiny_subset(default_module(), ConstantImages(normalize="none"), max_steps=60)
    assert not result.passed and result.final_acc <= 0.2
    assert result.probes["max_abs_difference_between_images"] == 0.0
    assert any("no signal" in c and "identical" in c for c in result.causes), result.causes
    assert "FAIL" in result.report() and "likely causes" in result.report()


def test_fail_labels_redrawn_every_epoch():
    L.seed_everything(0, verbose=False)
    result = overfit_tiny_subset(default_module(), RedrawnLabels(), max_steps=100)
    assert not result.passed and result.final_acc < 0.5
    assert result.probes["labels_changed_between_reads"] > 30
    assert "not tied to their images" in result.causes[0] and "re-drawn" in result.causes[0]


def test_fail_absurd_lr_diverges():
    L.seed_everything(0, verbose=False)
    result = overfit_tiny_subset(default_module(lr=1e4), DigitsDataModule(), max_steps=50)
    assert not result.passed
    assert any("diverged" in c and "LR far too high" in c for c in result.causes), result.causes


def test_bad_input_n_smaller_than_classes():
    with pytest.raises(ValueError, match=r"sanity: n=5 is smaller than the number of classes \(10\)"):
        overfit_tiny_subset(default_module(), DigitsDataModule(), n=5)
    with pytest.raises(ValueError, match="OverfitSanityCheck: on_fail must be"):
        OverfitSanityCheck(on_fail="ignore")


def test_callback_stops_a_broken_setup_before_training(trainer_kwargs):
    L.seed_everything(0, verbose=False)
    module = default_module()
    trainer = L.Trainer(**trainer_kwargs, callbacks=[OverfitSanityCheck(max_steps=60)])
    with pytest.raises(SanityCheckError, match="sanity FAIL.*not tied to their images"):
        trainer.fit(module, datamodule=RedrawnLabels())
    assert trainer.global_step == 0


def test_callback_passes_then_trains(trainer_kwargs):
    L.seed_everything(0, verbose=False)
    check = OverfitSanityCheck(max_steps=200)
    trainer = L.Trainer(**{**trainer_kwargs, "limit_train_batches": 2, "limit_val_batches": 1}, callbacks=[check])
    trainer.fit(default_module(), datamodule=DigitsDataModule())
    assert check.result.passed and trainer.global_step == 2


def test_cli_pass(cli_runner, tmp_path):
    out = tmp_path / "sanity.json"
    ok = cli_runner("sanity", "--config", CONFIG, "--json", str(out), env={"OMP_NUM_THREADS": "1"})
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "sanity PASS" in ok.stdout
    saved = json.loads(out.read_text())
    assert saved["passed"] and saved["final_acc"] == 1.0 and saved["losses"][-1] < saved["losses"][0]


def test_cli_bad_n_is_one_clear_line(capsys):
    from lit_recipes.commands.main import main

    assert main(["sanity", "--config", CONFIG, "--n", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "lit-recipes: error: sanity: n=5 is smaller than the number of classes (10); use n >= 10"


def test_fail_data_not_normalised():
    """mean/std given on the 0-255 scale to images read as 0-1: inputs of mean -2 and std 0.006."""
    L.seed_everything(0, verbose=False)
    result = overfit_tiny_subset(default_module(), DigitsDataModule(normalize=[[120.0], [60.0]]), max_steps=60)
    assert not result.passed
    assert result.probes["input_mean"] == pytest.approx(-2.0, abs=0.05) and result.probes["input_std"] < 0.02
    assert result.causes[0].startswith("the data is not normalised: inputs have mean -1.99 and std 0.00628")
    assert "as expected with the data problem above" in result.causes[-1]  # the flat loss is blamed on the data


def test_fail_lr_far_too_low():
    L.seed_everything(0, verbose=False)
    result = overfit_tiny_subset(default_module(lr=1e-7), DigitsDataModule(), max_steps=30)
    assert not result.passed and result.final_loss > 0.8 * result.initial_loss
    assert len(result.causes) == 1 and "loss barely moved" in result.causes[0]
    assert "LR far too low (lr=1e-07)" in result.causes[0]


def test_cli_fail_exit_code_and_cause(cli_runner, tmp_path):
    out = tmp_path / "sanity.json"
    proc = cli_runner(
        "sanity", "--config", CONFIG, "--lr", "1e-7", "--max_steps", "30", "--json", str(out),
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]  # FAIL is exit status 1 (bad input is 2)
    assert "sanity FAIL" in proc.stdout and "LR far too low (lr=1e-07)" in proc.stdout
    saved = json.loads(out.read_text())
    assert not saved["passed"] and saved["steps"] == 30 and saved["final_acc"] < 0.5


# ---------------------------------------------------------------------------------- the verdict (no Trainer)
class Pairs(torch.utils.data.Dataset):
    """``(image, label, index)`` triples; ``labels`` may be a callable (re-drawn at every read)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        label = self.labels(i) if callable(self.labels) else self.labels[i]
        return self.images[i], label, i


def test_probes_find_misaligned_labels_and_unnormalised_inputs():
    images = torch.rand(6, 1, 4, 4) * 255
    probes, causes, stacked, labels = probe_inputs(Pairs(images, [0, 1, 2, 0, 1, 2]), np.array([0, 1, 2, 0, 2, 1]))
    assert probes["labels_differing_from_targets"] == 2 and probes["labels_changed_between_reads"] == 0
    assert causes[0].startswith("labels are misaligned: 2 of 6 labels differ")
    assert causes[1].startswith("the data is not normalised: inputs have mean 1")
    assert torch.equal(stacked, images) and labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_probes_pass_clean_inputs_and_flag_constant_images():
    torch.manual_seed(0)
    clean = Pairs(torch.randn(6, 1, 4, 4), [0, 1, 0, 1, 0, 1])
    assert probe_inputs(clean, np.array([0, 1, 0, 1, 0, 1]))[1] == []
    flat = Pairs(torch.arange(6.0).view(6, 1, 1, 1).expand(6, 1, 4, 4).clone() / 6, [0, 1, 0, 1, 0, 1])
    assert probe_inputs(flat, np.array([0, 1, 0, 1, 0, 1]))[1] == [
        "the inputs carry little signal: every image is constant (one value per image)"
    ]


@pytest.mark.parametrize(
    "losses, final, data_problem, start",
    [
        ([2.3, float("nan")], float("nan"), False, "the loss diverged (non-finite at step 2): LR far too high"),
        ([2.3, 9.0], 9.0, False, "the loss diverged (2.300 -> 9.000)"),
        ([2.3, 2.2], 2.2, True, "the loss barely moved (2.300 -> 2.200), as expected with the data problem"),
        ([2.3, 2.2], 2.2, False, "the loss barely moved (2.300 -> 2.200): LR far too low (lr=0.1)"),
        ([2.3, 0.4], 0.4, False, "the loss fell (2.300 -> 0.400) but not below 0.05 with 90.0% accuracy in 300"),
    ],
)
def test_curve_causes(losses, final, data_problem, start):
    causes = curve_causes(losses, 2.3, final, 0.9, 0.1, 0.05, 300, data_problem)
    assert len(causes) == 1 and causes[0].startswith(start), causes


def test_network_copy_detaches_the_trainer_and_switches_dropout_off(trainer_kwargs):
    class Bare(L.LightningModule):  # no .model: the LightningModule itself is copied
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))

    module = Bare()
    trainer = L.Trainer(**trainer_kwargs)
    module.trainer = trainer  # attached, as inside fit
    copy = network_copy(module)
    assert attached_trainer(module) is trainer and attached_trainer(copy) is None  # the Trainer was not copied
    assert module.body[1].p == 0.5 and copy.body[1].p == 0.0
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), module.state_dict().values()))


def test_a_datamodule_without_the_index_contract_is_a_contract_error():
    class Plain:
        num_classes = 10

    with pytest.raises(ContractError, match=r"^sanity needs data\.train_targets, data\.train_indices, "):
        overfit_tiny_subset(default_module(), Plain())
