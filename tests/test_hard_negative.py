"""Hard-negative mining: the pure rules (exact, on constructed inputs), the budgeted sampler, and
HardNegativeMining on real small runs (what it selects, what the next epoch draws, reports, paths,
resume, bad input, DDP)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_recipes.callbacks import HardNegativeMining
from lit_recipes.callbacks import mining_rules as rules
from lit_recipes.contracts import ContractError
from lit_recipes.datamodules import DigitsDataModule, OneVsRestDataModule, WeightedEpochSampler
from lit_recipes.module import ClassifierModule


class BatchRecorder(Callback):
    """Records the pool indices of every training batch and the sampler weights at each epoch start."""

    def __init__(self) -> None:
        self.indices: dict[int, list[int]] = {}
        self.weights: dict[int, torch.Tensor | None] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        w = trainer.datamodule.sample_weights
        self.weights[trainer.current_epoch] = None if w is None else w.clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.indices.setdefault(trainer.current_epoch, []).extend(batch[2].tolist())


def fit(dm, callbacks, trainer_kwargs, num_classes=2, model="lenet5_bn", lr=0.05, seed=0, module=None, **overrides):
    L.seed_everything(seed, verbose=False)
    module = module or ClassifierModule(model, num_classes=num_classes, in_channels=1, lr=lr)
    trainer = L.Trainer(**{**trainer_kwargs, **overrides}, callbacks=callbacks)
    trainer.fit(module, datamodule=dm)
    return trainer, module


def one_vs_rest(batch_size=32, **kwargs):
    """Digits "8" against the nine others: about 1:9."""
    return OneVsRestDataModule(DigitsDataModule(batch_size=batch_size, **kwargs), positive="8")


def always_rest(num_classes=2):
    """A model that gives every image the same logits, strongly for class 0 ("rest")."""
    module = ClassifierModule("lenet5", num_classes=num_classes, in_channels=1, lr=1e-12)
    with torch.no_grad():
        module.model.classifier.weight.zero_()
        module.model.classifier.bias.copy_(torch.tensor([50.0, -50.0]))
    return module


@torch.no_grad()
def positive_score(module, dm, split="pool", indices=None):
    """Independent re-scoring: {index: softmax probability of class 1}."""
    module.eval()
    out = {}
    for images, _, idx in dm.eval_dataloader(split, indices=indices):
        p = torch.softmax(module.predict_logits(images).float(), -1)[:, 1]
        out.update(zip(idx.tolist(), p.tolist(), strict=True))
    return out


# ---------------------------------------------------------------------------------------------- pure rules
def test_threshold_at_recall_exact():
    s = np.array([0.9, 0.1, 0.8, 0.3, 0.5])
    assert rules.threshold_at_recall(s, 0.2) == 0.9
    assert rules.threshold_at_recall(s, 0.4) == 0.8
    assert rules.threshold_at_recall(s, 0.41) == 0.5  # 3 of 5 needed
    assert rules.threshold_at_recall(s, 1.0) == 0.1
    for r in (0.2, 0.41, 0.6, 0.9, 1.0):
        assert (s >= rules.threshold_at_recall(s, r)).mean() >= r


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.01, 2])
def test_target_recall_outside_unit_interval(bad):
    with pytest.raises(ValueError, match=rf"^target_recall must be in \(0, 1\], got {bad}$"):
        rules.threshold_at_recall(np.array([0.5]), bad)
    with pytest.raises(ValueError, match=r"^target_recall must be in \(0, 1\]"):
        HardNegativeMining(negative_classes=["rest"], target_recall=bad)


def test_select_hard_rules():
    s = np.array([0.1, 0.7, 0.95, 0.2, 0.7, 0.05])
    assert rules.select_hard(s, count=3).tolist() == [2, 1, 4]  # ties keep position order
    assert rules.select_hard(s, fraction=0.5).tolist() == [2, 1, 4]
    assert rules.select_hard(s, fraction=0.01).tolist() == [2]  # ceil: at least one
    assert rules.select_hard(s, threshold=0.2).tolist() == [2, 1, 4, 3]
    assert rules.select_hard(s, threshold=0.2, cap=2).tolist() == [2, 1]
    assert rules.select_hard(s, count=99).tolist() == [2, 1, 4, 3, 0, 5]
    with pytest.raises(ValueError, match="exactly one of count, fraction, threshold"):
        rules.select_hard(s, count=1, fraction=0.5)


def test_positive_scores():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    p = torch.softmax(logits, -1)
    # negatives = class 0: the score is the mass of classes 1 and 2
    assert torch.allclose(rules.positive_scores(logits, torch.tensor([0, 0]), [0]), p[:, 1:].sum(-1))
    # no negative classes: one minus the probability of the own class
    assert torch.allclose(rules.positive_scores(logits, torch.tensor([0, 2]), None), 1 - p[[0, 1], [0, 2]])


def test_plan_budget_and_quota():
    assert rules.plan_budget(100, 1000) is None
    assert rules.plan_budget(100, 1000, negatives_per_epoch=300) == 300
    assert rules.plan_budget(100, 1000, negatives_ratio=2.5) == 250
    assert rules.hard_quota(250, 0.5) == 125 and rules.hard_quota(250, 0.0) == 0
    with pytest.raises(
        ValueError, match=r"^negatives_per_epoch=2000 is larger than the pool of 1000 training negatives$"
    ):
        rules.plan_budget(100, 1000, negatives_per_epoch=2000)
    with pytest.raises(ValueError, match=r"^negatives_ratio=20 \(2000 negatives for 100 positives\) is larger"):
        rules.plan_budget(100, 1000, negatives_ratio=20)
    with pytest.raises(ValueError, match="hard_share must be in"):
        rules.hard_quota(10, 1.0)


def test_budget_weights_and_systematic_sampler_draw_exact_counts():
    n = 40
    pos, neg = np.arange(0, 5), np.arange(5, 40)
    hard = np.array([7, 11, 30])
    # more hard negatives than the quota: a fresh quota of them each epoch
    w, size = rules.budget_weights(n, pos, neg, np.arange(5, 15), budget=10, quota=4)
    assert size == 15 and torch.all(w[5:15] == 0.4) and torch.allclose(w[15:], torch.tensor(6 / 25, dtype=torch.double))
    w, size = rules.budget_weights(n, pos, neg, hard, budget=10)
    assert size == 15 and float(w.sum()) == pytest.approx(15)
    assert torch.all(w[pos] == 1) and torch.all(w[hard] == 1)
    rest = np.setdiff1d(neg, hard)
    assert torch.allclose(w[rest], torch.full((len(rest),), 7 / len(rest), dtype=torch.double))
    for epoch in range(20):
        sampler = WeightedEpochSampler(w, num_samples=size, seed=3, systematic=True)
        sampler.set_epoch(epoch)
        draw = np.array(list(iter(sampler)))
        counts = np.bincount(draw, minlength=n)
        assert len(draw) == 15
        assert np.all(counts[pos] == 1) and np.all(counts[hard] == 1)  # every positive, every hard one, once
        assert counts[rest].sum() == 7 and counts[rest].max() <= 1  # 7 distinct random negatives
    # different epochs draw different random negatives
    draws = []
    for epoch in (0, 1):
        s = WeightedEpochSampler(w, num_samples=size, seed=3, systematic=True)
        s.set_epoch(epoch)
        draws.append(set(iter(s)))
    assert draws[0] != draws[1]


def test_detection_metrics_exact():
    val_s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    val_y = np.array([1, 1, 0, 1, 0, 0])
    test_s = np.array([0.95, 0.65, 0.62, 0.3, 0.61, 0.1])
    test_y = np.array([1, 1, 0, 1, 0, 0])
    m = rules.detection_metrics(val_s, val_y, test_s, test_y, target_recall=1.0)
    assert m["threshold"] == 0.6  # all 3 validation positives kept
    assert (m["tp"], m["fp"], m["fn"]) == (2, 2, 1)
    assert m["precision"] == 0.5 and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert m["fp_at_recall_oracle"] == 2  # recall 1 on test needs t=0.3: the 2 negatives above it
    from sklearn.metrics import average_precision_score

    assert m["ap"] == pytest.approx(average_precision_score(test_y, test_s), abs=1e-6)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"boost": 0}, "boost must be a finite number > 0"),
        ({"every_n_epochs": 0}, "every_n_epochs must be an int >= 1"),
        ({"selection": "random"}, "selection must be"),
        ({"fraction": 0.0}, "fraction must be in"),
        ({"count": 0}, "count must be >= 1"),
        ({"hard_share": 1.0}, "hard_share must be in"),
        ({"negative_classes": ["rest"], "negatives_ratio": -1.0}, "negatives_ratio must be > 0"),
        ({"negatives_ratio": 2.0}, "negatives_ratio needs negative_classes"),
        ({"target_recall": 0.9}, "target_recall needs negative_classes"),
        ({"report_recall": 1.5}, r"report_recall must be in \(0, 1\]"),
        ({"initial_negative_fraction": 0.0}, "initial_negative_fraction must be in"),
        ({"initial_negative_fraction": 0.5}, "needs negative_classes"),
        ({"negative_classes": []}, "at least one class"),
        ({"candidates_per_round": 0}, r"candidates_per_round must be an int >= 1 or null, got 0"),
        ({"candidates_per_round": 0.5}, r"candidates_per_round must be an int >= 1 or null, got 0.5"),
        ({"draw": "softmax"}, r"^draw must be 'top' or 'proportional', got 'softmax'$"),
        ({"max_rounds": -1}, r"^max_rounds must be an int >= 0 or null, got -1$"),
        ({"max_rounds": 1.5}, r"^max_rounds must be an int >= 0 or null, got 1.5$"),
        ({"draw": "proportional", "selection": "misclassified"}, r"^draw='proportional' needs selection 'score'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HardNegativeMining(**kwargs)


def test_unknown_negative_class_is_named(trainer_kwargs):
    cb = HardNegativeMining(negative_classes=["rest", "ship"])
    with pytest.raises(ValueError, match=r"^negative_classes: unknown class 'ship'; the classes are rest, 8$"):
        fit(one_vs_rest(), [cb], trainer_kwargs)


def test_budget_larger_than_pool_is_named(trainer_kwargs):
    cb = HardNegativeMining(negative_classes=["rest"], negatives_per_epoch=100_000)
    with pytest.raises(ValueError, match=r"^negatives_per_epoch=100000 is larger than the pool of \d+ training"):
        fit(one_vs_rest(), [cb], trainer_kwargs)


def test_datamodule_without_index_contract(trainer_kwargs):
    from torch.utils.data import DataLoader, TensorDataset

    class PlainDataModule(L.LightningDataModule):
        def train_dataloader(self):
            x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
            return DataLoader(TensorDataset(x, y, torch.arange(64)), batch_size=32)

    with pytest.raises(
        ContractError,
        match=r"^HardNegativeMining needs data\.train_targets, .*data\.eval_dataloader, which PlainDataModule lacks "
        r"\(build the datamodule on lit_recipes\.datamodules\.ClassificationDataModule\)$",
    ):
        fit(PlainDataModule(), [HardNegativeMining()], trainer_kwargs, num_classes=10)


# ---------------------------------------------------------------------------------------------- rounds
def test_default_engages_on_imbalanced_task_from_first_round(trainer_kwargs):
    """A model that predicts only the majority class misclassifies no negative; the default
    (score-ranked, top 10%) still selects and boosts negatives in round 1; ``misclassified`` does not."""
    dm = one_vs_rest()
    cb = HardNegativeMining(negative_classes=["rest"], top_k=0)
    fit(dm, [cb], trainer_kwargs, module=always_rest(), limit_train_batches=2)
    first = cb.history[0]
    assert first["round"] == 1 and first["num_errors"] == 0
    assert first["num_hard"] == math.ceil(0.1 * first["pool_size"]) > 0
    w = dm.sample_weights
    train = np.asarray(dm.train_indices)
    targets = np.asarray(dm.train_targets)
    assert int((w[torch.as_tensor(train)] == 5.0).sum()) == first["num_hard"]
    assert torch.all(w[torch.as_tensor(train[targets[train] == 1])] == 1.0)  # positives untouched

    dm = one_vs_rest()
    cb = HardNegativeMining(negative_classes=["rest"], selection="misclassified", top_k=0)
    with pytest.warns(UserWarning, match="no hard negatives selected"):
        fit(dm, [cb], trainer_kwargs, module=always_rest(), limit_train_batches=2)
    assert cb.history[0]["num_hard"] == 0 and dm.sample_weights is None


def test_budgeted_rounds_positives_once_hardest_in_random_kept(trainer_kwargs):
    dm = one_vs_rest(batch_size=25)
    rec = BatchRecorder()
    cb = HardNegativeMining(negative_classes=["rest"], negatives_ratio=2.0, hard_share=0.5, top_k=4, verbose=False)
    trainer, module = fit(dm, [rec, cb], trainer_kwargs, max_epochs=3)
    train = np.asarray(dm.train_indices)
    targets = np.asarray(dm.train_targets)
    pos, neg = train[targets[train] == 1], train[targets[train] == 0]
    budget = round(2.0 * len(pos))
    size = len(pos) + budget
    for epoch in range(3):
        counts = np.bincount(rec.indices[epoch], minlength=len(targets))
        assert len(rec.indices[epoch]) == size  # equal steps with and without mined negatives
        assert np.all(counts[pos] == 1)  # every positive exactly once, weights untouched
        assert torch.all(rec.weights[epoch][torch.as_tensor(pos)] == 1.0)
        assert counts[neg].sum() == budget and counts[neg].max() == 1
    # the last round (run on the final model) took the quota of top-scored negatives
    quota = min(budget // 2, math.ceil(0.1 * len(neg)))  # the default top 10% of the pool, capped by hard_share
    score = positive_score(module, dm, indices=neg)
    top = sorted(score, key=lambda i: (-score[i], i))[:quota]
    assert sorted(torch.nonzero(cb.hard).flatten().tolist()) == sorted(top)
    # epochs 1 and 2 drew every hard negative of the round before, plus random ones
    assert cb.history[0]["num_hard"] == quota and cb.history[0]["epoch_size"] == size
    hard_after_round1 = set(np.flatnonzero(rec.weights[1].numpy() == 1.0)) - set(pos)
    assert len(hard_after_round1) == quota and hard_after_round1 <= set(rec.indices[1])
    assert len(set(rec.indices[1]) & set(neg) - hard_after_round1) == budget - quota
    assert trainer.callback_metrics["mining/num_hard"] == quota
    assert cb.report is not None and 0 <= cb.report["ap"] <= 1


def test_budget_is_set_before_the_scheduler_sizes_itself(trainer_kwargs):
    """OneCycleLR takes its total steps from trainer.estimated_stepping_batches (configure_optimizers):
    the budgeted sampler must be in place by then, else the schedule is sized for the whole pool."""
    from functools import partial

    dm = one_vs_rest(batch_size=25)
    cb = HardNegativeMining(negative_classes=["rest"], negatives_ratio=1.0, top_k=0, report_recall=None)
    module = ClassifierModule("lenet5_bn", num_classes=2, in_channels=1, lr=0.05,
                              lr_scheduler=partial(torch.optim.lr_scheduler.OneCycleLR))  # fmt: skip
    trainer, _ = fit(dm, [cb], trainer_kwargs, module=module, max_epochs=2)
    train = np.asarray(dm.train_indices)
    size = 2 * int((np.asarray(dm.train_targets)[train] == 1).sum())
    steps = 2 * math.ceil(size / 25)
    assert trainer.global_step == steps == trainer.estimated_stepping_batches
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == steps


def test_target_recall_selection_matches_validation_threshold(trainer_kwargs):
    dm = one_vs_rest()
    cb = HardNegativeMining(negative_classes=["rest"], target_recall=0.9, negatives_ratio=3.0, hard_share=0.9, top_k=0)
    scored, loader = [], dm.eval_dataloader

    def recording_loader(split="train", indices=None, **kwargs):
        scored.append((split, None if indices is None else sorted(np.asarray(indices).tolist())))
        return loader(split, indices, **kwargs)

    dm.eval_dataloader = recording_loader
    _, module = fit(dm, [cb], trainer_kwargs, max_epochs=2)
    dm.eval_dataloader = loader
    val = positive_score(module, dm, "val")
    targets = np.asarray(dm.train_targets)
    val_pos = [val[i] for i in np.asarray(dm.val_indices) if targets[i] == 1]
    t = rules.threshold_at_recall(np.array(val_pos), 0.9)
    assert cb.history[-1]["threshold"] == pytest.approx(t, abs=1e-6)
    # a round scores only the validation positives (the threshold needs nothing else)
    val_positives = sorted(i for i in np.asarray(dm.val_indices).tolist() if targets[i] == 1)
    rounds = [ix for split, ix in scored if split == "val" and ix is not None]
    assert len(rounds) == 2 and all(ix == val_positives for ix in rounds)
    train = np.asarray(dm.train_indices)
    neg = train[targets[train] == 0]
    score = positive_score(module, dm, indices=neg)
    above = sorted(i for i in neg if score[i] >= t)  # the false positives at the validation threshold
    assert sorted(torch.nonzero(cb.hard).flatten().tolist()) == above and above
    # each epoch draws min(quota, len(above)) of them, spread evenly
    quota = int(0.9 * round(3.0 * int((targets[train] == 1).sum())))
    w = dm.sample_weights
    assert torch.allclose(w[above], torch.full((len(above),), min(1.0, quota / len(above)), dtype=torch.double))


def test_candidates_per_round_scores_a_fresh_sample_and_selects_among_it(trainer_kwargs):
    """A pool too large to score every round: each round scores a seeded random 60 of the training
    negatives (another 60 the next round), and the top 10% of those 60 become the hard ones."""
    dm = one_vs_rest(batch_size=64)
    cb = HardNegativeMining(negative_classes=["rest"], candidates_per_round=60, negatives_ratio=1.0, top_k=0,
                            report_recall=None, verbose=False)  # fmt: skip
    _, module = fit(dm, [cb], trainer_kwargs, max_epochs=2)
    train = np.asarray(dm.train_indices)
    targets = np.asarray(dm.train_targets)
    neg = train[targets[train] == 0]
    first, last = cb.candidates(dm, 0), cb.candidates(dm, 1)
    assert len(first) == len(last) == 60 and set(first) <= set(neg) and set(first) != set(last)
    assert [h["pool_size"] for h in cb.history] == [60, 60]
    assert sorted(cb.scored_indices.tolist()) == sorted(last.tolist())  # the last round scored its sample only
    score = positive_score(module, dm, indices=last)
    top = sorted(score, key=lambda i: (-score[i], i))[:6]
    assert sorted(torch.nonzero(cb.hard).flatten().tolist()) == sorted(top)


def test_proportional_draw_is_the_seeded_draw_of_the_round_scores(trainer_kwargs):
    """``draw="proportional"``: as many hard negatives as the top-10% rule (6 of 60 candidates), drawn
    with probability proportional to the positive score by the round's seeded generator; a second fit
    draws the same."""
    picked = []
    for _ in range(2):
        dm = one_vs_rest(batch_size=64)
        cb = HardNegativeMining(negative_classes=["rest"], candidates_per_round=60, negatives_ratio=1.0, top_k=3,
                                report_recall=None, verbose=False, draw="proportional")  # fmt: skip
        _, module = fit(dm, [cb], trainer_kwargs, max_epochs=1)
        cand = cb.candidates(dm, 0)
        score = positive_score(module, dm, indices=cand)
        expected = cand[rules.sample_hard(np.array([score[i] for i in cand]), 6, seed=[cb._seed(dm), 0, 1])]
        hard = torch.nonzero(cb.hard).flatten().tolist()
        assert cb.history[0]["num_hard"] == 6 and sorted(hard) == sorted(expected.tolist())
        assert {h["index"] for h in cb.history[0]["hardest"]} <= set(hard)  # the grid shows drawn ones
        picked.append(hard)
    assert picked[0] == picked[1]


def test_max_rounds_zero_is_random_negatives_at_the_same_budget_with_the_report(trainer_kwargs):
    """The baseline to compare a mining run against: no round, the same epoch (positives once, the
    budget of distinct random negatives, drawn afresh each epoch), the same end-of-fit report."""
    dm = one_vs_rest(batch_size=25)
    rec = BatchRecorder()
    cb = HardNegativeMining(negative_classes=["rest"], negatives_ratio=2.0, max_rounds=0, top_k=0)
    _, module = fit(dm, [rec, cb], trainer_kwargs, max_epochs=2)
    train, targets = np.asarray(dm.train_indices), np.asarray(dm.train_targets)
    pos, neg = train[targets[train] == 1], train[targets[train] == 0]
    budget = round(2.0 * len(pos))
    assert cb.history == [] and cb.round == 0
    for epoch in range(2):
        counts = np.bincount(rec.indices[epoch], minlength=len(targets))
        assert len(rec.indices[epoch]) == len(pos) + budget and np.all(counts[pos] == 1)
        assert counts[neg].sum() == budget and counts[neg].max() == 1
    assert set(rec.indices[0]) & set(neg) != set(rec.indices[1]) & set(neg)  # a fresh draw each epoch
    # the report's validation numbers are those of the final model on the validation split, re-scored here
    from torchmetrics.functional.classification import binary_average_precision

    val = positive_score(module, dm, "val")
    ids = np.asarray(dm.val_indices)
    s, y = np.array([val[i] for i in ids]), targets[ids] == 1
    t = rules.threshold_at_recall(s[y], 0.9)
    assert cb.report["evaluated_on"] == "test" and cb.report["threshold"] == pytest.approx(t, abs=1e-6)
    assert cb.report["val_fp"] == int((s[~y] >= t).sum())
    ap = float(binary_average_precision(torch.as_tensor(s), torch.as_tensor(y, dtype=torch.long)))
    assert cb.report["val_ap"] == pytest.approx(ap, abs=1e-6)


def test_warmup_epochs_delay_the_first_round(trainer_kwargs):
    cb = HardNegativeMining(negative_classes=["rest"], every_n_epochs=2, warmup_epochs=1, count=5, top_k=0,
                            report_recall=None)  # fmt: skip
    fit(one_vs_rest(batch_size=64), [cb], trainer_kwargs, max_epochs=4, limit_train_batches=1)
    assert [h["epoch"] for h in cb.history] == [0, 2]  # after 1 epoch, then every 2
    with pytest.raises(ValueError, match="warmup_epochs must be an int >= 0"):
        HardNegativeMining(warmup_epochs=-1)


def test_loss_selection_ranks_by_per_sample_loss(trainer_kwargs):
    dm = DigitsDataModule(batch_size=64)
    cb = HardNegativeMining(selection="loss", count=20, boost=2.0, top_k=0)
    fit(dm, [cb], trainer_kwargs, num_classes=10, limit_train_batches=4)
    assert cb.history[0]["num_hard"] == 20 == int((dm.sample_weights == 2.0).sum())


def make_image_folder(root: Path) -> Path:
    """The digits as PNG files in an ImageFolder tree (train/<digit>/<i>.png, 60 per class)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    counts: dict[int, int] = {}
    for img, y in zip(d.images, d.target, strict=True):
        if counts.get(int(y), 0) >= 60:
            continue
        counts[int(y)] = counts.get(int(y), 0) + 1
        path = root / "train" / str(y) / f"img{counts[int(y)]:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 16).clip(0, 255).astype(np.uint8)).resize((16, 16)).save(path)
    return root


