"""``ClassifierModule``: the LightningModule every recipe trains.

Example:
    >>> import lightning as L
    >>> from lit_recipes.module import ClassifierModule
    >>> from lit_recipes.datamodules import DigitsDataModule
    >>> model = ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=0.05)
    >>> trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False)
    >>> trainer.fit(model, datamodule=DigitsDataModule())  # doctest: +SKIP

Subclass it to change the loss or the forward pass; ``per_sample_loss`` is the single place the
unreduced loss is computed (training, OHEM, mining and diagnostics all go through it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lit_recipes.lightning_compat import attached_trainer, batch_progress, batches_that_stepped
from lit_recipes.metrics import TrainStats
from lit_recipes.models import create_model
from lit_recipes.models.init import INIT_SCHEMES, init_weights
from lit_recipes.nonfinite import NonFiniteWatch
from lit_recipes.optimization import build_optimizer, build_scheduler, parameter_groups, scheduler_config

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    """SGD, momentum 0.9, Nesterov, weight decay 5e-4 (the LR is set from ``ClassifierModule.lr``)."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


class ClassifierModule(L.LightningModule):
    """Image classifier around a zoo model (or any ``nn.Module``).

    Args:
        model: a registry name (``lit_recipes.models.list_models()``, or ``tv:<torchvision name>``)
            or an ``nn.Module`` following the zoo interface.
        num_classes: number of classes (linked from the datamodule by the CLI).
        in_channels: image channels (linked from the datamodule by the CLI).
        lr: base learning rate; the optimizer and scheduler are built from its *current* value in
            ``configure_optimizers`` (so an LR range test that changes it is never overwritten).
        optimizer: ``params -> Optimizer`` (from YAML: ``class_path: torch.optim.AdamW``).
        lr_scheduler: ``optimizer -> scheduler`` or ``None``. Missing arguments are filled in:
            ``max_lr`` (the current ``lr`` of each parameter group), ``total_steps``
            (``trainer.estimated_stepping_batches``), ``T_max`` (``max_epochs``), ``base_lr``
            (``lr / 10``). OneCycleLR, CyclicLR and ``lit_recipes.schedules.OneCycle`` step per batch,
            ReduceLROnPlateau monitors ``val/loss``, the others step per epoch.
        model_kwargs: extra arguments of the registry factory.
        init: weight init of conv/linear layers: one of ``INIT_SCHEMES``.
        label_smoothing: CE label smoothing.
        mixup_alpha: mixup's Beta(α, α) (0: off). Training accuracy is then measured against the
            dominant label of each mixed pair.
        dropout: dropout before the classifier head.
        class_weights: ``None``, ``"balanced"`` (inverse class frequency of the training split,
            normalised to mean 1) or one weight per class.
        no_decay_norm_bias: no weight decay on normalisation weights and biases.
        pretrained: a state_dict file (e.g. from ``lit-recipes export``) loaded into the backbone;
            the head is re-initialised when its shape differs.
        head_lr_mult: LR multiplier of the head's parameters (fine-tuning: new layers learn faster).
        freeze_backbone_epochs: keep the backbone frozen for this many epochs.
        ohem_keep: online hard-example mining: back-propagate only this top fraction of per-sample
            losses of each batch (1.0: off).
        ohem_min_kept: OHEM keeps at least this many samples per batch.
        tta_flip: average the logits of the image and its horizontal flip at val/test/predict.
        channels_last: run the model in channels-last memory format.
        compile: ``torch.compile`` the model for training and evaluation.
        on_nonfinite: what a non-finite (nan/inf) training loss does. ``"stop"`` (default): the run
            stops with :class:`~lit_recipes.errors.NonFiniteLoss` (``lit-recipes``: one error line,
            exit 2) at once on the CPU, at the next logged step on a GPU (:mod:`lit_recipes.nonfinite`); no
            checkpoint with non-finite weights is ever written, so ``last.ckpt`` is the last finite
            one. ``"warn"``: one warning, training goes on (the weights usually turn nan).
    """

    def __init__(
        self,
        model: str | nn.Module = "lenet5",
        num_classes: int = 10,
        in_channels: int = 3,
        lr: float = 0.05,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        model_kwargs: dict[str, Any] | None = None,
        init: str = "default",
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        dropout: float = 0.0,
        class_weights: Literal["balanced"] | list[float] | None = None,
        no_decay_norm_bias: bool = True,
        pretrained: str | None = None,
        head_lr_mult: float = 1.0,
        freeze_backbone_epochs: int = 0,
        ohem_keep: float = 1.0,
        ohem_min_kept: int = 8,
        tta_flip: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        on_nonfinite: Literal["stop", "warn"] = "stop",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if init not in INIT_SCHEMES:
            raise ValueError(f"init must be one of {', '.join(INIT_SCHEMES)}, got {init!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0, got {mixup_alpha}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if head_lr_mult <= 0:
            raise ValueError(f"head_lr_mult must be > 0, got {head_lr_mult}")
        if not 0.0 < ohem_keep <= 1.0:
            raise ValueError(f"ohem_keep must be in (0, 1], got {ohem_keep}")
        if ohem_keep < 1.0 and mixup_alpha > 0:
            raise ValueError("ohem_keep < 1 needs mixup off (mixup_alpha: 0): mixed samples have no single loss")
        if on_nonfinite not in ("stop", "warn"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'warn', got {on_nonfinite!r}")
        if isinstance(class_weights, str) and class_weights != "balanced":
            raise ValueError(f"class_weights must be 'balanced', a list or null, got {class_weights!r}")
        if isinstance(class_weights, list | tuple) and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} values for {num_classes} classes")
        self.save_hyperparameters(
            ignore=["optimizer", "lr_scheduler"] + (["model"] if isinstance(model, nn.Module) else [])
        )

        self.num_classes = num_classes
        self.in_channels = in_channels
        self.lr = float(lr)
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.label_smoothing = label_smoothing
        self.mixup_alpha = mixup_alpha
        self.class_weights_spec = class_weights
        self.no_decay_norm_bias = no_decay_norm_bias
        self.head_lr_mult = head_lr_mult
        self.freeze_backbone_epochs = freeze_backbone_epochs
        self.ohem_keep = ohem_keep
        self.ohem_min_kept = ohem_min_kept
        self.tta_flip = tta_flip
        self.use_channels_last = channels_last
        self.use_compile = compile
        self.on_nonfinite = on_nonfinite
        self._nonfinite = NonFiniteWatch()  # the first non-finite training loss (see _watch_loss)

        if isinstance(model, str):
            self.model_name = model
            self.model_kwargs = dict(model_kwargs or {})
            self.model = create_model(model, num_classes=num_classes, in_channels=in_channels, **self.model_kwargs)
        else:
            self.model_name = type(model).__name__
            self.model_kwargs = {}
            self.model = model
        if dropout > 0:
            if not hasattr(self.model, "set_head_dropout"):
                raise ValueError(f"dropout needs a model with set_head_dropout(); {self.model_name} has none")
            self.model.set_head_dropout(dropout)
        init_weights(self.model, init)
        if pretrained:
            self.load_pretrained(pretrained)
        self.register_buffer("loss_weights", self._fixed_class_weights(), persistent=False)

        def stage_metrics() -> MetricCollection:
            metrics = {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)}
            if num_classes > 5:
                metrics["acc5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro", validate_args=False)
            return MetricCollection(metrics)

        # the training step's statistics in one metric (one update per step: the step is the hot path)
        self.train_stats = TrainStats(top_k=(1, 5) if num_classes > 5 else (1,))
        self.val_metrics = stage_metrics().clone(prefix="val/")
        self.test_metrics = stage_metrics().clone(prefix="test/")
        self.val_class_acc = MulticlassAccuracy(num_classes, average=None, validate_args=False)
        self.test_class_acc = MulticlassAccuracy(num_classes, average=None, validate_args=False)
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self._compiled: Callable | None = None
        self.per_class_acc: dict[str, torch.Tensor] = {}
        self.class_names: list[str] | None = None  # from the datamodule at setup (or the checkpoint)
        self.data_meta: dict[str, Any] | None = None

    # ------------------------------------------------------------------ model plumbing
    def _fixed_class_weights(self) -> torch.Tensor:
        if isinstance(self.class_weights_spec, list | tuple):
            return torch.tensor(self.class_weights_spec, dtype=torch.float32)
        return torch.ones(self.num_classes)

    def load_pretrained(self, path: str | Path) -> None:
        """Load a state_dict file into the model; keys of the head whose shape differs are skipped
        and the head re-initialised (fine-tuning on new classes)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights not found: {path}")
        from lit_recipes.checkpoints import safe_torch_load

        state = safe_torch_load(path)  # weights_only=True; a pickle or a truncated file: one line naming it
        if isinstance(state, dict) and "state_dict" in state:  # a Lightning checkpoint
            state = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
        own = self.model.state_dict()
        mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        unknown = [k for k in state if k not in own]
        if unknown:
            raise ValueError(f"{path}: keys not in {self.model_name}: {', '.join(unknown[:5])}")
        head = {k for k, _ in self.head_parameters(named=True)}
        bad = [k for k in mismatched if k not in head]
        if bad:
            raise ValueError(f"{path}: backbone shapes differ from {self.model_name} at {', '.join(bad[:5])}")
        self.model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
        if mismatched:
            self.model.reset_classifier(self.num_classes)
            rank_zero_info(f"pretrained: loaded {path}, head re-initialised for {self.num_classes} classes")

    def head_parameters(self, named: bool = False):
        head = getattr(self.model, "classifier", None)
        if head is None:
            return []
        prefix = next(n for n, m in self.model.named_modules() if m is head)
        params = [(f"{prefix}.{n}", p) for n, p in head.named_parameters()]
        return params if named else [p for _, p in params]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        net = self._compiled if self._compiled is not None else self.model
        return net(x)

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for evaluation, averaged with the horizontal flip when ``tta_flip``."""
        logits = self(x)
        if self.tta_flip:
            logits = (logits + self(torch.flip(x, dims=[-1]))) / 2
        return logits

    # ------------------------------------------------------------------ losses
    def per_sample_loss(self, batch: Batch, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Unreduced training loss of every sample of ``batch`` (class weights and label smoothing
        included, no mixup). Mode (train/eval) and grad are the caller's."""
        images, targets = batch[0], batch[1]
        if logits is None:
            logits = self(images)
        return F.cross_entropy(
            logits.float(),
            targets,
            weight=self.loss_weights,
            label_smoothing=self.label_smoothing,
            reduction="none",
        )

    def _reduce(self, losses: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # weighted CE means divide by the total weight, as F.cross_entropy(reduction="mean") does
        weights = self.loss_weights[targets]
        return losses.sum() / weights.sum().clamp_min(1e-12)

    def training_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, logits, targets_for_accuracy)`` of a training batch (mixup and OHEM applied)."""
        images, targets = batch[0], batch[1]
        if self.mixup_alpha > 0:
            lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
            perm = torch.randperm(images.size(0), device=images.device)
            logits = self(lam * images + (1 - lam) * images[perm])
            loss_a = self._reduce(self.per_sample_loss((images, targets), logits), targets)
            loss_b = self._reduce(self.per_sample_loss((images, targets[perm]), logits), targets[perm])
            return lam * loss_a + (1 - lam) * loss_b, logits, targets if lam >= 0.5 else targets[perm]
        logits = self(images)
        losses = self.per_sample_loss(batch, logits)
        if self.ohem_keep < 1.0:
            k = min(len(losses), max(self.ohem_min_kept, math.ceil(self.ohem_keep * len(losses))))
            keep = torch.topk(losses.detach(), k).indices
            return self._reduce(losses[keep], targets[keep]), logits, targets
        return self._reduce(losses, targets), logits, targets

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, logits, acc_targets = self.training_loss(batch)
        last = self._last_train_batch(batch_idx)
        shown = last or self._step_loss_shown(batch_idx)
        self._watch_loss(loss.detach(), check=shown)
        self.train_stats.update(logits.detach(), acc_targets, loss.detach())
        if shown:
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        if last:
            # accumulated every batch, computed (synced across ranks) and logged once per epoch: each self.log
            # costs Lightning bookkeeping, and logging a Metric object walks its state (bench_overhead.py)
            stats = self.train_stats.compute()
            self.train_stats.reset()
            self.log_dict({f"train/{k}": v for k, v in stats.items()}, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def _watch_loss(self, loss: torch.Tensor, check: bool) -> None:
        """Remember the first non-finite training loss; act on it (``on_nonfinite``) when checked
        (:class:`~lit_recipes.nonfinite.NonFiniteWatch`: no device sync per step on a GPU)."""
        self._nonfinite.watch(attached_trainer(self), loss, check, self.on_nonfinite)

    def _step_loss_shown(self, batch_idx: int) -> bool:
        """Whether anything reads this step's ``train/loss_step``: the loggers (every
        ``log_every_n_steps``) or a progress-bar refresh. Each ``self.log`` costs ~0.3 ms of Lightning
        bookkeeping (it walks the stored result to move it to the device: bench_overhead.py), so the
        steps nobody reads are not logged."""
        trainer = attached_trainer(self)
        if trainer is None:
            return True
        every = int(trainer.log_every_n_steps or 0)
        # Lightning's own logging cadence (LoggerConnector.should_update_logs)
        if trainer.should_stop or (every > 0 and (batches_that_stepped(trainer) + 1) % every == 0):
            return True
        bar = trainer.progress_bar_callback
        rate = int(getattr(bar, "refresh_rate", 1) or 0) if bar is not None and bar.is_enabled else 0
        return rate > 0 and (batch_idx + 1) % rate == 0

    def _last_train_batch(self, batch_idx: int) -> bool:
        trainer = attached_trainer(self)
        if trainer is None:
            return True
        progress = batch_progress(trainer)
        n = trainer.num_training_batches
        last = progress.is_last_batch or (isinstance(n, int) and batch_idx + 1 >= n)
        # a run that stops mid-epoch (max_steps) must still log its metrics
        if trainer.max_steps > 0 and trainer.global_step + 1 >= trainer.max_steps:
            last = True
        return last

    def _eval_step(self, batch: Batch, stage: str) -> torch.Tensor:
        images, targets = batch[0], batch[1]
        logits = self.predict_logits(images)
        losses = F.cross_entropy(logits.float(), targets, reduction="none")
        getattr(self, f"{stage}_loss").update(losses.mean(), weight=targets.numel())
        getattr(self, f"{stage}_metrics").update(logits, targets)
        getattr(self, f"{stage}_class_acc").update(logits, targets)
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(getattr(self, f"{stage}_metrics"), on_step=False, on_epoch=True, prog_bar=stage == "val")
        return logits

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Returns the logits, so callbacks (confusion matrix, …) need no second forward pass."""
        return self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test")

    def _log_class_acc(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_class_acc")
        per_class = metric.compute()
        metric.reset()
        self.per_class_acc[stage] = per_class.detach().cpu()
        names = class_metric_names(self.class_names, self.num_classes)
        for c, acc in enumerate(per_class):
            self.log(f"{stage}/acc_class_{names[c]}", acc, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_class_acc("val")

    def on_test_epoch_end(self) -> None:
        self._log_class_acc("test")

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        probs = torch.softmax(self.predict_logits(batch[0]).float(), dim=-1)
        out = {"probs": probs, "preds": probs.argmax(-1), "indices": batch[2]}
        if len(batch) > 1:
            out["targets"] = batch[1]
        return out

    # ------------------------------------------------------------------ lifecycle
    def setup(self, stage: str) -> None:
        trainer = attached_trainer(self)
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if dm is not None:
            from lit_recipes.exported import data_metadata

            meta = data_metadata(dm)  # class names, input size, mean/std: saved in checkpoints for export
            if meta is not None and len(meta["class_names"]) == self.num_classes:
                self.data_meta = meta
                self.class_names = meta["class_names"]
        if self.class_weights_spec == "balanced":
            if dm is None or not hasattr(dm, "class_counts"):
                raise ValueError("class_weights: balanced needs a datamodule with class_counts()")
            counts = torch.as_tensor(dm.class_counts(), dtype=torch.float32)
            w = counts.sum() / (len(counts) * counts.clamp_min(1))
            self.loss_weights = (w / w.mean()).to(self.device)
        if self.use_channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.use_compile and self._compiled is None:
            # a plain attribute, not a submodule: checkpoints keep only model.* keys (no _compiled._orig_mod.*)
            object.__setattr__(self, "_compiled", torch.compile(self.model))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds the data metadata (for export); with ``on_nonfinite="stop"`` refuses (raises
        :class:`~lit_recipes.errors.NonFiniteLoss`) to save non-finite weights, so no checkpoint on
        disk ever holds them (one sync per save)."""
        from lit_recipes.exported import CKPT_KEY

        if self.on_nonfinite == "stop":
            params = [p.detach() for p in self.parameters()]
            if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
                self._nonfinite.act(attached_trainer(self), self.on_nonfinite, weights_nonfinite=True)

        if self.data_meta is not None:
            checkpoint[CKPT_KEY] = self.data_meta

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from lit_recipes.exported import CKPT_KEY

        meta = checkpoint.get(CKPT_KEY)
        if meta and len(meta.get("class_names", [])) == self.num_classes:
            self.data_meta = meta
            self.class_names = list(meta["class_names"])

    def on_train_epoch_start(self) -> None:
        if self.freeze_backbone_epochs > 0:
            frozen = self.current_epoch < self.freeze_backbone_epochs
            head = {id(p) for p in self.head_parameters()}
            for p in self.model.parameters():
                if id(p) not in head:
                    p.requires_grad_(not frozen)

    # ------------------------------------------------------------------ optimisation (lit_recipes.optimization)
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Groups by (head | backbone) x (decay | no decay), each with an ``lr_mult``."""
        return parameter_groups(self.model, self.head_parameters(), self.no_decay_norm_bias, self.head_lr_mult)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optimizer_factory, self.lr, self.model, self.parameter_groups)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler_config(self._build_scheduler(optimizer))}

    def _build_scheduler(self, optimizer: torch.optim.Optimizer):
        return build_scheduler(self.scheduler_factory, optimizer, attached_trainer(self))

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)


def class_metric_names(class_names: list[str] | None, num_classes: int) -> list[str]:
    """Metric-safe suffixes of the per-class metrics (``val/acc_class_<name>``): each class name
    with every character outside ``[A-Za-z0-9_.-]`` replaced by ``_``; the class index where
    there are no names, a name sanitises to nothing, or two names sanitise alike."""
    import re

    if not class_names or len(class_names) != num_classes:
        return [str(i) for i in range(num_classes)]
    clean = [re.sub(r"[^A-Za-z0-9_.-]+", "_", str(n)).strip("_") for n in class_names]
    seen: dict[str, int] = {}
    for n in clean:
        seen[n] = seen.get(n, 0) + 1
    return [n if n and seen[n] == 1 else f"{n}_{i}" if n else str(i) for i, n in enumerate(clean)]


def export_state(module: ClassifierModule) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, spec)`` of the module's model: what ``lit-recipes export`` writes."""
    spec = {
        "model": module.model_name,
        "num_classes": module.num_classes,
        "in_channels": module.in_channels,
        "model_kwargs": module.model_kwargs,
    }
    return {k: v.detach().cpu() for k, v in module.model.state_dict().items()}, spec
