r"""Hard-negative mining: score the negative pool, train more on its hardest members, repeat.

Every ``every_n_epochs`` epochs the callback scores its pool (the training negatives with
``negative_classes``, else the whole training split) with the current model (eval mode, no
augmentation), ranks it by the model's positive score (or the per-sample loss), and selects the
hardest: a top ``fraction``, a top ``count``, or every negative above the score threshold that keeps
``target_recall`` on the validation positives. The decisions are the pure functions of
:mod:`lit_recipes.callbacks.mining_rules`, the bookkeeping (masks, weights, scoring, one round's
selection) those of :mod:`lit_recipes.callbacks.mining_pool`, the files and plots
:mod:`lit_recipes.callbacks.mining_report`; this module is the hook.

* Budgeted rounds (``negatives_per_epoch`` or ``negatives_ratio``): each epoch trains on every
  positive and a budget of negatives; a round replaces up to ``hard_share`` of the random negatives
  with the mined hardest (the rest stay random, drawn afresh each epoch). Steps per epoch are the
  same with and without mining.
* Without a budget: the hard samples are drawn ``boost`` times more often (epoch length unchanged).

Example::

    import lightning as L
    from lit_recipes.callbacks import HardNegativeMining
    from lit_recipes.datamodules import DigitsDataModule, OneVsRestDataModule
    from lit_recipes.module import ClassifierModule

    mining = HardNegativeMining(negative_classes=["rest"], negatives_ratio=2.0)
    trainer = L.Trainer(max_epochs=4, callbacks=[mining])
    dm = OneVsRestDataModule(DigitsDataModule(), positive="8")
    trainer.fit(ClassifierModule("lenet5_bn", num_classes=2, in_channels=1), datamodule=dm)
    mining.history[-1]["num_hard"], mining.report["ap"]
"""

from __future__ import annotations

import time
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lit_recipes.callbacks import mining_pool as pool
from lit_recipes.callbacks import mining_report as report
from lit_recipes.callbacks import mining_rules as rules
from lit_recipes.callbacks.keyed_state import argument_state_key, load_unkeyed_state
from lit_recipes.contracts import IndexedDataModule, check_contract
from lit_recipes.lightning_compat import request_train_dataloader_reload

#: what a datamodule must offer (batches ``(images, targets, indices)`` and these members of
#: :class:`~lit_recipes.contracts.IndexedDataModule`)
INDEX_CONTRACT = ("train_targets", "train_indices", "class_names", "set_sample_weights", "eval_dataloader")


