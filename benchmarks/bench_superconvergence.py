"""Super-convergence on a CIFAR-10 JPEG subset: equal step budgets for constant LR, step decay,
cosine and 1cycle at the range-test LR (plus 1cycle at fast.ai's ``valley`` and at Lightning's
steepest-over-raw-LR suggestion), side by side in one run; mean ± std over seeds of the final test accuracy, the steps
to reach a target accuracy, and the wall time of a range test against one training epoch.

    .venv/bin/python benchmarks/bench_superconvergence.py                       # 2,000 images, 3 seeds
    .venv/bin/python benchmarks/bench_superconvergence.py --train-per-class 1000 --epochs 8 --model cifar_resnet20

The images come from ``../shared/data/cifar10-jpeg.tar.gz`` (the first N per class of each split),
decoded once into memory. Results are printed as a table and written to
``runs/bench_superconvergence.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import statistics
import subprocess
import tarfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image

from lit_recipes.callbacks.lr_finder import LRRangeTest
from lit_recipes.datamodules.base import ClassificationDataModule, array_source
from lit_recipes.module import ClassifierModule
from lit_recipes.schedules import OneCycle

REPO = Path(__file__).resolve().parents[1]
TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def load_cifar_subset(per_class_train: int, per_class_test: int, tarball: Path = TARBALL):
    """``(train_images, train_targets, test_images, test_targets, class_names)`` as uint8 arrays."""
    if not tarball.is_file():
        raise FileNotFoundError(f"CIFAR-10 JPEG tarball not found: {tarball}")
    limits = {"train": per_class_train, "test": per_class_test}
    data: dict[str, dict[str, list[np.ndarray]]] = {"train": {}, "test": {}}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 4 or parts[-3] not in limits:
                continue
            split, cls = parts[-3], parts[-2]
            bucket = data[split].setdefault(cls, [])
            if len(bucket) >= limits[split]:
                continue
            with tar.extractfile(member) as fh:
                bucket.append(np.asarray(Image.open(io.BytesIO(fh.read())).convert("RGB")))
    names = sorted(data["train"])

    def stack(split):
        imgs, tgts = [], []
        for c, name in enumerate(names):
            imgs += data[split].get(name, [])
            tgts += [c] * len(data[split].get(name, []))
        return np.stack(imgs), np.asarray(tgts, dtype=np.int64)

    return (*stack("train"), *stack("test"), names)


class ArrayDataModule(ClassificationDataModule):
    """In-memory images; the test split doubles as the per-epoch validation set here."""

    def __init__(self, arrays, batch_size: int = 128, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, val_fraction=0.0, seed=seed, normalize="dataset", drop_last=True)
        self.arrays = arrays

    @property
    def in_channels(self) -> int:
        return 3

    def load_sources(self):
        xtr, ytr, xte, yte, names = self.arrays
        return array_source(xtr, ytr), None, array_source(xte, yte), names

    def val_dataloader(self):
        return self.test_dataloader()


class EpochLog(L.Callback):
    """Test accuracy and step count at the end of every epoch; wall time of every epoch."""

    def __init__(self) -> None:
        self.history: list[tuple[int, float]] = []
        self.epoch_times: list[float] = []
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_times.append(time.perf_counter() - self._t0)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.history.append((trainer.global_step, float(trainer.callback_metrics["val/acc"])))


def make_scheduler(kind: str, steps: int):
    if kind == "constant":
        return None
    if kind == "step":  # x0.1 at 50 % and 75 % of the steps (stepped per batch)
        return lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, [steps // 2, (3 * steps) // 4], 0.1)
    if kind == "cosine":
        return lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    return partial(OneCycle)


def run_one(args, arrays, kind: str, seed: int) -> dict:
    L.seed_everything(seed, workers=True)
    dm = ArrayDataModule(arrays, batch_size=args.batch_size, seed=seed)
    dm.setup("fit")
    steps = args.epochs * (len(dm.train_targets) // args.batch_size)
    sched = make_scheduler("onecycle" if kind.startswith("1cycle") else kind, steps)
    module = ClassifierModule(args.model, num_classes=10, in_channels=3, lr=args.base_lr, lr_scheduler=sched)
    if sched is not None and kind in ("step", "cosine"):
        module.configure_optimizers = _per_step(module.configure_optimizers)
    log = EpochLog()
    callbacks: list[L.Callback] = [log]
    finder = None
    if kind.startswith("1cycle"):
        rule = kind.split("-", 1)[1] if "-" in kind else args.rule
        finder = LRRangeTest(min_lr=args.min_lr, max_lr=args.max_lr, num_steps=args.range_steps, suggestion=rule)
        callbacks.insert(0, finder)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(REPO / "runs" / "bench_superconvergence" / f"{kind}_s{seed}"),
        callbacks=callbacks,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    out = {
        "kind": kind,
        "seed": seed,
        "lr": module.lr,
        "steps": trainer.global_step,
        "final_acc": log.history[-1][1],
        "history": log.history,
        "epoch_s": statistics.median(log.epoch_times),
        "fit_s": time.perf_counter() - t0,
    }
    if finder is not None:
        out["range_test_s"] = finder.results["elapsed_s"]
        out["suggestions"] = finder.results["suggestions"]
    return out


def _per_step(configure):
    def wrapped():
        cfg = configure()
        cfg["lr_scheduler"]["interval"] = "step"
        return cfg

    return wrapped


def steps_to(history: list[tuple[int, float]], target: float) -> int | None:
    return next((s for s, acc in history if acc >= target), None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--base-lr", type=float, default=0.1, help="LR of the constant/step/cosine baselines")
    p.add_argument("--min-lr", type=float, default=1e-7)
    p.add_argument("--max-lr", type=float, default=10.0)
    p.add_argument("--range-steps", type=int, default=100)
    p.add_argument("--rule", default="minimum", help="the LRRangeTest suggestion rule of the '1cycle' run")
    p.add_argument("--target", type=float, default=0.35, help="target test accuracy for 'steps to target'")
    p.add_argument(
        "--kinds",
        nargs="+",
        default=["constant", "step", "cosine", "1cycle", "1cycle-valley", "1cycle-lightning"],
        help="schedules; '1cycle-<rule>' runs 1cycle at another suggestion rule",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "runs" / "bench_superconvergence.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    arrays = load_cifar_subset(args.train_per_class, args.test_per_class)
    rows = []
    for seed in args.seeds:
        for kind in args.kinds:
            r = run_one(args, arrays, kind, seed)
            rows.append(r)
            print(
                f"seed {seed} {kind:17s} lr {r['lr']:.3g}  final test acc {r['final_acc']:.4f}  "
                f"steps to {args.target:.0%}: {steps_to(r['history'], args.target)}  fit {r['fit_s']:.0f}s",
                flush=True,
            )
    print(
        f"\n{args.model}, {len(arrays[1])} train / {len(arrays[3])} test CIFAR-10 JPEGs, {args.epochs} epochs, "
        f"batch {args.batch_size}, SGD(0.9, nesterov, wd 5e-4); seeds {args.seeds}"
    )
    print(
        f"{'schedule':18s} {'LR (peak)':>18s} {'final test acc':>18s} {'steps to ' + format(args.target, '.0%'):>14s}"
    )
    summary = {}
    for kind in args.kinds:
        rs = [r for r in rows if r["kind"] == kind]
        accs = [r["final_acc"] for r in rs]
        lrs = [r["lr"] for r in rs]
        reach = [steps_to(r["history"], args.target) for r in rs]
        mean, std = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
        lr_txt = f"{min(lrs):.3g}-{max(lrs):.3g}" if len(set(lrs)) > 1 else f"{lrs[0]:.3g}"
        reach_txt = "/".join("-" if s is None else str(s) for s in reach)
        print(f"{kind:18s} {lr_txt:>18s} {100 * mean:11.1f} ± {100 * std:4.1f} {reach_txt:>14s}")
        summary[kind] = {"acc_mean": mean, "acc_std": std, "lrs": lrs, "steps_to_target": reach}
    rt = [r["range_test_s"] for r in rows if "range_test_s" in r]
    ep = [r["epoch_s"] for r in rows]
    if rt:
        print(
            f"\nrange test ({args.range_steps} steps max): {statistics.median(rt):.1f}s median; one training epoch: "
            f"{statistics.median(ep):.1f}s median (ratio {statistics.median(rt) / statistics.median(ep):.2f})"
        )
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} thread(s), CPU only",
        "torch": torch.__version__,
        "lightning": L.__version__,
        "git": sha.strip(),
        "args": vars(args),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=1))
    print(f"torch {torch.__version__}, lightning {L.__version__}, git {meta['git']}; wrote {args.out}")
    return 0 if all(math.isfinite(r["final_acc"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