def test_history_and_grid_name_image_files(trainer_kwargs, tmp_path):
    from PIL import Image

    from lit_recipes.datamodules.imagefolder import ImageFolderDataModule

    root = make_image_folder(tmp_path / "digits")
    dm = OneVsRestDataModule(ImageFolderDataModule(str(root), batch_size=32, channels=1), positive="8")
    cb = HardNegativeMining(negative_classes=["rest"], count=10, top_k=6, verbose=False)
    trainer, _ = fit(dm, [cb], trainer_kwargs, max_epochs=2, model="lenet5")
    for entry in cb.history:
        assert len(entry["hardest"]) == 6
        for h in entry["hardest"]:
            path = Path(h["path"])
            assert path.is_file() and path.parent.name != "8"  # a negative's own image file
            assert dm.pool.files[h["index"]] == h["path"]
    out = Path(trainer.default_root_dir) / "hard_negative_mining"
    history = json.loads((out / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2]  # one entry per round, no duplicate round number
    pngs = sorted(p.name for p in out.glob("hardest_*.png"))
    assert pngs == ["hardest_round01_epoch000.png", "hardest_round02_epoch001.png"]
    assert Image.open(out / pngs[0]).size[0] > 400
    assert (out / "pr_curve.png").is_file() and json.loads((out / "report.json").read_text())["evaluated_on"] == "val"


def test_two_stage_random_negatives_from_the_subset_only(trainer_kwargs):
    dm = one_vs_rest()
    rec = BatchRecorder()
    cb = HardNegativeMining(negative_classes=["rest"], negatives_ratio=1.0, initial_negative_fraction=0.2, top_k=0)
    fit(dm, [rec, cb], trainer_kwargs, max_epochs=2)
    train = np.asarray(dm.train_indices)
    targets = np.asarray(dm.train_targets)
    neg = train[targets[train] == 0]
    subset = set(neg[cb.included.numpy()[neg]])
    assert len(subset) == round(0.2 * len(neg))
    assert set(rec.indices[0]) & set(neg) <= subset  # stage one: random negatives from the subset
    hard = set(torch.nonzero(cb.hard).flatten().tolist())
    assert hard - subset  # mined ones come from the whole pool
    outside = (set(rec.indices[1]) & set(neg)) - subset  # epoch 1: mined negatives from outside the subset
    assert outside and outside <= set(np.flatnonzero(rec.weights[1].numpy() > 0))


def test_resume_continues_the_same_round(trainer_kwargs, tmp_path):
    kwargs = {**trainer_kwargs, "enable_checkpointing": True, "limit_train_batches": 3, "limit_val_batches": 1}
    make = lambda: HardNegativeMining(negative_classes=["rest"], negatives_ratio=2.0, top_k=0, report_recall=None)  # noqa: E731
    cb = make()
    fit(one_vs_rest(), [cb, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)], kwargs, max_epochs=2)
    assert cb.round == 2
    resumed, rec, dm2 = make(), BatchRecorder(), one_vs_rest()
    trainer = L.Trainer(
        **{**kwargs, "max_epochs": 3}, callbacks=[rec, resumed, ModelCheckpoint(dirpath=tmp_path / "c")]
    )
    trainer.fit(ClassifierModule("lenet5_bn", num_classes=2, in_channels=1), datamodule=dm2,
                ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))  # fmt: skip
    assert torch.equal(rec.weights[2], cb.weights(dm2)[0])  # epoch 2 trained on round 2's sampler
    assert [h["round"] for h in resumed.history] == [1, 2, 3] and resumed.round == 3


