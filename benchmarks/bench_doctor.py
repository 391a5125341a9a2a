"""The training doctor (GapMonitor) on a labeled suite: runs whose truth is known by construction.

Cases (digits unless said; seeds 0..2 unless said):

* healthy: the default recipe ``lit_recipes/configs/digits_lenet.yaml`` through the CLI (``make train``'s
  command, LR range test + 1cycle, 15 epochs), 5 seeds; ResNet-20 on a two-class CIFAR-10 subset
  (automobile vs frog, 32x32, 250 train images per class, 100 per class for val, flips and crops,
  1cycle at 0.05, 16 epochs), 2 seeds.
* overfitting: a 64-512-512-10 MLP with Adam on 71 training digits (no regularisation, 30 epochs);
  ResNet-20 with Adam on 10 CIFAR images per class, no augmentation, 25 epochs.
* overfitting_onset: no case. Two constructions were tried (LeNet-5 with Adam at a constant 3e-3 on
  the whole digits training split, 3 seeds, 25 epochs; the 512-wide MLP with Adam at 1e-3 and 3e-3
  on 70 % of the pool, 20-25 epochs): in none did the val loss rise beyond its noise (the minimum and
  the last epochs differ by less than their standard errors), so their truth is not "onset" by
  construction and they are left out (BENCHMARKS.md). The onset rule is measured through the lead
  over EarlyStopping on the over-fitting runs and tested on constructed histories.
* underfitting: a linear layer on the 2x2-pooled image (4 features, 10 epochs); LeNet-5 BN with
  plain SGD at LR 0.003 for 2 epochs (far too few); the CIFAR two-class ResNet-20 above with 1cycle
  at 0.1 for only 8 epochs (clean train accuracy still climbing at the end).
* not_converging: LR 50 (diverges), LR 1e-6 (never moves), labels shuffled once before training.

Every run's raw per-validation measurements are cached as JSON (``--cache``); the verdicts are
judged again from them with the current rules (``doctor_rules.rediagnose``, identical to what
GapMonitor printed for an unchanged rule set: checked). The report: the confusion matrix of final
verdicts, verdict changes per healthy run, and the onset lead over
``EarlyStopping(monitor="val/loss", patience=3)`` (Lightning's rule replayed on the same val losses)
on the over-fitting runs.

Run: ``OMP_NUM_THREADS=1 LIT_RECIPES_DATA=... .venv/bin/python benchmarks/bench_doctor.py``
(``--rejudge`` re-judges the cache without training; ``--only NAME...`` runs some cases).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn

from lit_recipes.callbacks import GapMonitor
from lit_recipes.callbacks.doctor_rules import Thresholds, rediagnose, summarize, verdict_changes
from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.datamodules.sources import Source
from lit_recipes.module import ClassifierModule
from lit_recipes.schedules import OneCycle

REPO = Path(__file__).resolve().parents[1]
TRUTHS = ("healthy", "underfitting", "overfitting_onset", "overfitting", "not_converging")
JUDGED = ("verdict", "confidence", "evidence", "raw_verdict", "raw_ungated", "raw_confidence", "intervals", "remedy")


class PooledLinear(nn.Module):
    """Far too small for digits: a linear layer on the 2x2 average-pooled image (4 features)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(x).flatten(1))


class WideMLP(nn.Module):
    """Far too big for 71 training images: 64-512-512-10, no dropout."""

    def __init__(self, width: int = 512) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(1), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.classifier = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


class ShuffledDigits(DigitsDataModule):
    """Digits whose pool labels are permuted once (train and val): nothing is learnable."""

    def load_sources(self):
        pool, val, test, names = super().load_sources()
        perm = np.random.default_rng(self.seed).permutation(np.asarray(pool.targets))
        return Source(get=lambda i: (pool.get(i)[0], int(perm[i])), targets=perm), val, test, names


def cifar_dm(per_class: int, classes, augment: bool, batch_size: int):
    from lit_recipes.datamodules import ImageFolderDataModule
    from lit_recipes.localdata import cifar10_jpeg_subset

    src = cifar10_jpeg_subset(per_class_train=per_class, per_class_test=100, classes=classes)
    root = Path(tempfile.mkdtemp(prefix="bench_doctor_cifar_"))  # train/ + the test images as val/
    (root / "train").symlink_to(src / "train", target_is_directory=True)
    (root / "val").symlink_to(src / "test", target_is_directory=True)
    return ImageFolderDataModule(
        str(root),
        batch_size=batch_size,
        val_fraction=0.0,
        train_transforms=None if augment else [],
        eval_batch_size=256,
    )


