"""Online hard-example mining (``ClassifierModule(ohem_keep=...)``): only the top losses of a batch
back-propagate, class weights are respected, and ``ohem_keep=1`` is plain training."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.module import ClassifierModule


@pytest.fixture(scope="module")
def batch():
    dm = DigitsDataModule(batch_size=16)
    dm.setup("fit")
    return next(iter(dm.eval_dataloader("train", batch_size=16)))


def make(seed=0, **kwargs):
    torch.manual_seed(seed)
    return ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=0.05, **kwargs).train()


def input_grads(module, batch):
    """Per-sample gradient norm of the loss w.r.t. each input image (lenet5 has no batch norm, so a
    sample's gradient is zero exactly when its loss is not back-propagated)."""
    images = batch[0].clone().requires_grad_(True)
    loss, _, _ = module.training_loss((images, batch[1], batch[2]))
    loss.backward()
    return images.grad.flatten(1).norm(dim=1), loss


@pytest.mark.parametrize(("keep", "min_kept", "expected"), [(0.25, 2, 4), (0.1, 5, 5), (0.5, 64, 16)])
def test_only_the_top_losses_backpropagate(batch, keep, min_kept, expected):
    module = make(ohem_keep=keep, ohem_min_kept=min_kept)
    with torch.no_grad():
        losses = module.per_sample_loss(batch)
    kept = set(torch.topk(losses, expected).indices.tolist())
    grads, _ = input_grads(module, batch)
    nonzero = set(torch.nonzero(grads > 0).flatten().tolist())
    assert nonzero == kept and len(kept) == expected
    assert min(losses[list(kept)]) >= max(losses[[i for i in range(16) if i not in kept]], default=-math.inf)


@pytest.mark.parametrize("class_weights", [None, [1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 1.0, 0.2, 1.0, 1.5]])
def test_loss_and_gradients_equal_plain_training_on_the_kept_samples(batch, class_weights):
    ohem = make(ohem_keep=0.25, ohem_min_kept=1, class_weights=class_weights)
    plain = make(class_weights=class_weights)
    plain.load_state_dict(ohem.state_dict())
    with torch.no_grad():  # the ranking uses the weighted per-sample losses
        losses = ohem.per_sample_loss(batch)
    kept = torch.topk(losses, 4).indices
    loss_ohem, _, _ = ohem.training_loss(batch)
    loss_ohem.backward()
    sub = (batch[0][kept], batch[1][kept], batch[2][kept])
    loss_plain, _, _ = plain.training_loss(sub)
    loss_plain.backward()
    w = torch.ones(10) if class_weights is None else torch.tensor(class_weights)
    reference = F.cross_entropy(plain(sub[0]), sub[1], weight=w)  # weighted mean, as PyTorch defines it
    assert loss_ohem.item() == pytest.approx(loss_plain.item(), rel=1e-6)
    assert loss_ohem.item() == pytest.approx(reference.item(), rel=1e-6)
    for (name, p), q in zip(ohem.named_parameters(), plain.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_keep_one_is_plain_training(trainer_kwargs):
    """ohem_keep=1 and an OHEM setting that keeps every sample train to the same weights."""

    def train(**kwargs):
        L.seed_everything(0, verbose=False)
        module = ClassifierModule("lenet5_bn", num_classes=10, in_channels=1, lr=0.05, **kwargs)
        trainer = L.Trainer(**{**trainer_kwargs, "limit_train_batches": 6, "limit_val_batches": 0})
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
        return module.model.state_dict()

    plain = train(ohem_keep=1.0)
    keep_all = train(ohem_keep=0.5, ohem_min_kept=32)
    pruned = train(ohem_keep=0.25, ohem_min_kept=1)
    for k, v in plain.items():
        assert torch.allclose(v.float(), keep_all[k].float(), atol=1e-5), k
    assert any(not torch.allclose(v.float(), pruned[k].float(), atol=1e-5) for k, v in plain.items())


@pytest.mark.parametrize("keep", [0.0, -0.5, 1.5])
def test_ohem_keep_outside_unit_interval(keep):
    with pytest.raises(ValueError, match=r"ohem_keep must be in \(0, 1\]"):
        ClassifierModule("lenet5", num_classes=10, in_channels=1, ohem_keep=keep)


def test_ohem_needs_mixup_off():
    with pytest.raises(ValueError, match="ohem_keep < 1 needs mixup off"):
        ClassifierModule("lenet5", num_classes=10, in_channels=1, ohem_keep=0.5, mixup_alpha=0.2)


@pytest.mark.slow  # a CLI subprocess: ~10-20 s of imports on a loaded 2-core machine
def test_cli_bad_ohem_keep_is_one_line(cli_runner):
    res = cli_runner(
        "fit",
        "--config",
        "lit_recipes/configs/digits_lenet.yaml",
        "--trainer.logger=false",
        "--model.ohem_keep=1.5",
    )
    assert res.returncode == 2
    assert "ohem_keep must be in (0, 1], got 1.5" in res.stderr
    assert "Traceback" not in res.stderr
