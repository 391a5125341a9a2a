"""Overfit a tiny subset before any long run: if the loss does not go to ~0, something is wrong.

:func:`overfit_tiny_subset` takes the user's module and datamodule, turns augmentation (the eval
transform is used for training), dropout, weight decay, mixup and label smoothing off, and trains
a *copy* of the network on ``n`` samples (a few per class, stratified) for up to ``max_steps``
full-batch steps at the configured LR (constant, no schedule). PASS: the loss on the subset fell
below ``loss_threshold`` and accuracy is 100 %. FAIL comes with the likely causes, found by
probes run before training (labels read twice, images compared, input statistics) and by the
shape of the loss curve. :class:`OverfitSanityCheck` runs it at the start of ``fit``;
``lit-recipes sanity --config ...`` runs it from the command line.

The tiny run is a plain PyTorch loop, not a nested ``Trainer``: it must run inside another
Trainer's ``on_fit_start`` (under DDP too), and it needs nothing of Lightning's machinery.
"""

from __future__ import annotations

import math
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn
from torch.utils.data import DataLoader
from typing_extensions import override

from lit_recipes.callbacks.gap_monitor import stratified_subset

DEFAULT_PER_CLASS = 5


class SanityCheckError(ValueError):
    """The tiny-subset overfitting check failed (raised by :class:`OverfitSanityCheck`)."""


@dataclass
class SanityResult:
    """Outcome of :func:`overfit_tiny_subset`."""

    passed: bool
    n: int
    steps: int
    lr: float
    initial_loss: float
    final_loss: float
    final_acc: float
    loss_threshold: float
    losses: list[float] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    probes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: PASS/FAIL with the numbers."""
        word = "PASS" if self.passed else "FAIL"
        return (
            f"sanity {word}: {self.n} samples, {self.steps} steps at lr {self.lr:g}: loss {self.initial_loss:.4f} -> "
            f"{self.final_loss:.4f} (threshold {self.loss_threshold:g}), accuracy {self.final_acc:.1%}"
        )

    def report(self) -> str:
        """The summary line, then one line per likely cause on FAIL."""
        lines = [self.summary()]
        if not self.passed:
            lines.append("likely causes:")
            lines += [f"  - {c}" for c in self.causes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _network_copy(module: nn.Module) -> nn.Module:
    """A deep copy of the module's network (``module.model`` when there is one) with dropout off."""
    net = getattr(module, "model", None)
    if not isinstance(net, nn.Module):
        net = module
    trainer = getattr(net, "_trainer", None)
    if trainer is not None:  # never deep-copy a Trainer along with a LightningModule
        net._trainer = None
    try:
        copy = deepcopy(net)
    finally:
        if trainer is not None:
            net._trainer = trainer
    if hasattr(copy, "set_head_dropout"):
        copy.set_head_dropout(0.0)
    for m in copy.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
    return copy


def _optimizer(module: nn.Module, params, lr: float) -> torch.optim.Optimizer:
    factory = getattr(module, "optimizer_factory", None)
    opt = factory(params) if callable(factory) else torch.optim.Adam(params, lr=lr)
    for group in opt.param_groups:
        group["lr"] = lr
        if "weight_decay" in group:
            group["weight_decay"] = 0.0
    return opt


