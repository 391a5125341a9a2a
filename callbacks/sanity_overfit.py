"""The overfit-a-tiny-subset run: a copy of the network, regularisation off, a few hundred
full-batch steps on a stratified handful of training samples.

The tiny run is a plain PyTorch loop, not a nested ``Trainer``: it must run inside another
Trainer's ``on_fit_start`` (under DDP too), and it needs nothing of Lightning's machinery. The
verdict (probes, causes) is :mod:`lit_recipes.callbacks.sanity_rules`; the callback that runs it at
the start of ``fit`` is :class:`lit_recipes.callbacks.sanity.OverfitSanityCheck`.
"""

from __future__ import annotations

import math
from copy import deepcopy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn
from torch.utils.data import DataLoader

from lit_recipes.callbacks.doctor_measure import stratified_subset
from lit_recipes.callbacks.sanity_rules import SanityResult, curve_causes, probe_inputs
from lit_recipes.contracts import IndexedDataModule, check_contract
from lit_recipes.lightning_compat import detached_trainer
from lit_recipes.plumbing import eval_mode

DEFAULT_PER_CLASS = 5
DATA_NEEDS = ("num_classes", "train_targets", "train_indices", "eval_dataloader")


def network_copy(module: nn.Module) -> nn.Module:
    """A deep copy of the module's network (``module.model`` when there is one) with dropout off."""
    net = getattr(module, "model", None)
    if not isinstance(net, nn.Module):
        net = module
    with detached_trainer(net):  # never deep-copy a Trainer along with a LightningModule
        copy = deepcopy(net)
    if hasattr(copy, "set_head_dropout"):
        copy.set_head_dropout(0.0)
    for m in copy.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
    return copy


def sanity_optimizer(module: nn.Module, params, lr: float) -> torch.optim.Optimizer:
    """The module's optimizer (``optimizer_factory``; Adam for a plain ``nn.Module``) at a constant
    ``lr`` with weight decay off."""
    factory = getattr(module, "optimizer_factory", None)
    opt = factory(params) if callable(factory) else torch.optim.Adam(params, lr=lr)
    for group in opt.param_groups:
        group["lr"] = lr
        if "weight_decay" in group:
            group["weight_decay"] = 0.0
    return opt


def overfit_tiny_subset(
    module: nn.Module,
    datamodule: Any,
    n: int | None = None,
    max_steps: int = 300,
    loss_threshold: float = 0.05,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    check_every: int = 10,
) -> SanityResult:
    """Train a copy of ``module``'s network on ``n`` training samples with regularisation off.

    Args:
        module: a ``ClassifierModule`` (its ``model``, ``lr`` and ``optimizer_factory`` are used) or
            any ``nn.Module`` classifier (trained with Adam).
        datamodule: a lit_recipes datamodule (``train_targets``, ``train_indices``, ``eval_dataloader``).
        n: samples in the subset (default: 5 per class); at least the number of classes.
        max_steps: optimizer steps at most (the run stops as soon as it passes).
        loss_threshold: PASS needs the subset loss below this and 100 % accuracy.
        lr: constant LR (default: the module's ``lr``; ``1e-3`` for a plain ``nn.Module``).
        batch_size: default: the whole subset in one batch (up to 256).
        seed: seed of the subset choice and of the shuffling.
        device: default: the module's device.
        check_every: steps between checks of the PASS condition.

    Raises:
        ValueError: ``n`` smaller than the number of classes, or a bad ``max_steps``/``loss_threshold``.
        ContractError: the datamodule lacks ``num_classes``, ``train_targets``, ``train_indices`` or
            ``eval_dataloader`` (not a lit_recipes datamodule).
    """
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"sanity: max_steps must be an integer >= 1, got {max_steps!r}")
    if not (isinstance(loss_threshold, int | float) and loss_threshold > 0):
        raise ValueError(f"sanity: loss_threshold must be > 0, got {loss_threshold!r}")
    if lr is not None and not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"sanity: lr must be a positive number, got {lr!r}")
    check_contract(datamodule, IndexedDataModule, DATA_NEEDS, role="data", user="sanity")
    if getattr(datamodule, "train_indices", None) is None and hasattr(datamodule, "setup"):
        datamodule.setup("fit")
    num_classes = int(datamodule.num_classes)
    n = DEFAULT_PER_CLASS * num_classes if n is None else n
    if not isinstance(n, int) or n < num_classes:
        raise ValueError(f"sanity: n={n} is smaller than the number of classes ({num_classes}); use n >= {num_classes}")
    train_idx = np.asarray(datamodule.train_indices)
    if n > len(train_idx):
        rank_zero_info(f"sanity: n={n} > {len(train_idx)} training samples; using all of them")
    subset = stratified_subset(np.asarray(datamodule.train_targets), train_idx, n, seed)
    dataset = datamodule.eval_dataloader("train", indices=subset).dataset  # eval transform: no augmentation
    expected = np.asarray(datamodule.train_targets)[subset]
    lr = float(lr if lr is not None else getattr(module, "lr", 1e-3))
    if device is None:
        device = next(module.parameters()).device if any(True for _ in module.parameters()) else "cpu"
    device = torch.device(device)

    with isolate_rng():
        torch.manual_seed(seed)
        probes, causes, images, labels = probe_inputs(dataset, expected)
        net = network_copy(module).to(device)
        params = [p for p in net.parameters() if p.requires_grad]
        if not params:
            raise ValueError("sanity: the model has no trainable parameters")
        opt = sanity_optimizer(module, params, lr)
        bs = batch_size or min(len(dataset), 256)
        loader = DataLoader(dataset, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(seed))

        def evaluate() -> tuple[float, float]:
            with eval_mode(net), torch.no_grad():
                loss_sum, correct, count = 0.0, 0, 0
                for x, y, _ in DataLoader(dataset, batch_size=bs):
                    logits = net(x.to(device)).float()
                    y = y.to(device)
                    loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                    correct += int((logits.argmax(-1) == y).sum())
                    count += len(y)
            return loss_sum / count, correct / count

        initial_loss, _ = evaluate()
        losses: list[float] = []
        step = 0
        diverged = False
        final_loss, final_acc = initial_loss, 0.0
        net.train()
        while step < max_steps and not diverged:
            for x, y, _ in loader:
                loss = F.cross_entropy(net(x.to(device)).float(), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                step += 1
                diverged = not math.isfinite(losses[-1])
                if diverged or step % check_every == 0 or step >= max_steps:
                    break
            if not diverged and (step % check_every == 0 or step >= max_steps):
                final_loss, final_acc = evaluate()
                if final_loss < loss_threshold and final_acc == 1.0:
                    break
        if diverged:
            final_loss, final_acc = float("nan"), evaluate()[1]

    passed = math.isfinite(final_loss) and final_loss < loss_threshold and final_acc == 1.0
    if not passed:
        causes += curve_causes(losses, initial_loss, final_loss, final_acc, lr, loss_threshold, max_steps, bool(causes))
    return SanityResult(
        passed=passed,
        n=len(subset),
        steps=step,
        lr=lr,
        initial_loss=initial_loss,
        final_loss=final_loss,
        final_acc=final_acc,
        loss_threshold=float(loss_threshold),
        losses=losses,
        causes=causes,
        probes=probes,
    )


__all__ = ["DEFAULT_PER_CLASS", "network_copy", "overfit_tiny_subset", "sanity_optimizer"]
