"""Choosing a configuration by one validation split vs by k-fold (``lit-recipes search``), on digits.

For each seed ``s`` of the split (the data seed draws the folds; the training seed is ``s`` too) the
same small grid of configurations (weight decay x dropout of LeNet-5-BN) is searched with
``run_search`` (grid sampler, ``--kfold.num_folds K``, the default one-SE pruner). Three ways to
choose are compared:

* **one val split**: the configuration with the best val accuracy on fold 0 alone (a single
  ``1/K`` validation split, the same images for every configuration);
* **k-fold, best mean**: the best mean fold val accuracy (``--search.rule best``);
* **k-fold, one-SE rule**: the search's default pick (the simplest within one SE of the best).

The test split is the same for every seed (a datamodule whose test split has its own fixed seed),
so the configurations can be ranked on it: a configuration's test accuracy for seed ``s`` is the
mean test accuracy of all its fold models trained for the *other* seeds (leave-one-seed-out: none
of the models that chose for seed ``s`` enters the truth it is scored against). Reported: how often
each method picks the configuration that is best on the test split, and the mean test accuracy it
gives up against that best (regret, points).

    OMP_NUM_THREADS=1 python benchmarks/bench_search.py                 # 6 seeds, 3 folds, 3 epochs (~20 min, 1 thread)
    OMP_NUM_THREADS=1 python benchmarks/bench_search.py --seeds 8 --folds 5 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.datamodules.sources import array_source
from lit_recipes.datamodules.splits import stratified_split

REPO = Path(__file__).resolve().parents[1]

SPACE = {
    "model.init_args.optimizer.init_args.weight_decay": "choice(0.05, 0.005, 0.0005)",  # simplest (most decay) first
    "model.init_args.dropout": "choice(0.5, 0.0)",
}


class DigitsFixedTest(DigitsDataModule):
    """Digits whose test split is drawn with ``test_seed`` (fixed), while ``seed`` draws the
    validation split and the folds of the remaining pool."""

    def __init__(self, test_seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.test_seed = test_seed

    def load_sources(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        targets = digits.target.astype(np.int64)
        pool_idx, test_idx = stratified_split(targets, self.test_fraction, self.test_seed)
        pool = array_source(images[pool_idx], targets[pool_idx])
        test = array_source(images[test_idx], targets[test_idx])
        return pool, None, test, [str(i) for i in range(10)]


def recipe(epochs: int, seed: int) -> list[str]:
    return [
        "--model=lit_recipes.module.ClassifierModule", "--model.init_args.model=lenet5_bn",
        "--model.init_args.lr=0.05",
        "--model.init_args.optimizer=torch.optim.SGD", "--model.init_args.optimizer.init_args.lr=0.05",
        "--model.init_args.optimizer.init_args.momentum=0.9", "--model.init_args.optimizer.init_args.nesterov=true",
        "--model.init_args.optimizer.init_args.weight_decay=0.0005",
        "--model.init_args.lr_scheduler=lit_recipes.schedules.OneCycle",
        "--data=bench_search.DigitsFixedTest", "--data.init_args.batch_size=64", f"--data.init_args.seed={seed}",
        f"--seed_everything={seed}", f"--trainer.max_epochs={epochs}", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.accelerator=cpu",
        "--trainer.devices=1",
    ]  # fmt: skip


def fold_results(trial_dir: Path, k: int) -> list[dict]:
    out = []
    for i in range(k):
        path = trial_dir / f"fold_{i}" / "result.json"
        if path.is_file():
            out.append(json.loads(path.read_text()))
    return out


def key_of(params: dict) -> tuple:
    return tuple(params[k] for k in SPACE)


def analyse(per_seed: dict, ns, t_start: float) -> dict:
    methods = ("single_split", "kfold_best", "kfold_one_se")
    hits = {m: 0 for m in methods}
    regret = {m: [] for m in methods}
    rows = []
    for s, rec in per_seed.items():
        truth: dict[tuple, list[float]] = {}
        for s2, rec2 in per_seed.items():
            if s2 == s:
                continue
            for t in rec2["trials"]:
                truth.setdefault(t["key"], []).extend(t["test"])
        truth_mean = {k: float(np.mean(v)) for k, v in truth.items()}
        best_key = max(truth_mean, key=truth_mean.get)
        row = {"seed": s, "best_on_test": best_key}
        for m in methods:
            hits[m] += rec[m] == best_key
            regret[m].append(100 * (truth_mean[best_key] - truth_mean[rec[m]]))
            row[m] = rec[m]
        rows.append(row)
    all_test = {}
    for rec in per_seed.values():
        for t in rec["trials"]:
            all_test.setdefault(t["key"], []).extend(t["test"])
    summary = {
        "seeds": len(per_seed),
        "folds": ns.folds,
        "epochs": ns.epochs,
        "configs": {str(k): {"test_acc_mean": float(np.mean(v)), "n_models": len(v)} for k, v in all_test.items()},
        "hit_rate": {m: hits[m] / len(per_seed) for m in methods},
        "mean_regret_points": {m: float(np.mean(regret[m])) for m in methods},
        "pruned_trials": sum(r["pruned"] for r in per_seed.values()),
        "rows": [{k: (str(v) if isinstance(v, tuple) else v) for k, v in r.items()} for r in rows],
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the results here")
    ns = ap.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_search.DigitsFixedTest for jsonargparse
    from lit_recipes.commands.search import load_space, run_search

    work = Path(ns.out or tempfile.mkdtemp(prefix="bench_search_"))
    n_configs = int(np.prod([len(load_space(SPACE)[i].choices) for i in range(len(SPACE))]))
    per_seed = {}
    t_start = time.perf_counter()
    for s in range(ns.seeds):
        t0 = time.perf_counter()
        report = run_search(
            [*recipe(ns.epochs, s), f"--kfold.num_folds={ns.folds}"],
            space=SPACE,
            trials=n_configs,
            sampler="grid",
            final="none",
            dir=str(work / f"seed{s}"),
            name=f"bench-seed{s}",
        )
        trials = []
        for t in report["trials"]:
            if t["state"] not in ("COMPLETE", "PRUNED"):
                continue
            res = fold_results(work / f"seed{s}" / "trials" / t["dir"], ns.folds)
            trials.append(
                {
                    "key": key_of(t["params"]),
                    "state": t["state"],
                    "val": [r["metrics"]["val/acc"] for r in res],
                    "test": [r["metrics"]["test/acc"] for r in res],
                    "mean": t["mean"],
                    "number": t["number"],
                }
            )
        by_number = {t["number"]: t["key"] for t in trials}
        single = max(trials, key=lambda t: (t["val"][0], -t["number"]))["key"]
        per_seed[s] = {
            "trials": trials,
            "single_split": single,
            "kfold_best": by_number[report["pick"]["best"]],
            "kfold_one_se": by_number[report["pick"]["chosen"]],
            "pruned": sum(t["state"] == "PRUNED" for t in trials),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(
            f"seed {s}: single {single}, k-fold best {per_seed[s]['kfold_best']}, one-SE {per_seed[s]['kfold_one_se']}"
            f", pruned {per_seed[s]['pruned']}, {per_seed[s]['seconds']} s",
            flush=True,
        )

        if ns.json and len(per_seed) >= 2:  # partial results after every seed
            Path(ns.json).write_text(json.dumps(analyse(per_seed, ns, t_start), indent=1))
    summary = analyse(per_seed, ns, t_start)
    print(json.dumps(summary, indent=1))
    if ns.json:
        Path(ns.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