class HardNegativeMining(Callback):
    r"""Offline hard-negative mining through the datamodule's (DDP-safe) sampler.

    Each rank scores a strided shard; scores are gathered by sample index, so every rank selects
    the same negatives and builds the same sampler. Positives' weights never change.

    Args:
        every_n_epochs: mine after every n-th training epoch (>= 1).
        warmup_epochs: no round before this many epochs have trained (random negatives only).
        negative_classes: class names (or indices) of the negatives; ``None``: every class is
            scored and the score is one minus the probability of the sample's own class.
        selection: ranking key: ``"score"`` (the positive score), ``"loss"`` (per-sample loss) or
            ``"misclassified"`` (only negatives predicted positive at the argmax, by score).
        draw: ``"top"``: take the highest-ranked (default); ``"proportional"``: draw as many as
            the rule below takes, at random with probability proportional to the score (or
            loss), seeded per round (the same on every rank): hard negatives come more often but
            the very top (near-duplicates of positives, ambiguous labels) does not take all.
        fraction: select the top this fraction of the pool (default rule).
        count: select the top ``count`` instead.
        target_recall: select the negatives scoring at least the threshold that keeps this recall
            on the validation positives (needs ``negative_classes``), in (0, 1].
        negatives_per_epoch, negatives_ratio: the budget of negatives per epoch (a count, or per
            training positive); ``None`` for both: no budget (``boost`` mode).
        hard_share: share of the budget that mined negatives may take (the rest stays random).
        boost: without a budget, sampling-weight multiplier of the hard samples.
        initial_negative_fraction: two-stage start: random negatives come only from this seeded
            fraction of the negatives; mined ones come from all of them.
        max_rounds: stop mining after this many rounds (``None``: never). ``0`` never mines: random
            negatives at the same budget (same steps) with the same report — the baseline to compare
            a mining run against.
        candidates_per_round: score only this many negatives of the pool per round, a fresh
            seeded random sample each round (the same on every rank); ``fraction``/``count`` then
            choose among them. For pools too large to score in full every round (``None``: all).
        report_recall: at the end of fit, score val (and test) and write AP, P/R/F1 and false
            positives at the validation threshold for this recall, and a PR-curve PNG
            (``None``: no report; needs ``negative_classes``).
        top_k: hardest negatives per round in the PNG grid and the history (with file paths).
        seed: seed of the two-stage choice (default: the datamodule's ``seed``).
        verbose: one info line per round.

    Attributes:
        history: one dict per round (``round``, ``epoch``, ``pool_size``, ``num_errors``,
            ``num_hard``, ``num_repeat``, ``num_new``, ``threshold``, ``epoch_size``, ``seconds``,
            ``hardest``: index, path, target, pred, score, loss).
        report: the end-of-fit metrics (:func:`~lit_recipes.callbacks.mining_rules.detection_metrics`).
        scored_indices: the pool indices this rank scored in the last round (its shard).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        warmup_epochs: int = 0,
        negative_classes: list[str | int] | None = None,
        selection: Literal["score", "loss", "misclassified"] = "score",
        draw: Literal["top", "proportional"] = "top",
        fraction: float | None = 0.1,
        count: int | None = None,
        target_recall: float | None = None,
        negatives_per_epoch: int | None = None,
        negatives_ratio: float | None = None,
        hard_share: float = 0.5,
        boost: float = 5.0,
        initial_negative_fraction: float = 1.0,
        max_rounds: int | None = None,
        candidates_per_round: int | None = None,
        report_recall: float | None = 0.9,
        top_k: int = 16,
        seed: int | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        rules.check_arguments(
            every_n_epochs=every_n_epochs,
            warmup_epochs=warmup_epochs,
            negative_classes=negative_classes,
            selection=selection,
            draw=draw,
            fraction=fraction,
            count=count,
            target_recall=target_recall,
            negatives_per_epoch=negatives_per_epoch,
            negatives_ratio=negatives_ratio,
            hard_share=hard_share,
            boost=boost,
            initial_negative_fraction=initial_negative_fraction,
            max_rounds=max_rounds,
            candidates_per_round=candidates_per_round,
            report_recall=report_recall,
            top_k=top_k,
        )
        self.every_n_epochs, self.warmup_epochs, self.selection = every_n_epochs, warmup_epochs, selection
        self.draw = draw
        self.top_k = top_k
        self.negative_classes = list(negative_classes) if negative_classes is not None else None
        self.fraction, self.count, self.target_recall = fraction, count, target_recall
        self.negatives_per_epoch, self.negatives_ratio = negatives_per_epoch, negatives_ratio
        self.hard_share, self.boost = hard_share, float(boost)
        self.initial_negative_fraction, self.max_rounds = initial_negative_fraction, max_rounds
        self.candidates_per_round = candidates_per_round
        self.report_recall, self.seed, self.verbose = report_recall, seed, verbose
        self._negative_ids: list[int] | None = None
        self.scored_indices: np.ndarray | None = None
        self.report: dict[str, Any] | None = None
        self.budget: int | None = None
        # state (state_dict)
        self.round = 0
        self.base_weights: torch.Tensor | None = None
        self.included: torch.Tensor | None = None
        self.hard: torch.Tensor | None = None
        self.history: list[dict[str, Any]] = []
        self._restored = False

    # ------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        check_contract(dm, IndexedDataModule, INDEX_CONTRACT, role="data", user="HardNegativeMining")
        if self.negative_classes is not None:
            self._negative_ids = rules.resolve_negative_classes(self.negative_classes, dm.class_names)
        # the first sampler is set here, before configure_optimizers: a budget changes the epoch length,
        # and schedulers such as OneCycleLR size themselves from trainer.estimated_stepping_batches
        self._start(trainer, dm)

    def _masks(self, dm: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(training-split mask, negative mask) over the pool."""
        return pool.pool_masks(dm.train_targets, dm.train_indices, self._negative_ids)

    def candidates(self, dm: Any, round_: int = 0) -> np.ndarray:
        """Pool indices scored by round ``round_`` (0-based): the training split (its negatives with
        ``negative_classes``), or a seeded random ``candidates_per_round`` of them (sorted)."""
        train, neg = self._masks(dm)
        cand = torch.nonzero(train & neg).flatten().numpy()
        return pool.sample_candidates(cand, self.candidates_per_round, self._seed(dm), round_)

    def _seed(self, dm: Any) -> int:
        """The seed of the two-stage subset and the candidate samples: ``seed``, else the datamodule's."""
        return int(self.seed if self.seed is not None else getattr(dm, "seed", 0) or 0)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule  # a resumed run: the state came from the checkpoint after setup
        if self._restored and self.included is not None and len(self.included) == len(dm.train_targets):
            self._apply_weights(trainer, dm)

    def _start(self, trainer: pl.Trainer, dm: Any) -> None:
        n = len(dm.train_targets)
        train, neg = self._masks(dm)
        if self._negative_ids is not None:
            self.budget = rules.plan_budget(
                int((train & ~neg).sum()), int((train & neg).sum()), self.negatives_per_epoch, self.negatives_ratio
            )
        current = getattr(dm, "sample_weights", None)
        self.base_weights = torch.ones(n, dtype=torch.double) if current is None else current.clone().double()
        fraction = self.initial_negative_fraction
        seed = self._seed(dm) if fraction < 1.0 else 0
        self.included = pool.initial_included(train, neg, fraction, seed)
        self.hard = torch.zeros(n, dtype=torch.bool)
        if self.budget is not None or self.initial_negative_fraction < 1.0:
            self._apply_weights(trainer, dm)

    def weights(self, dm: Any) -> tuple[torch.Tensor, int | None]:
        """The sampling weights (and the epoch length of a budget) that the current state implies."""
        train, neg = self._masks(dm)
        return pool.sampling_weights(
            train, neg, self.base_weights, self.included, self.hard,
            boost=self.boost, budget=self.budget, hard_share=self.hard_share,
        )  # fmt: skip

    def _apply_weights(self, trainer: pl.Trainer, dm: Any) -> None:
        w, num_samples = self.weights(dm)
        dm.set_sample_weights(w, num_samples=num_samples) if num_samples else dm.set_sample_weights(w)
        request_train_dataloader_reload(trainer)

    # ------------------------------------------------------------------ one round
    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (self.max_rounds is not None and self.round >= self.max_rounds):
            return
        done = trainer.current_epoch + 1  # epochs trained
        if done >= self.warmup_epochs and (done - self.warmup_epochs) % self.every_n_epochs == 0 and done > 0:
            self.mine(trainer, pl_module)

    def mine(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Score the pool, select the hardest negatives and apply the new sampler (on every rank)."""
        dm = trainer.datamodule
        start = time.perf_counter()
        cand = self.candidates(dm, self.round)
        (idx, loss, score, pred, _), shard = self._score(trainer, pl_module, dm, "pool", cand)
        order = torch.argsort(idx)  # gathered shards back in index order
        idx, loss, score, pred = idx[order], loss[order], score[order], pred[order]
        self.scored_indices = np.asarray(shard)
        targets = torch.as_tensor(np.asarray(dm.train_targets), dtype=torch.long)
        threshold = None
        if self.selection != "misclassified" and self.target_recall is not None:
            (_, _, vscore, _, vtarget), _ = self._score(trainer, pl_module, dm, "val", self._val_positives(dm))
            positive = ~torch.isin(vtarget, torch.tensor(self._negative_ids))
            threshold = rules.threshold_at_recall(vscore[positive].numpy(), self.target_recall)
        pos, wrong, key = pool.select_round(
            targets, idx, loss, score, pred, self._negative_ids,
            selection=self.selection, threshold=threshold, count=self.count, fraction=self.fraction,
            draw=self.draw, seed=[self._seed(dm) & 0xFFFFFFFF, self.round, 1],
        )  # fmt: skip
        new_hard = torch.zeros(len(targets), dtype=torch.bool)
        new_hard[idx[torch.as_tensor(pos, dtype=torch.long)]] = True
        self.round += 1
        entry = pool.round_entry(self.round, trainer.current_epoch, len(cand), wrong, new_hard, self.hard,
                                 self.included, threshold, time.perf_counter() - start)  # fmt: skip
        if entry["num_hard"] == 0:
            rank_zero_warn(f"HardNegativeMining: round {self.round}: no hard negatives selected among {len(cand)}")
        if entry["num_hard"] or self.budget is not None:  # a budget falls back to random negatives
            self.hard = new_hard
            if self.budget is None:
                self.included |= new_hard
            self._apply_weights(trainer, dm)
        entry["epoch_size"] = int(self.weights(dm)[1] or len(dm.train_indices))
        files = getattr(getattr(dm, "pool", None), "files", None)
        entry["hardest"] = pool.hardest_samples(key, idx, targets, pred, score, loss, self.top_k, files)
        self.history.append(entry)
        for k in ("round", "num_errors", "num_hard", "num_repeat", "num_new", "seconds"):
            pl_module.log(f"mining/{k}", float(entry[k]), on_step=False, on_epoch=True, sync_dist=False)
        if trainer.is_global_zero:
            report.write_round(trainer, dm, self.history, entry)
        if self.verbose:
            rank_zero_info(
                f"HardNegativeMining round {self.round} (epoch {entry['epoch']}): {entry['num_hard']} hard of "
                f"{len(cand)} ({entry['num_repeat']} again, {entry['num_errors']} misclassified), "
                f"epoch of {entry['epoch_size']} samples, {entry['seconds']:.2f}s"
            )
        return entry

    def _val_positives(self, dm: Any) -> np.ndarray | None:
        """Pool positions of the validation positives when validation is a split of the pool (the
        threshold needs only their scores), else ``None``: the whole validation split is scored."""
        val = getattr(dm, "val_indices", None)
        if val is None:
            return None
        val = np.asarray(val, dtype=np.int64)
        targets = np.asarray(dm.train_targets)[val]
        return val[~np.isin(targets, self._negative_ids)]

    def _score(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dm: Any, split: str, indices):
        """((index, loss, score, pred, target) of every sample of ``split`` / ``indices``, gathered
        from all ranks), the indices this rank scored (its strided shard)."""
        world = trainer.world_size
        loader = dm.eval_dataloader(split, indices=indices, rank=trainer.global_rank, world_size=world)
        total = 0  # the split's size matters only to pad the shards of several ranks
        if world > 1:
            total = len(indices) if indices is not None else len(dm.eval_dataloader(split).dataset)
        return pool.score_samples(
            pl_module, loader, self._negative_ids, total=total, strategy=trainer.strategy,
            forward_context=trainer.precision_plugin.forward_context,
        )  # fmt: skip

    # ------------------------------------------------------------------ end of fit
    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.report_recall is None or self._negative_ids is None:
            return
        dm = trainer.datamodule
        neg = torch.tensor(self._negative_ids)
        curves = {}
        for split in ("val", "test"):
            try:
                (_, _, s, _, y), _ = self._score(trainer, pl_module, dm, split, None)
            except ValueError:  # the data set has no such split
                continue
            curves[split] = (s.numpy(), (~torch.isin(y, neg)).numpy())
        if "val" not in curves or not curves["val"][1].any():
            return rank_zero_warn("HardNegativeMining: no validation positives; no detection report")
        self.report = report.final_report(curves, self.report_recall)
        if trainer.is_global_zero:
            report.write_report(trainer, self.report, curves, self.report_recall)

    # ------------------------------------------------------------------ resume
    @property
    @override
    def state_key(self) -> str:
        """``HardNegativeMining{'negative_classes': [...]}``: miners of other negatives keep separate
        state in one checkpoint (the schedule and rule may change on resume; the mined state stays)."""
        return argument_state_key(self, negative_classes=self.negative_classes)

    @override
    def state_dict(self) -> dict[str, Any]:
        keys = ("round", "base_weights", "included", "hard", "history")
        return {k: getattr(self, k) for k in keys}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for k in ("round", "base_weights", "included", "hard"):
            setattr(self, k, state_dict[k])
        self.history = list(state_dict["history"])
        self._restored = self.included is not None

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        load_unkeyed_state(self, checkpoint)  # a checkpoint from before the state key named the arguments


__all__ = ["INDEX_CONTRACT", "HardNegativeMining", "request_train_dataloader_reload"]
