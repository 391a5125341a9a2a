"""Hard-negative mining's bookkeeping without a Trainer: pool masks, the two-stage subset, sampling
weights, each selection rule, the hardest list and round entry, scoring in eval mode without RNG use,
and the report files (:mod:`lit_recipes.callbacks.mining_pool`, :mod:`lit_recipes.callbacks.mining_report`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lit_recipes.callbacks import mining_pool as pool
from lit_recipes.callbacks import mining_report as report
from lit_recipes.callbacks import mining_rules as rules


def test_pool_masks_and_initial_included():
    # pool of 10: indices 0-7 are the training split; class 0 is the negative class
    targets, train_idx = [0, 0, 1, 0, 0, 1, 0, 0, 0, 1], list(range(8))
    train, neg = pool.pool_masks(targets, train_idx, [0])
    assert train.tolist() == [True] * 8 + [False] * 2
    assert neg.tolist() == [t == 0 for t in targets]
    assert pool.pool_masks(targets, train_idx, None)[1].all()  # all classes mined: everything is a negative
    assert pool.initial_included(train, neg, 1.0, seed=0).all()
    inc = pool.initial_included(train, neg, 0.5, seed=3)
    # 6 training negatives (0, 1, 3, 4, 6, 7): 3 kept, the other 3 held out; positives and the
    # non-training samples stay included
    assert int((~inc).sum()) == 3 and set(np.flatnonzero(~inc.numpy())) <= {0, 1, 3, 4, 6, 7}
    assert torch.equal(inc, pool.initial_included(train, neg, 0.5, seed=3))  # seeded
    assert int(pool.initial_included(train, neg, 0.01, seed=0)[[0, 1, 3, 4, 6, 7]].sum()) == 1  # at least one


def test_sample_candidates_seeded_per_round_sorted_subset():
    idx = np.arange(100, 200)
    assert pool.sample_candidates(idx, None, seed=0, round_=0).tolist() == idx.tolist()  # no cap: all
    assert pool.sample_candidates(idx, 100, seed=0, round_=3).tolist() == idx.tolist()  # cap >= pool: all
    a = pool.sample_candidates(idx, 30, seed=7, round_=0)
    assert len(a) == len(set(a.tolist())) == 30 and set(a.tolist()) <= set(idx.tolist())
    assert a.tolist() == sorted(a.tolist())
    assert np.array_equal(a, pool.sample_candidates(idx, 30, seed=7, round_=0))  # every rank draws the same
    assert not np.array_equal(a, pool.sample_candidates(idx, 30, seed=7, round_=1))  # a fresh sample per round
    assert not np.array_equal(a, pool.sample_candidates(idx, 30, seed=8, round_=0))
    # five rounds of 30 of 100 reach most of the pool (a pool too large to score each round is still covered)
    seen = set().union(*(pool.sample_candidates(idx, 30, seed=7, round_=r).tolist() for r in range(5)))
    assert len(seen) > 70


def test_sampling_weights_boost_and_budget():
    train = torch.tensor([True] * 8 + [False] * 2)
    neg = torch.tensor([True, True, False, True, True, False, True, True, True, False])
    base = torch.full((10,), 2.0, dtype=torch.double)
    included = torch.tensor([True] * 7 + [False] + [True] * 2)
    hard = torch.zeros(10, dtype=torch.bool)
    hard[[0, 3]] = True
    w, n = pool.sampling_weights(train, neg, base, included, hard, boost=5.0)
    assert n is None and w.tolist() == [10.0, 2.0, 2.0, 10.0, 2.0, 2.0, 2.0, 0.0, 2.0, 2.0]
    # budget 4 with hard_share 0.5: both hard negatives once, 2 draws over the 3 other included
    # training negatives (1, 4, 6), every positive once: 2 + 2 + 2 samples per epoch
    w, n = pool.sampling_weights(train, neg, base, included, hard, boost=5.0, budget=4, hard_share=0.5)
    assert n == 6 and w.tolist() == pytest.approx([1, 2 / 3, 1, 1, 2 / 3, 1, 2 / 3, 0, 0, 0])


def test_select_round_each_rule():
    targets = torch.tensor([0, 0, 0, 0, 0, 1])
    idx = torch.tensor([0, 1, 2, 3, 4])
    score = torch.tensor([0.9, 0.2, 0.6, 0.6, 0.1])
    loss = torch.tensor([0.1, 3.0, 0.5, 0.2, 0.0])
    pred = torch.tensor([1, 0, 1, 0, 0])
    pos, wrong, key = pool.select_round(targets, idx, loss, score, pred, [0], count=2)
    assert pos.tolist() == [0, 2] and wrong.tolist() == [True, False, True, False, False]
    assert key.tolist() == pytest.approx(score.tolist())
    assert pool.select_round(targets, idx, loss, score, pred, [0], selection="loss", count=2)[0].tolist() == [1, 2]
    assert pool.select_round(targets, idx, loss, score, pred, [0], fraction=0.5)[0].tolist() == [0, 2, 3]
    assert pool.select_round(targets, idx, loss, score, pred, [0], threshold=0.6)[0].tolist() == [0, 2, 3]
    pos, _, key = pool.select_round(targets, idx, loss, score, pred, [0], selection="misclassified")
    assert pos.tolist() == [0, 2] and np.isinf(key[[1, 3, 4]]).all()
    # all classes mined: wrong means predicted as another class than the own one
    assert pool.select_round(targets, idx, loss, score, pred, None, count=1)[1].tolist() == wrong.tolist()


def test_sample_hard_weighted_without_replacement():
    w = np.array([0.0, 1.0, 0.0, 2.0, 0.5])
    # zero weights come only after every positive one; the result is ordered by weight
    assert rules.sample_hard(w, 3, seed=0).tolist() == [3, 1, 4]
    assert rules.sample_hard(w, 4, seed=5)[:3].tolist() == [3, 1, 4] and len(rules.sample_hard(w, 9, seed=5)) == 5
    assert rules.sample_hard(w, 0, seed=0).tolist() == []
    # seeded: the same seed draws the same, and over fixed seeds the draw follows the weights
    ws = np.array([1.0, 3.0, 0.0, 0.0])
    first = [int(rules.sample_hard(ws, 1, seed=s)[0]) for s in range(2000)]
    assert first == [int(rules.sample_hard(ws, 1, seed=s)[0]) for s in range(2000)]
    assert 2 not in first and 3 not in first
    assert abs(first.count(1) / 2000 - 0.75) < 0.03
    # weights 1..100, 10 drawn (300 fixed seeds): the top half holds 75 % of the weight and gets
    # 73 % of the draws; the top 10 (the "top" rule's choice) gets 17 %, not all
    ramp = np.arange(1, 101, dtype=float)
    drawn = np.concatenate([rules.sample_hard(ramp, 10, seed=[s, 1]) for s in range(300)])
    assert 0.68 < np.mean(drawn >= 50) < 0.80 and 0.12 < np.mean(drawn >= 90) < 0.25
    for bad in (np.array([1.0, -0.1]), np.array([np.nan, 1.0])):
        with pytest.raises(ValueError, match="weights must be finite and >= 0"):
            rules.sample_hard(bad, 1, seed=0)
    with pytest.raises(ValueError, match="k must be >= 0"):
        rules.sample_hard(w, -1, seed=0)


def test_select_round_proportional_draw():
    targets = torch.zeros(200, dtype=torch.long)
    idx = torch.arange(200)
    score = torch.linspace(0, 1, 200)
    loss, pred = -torch.log1p(-score.clamp(max=0.999)), torch.zeros(200, dtype=torch.long)
    top, _, _ = pool.select_round(targets, idx, loss, score, pred, [0], fraction=0.1)
    drawn, _, key = pool.select_round(targets, idx, loss, score, pred, [0], fraction=0.1, draw="proportional", seed=3)
    assert len(drawn) == len(top) == 20 and set(drawn.tolist()) != set(top.tolist())
    assert score[torch.as_tensor(drawn)].mean() > score.mean()  # harder than a random draw...
    assert np.isfinite(key).sum() == 20 and set(np.flatnonzero(np.isfinite(key))) == set(drawn.tolist())  # the grid
    again, _, _ = pool.select_round(targets, idx, loss, score, pred, [0], fraction=0.1, draw="proportional", seed=3)
    assert again.tolist() == drawn.tolist()  # seeded: the same on every rank
    other, _, _ = pool.select_round(targets, idx, loss, score, pred, [0], fraction=0.1, draw="proportional", seed=4)
    assert other.tolist() != drawn.tolist()
    # the count of a threshold rule is kept: 50 score >= 0.75, 50 drawn from all 200
    n_above = int((score >= 0.75).sum())
    by_t, _, _ = pool.select_round(targets, idx, loss, score, pred, [0], threshold=0.75, draw="proportional", seed=0)
    assert len(by_t) == n_above and (score[torch.as_tensor(by_t)] < 0.75).any()


def test_hardest_samples_and_round_entry():
    key = np.array([0.5, -np.inf, 0.9, 0.5])
    idx, targets = torch.tensor([4, 5, 6, 7]), torch.tensor([0, 0, 0, 0, 0, 0, 0, 1])
    pred, score, loss = torch.tensor([0, 0, 1, 0]), torch.tensor([0.5, 0.0, 0.9, 0.5]), torch.tensor([1.0, 2, 3, 4])
    files = [f"img{i}.png" for i in range(8)]
    top = pool.hardest_samples(key, idx, targets, pred, score, loss, top_k=4, files=files)
    assert [h["index"] for h in top] == [6, 4, 7]  # highest first, ties in pool order, -inf left out
    assert top[0] == {"index": 6, "path": "img6.png", "target": 0, "pred": 1, "score": pytest.approx(0.9), "loss": 3.0}
    assert pool.hardest_samples(key, idx, targets, pred, score, loss, top_k=1)[0]["path"] is None
    new_hard, hard, included = (torch.tensor(v, dtype=torch.bool) for v in ([1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]))
    e = pool.round_entry(3, 7, 40, torch.tensor([True, False, True]), new_hard, hard, included, None, 0.5)
    assert (e["round"], e["epoch"], e["pool_size"], e["num_errors"], e["num_hard"]) == (3, 7, 40, 2, 2)
    assert (e["num_repeat"], e["num_new"], e["threshold"], e["seconds"]) == (1, 1, None, 0.5)


def test_score_samples_in_eval_mode_without_touching_rng():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Dropout(0.5))
    net[1].eval()  # a submodule in eval mode stays so
    x, y = torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    loader = [(x[:3], y[:3], torch.tensor([4, 2, 0])), (x[3:], y[3:], torch.tensor([1, 3]))]
    rng = torch.get_rng_state()
    (i, loss, score, pred, target), shard = pool.score_samples(net, loader, [0], total=5)
    assert torch.equal(torch.get_rng_state(), rng) and [m.training for m in net.modules()] == [True, True, False, True]
    net.eval()
    logits = net(x)
    assert (
        i.tolist() == shard.tolist() == [4, 2, 0, 1, 3]
        and torch.equal(target, y)
        and torch.equal(pred, logits.argmax(-1))
    )
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, y, reduction="none"))
    assert torch.allclose(score, 1 - torch.softmax(logits, -1)[:, 0])  # P(any positive class)
    (i, *_), shard = pool.score_samples(net, [], [0], total=0)
    assert i.dtype == torch.long and len(i) == len(shard) == 0


def test_final_report_and_files(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    val = (np.array([0.9, 0.8, 0.7, 0.3, 0.1]), np.array([True, True, False, True, False]))
    test = (np.array([0.95, 0.2, 0.6]), np.array([True, False, False]))
    rep = report.final_report({"val": val}, target_recall=0.5)
    on_val = rules.detection_metrics(*val, target_recall=0.5)
    assert rep["evaluated_on"] == "val" and rep == {
        **on_val,
        "val_ap": on_val["ap"],
        "val_fp": on_val["fp"],
        "evaluated_on": "val",
    }
    rep = report.final_report({"val": val, "test": test}, target_recall=0.5)
    assert rep["evaluated_on"] == "test" and rep["threshold"] == 0.8  # the 2nd of val's 3 positive scores
    assert (rep["tp"], rep["fp"], rep["fn"]) == (1, 0, 0)  # test: 0.95 (positive) passes, 0.6 and 0.2 do not
    # validation's own numbers ride along: at 0.8 val keeps 0.9 and 0.8, no negative (0.7 is below)
    # val AP by hand: positives at ranks 1, 2, 4 -> precisions 1, 1, 3/4
    assert rep["val_fp"] == 0 and rep["val_ap"] == pytest.approx(11 / 12) and rep["ap"] == 1.0
    trainer = SimpleNamespace(logger=None, loggers=[], default_root_dir=str(tmp_path))
    report.write_report(trainer, rep, {"val": val, "test": test}, 0.5)
    out = tmp_path / "hard_negative_mining"
    assert json.loads((out / "report.json").read_text())["tp"] == 1 and (out / "pr_curve.png").stat().st_size > 5000
    dm = SimpleNamespace(class_names=["rest", "8"], pool=SimpleNamespace(get=lambda i: (np.full((8, 8), i * 10.0), 0)))
    entry = {"round": 2, "epoch": 5, "hardest": [{"index": 3, "path": None, "target": 0, "pred": 1, "score": 0.7}]}
    report.write_round(trainer, dm, [{"round": 1}, entry], entry)
    assert [h["round"] for h in json.loads((out / "history.json").read_text())] == [1, 2]
    assert Image.open(out / "hardest_round02_epoch005.png").size[0] > 100