def _probe_inputs(dataset, expected: np.ndarray) -> tuple[dict[str, Any], list[str], torch.Tensor, torch.Tensor]:
    """Read the subset twice; compare labels between reads and with ``expected``; check images."""
    first = [dataset[i] for i in range(len(dataset))]
    second_labels = np.asarray([int(dataset[i][1]) for i in range(len(dataset))])
    images = torch.stack([torch.as_tensor(x[0]).float() for x in first])
    labels = np.asarray([int(x[1]) for x in first])
    causes = []
    redrawn = int((labels != second_labels).sum())
    misaligned = int((labels != expected).sum())
    if redrawn:
        causes.append(
            f"labels are not tied to their images: {redrawn} of {len(labels)} labels changed between two reads of "
            "the same samples (re-drawn or shuffled by the data pipeline)"
        )
    elif misaligned:
        causes.append(
            f"labels are misaligned: {misaligned} of {len(labels)} labels differ from the datamodule's train_targets "
            "(the pipeline pairs images with the wrong labels)"
        )
    flat = images.flatten(1)
    spread = float((flat - flat[0]).abs().max()) if len(flat) else 0.0
    per_image_std = flat.std(dim=1) if flat.shape[1] > 1 else torch.zeros(len(flat))
    if spread < 1e-6:
        causes.append(f"the inputs carry no signal: all {len(flat)} images are identical")
    elif float(per_image_std.max()) < 1e-6:
        causes.append("the inputs carry little signal: every image is constant (one value per image)")
    mean, std = float(flat.mean()), float(flat.std())
    if abs(mean) > 3 or std > 10 or (spread >= 1e-6 and std < 0.02):
        causes.append(f"the data is not normalised: inputs have mean {mean:.3g} and std {std:.3g} (expected ~0 and ~1)")
    probes = {
        "labels_changed_between_reads": redrawn,
        "labels_differing_from_targets": misaligned,
        "max_abs_difference_between_images": spread,
        "input_mean": mean,
        "input_std": std,
    }
    return probes, causes, images, torch.as_tensor(labels)


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
    """
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"sanity: max_steps must be an integer >= 1, got {max_steps!r}")
    if not (isinstance(loss_threshold, int | float) and loss_threshold > 0):
        raise ValueError(f"sanity: loss_threshold must be > 0, got {loss_threshold!r}")
    if lr is not None and not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"sanity: lr must be a positive number, got {lr!r}")
    for attr in ("train_targets", "train_indices", "eval_dataloader"):
        if not hasattr(datamodule, attr):
            raise ValueError(f"sanity: needs a lit_recipes datamodule with {attr}; got {type(datamodule).__name__}")
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
        probes, causes, images, labels = _probe_inputs(dataset, expected)
        net = _network_copy(module).to(device)
        params = [p for p in net.parameters() if p.requires_grad]
        if not params:
            raise ValueError("sanity: the model has no trainable parameters")
        opt = _optimizer(module, params, lr)
        bs = batch_size or min(len(dataset), 256)
        loader = DataLoader(dataset, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(seed))

        def evaluate() -> tuple[float, float]:
            net.eval()
            with torch.no_grad():
                loss_sum, correct, count = 0.0, 0, 0
                for x, y, _ in DataLoader(dataset, batch_size=bs):
                    logits = net(x.to(device)).float()
                    y = y.to(device)
                    loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                    correct += int((logits.argmax(-1) == y).sum())
                    count += len(y)
            net.train()
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
        causes += _curve_causes(
            losses, initial_loss, final_loss, final_acc, lr, loss_threshold, max_steps, bool(causes)
        )
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


def _curve_causes(
    losses: list[float],
    initial: float,
    final: float,
    acc: float,
    lr: float,
    threshold: float,
    max_steps: int,
    data_problem: bool = False,
) -> list[str]:
    if not losses or not math.isfinite(losses[-1]) or not math.isfinite(final) or final > 1.5 * initial:
        where = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        at = f" (non-finite at step {where + 1})" if where is not None else f" ({initial:.3f} -> {final:.3f})"
        return [f"the loss diverged{at}: LR far too high (lr={lr:g}; run `lit-recipes lr-find`)"]
    if final > 0.8 * initial and data_problem:
        return [f"the loss barely moved ({initial:.3f} -> {final:.3f}), as expected with the data problem above"]
    if final > 0.8 * initial:
        return [
            f"the loss barely moved ({initial:.3f} -> {final:.3f}): LR far too low (lr={lr:g}) or gradients not "
            "flowing (frozen layers, a detached graph)"
        ]
    return [
        f"the loss fell ({initial:.3f} -> {final:.3f}) but not below {threshold:g} with {acc:.1%} accuracy in "
        f"{max_steps} steps: a model that cannot fit (too little capacity) or an LR off by 10x; "
        "try more --max_steps, a bigger model, or `lit-recipes lr-find`"
    ]


class OverfitSanityCheck(Callback):
    """Run :func:`overfit_tiny_subset` at the start of ``fit`` and stop (or warn) on FAIL.

    It trains a copy of the network, so the real run starts from untouched weights, under
    ``isolate_rng`` so the random stream is unchanged. Rank zero runs it and broadcasts the
    result; every rank then raises (or warns) together. Skipped when resuming from a checkpoint.

    Args:
        n: samples in the tiny subset (default: 5 per class; at least the number of classes).
        max_steps: optimizer steps at most.
        loss_threshold: PASS needs the subset loss below this and 100 % accuracy.
        lr: constant LR of the check (default: the module's ``lr``).
        on_fail: ``"raise"`` (:class:`SanityCheckError`, a ``ValueError``) or ``"warn"``.
        seed: seed of the subset and of the shuffling.

    Example::

        trainer = L.Trainer(callbacks=[OverfitSanityCheck()])
        trainer.fit(model, datamodule=dm)  # raises before the first epoch if the setup cannot learn
    """

    def __init__(
        self,
        n: int | None = None,
        max_steps: int = 300,
        loss_threshold: float = 0.05,
        lr: float | None = None,
        on_fail: Literal["raise", "warn"] = "raise",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if n is not None and (not isinstance(n, int) or n < 2):
            raise ValueError(f"OverfitSanityCheck: n must be an integer >= 2 or null, got {n!r}")
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"OverfitSanityCheck: max_steps must be an integer >= 1, got {max_steps!r}")
        if not (isinstance(loss_threshold, int | float) and loss_threshold > 0):
            raise ValueError(f"OverfitSanityCheck: loss_threshold must be > 0, got {loss_threshold!r}")
        if on_fail not in ("raise", "warn"):
            raise ValueError(f"OverfitSanityCheck: on_fail must be 'raise' or 'warn', got {on_fail!r}")
        self.n = n
        self.max_steps = max_steps
        self.loss_threshold = loss_threshold
        self.lr = lr
        self.on_fail = on_fail
        self.seed = seed
        self.result: SanityResult | None = None

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path:
            return
        outcome: dict[str, Any] | None = None
        error: str | None = None
        if trainer.is_global_zero:
            try:
                outcome = overfit_tiny_subset(
                    pl_module,
                    trainer.datamodule,
                    n=self.n,
                    max_steps=self.max_steps,
                    loss_threshold=self.loss_threshold,
                    lr=self.lr,
                    seed=self.seed,
                    device=pl_module.device,
                ).to_dict()
            except ValueError as err:
                error = str(err)
        outcome, error = trainer.strategy.broadcast((outcome, error), src=0)
        if error is not None:
            raise ValueError(error)
        self.result = SanityResult(**outcome)
        if self.result.passed:
            rank_zero_info(self.result.summary())
            return
        if self.on_fail == "raise":
            raise SanityCheckError(f"{self.result.summary()} - likely causes: {'; '.join(self.result.causes)}")
        rank_zero_warn(self.result.report())


__all__ = ["OverfitSanityCheck", "SanityCheckError", "SanityResult", "overfit_tiny_subset"]
