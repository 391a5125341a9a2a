"""Super-convergence on a CIFAR-10 JPEG subset: equal step budgets for constant LR, step decay,
cosine and 1cycle at the range-test LR (``1cycle-<rule>`` runs 1cycle at another suggestion rule,
``1cycle@<lr>`` at a given peak without a range test),
side by side; mean ± std over seeds of the final test accuracy, the steps to reach a target accuracy,
and the wall time of a range test against one training epoch.

    # the issue's setting: ResNet-20, 10,000 training images, 8 epochs, batch 128, pad-4 crop + flip
    LIT_RECIPES_DATA=... .venv/bin/python benchmarks/bench_superconvergence.py --jsonl runs/sc.jsonl
    # summarise the runs recorded so far (e.g. from several background invocations)
    .venv/bin/python benchmarks/bench_superconvergence.py --summarize runs/sc.jsonl

The images are the first N per class of each split of the CIFAR-10 JPEGs, reached through
:func:`lit_recipes.localdata.cifar10_jpeg_subset` (``LIT_RECIPES_DATA``), loaded by
``CIFAR10DataModule`` with its default augmentation (reflect-pad 4 + random 32x32 crop + horizontal
flip); the test split is the per-epoch validation set. Every finished run is appended to ``--jsonl``
at once (so a long run that is stopped keeps what it finished); the table is printed at the end and
written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch

from lit_recipes.callbacks.lr_finder import LRRangeTest
from lit_recipes.datamodules import CIFAR10DataModule
from lit_recipes.localdata import DataNotFound, cifar10_jpeg_subset
from lit_recipes.module import ClassifierModule
from lit_recipes.schedules import OneCycle

REPO = Path(__file__).resolve().parents[1]


class SubsetCIFAR(CIFAR10DataModule):
    """A CIFAR-10 JPEG subset; the test split doubles as the per-epoch validation set."""

    def val_dataloader(self):
        return self.test_dataloader()


def make_datamodule(root: Path, batch_size: int, seed: int) -> SubsetCIFAR:
    return SubsetCIFAR(str(root), batch_size=batch_size, val_fraction=0.0, seed=seed, drop_last=True)


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


def run_one(args, root: Path, kind: str, seed: int) -> dict:
    L.seed_everything(seed, workers=True)
    dm = make_datamodule(root, args.batch_size, seed)
    dm.setup("fit")
    steps = args.epochs * (len(dm.train_targets) // args.batch_size)
    sched = make_scheduler("onecycle" if kind.startswith("1cycle") else kind, steps)
    fixed = float(kind.split("@", 1)[1]) if kind.startswith("1cycle@") else None  # 1cycle at a given peak
    lr = fixed if fixed is not None else args.base_lr
    module = ClassifierModule(args.model, num_classes=10, in_channels=3, lr=lr, lr_scheduler=sched)
    if sched is not None and kind in ("step", "cosine"):
        module.configure_optimizers = _per_step(module.configure_optimizers)
    log = EpochLog()
    callbacks: list[L.Callback] = [log]
    finder = None
    if kind.startswith("1cycle") and fixed is None:
        rule = kind.split("-", 1)[1] if "-" in kind else args.rule
        given = {"suggestion": rule, "min_lr": args.min_lr, "max_lr": args.max_lr, "num_steps": args.range_steps}
        finder = LRRangeTest(**{k: v for k, v in given.items() if v is not None})
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
        out["rule"] = finder.results["rule"]
        out["applied"] = finder.results.get("applied")
    return out


def _per_step(configure):
    def wrapped():
        cfg = configure()
        cfg["lr_scheduler"]["interval"] = "step"
        return cfg

    return wrapped


def steps_to(history: list[tuple[int, float]], target: float) -> int | None:
    return next((s for s, acc in history if acc >= target), None)


def summarize(rows: list[dict], target: float) -> dict:
    """Print the table of ``rows`` (runs of any kinds/seeds) and return the summary per kind."""
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    print(
        f"{'schedule':18s} {'LR (peak)':>18s} {'final test acc':>18s} {'per seed':>22s} {'steps to ' + format(target, '.0%'):>14s}"
    )
    summary = {}
    for kind in kinds:
        rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["seed"])
        accs = [r["final_acc"] for r in rs]
        lrs = [r["lr"] for r in rs]
        reach = [steps_to(r["history"], target) for r in rs]
        mean, std = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
        lr_txt = f"{min(lrs):.3g}-{max(lrs):.3g}" if len(set(lrs)) > 1 else f"{lrs[0]:.3g}"
        reach_txt = "/".join("-" if s is None else str(s) for s in reach)
        per_seed = " ".join(f"s{r['seed']}:{100 * r['final_acc']:.1f}" for r in rs)
        print(f"{kind:18s} {lr_txt:>18s} {100 * mean:11.1f} ± {100 * std:4.1f} {per_seed:>22s} {reach_txt:>14s}")
        summary[kind] = {
            "acc_mean": mean,
            "acc_std": std,
            "seeds": [r["seed"] for r in rs],
            "accs": accs,
            "lrs": lrs,
            "steps_to_target": reach,
        }
    rt = [r["range_test_s"] for r in rows if "range_test_s" in r]
    ep = [r["epoch_s"] for r in rows]
    if rt:
        print(
            f"\nrange test: {statistics.median(rt):.1f}s median; one training epoch: "
            f"{statistics.median(ep):.1f}s median (ratio {statistics.median(rt) / statistics.median(ep):.2f})"
        )
    if "1cycle" in summary and "cosine" in summary:
        oc = {r["seed"]: r["final_acc"] for r in rows if r["kind"] == "1cycle"}
        co = {r["seed"]: r["final_acc"] for r in rows if r["kind"] == "cosine"}
        both = sorted(set(oc) & set(co))
        wins = [s for s in both if oc[s] > co[s]]
        print(f"1cycle above cosine on {len(wins)}/{len(both)} common seeds {both}")
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--base-lr", type=float, default=0.1, help="LR of the constant/step/cosine baselines")
    p.add_argument("--min-lr", type=float, default=None, help="range test min_lr (default: LRRangeTest's)")
    p.add_argument("--max-lr", type=float, default=None, help="range test max_lr (default: LRRangeTest's)")
    p.add_argument("--range-steps", type=int, default=None, help="range test num_steps (default: LRRangeTest's)")
    p.add_argument("--rule", default=None, help="the LRRangeTest rule of the '1cycle' run (default: its default)")
    p.add_argument("--target", type=float, default=0.5, help="target test accuracy for 'steps to target'")
    p.add_argument(
        "--kinds",
        nargs="+",
        default=["constant", "step", "cosine", "1cycle"],
        help="schedules; '1cycle-<rule>' runs 1cycle at another suggestion rule, '1cycle@<lr>' at that peak",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jsonl", default=None, help="append every finished run to this file")
    p.add_argument("--summarize", default=None, metavar="JSONL", help="only print the table of the runs in JSONL")
    p.add_argument("--out", default=str(REPO / "runs" / "bench_superconvergence.json"))
    args = p.parse_args()
    if args.summarize:
        rows = [json.loads(line) for line in Path(args.summarize).read_text().splitlines() if line.strip()]
        summarize(rows, args.target)
        return 0
    torch.set_num_threads(args.threads)
    try:
        root = cifar10_jpeg_subset(per_class_train=args.train_per_class, per_class_test=args.test_per_class)
    except DataNotFound as err:
        raise SystemExit(f"bench_superconvergence: {err}") from None
    rows = []
    for seed in args.seeds:
        for kind in args.kinds:
            r = run_one(args, root, kind, seed)
            rows.append(r)
            if args.jsonl:
                Path(args.jsonl).parent.mkdir(parents=True, exist_ok=True)
                with open(args.jsonl, "a") as fh:
                    fh.write(json.dumps(r) + "\n")
            print(
                f"seed {seed} {kind:17s} lr {r['lr']:.3g}  final test acc {r['final_acc']:.4f}  "
                f"steps to {args.target:.0%}: {steps_to(r['history'], args.target)}  fit {r['fit_s']:.0f}s",
                flush=True,
            )
    print(
        f"\n{args.model}, {10 * args.train_per_class} train / {10 * args.test_per_class} test CIFAR-10 JPEGs "
        f"(pad-4 crop + flip), {args.epochs} epochs, batch {args.batch_size}, SGD(0.9, nesterov, wd 5e-4); "
        f"seeds {args.seeds}"
    )
    summary = summarize(rows, args.target)
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
