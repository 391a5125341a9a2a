"""Hard-negative mining vs the baselines on an imbalanced one-vs-rest task from CIFAR-10 JPEGs.

One class (default ``ship``) against the nine others (about 1:9). At equal epochs and for each
seed, train the same model with: no mining, class-balanced oversampling (inverse-frequency sampler
weights, epoch length unchanged), offline hard-negative mining (``HardNegativeMining`` with the nine
classes as negatives), two-stage mining (start on every positive and 20% of the negatives), and
OHEM (``ohem_keep=0.25``). Reports precision, recall, F1 and false positives of the positive class
on the test split (mean ± std over seeds), and the cost of a mining round against a training epoch.

Usage (unpack a subset of ../shared/data/cifar10-jpeg.tar.gz first, e.g. 300 train / 100 test
images per class into data/cifar10-mini)::

    .venv/bin/python benchmarks/bench_mining.py --root data/cifar10-mini --epochs 12 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from lit_recipes.callbacks import HardNegativeMining
from lit_recipes.datamodules import OneVsRestDataModule
from lit_recipes.datamodules.imagefolder import ImageFolderDataModule
from lit_recipes.module import ClassifierModule

METHODS = ("none", "oversample", "mining", "two_stage", "ohem")


class EpochTimer(Callback):
    """Wall time of each training epoch's batches (validation and mining excluded)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds.append(self._last - self._start)


def make_dm(args, seed: int) -> OneVsRestDataModule:
    base = ImageFolderDataModule(args.root, batch_size=args.batch_size, seed=seed)
    dm = OneVsRestDataModule(base, positive=args.positive)
    dm.setup("fit")
    return dm


@torch.no_grad()
def test_scores(module: ClassifierModule, dm) -> dict[str, float]:
    module.eval()
    preds, targets = [], []
    for images, y, _ in dm.test_dataloader():
        preds.append(module.predict_logits(images).argmax(-1))
        targets.append(y)
    p, t = torch.cat(preds), torch.cat(targets)
    tp = int(((p == 1) & (t == 1)).sum())
    fp = int(((p == 1) & (t == 0)).sum())
    fn = int(((p == 0) & (t == 1)).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"precision": precision, "recall": recall, "f1": f1, "fp": fp, "tp": tp, "fn": fn}


def run(method: str, seed: int, args) -> dict:
    L.seed_everything(seed, verbose=False)
    dm = make_dm(args, seed)
    callbacks: list[Callback] = [timer := EpochTimer()]
    mining = None
    if method == "oversample":
        counts = torch.as_tensor(dm.class_counts(), dtype=torch.double)
        dm.set_sample_weights((1.0 / counts)[torch.as_tensor(dm.train_targets)])
    elif method in ("mining", "two_stage"):
        mining = HardNegativeMining(
            every_n_epochs=args.mine_every,
            negative_classes=["rest"],
            boost=args.boost,
            initial_negative_fraction=0.2 if method == "two_stage" else 1.0,
            patience=args.patience,
            top_k=16,
            verbose=False,
        )
        callbacks.append(mining)
    module = ClassifierModule(
        args.model,
        num_classes=2,
        in_channels=3,
        lr=args.lr,
        lr_scheduler=partial(torch.optim.lr_scheduler.OneCycleLR),
        ohem_keep=0.25 if method == "ohem" else 1.0,
        ohem_min_kept=8,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(Path(args.out).parent / "bench_mining_runs" / f"{method}_s{seed}"),
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=dm)
    out = {"method": method, "seed": seed, **test_scores(module, dm)}
    out["epoch_seconds"] = float(np.median(timer.seconds))
    out["train_size"] = len(dm.train_indices)
    if mining is not None:
        out["rounds"] = [
            {k: h[k] for k in ("round", "epoch", "pool_size", "num_errors", "num_hard", "num_new", "seconds")}
            for h in mining.history
        ]
        out["mining_seconds"] = float(np.median([h["seconds"] for h in mining.history]))
    # one eval pass over the whole training split (what a round costs at most)
    start = time.perf_counter()
    with torch.no_grad():
        module.eval()
        for images, _, _ in dm.eval_dataloader("train"):
            module.predict_logits(images)
    out["full_pass_seconds"] = time.perf_counter() - start
    return out


def summarise(results: list[dict]) -> str:
    lines = [
        "| method | precision | recall | F1 | false positives | epoch (s) | mining round (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        rows = [r for r in results if r["method"] == method]
        if not rows:
            continue

        def ms(key, fmt="{:.3f}", rows=rows):
            v = np.array([r[key] for r in rows], dtype=float)
            return (fmt + " ± " + fmt).format(v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0)

        mining = ms("mining_seconds", "{:.2f}") if "mining_seconds" in rows[0] else "—"
        lines.append(
            f"| {method} | {ms('precision')} | {ms('recall')} | {ms('f1')} | {ms('fp', '{:.1f}')} | "
            f"{ms('epoch_seconds', '{:.2f}')} | {mining} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="data/cifar10-mini")
    p.add_argument("--positive", default="ship")
    p.add_argument("--model", default="lenet5_bn")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--mine-every", type=int, default=3)
    p.add_argument("--boost", type=float, default=5.0)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench_mining.json")
    args = p.parse_args(argv)
    if not Path(args.root).is_dir():
        raise SystemExit(f"error: --root {args.root} is not a directory (unpack the CIFAR-10 JPEG subset first)")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    results = []
    for seed in args.seeds:
        for method in args.methods:
            r = run(method, seed, args)
            results.append(r)
            print(
                f"{method:>10} seed {seed}: P {r['precision']:.3f} R {r['recall']:.3f} F1 {r['f1']:.3f} "
                f"FP {r['fp']:3d}  epoch {r['epoch_seconds']:.2f}s"
                + (f"  mining round {r['mining_seconds']:.2f}s" if "mining_seconds" in r else ""),
                flush=True,
            )
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {
        "command": "benchmarks/bench_mining.py " + " ".join(argv if argv is not None else os.sys.argv[1:]),
        "git": sha,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "machine": platform.platform(),
        "threads": args.threads,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "args": vars(args), "results": results}, indent=2))
    print()
    print(summarise(results))
    ratios = [r["mining_seconds"] / r["epoch_seconds"] for r in results if "mining_seconds" in r]
    full = [r["full_pass_seconds"] / r["epoch_seconds"] for r in results]
    if ratios:
        print(f"\nmining round / training epoch: {np.mean(ratios):.2f} ± {np.std(ratios, ddof=1):.2f}")
    print(f"one eval pass over the training split / training epoch: {np.mean(full):.2f}")
    print(meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