def test_wandb_gets_pr_curve_and_hardest_grid(trainer_kwargs, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    cb = HardNegativeMining(negative_classes=["rest"], top_k=4, verbose=False)
    logger = WandbLogger(save_dir=str(tmp_path), project="hnm", offline=True)
    fit(one_vs_rest(), [cb], {**trainer_kwargs, "logger": logger}, limit_train_batches=2, limit_val_batches=1)
    logger.experiment.finish()
    assert list(tmp_path.rglob("mining/pr_curve*.png")) and list(tmp_path.rglob("mining/hardest*.png"))


# ---------------------------------------------------------------------------------------------- state
def test_two_minings_keep_separate_state_in_one_checkpoint(trainer_kwargs, tmp_path):
    kw = {**trainer_kwargs, "enable_checkpointing": True, "limit_train_batches": 2, "limit_val_batches": 1}
    args = dict(top_k=0, report_recall=None, verbose=False)
    # "rest" vs every class mined (the score is then 1 - P(own class)), the second every 2 epochs
    make = lambda: (  # noqa: E731
        HardNegativeMining(negative_classes=["rest"], **args),
        HardNegativeMining(negative_classes=None, every_n_epochs=2, count=5, **args),
    )
    every, second = make()
    assert every.state_key != second.state_key  # the Trainer refuses two stateful callbacks with one key
    fit(one_vs_rest(), [every, second, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)], kw, max_epochs=2)
    states = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]
    assert (states[every.state_key]["round"], states[second.state_key]["round"]) == (2, 1)
    assert int(states[second.state_key]["hard"].sum()) == 5 != int(states[every.state_key]["hard"].sum())
    every2, second2 = make()
    trainer = L.Trainer(
        **{**kw, "max_epochs": 3}, callbacks=[every2, second2, ModelCheckpoint(dirpath=tmp_path / "ckpt")]
    )
    trainer.fit(ClassifierModule("lenet5_bn", num_classes=2, in_channels=1), datamodule=one_vs_rest(),
                ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))  # fmt: skip
    assert [h["round"] for h in every2.history] == [1, 2, 3] and [h["round"] for h in second2.history] == [1]
    # a checkpoint keyed by the bare class name (written before the key named the arguments) still loads
    old = HardNegativeMining(**args)
    old.on_load_checkpoint(None, None, {"callbacks": {"HardNegativeMining": states[second.state_key]}})
    assert old.round == 1 and torch.equal(old.hard, states[second.state_key]["hard"])