def lenet_sgd(lr: float, model: str = "lenet5_bn", schedule: bool = False) -> ClassifierModule:
    sched = partial(OneCycle, div=10, annihilation_pct=0.1) if schedule else None
    return ClassifierModule(
        model, num_classes=10, in_channels=1, lr=lr, init="kaiming_normal",
        optimizer=partial(torch.optim.SGD, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4),
        lr_scheduler=sched,
    )  # fmt: skip


def adam(model, lr: float, num_classes: int = 10, in_channels: int = 1) -> ClassifierModule:
    return ClassifierModule(
        model, num_classes=num_classes, in_channels=in_channels, lr=lr, optimizer=partial(torch.optim.Adam)
    )


# name -> (truth, seeds, builder(seed) -> (model, datamodule, epochs, monitor kwargs))
def _cases() -> dict:
    return {
        "healthy_digits_recipe": ("healthy", 5, None),  # through the CLI: see run_cli
        "healthy_cifar2_resnet20_16ep": (
            "healthy", 2,
            lambda s: (
                ClassifierModule("cifar_resnet20", num_classes=2, in_channels=3, lr=0.05, init="kaiming_normal",
                                 lr_scheduler=partial(OneCycle, div=10, annihilation_pct=0.1)),
                cifar_dm(250, ["automobile", "frog"], True, 64), 16, {"subset_size": 500},
            ),
        ),
        "underfit_cifar2_8_epochs": (
            "underfitting", 3,
            lambda s: (
                ClassifierModule("cifar_resnet20", num_classes=2, in_channels=3, lr=0.1, init="kaiming_normal",
                                 lr_scheduler=partial(OneCycle, div=10, annihilation_pct=0.1)),
                cifar_dm(250, ["automobile", "frog"], True, 64), 8, {"subset_size": 500},
            ),
        ),
        "overfit_digits_71": (
            "overfitting", 3,
            lambda s: (adam(WideMLP(), 3e-3), DigitsDataModule(batch_size=16, val_fraction=0.95), 30, {}),
        ),
        "overfit_cifar10_tiny": (
            "overfitting", 2,
            lambda s: (adam("cifar_resnet20", 1e-3, 10, 3), cifar_dm(10, None, False, 20), 25, {}),
        ),
        "underfit_pooled_linear": (
            "underfitting", 3,
            lambda s: (ClassifierModule(PooledLinear(), num_classes=10, in_channels=1, lr=0.5), DigitsDataModule(), 10, {}),
        ),
        "underfit_two_epochs": (
            "underfitting", 3,
            lambda s: (lenet_sgd(0.003), DigitsDataModule(batch_size=64), 2, {}),
        ),
        "nc_lr_far_too_high": (
            "not_converging", 2,
            # on_nonfinite="warn": the run goes on through its nan losses, as the doctor must judge them
            lambda s: (
                ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=50.0, on_nonfinite="warn"),
                DigitsDataModule(), 4, {},
            ),
        ),
        "nc_lr_far_too_low": (
            "not_converging", 2,
            lambda s: (lenet_sgd(1e-6, schedule=True), DigitsDataModule(), 6, {}),
        ),
        "nc_shuffled_labels": (
            "not_converging", 3,
            lambda s: (lenet_sgd(0.05, schedule=True), ShuffledDigits(batch_size=64), 10, {}),
        ),
    }  # fmt: skip


def run_python(builder, seed: int, tmp: str) -> tuple[list[dict], dict]:
    L.seed_everything(seed, verbose=False)
    model, dm, epochs, kw = builder(seed)
    monitor = GapMonitor(print_report=False, plot_every_n_epochs=10_000, **kw)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp, callbacks=[monitor],
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return monitor.history, {"num_classes": monitor.num_classes, "chance_acc": monitor.chance_acc}


