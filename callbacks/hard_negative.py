r"""Hard-negative mining: offline mining rounds that re-weight the training sampler.

Train, score the training pool with the current model (eval mode, eval transforms, no
augmentation), find the examples it gets wrong, sample them ``boost`` times more often for the
following epochs, and repeat until the monitored metric stops improving. In the detection setting
(``negative_classes`` given) only the negatives are scored and the "hard" ones are the false
positives; with ``initial_negative_fraction < 1`` training starts on every positive and a fraction
of the negatives, and each round pulls the false positives of the held-back negatives in (the
"ship detection" recipe: train on the ships and some sea, run the model over the rest of the sea,
add what it mistakes for ships).

Example::

    import lightning as L
    from lit_recipes.callbacks import HardNegativeMining
    from lit_recipes.datamodules import DigitsDataModule
    from lit_recipes.module import ClassifierModule

    mining = HardNegativeMining(every_n_epochs=2, boost=4.0, patience=2)
    trainer = L.Trainer(max_epochs=10, callbacks=[mining])
    trainer.fit(ClassifierModule("lenet5_bn", num_classes=10, in_channels=1), datamodule=DigitsDataModule())
    mining.history[-1]["num_hard"]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from lit_recipes.artifacts import log_image, run_dir, save_figure, save_json

#: what a datamodule must offer (DESIGN.md §3, "DataModule" and "Batch")
INDEX_CONTRACT = ("train_targets", "train_indices", "class_names", "set_sample_weights", "eval_dataloader")


def request_train_dataloader_reload(trainer: pl.Trainer) -> None:
    """Make Lightning rebuild the training dataloader at the start of the next epoch.

    In Lightning 2.6 ``_FitLoop.on_advance_start`` calls ``setup_data()`` before every epoch, and
    ``setup_data`` returns early while ``fit_loop._combined_loader`` is set and
    ``reload_dataloaders_every_n_epochs`` does not ask for a reload. Dropping the combined loader
    (after tearing its fetcher down, which ``setup_data`` would otherwise leak) makes the next
    ``setup_data`` call ``datamodule.train_dataloader()`` again, which builds the sampler from the
    new weights; Lightning then sets the sampler's epoch as usual. Every rank must call this (the
    rebuild has a barrier). Safe at ``on_fit_start`` and ``on_train_epoch_end``.
    """
    fit_loop = trainer.fit_loop
    if getattr(fit_loop, "_data_fetcher", None) is not None:
        fit_loop._data_fetcher.teardown()
        fit_loop._data_fetcher = None
    fit_loop._combined_loader = None


class HardNegativeMining(Callback):
    r"""Offline hard-example / hard-negative mining through the datamodule's weighted sampler.

    At the end of every ``every_n_epochs``-th training epoch (and/or when the monitored metric has
    not improved for ``mine_on_plateau`` epochs) the callback scores its pool: the current training
    split, or only its samples of ``negative_classes``. Each rank scores its strided shard; the
    per-sample losses and predictions are gathered by sample index, so every rank builds the same
    weights and hands them to ``datamodule.set_sample_weights`` (the DDP-safe ``WeightedEpochSampler``),
    then the training dataloader is rebuilt for the next epoch. Weights are
    ``base × included × (boost if hard)``, where ``base`` are the datamodule's sample weights at fit
    start (e.g. class balancing) or ones. Mining stops after ``patience`` rounds without an
    improvement of ``monitor``; the weights of the last round stay.

    Args:
        every_n_epochs: mine after every n-th training epoch (0: only on plateau).
        mine_on_plateau: also mine when ``monitor`` has not improved for this many epochs (0: off).
        negative_classes: class names (or indices) of the negatives. When given, only training
            samples of these classes are scored and a "hard negative" is one predicted as any
            other class (a false positive).
        selection: ``"misclassified"`` (misclassified samples, or false positives with
            ``negative_classes``) or ``"top_loss"`` (the top ``fraction`` of the pool by loss).
        fraction: share of the pool selected by ``"top_loss"``.
        boost: sampling-weight multiplier of the hard examples (> 0).
        initial_negative_fraction: two-stage start: train first on every positive and this seeded
            fraction of the negatives (the others get weight 0); each round adds the held-back
            negatives that are hard. Needs ``negative_classes``.
        monitor: metric deciding whether mining still helps (``None``: the pool error measured by
            the round itself). Read from ``trainer.callback_metrics``; a missing key falls back to
            the pool error with a warning.
        mode: ``"min"`` or ``"max"`` for ``monitor``.
        min_delta: minimum change of ``monitor`` that counts as an improvement.
        patience: stop mining after this many rounds without improvement.
        max_rounds: stop after this many rounds (``None``: no limit).
        top_k: hardest examples shown per round (PNG grid in the run directory, W&B table); 0: none.
        seed: seed of the held-back negative choice (default: the datamodule's ``seed``).
        verbose: one info line per round.

    Attributes:
        history: one dict per scoring pass (``round``, ``epoch``, ``pool_size``, ``pool_error``,
            ``num_errors``, ``num_hard``, ``num_repeat`` (already hard last round), ``num_new``,
            ``num_included``, ``monitor``, ``applied``, ``seconds``, ``hardest``).
        scored_indices: the pool indices this rank scored in the last round (its shard).

    Raises:
        ValueError: bad arguments (at construction), an unknown negative class or a datamodule
            without the index contract (at setup).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        mine_on_plateau: int = 0,
        negative_classes: list[str | int] | None = None,
        selection: Literal["misclassified", "top_loss"] = "misclassified",
        fraction: float = 0.1,
        boost: float = 5.0,
        initial_negative_fraction: float = 1.0,
        monitor: str | None = "val/loss",
        mode: Literal["min", "max"] = "min",
        min_delta: float = 0.0,
        patience: int = 2,
        max_rounds: int | None = None,
        top_k: int = 16,
        seed: int | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(every_n_epochs, int) or every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be an int >= 0, got {every_n_epochs!r}")
        if not isinstance(mine_on_plateau, int) or mine_on_plateau < 0:
            raise ValueError(f"mine_on_plateau must be an int >= 0, got {mine_on_plateau!r}")
        if every_n_epochs == 0 and mine_on_plateau == 0:
            raise ValueError("HardNegativeMining never mines: set every_n_epochs >= 1 or mine_on_plateau >= 1")
        if selection not in ("misclassified", "top_loss"):
            raise ValueError(f"selection must be 'misclassified' or 'top_loss', got {selection!r}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if not (isinstance(boost, int | float) and math.isfinite(boost) and boost > 0):
            raise ValueError(f"boost must be a finite number > 0, got {boost!r}")
        if not 0.0 < initial_negative_fraction <= 1.0:
            raise ValueError(f"initial_negative_fraction must be in (0, 1], got {initial_negative_fraction}")
        if initial_negative_fraction < 1.0 and not negative_classes:
            raise ValueError("initial_negative_fraction < 1 needs negative_classes (which samples are negatives?)")
        if negative_classes is not None and len(negative_classes) == 0:
            raise ValueError("negative_classes must name at least one class (or be null)")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an int >= 1, got {patience!r}")
        if max_rounds is not None and max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1 or null, got {max_rounds}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        self.every_n_epochs = every_n_epochs
        self.mine_on_plateau = mine_on_plateau
        self.negative_classes = list(negative_classes) if negative_classes is not None else None
        self.selection = selection
        self.fraction = fraction
        self.boost = float(boost)
        self.initial_negative_fraction = initial_negative_fraction
        self.monitor = monitor
        self.mode = mode
        self.min_delta = min_delta
        self.patience = patience
        self.max_rounds = max_rounds
        self.top_k = top_k
        self.seed = seed
        self.verbose = verbose

        # resolved at setup
        self._negative_ids: list[int] | None = None
        self.scored_indices: np.ndarray | None = None
        # state (state_dict)
        self.round = 0
        self.best: float | None = None
        self.wait = 0
        self.stopped = False
        self.epoch_best: float | None = None
        self.epochs_since_improvement = 0
        self.base_weights: torch.Tensor | None = None
        self.included: torch.Tensor | None = None
        self.hard: torch.Tensor | None = None
        self.history: list[dict[str, Any]] = []
        self._restored = False
        self._warned_monitor = False

    # ------------------------------------------------------------------ setup and validation
    @staticmethod
    def _check_datamodule(dm: Any) -> None:
        if dm is None:
            raise ValueError(
                "HardNegativeMining needs a datamodule that follows the index contract of DESIGN.md §3 "
                "(batches (images, targets, indices), " + ", ".join(INDEX_CONTRACT) + "); trainer.fit got none"
            )
        missing = [name for name in INDEX_CONTRACT if not hasattr(dm, name)]
        if missing:
            raise ValueError(
                f"HardNegativeMining needs a datamodule that follows the index contract of DESIGN.md §3 "
                f"(batches (images, targets, indices), {', '.join(INDEX_CONTRACT)}), e.g. a "
                f"lit_recipes ClassificationDataModule; {type(dm).__name__} lacks {', '.join(missing)}"
            )

    def _resolve_negative_classes(self, class_names: Sequence[str]) -> list[int] | None:
        if self.negative_classes is None:
            return None
        names = [str(c) for c in class_names]
        ids: list[int] = []
        for c in self.negative_classes:
            if isinstance(c, str) and c in names:
                ids.append(names.index(c))
            elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names):
                ids.append(c)
            else:
                raise ValueError(f"negative_classes: unknown class {c!r}; the classes are {', '.join(names)}")
        ids = sorted(set(ids))
        if len(ids) == len(names):
            raise ValueError("negative_classes names every class: no positives are left")
        return ids

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        self._check_datamodule(dm)
        self._negative_ids = self._resolve_negative_classes(dm.class_names)

    def _seed(self, dm: Any) -> int:
        return int(self.seed if self.seed is not None else getattr(dm, "seed", 0))

    def _train_mask(self, dm: Any) -> torch.Tensor:
        mask = torch.zeros(len(dm.train_targets), dtype=torch.bool)
        mask[torch.as_tensor(np.asarray(dm.train_indices), dtype=torch.long)] = True
        return mask

    def _negative_mask(self, dm: Any) -> torch.Tensor:
        targets = torch.as_tensor(np.asarray(dm.train_targets), dtype=torch.long)
        if self._negative_ids is None:
            return torch.ones(len(targets), dtype=torch.bool)
        return torch.isin(targets, torch.tensor(self._negative_ids))

    def candidates(self, dm: Any) -> np.ndarray:
        """Pool indices scored by a round: the training split (its negatives with ``negative_classes``)."""
        mask = self._train_mask(dm) & self._negative_mask(dm)
        return torch.nonzero(mask).flatten().numpy()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        n = len(dm.train_targets)
        if self._restored and self.included is not None and len(self.included) == n:
            self._apply_weights(trainer, dm)
            return
        current = getattr(dm, "sample_weights", None)
        self.base_weights = torch.ones(n, dtype=torch.double) if current is None else current.clone().double()
        self.included = torch.ones(n, dtype=torch.bool)
        self.hard = torch.zeros(n, dtype=torch.bool)
        if self.initial_negative_fraction < 1.0:
            negatives = torch.nonzero(self._train_mask(dm) & self._negative_mask(dm)).flatten().numpy()
            keep = max(1, round(self.initial_negative_fraction * len(negatives)))
            rng = np.random.default_rng(self._seed(dm))
            held = rng.choice(negatives, size=len(negatives) - keep, replace=False)
            self.included[torch.as_tensor(held, dtype=torch.long)] = False
            self._apply_weights(trainer, dm)
            if self.verbose:
                rank_zero_info(
                    f"HardNegativeMining: two-stage start with {keep} of {len(negatives)} negatives "
                    f"({len(held)} held back for mining)"
                )

    def weights(self) -> torch.Tensor:
        """The sampling weights over the pool that the current state implies."""
        w = self.base_weights.clone() * self.included.double()
        w[self.hard] *= self.boost
        return w

    def _apply_weights(self, trainer: pl.Trainer, dm: Any) -> None:
        dm.set_sample_weights(self.weights())
        request_train_dataloader_reload(trainer)

    # ------------------------------------------------------------------ when to mine
    def _improved(self, current: float, best: float | None, mode: str | None = None) -> bool:
        if best is None:
            return True
        if (mode or self.mode) == "min":
            return current < best - self.min_delta
        return current > best + self.min_delta

    def _monitor_value(self, trainer: pl.Trainer) -> float | None:
        if self.monitor is None:
            return None
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned_monitor:
                rank_zero_warn(
                    f"HardNegativeMining: monitor {self.monitor!r} is not among the logged metrics "
                    f"({', '.join(sorted(trainer.callback_metrics)) or 'none'}); using the pool error instead"
                )
                self._warned_monitor = True
            return None
        return float(value)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.stopped:
            return
        # every rank sees rank 0's value, so every rank takes the same decisions
        value = trainer.strategy.broadcast(self._monitor_value(trainer), src=0)
        epoch = trainer.current_epoch
        plateau = False
        if value is not None:
            if self._improved(value, self.epoch_best):
                self.epoch_best, self.epochs_since_improvement = value, 0
            else:
                self.epochs_since_improvement += 1
            plateau = self.mine_on_plateau > 0 and self.epochs_since_improvement >= self.mine_on_plateau
        periodic = self.every_n_epochs > 0 and (epoch + 1) % self.every_n_epochs == 0
        if periodic or plateau:
            self.epochs_since_improvement = 0
            self.mine(trainer, pl_module, monitor_value=value)

    # ------------------------------------------------------------------ one round
    def mine(self, trainer: pl.Trainer, pl_module: pl.LightningModule, monitor_value: float | None = None) -> None:
        """Score the pool, decide whether mining still helps, and apply the new weights.

        Must run on every rank (it gathers across ranks)."""
        dm = trainer.datamodule
        start = time.perf_counter()
        cand = self.candidates(dm)
        n = len(dm.train_targets)
        losses, preds = self._score(trainer, pl_module, dm, cand, n)
        seconds = time.perf_counter() - start

        targets = torch.as_tensor(np.asarray(dm.train_targets), dtype=torch.long)
        cand_t = torch.as_tensor(cand, dtype=torch.long)
        if self._negative_ids is None:
            wrong = preds[cand_t] != targets[cand_t]
        else:  # a false positive: a negative predicted as any non-negative class
            wrong = ~torch.isin(preds[cand_t], torch.tensor(self._negative_ids))
        errors = torch.zeros(n, dtype=torch.bool)
        errors[cand_t[wrong]] = True
        if self.selection == "misclassified":
            new_hard = errors.clone()
        else:
            k = max(1, math.ceil(self.fraction * len(cand)))
            top = cand_t[torch.topk(losses[cand_t], k).indices]
            new_hard = torch.zeros(n, dtype=torch.bool)
            new_hard[top] = True
        pool_error = float(wrong.float().mean()) if len(cand) else 0.0
        if monitor_value is not None:
            current, mode = monitor_value, self.mode
        else:
            current, mode = pool_error, "min"
        if self._improved(current, self.best, mode):
            self.best, self.wait = current, 0
        else:
            self.wait += 1
        stop = bool(trainer.strategy.reduce_boolean_decision(self.wait >= self.patience, all=False))

        order = cand_t[torch.argsort(losses[cand_t], descending=True, stable=True)]
        hardest = order[: self.top_k].tolist()
        entry: dict[str, Any] = {
            "round": self.round + (0 if stop else 1),
            "epoch": trainer.current_epoch,
            "pool_size": len(cand),
            "pool_error": pool_error,
            "num_errors": int(errors.sum()),
            "num_hard": int(new_hard.sum()),
            "num_repeat": int((new_hard & self.hard).sum()),
            "num_new": int((new_hard & ~self.included).sum()),
            "monitor": current,
            "applied": False,
            "seconds": seconds,
            "hardest": [
                {"index": i, "target": int(targets[i]), "pred": int(preds[i]), "loss": float(losses[i])}
                for i in hardest
            ],
        }
        if stop:
            self.stopped = True
            rank_zero_info(
                f"HardNegativeMining: stopped mining after round {self.round} "
                f"(no improvement of {self.monitor or 'the pool error'} in {self.patience} rounds); weights kept"
            )
        elif int(new_hard.sum()) == 0:
            rank_zero_warn(
                f"HardNegativeMining: round {self.round + 1}: no hard examples among the {len(cand)} pool samples; "
                "sampling weights kept"
            )
            self.round += 1
        else:
            self.round += 1
            self.hard = new_hard
            self.included |= new_hard
            self._apply_weights(trainer, dm)
            entry["applied"] = True
        if not stop and self.max_rounds is not None and self.round >= self.max_rounds:
            self.stopped = True
            rank_zero_info(f"HardNegativeMining: max_rounds={self.max_rounds} reached; weights kept")
        entry["num_included"] = int((self.weights() > 0)[self._train_mask(dm)].sum())
        self.history.append(entry)
        self._log(trainer, pl_module, entry)
        if trainer.is_global_zero:
            self._write_views(trainer, dm, entry)
        if self.verbose:
            rank_zero_info(
                f"HardNegativeMining round {entry['round']} (epoch {entry['epoch']}): pool error "
                f"{pool_error:.4f}, {entry['num_hard']} hard ({entry['num_repeat']} already hard, "
                f"{entry['num_new']} newly included), {entry['num_included']} samples in play, {seconds:.2f}s"
            )

    @torch.no_grad()
    def _score(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, dm: Any, cand: np.ndarray, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample loss and prediction of every candidate, gathered from all ranks (index-aligned
        tensors of length ``n``; NaN / -1 outside the candidates)."""
        rank, world = trainer.global_rank, trainer.world_size
        loader = dm.eval_dataloader("pool", indices=cand, rank=rank, world_size=world)
        device = pl_module.device
        modes = {m: m.training for m in pl_module.modules()}
        idx_parts, loss_parts, pred_parts = [], [], []
        pl_module.eval()
        try:
            with isolate_rng(), trainer.precision_plugin.forward_context():
                for batch in loader:
                    images, batch_targets, indices = (t.to(device) for t in batch[:3])
                    if hasattr(pl_module, "predict_logits"):
                        logits = pl_module.predict_logits(images)
                    else:
                        logits = pl_module(images)
                    if hasattr(pl_module, "per_sample_loss"):
                        loss = pl_module.per_sample_loss((images, batch_targets, indices), logits)
                    else:
                        loss = F.cross_entropy(logits.float(), batch_targets, reduction="none")
                    idx_parts.append(indices.long())
                    loss_parts.append(loss.float())
                    pred_parts.append(logits.argmax(-1).long())
        finally:
            for m, was_training in modes.items():
                m.train(was_training)
        empty_l, empty_f = torch.empty(0, dtype=torch.long, device=device), torch.empty(0, device=device)
        idx = torch.cat(idx_parts) if idx_parts else empty_l
        loss = torch.cat(loss_parts) if loss_parts else empty_f
        pred = torch.cat(pred_parts) if pred_parts else empty_l
        self.scored_indices = idx.cpu().numpy()
        if world > 1:
            length = math.ceil(len(cand) / world)  # strided shards differ by at most one sample
            pad = length - len(idx)
            idx = torch.cat([idx, idx.new_full((pad,), -1)])
            loss = torch.cat([loss, loss.new_zeros(pad)])
            pred = torch.cat([pred, pred.new_full((pad,), -1)])
            idx, loss, pred = (trainer.strategy.all_gather(t).reshape(-1) for t in (idx, loss, pred))
            keep = idx >= 0
            idx, loss, pred = idx[keep], loss[keep], pred[keep]
        losses = torch.full((n,), float("nan"))
        preds = torch.full((n,), -1, dtype=torch.long)
        losses[idx.cpu()] = loss.cpu()
        preds[idx.cpu()] = pred.cpu()
        return losses, preds

    # ------------------------------------------------------------------ reporting
    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, entry: dict[str, Any]) -> None:
        keys = ("round", "pool_error", "num_errors", "num_hard", "num_repeat", "num_new", "num_included", "seconds")
        for key in keys:
            # identical on every rank (computed from gathered scores): no sync needed
            pl_module.log(f"mining/{key}", float(entry[key]), on_step=False, on_epoch=True, sync_dist=False)

    def _write_views(self, trainer: pl.Trainer, dm: Any, entry: dict[str, Any]) -> None:
        """Rank zero only, and no collective inside: the JSON history, the PNG grid, the W&B table."""
        out = run_dir(trainer) / "hard_negative_mining"
        save_json(out / "history.json", self.history)
        if not entry["hardest"]:
            return
        names = [str(c) for c in dm.class_names]
        images = [self._raw_image(dm, h["index"]) for h in entry["hardest"]]
        tag = f"round{entry['round']:02d}_epoch{entry['epoch']:03d}"
        path = save_figure(self._grid(images, entry, names), out / f"hardest_{tag}.png")
        log_image(trainer, "mining/hardest", path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                rows = [
                    [entry["round"], h["index"], wandb.Image(img), names[h["target"]], names[h["pred"]], h["loss"]]
                    for h, img in zip(entry["hardest"], images, strict=True)
                ]
                logger.log_table(
                    key="mining/hardest_table", columns=["round", "index", "image", "true", "pred", "loss"], data=rows
                )

    @staticmethod
    def _raw_image(dm: Any, index: int) -> np.ndarray:
        pool = getattr(dm, "pool", None)
        if pool is not None and hasattr(pool, "get"):
            image = np.asarray(pool.get(int(index))[0])
        else:  # undo nothing we do not know: min-max scale the eval tensor
            x = next(iter(dm.eval_dataloader("pool", indices=[int(index)])))[0][0]
            x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
            image = (x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image

    @staticmethod
    def _grid(images: list[np.ndarray], entry: dict[str, Any], names: list[str]):
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        cols = min(8, len(images))
        rows = math.ceil(len(images) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, img, h in zip(axes.flat, images, entry["hardest"], strict=False):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            wrong = h["pred"] != h["target"]
            ax.set_title(
                f"#{h['index']} {names[h['target']]}\n→{names[h['pred']]} {h['loss']:.2f}",
                fontsize=7,
                color="red" if wrong else "black",
            )
        fig.suptitle(
            f"hardest examples, round {entry['round']} (epoch {entry['epoch']}): true → pred, loss", fontsize=9
        )
        return fig

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "best": self.best,
            "wait": self.wait,
            "stopped": self.stopped,
            "epoch_best": self.epoch_best,
            "epochs_since_improvement": self.epochs_since_improvement,
            "base_weights": self.base_weights,
            "included": self.included,
            "hard": self.hard,
            "history": self.history,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.round = state_dict["round"]
        self.best = state_dict["best"]
        self.wait = state_dict["wait"]
        self.stopped = state_dict["stopped"]
        self.epoch_best = state_dict["epoch_best"]
        self.epochs_since_improvement = state_dict["epochs_since_improvement"]
        self.base_weights = state_dict["base_weights"]
        self.included = state_dict["included"]
        self.hard = state_dict["hard"]
        self.history = list(state_dict["history"])
        self._restored = self.included is not None