# ---------------------------------------------------------------------------------------------- DDP
@pytest.mark.ddp
def test_ddp_same_selection_negatives_only_disjoint_shards(torchrun, tmp_path):
    script = Path(__file__).parent / "ddp_scripts" / "hard_negative_ddp.py"
    res = torchrun([str(script), str(tmp_path)], nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    # every rank selected the same negatives and built the same sampler, each round
    assert r0["hard"] == r1["hard"] and len(r0["hard"]) == 2 and all(r0["hard"])
    assert r0["epoch_weights"] == r1["epoch_weights"] and r0["final_weights"] == r1["final_weights"]
    # only negatives were scored: each rank its own shard, together every training negative
    s0, s1 = set(r0["scored"]), set(r1["scored"])
    negatives = set(r0["negatives"])
    assert not s0 & s1 and s0 | s1 == negatives == set(r0["candidates"]) and abs(len(s0) - len(s1)) <= 1
    assert all(set(h) <= negatives for h in r0["hard"])
    # positives' weights stay 1 (drawn once per epoch); the ranks' batches are disjoint shards of one draw
    assert r0["positive_weights"] == r1["positive_weights"] == [1.0]
    for epoch in ("1", "2"):
        b0, b1 = r0["batches"][epoch], r1["batches"][epoch]
        assert len(set(b0) & set(b1)) <= r0["epoch_pad"] and len(b0) == len(b1)
        assert set(r0["positives"]) <= set(b0) | set(b1)
    # candidates_per_round: every rank draws the same fresh 300 negatives each round, scores its half
    # of them, and selects the same hard negatives among them
    q0, q1 = (json.loads((tmp_path / f"rank{r}_sampled.json").read_text()) for r in (0, 1))
    rounds = q0["round_candidates"]
    assert rounds == q1["round_candidates"] and len(rounds) == 3 and len({tuple(c) for c in rounds}) == 3
    assert all(len(c) == 300 and set(c) <= set(q0["negatives"]) for c in rounds)
    assert q0["hard"] == q1["hard"] and q0["epoch_weights"] == q1["epoch_weights"]
    assert len(q0["hard"]) == 2 and all(h and set(h) <= set(c) for c, h in zip(rounds[:2], q0["hard"], strict=True))
    for cand, sh0, sh1 in zip(rounds, q0["shards"], q1["shards"], strict=True):
        assert not set(sh0) & set(sh1) and set(sh0) | set(sh1) == set(cand)
    # draw="proportional": the random draw is seeded by the round, so both ranks draw the same 30
    # (10 % of 300) hard negatives among the same candidates and build the same sampler
    d0, d1 = (json.loads((tmp_path / f"rank{r}_drawn.json").read_text()) for r in (0, 1))
    assert d0["round_candidates"] == d1["round_candidates"] == rounds
    assert d0["hard"] == d1["hard"] and d0["epoch_weights"] == d1["epoch_weights"]
    assert [len(h) for h in d0["hard"]] == [30, 30]
    assert all(set(h) <= set(c) for c, h in zip(rounds[:2], d0["hard"], strict=True))


def test_argument_checks_take_every_checked_argument_by_name():
    """``rules.check_arguments`` has no catch-all: each checked ``__init__`` argument is a required
    keyword, so an argument renamed on one side only is a TypeError instead of a skipped check."""
    import inspect

    checked = inspect.signature(rules.check_arguments).parameters
    assert all(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in checked.values())
    init = inspect.signature(HardNegativeMining.__init__).parameters
    assert set(checked) == set(init) - {"self", "seed", "verbose"}
    defaults = {name: init[name].default for name in checked}
    assert rules.check_arguments(**defaults) is None
    renamed = {("fractoin" if k == "fraction" else k): v for k, v in defaults.items()}
    with pytest.raises(TypeError, match="unexpected keyword argument 'fractoin'"):
        rules.check_arguments(**renamed)