def run_cli(seed: int, tmp: str) -> tuple[list[dict], dict]:
    """``make train``'s recipe: the CLI with the shipped config, one seed."""
    cmd = [
        str(Path(sys.executable).parent / "lit-recipes"), "fit", "--config", "lit_recipes/configs/digits_lenet.yaml",
        "--seed_everything", str(seed), "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp}", "--test_after_fit=false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    d = json.loads(next(Path(tmp).rglob("diagnosis.json")).read_text())
    return d["history"], {"num_classes": 10, "chance_acc": d.get("chance_acc")}


def collect(args) -> None:
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    for name, (truth, seeds, builder) in _cases().items():
        if args.only and name not in args.only:
            continue
        for seed in range(min(seeds, args.max_seeds)):
            path = cache / f"{name}__{seed}.json"
            if path.is_file() and not args.force:
                continue
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                history, meta = run_cli(seed, tmp) if builder is None else run_python(builder, seed, tmp)
            meta.update(name=name, truth=truth, seed=seed, seconds=time.perf_counter() - t0)
            path.write_text(json.dumps({"meta": meta, "history": history}, default=float))
            print(f"ran {name} seed {seed}: {meta['seconds']:.0f} s, last verdict {history[-1]['verdict']}", flush=True)


def judge(args, th: Thresholds) -> None:
    runs = [json.loads(p.read_text()) for p in sorted(Path(args.cache).glob("*.json"))]
    matrix = {t: dict.fromkeys(TRUTHS, 0) for t in TRUTHS}
    rows, leads, changes, mismatches = [], [], {}, 0
    for run in runs:
        meta, hist = run["meta"], run["history"]
        raw = [{k: v for k, v in r.items() if k not in JUDGED} for r in hist]
        judged = rediagnose(raw, meta["num_classes"], th, meta.get("chance_acc"))
        mismatches += [r["verdict"] for r in judged] != [r["verdict"] for r in hist]
        summary = summarize(judged, th, meta["num_classes"])
        final = summary["final"]["verdict"]
        matrix[meta["truth"]][final if final in TRUTHS else "healthy"] += 1
        n_changes = verdict_changes([r["verdict"] for r in judged])
        if meta["truth"] == "healthy":
            changes[f"{meta['name']}#{meta['seed']}"] = n_changes
        if meta["truth"] in ("overfitting", "overfitting_onset"):
            leads.append(
                (
                    meta["name"],
                    meta["seed"],
                    summary["onset_epoch"],
                    summary["early_stopping_epoch"],
                    summary["onset_lead_epochs"],
                )
            )
        rows.append((meta["name"], meta["seed"], meta["truth"], final, summary["final"]["confidence"], n_changes,
                     " ".join(r["verdict"][:4] for r in judged)))  # fmt: skip
    print(f"\n## runs ({len(runs)}; {mismatches} whose cached verdicts differ from the current rules)")
    for r in rows:
        ok = "ok " if r[2] == r[3] else "BAD"
        print(
            f"{ok} {r[0]:<24} seed {r[1]}  truth {r[2]:<18} final {r[3]:<18} conf {r[4]:.2f}  changes {r[5]}  [{r[6]}]"
        )
    print("\n## confusion matrix of final verdicts (rows: truth, columns: final verdict)")
    short = {
        "healthy": "healthy",
        "underfitting": "underfit",
        "overfitting_onset": "onset",
        "overfitting": "overfit",
        "not_converging": "not_conv",
    }
    print(f"| {'truth':<18} | " + " | ".join(f"{short[t]:>8}" for t in TRUTHS) + " |")
    print("|" + "---|" * (len(TRUTHS) + 1))
    for t in TRUTHS:
        if sum(matrix[t].values()):
            print(f"| {t:<18} | " + " | ".join(f"{matrix[t][c]:>8}" for c in TRUTHS) + " |")
    right = sum(matrix[t][t] for t in TRUTHS)
    print(f"\nfinal verdict right: {right}/{len(runs)}")
    print("\n## verdict changes after the first validation, healthy runs")
    for k, v in changes.items():
        print(f"{k}: {v}")
    print("\n## onset flagged vs EarlyStopping(monitor='val/loss', patience=3), over-fitting runs")
    for name, seed, onset, es, lead in leads:
        print(f"{name}#{seed}: flagged at epoch {onset}, EarlyStopping stops at epoch {es}, lead {lead}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=str(REPO / "runs" / "bench_doctor"))
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--max-seeds", type=int, default=5)
    parser.add_argument("--force", action="store_true", help="re-run cached cases")
    parser.add_argument("--rejudge", action="store_true", help="only judge the cached runs again")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    print(
        f"# bench_doctor: torch {torch.__version__}, lightning {L.__version__}, {platform.machine()}, 1 thread, git {sha}"
    )
    t0 = time.perf_counter()
    if not args.rejudge:
        collect(args)
    judge(args, Thresholds())
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
