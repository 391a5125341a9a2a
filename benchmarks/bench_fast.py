"""The fast CIFAR-10 recipe against a plain PyTorch script of the same network and schedule.

For every seed it runs, each in a fresh process,

1. ``lit-recipes fit --config lit_recipes/configs/cifar10_fast.yaml`` (in-process LitRecipesCLI, as a
   user runs it: W&B offline, checkpoints, progress bar, LR range test, data monitor, test of the
   best checkpoint), with a clock callback that records when each phase starts and ends;
2. ``benchmarks/plain_fast.py`` (no Lightning) at the LR the range test found in step 1, so both
   train with the same peak LR.

Each run is a fresh process (same start-up for both, no compile or cuDNN cache carried over); the
driver times each process from start to exit (``total_s``) and prints the ratios.

and prints per run: whole wall time, range-test time, training time (epochs incl. validation),
test accuracy, then the overhead ratio (Lightning / plain) of the training epochs after the first
(the first includes cuDNN autotuning and ``torch.compile``) and of the whole run.

    # GPU, the issue's figure (5 seeds on the full JPEG set):
    python benchmarks/bench_fast.py --seeds 0 1 2 3 4
    # CPU, a subset (bf16 autocast is fast on CPUs with AVX512-BF16/AMX):
    python benchmarks/bench_fast.py --train-per-class 500 --test-per-class 200 --epochs 4 --seeds 0 1

Uses ``--root`` (default data/cifar10-jpeg) or, when it is missing, the CIFAR-10 JPEGs that ``LIT_RECIPES_DATA``
points at (``lit_recipes.localdata``, unpacked once into its cache). Writes
the JSON of every run to ``--out`` (default runs/bench_fast/<timestamp>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "lit_recipes" / "configs" / "cifar10_fast.yaml"


# ------------------------------------------------------------------------------------ data
def ensure_data(root: Path) -> Path:
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    from lit_recipes.localdata import DataNotFound, cifar10_jpeg_subset

    try:  # the whole data set (5,000 / 1,000 per class), unpacked once into the localdata cache
        return cifar10_jpeg_subset(per_class_train=5000, per_class_test=1000)
    except DataNotFound as err:
        raise SystemExit(f"bench_fast: {root} is missing and {err}") from None


def subset(root: Path, dest: Path, train_per_class: int, test_per_class: int) -> Path:
    """A symlinked ImageFolder tree with the first N images of every class of each split."""
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for cls in sorted(p.name for p in (root / split).iterdir() if p.is_dir()):
            out = dest / split / cls
            out.mkdir(parents=True)
            for f in sorted((root / split / cls).iterdir())[:n]:
                (out / f.name).symlink_to(f.resolve())
    return dest


# ------------------------------------------------------------------------------------ workers
def lightning_worker(a: argparse.Namespace) -> dict:
    import lightning as L
    import torch

    from lit_recipes.commands.fit import LitRecipesCLI, finish_wandb

    class Clock(L.Callback):
        """Wall-clock marks of the phases (CUDA synchronised, so GPU work is included)."""

        def __init__(self) -> None:
            self.marks: dict[str, float] = {}
            self.epochs: list[float] = []
            self.val_acc: list[float] = []

        def _now(self, pl_module) -> float:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            return time.perf_counter()

        def setup(self, trainer, pl_module, stage):  # before any callback's on_fit_start (the range test)
            if stage == "fit":
                self.marks.setdefault("fit_start", self._now(pl_module))

        def on_train_start(self, trainer, pl_module):  # after the range test and the data decode
            self.marks.setdefault("train_start", self._now(pl_module))

        def on_train_epoch_start(self, trainer, pl_module):
            self._t = self._now(pl_module)

        def on_train_epoch_end(self, trainer, pl_module):  # validation has run by now
            self.epochs.append(self._now(pl_module) - self._t)
            self.val_acc.append(float(trainer.callback_metrics.get("val/acc", float("nan"))))

        def on_train_end(self, trainer, pl_module):
            self.marks.setdefault("train_end", self._now(pl_module))

        def on_test_start(self, trainer, pl_module):
            self.marks.setdefault("test_start", self._now(pl_module))

        def on_test_end(self, trainer, pl_module):
            self.marks.setdefault("test_end", self._now(pl_module))

    clock = Clock()
    args = [
        "fit",
        "--config",
        str(CONFIG),
        f"--seed_everything={a.seed}",
        f"--trainer.max_epochs={a.epochs}",
        f"--trainer.precision={a.precision}",
        f"--trainer.default_root_dir={a.workdir}",
        f"--trainer.logger.init_args.save_dir={a.workdir}",
        f"--model.init_args.compile={str(a.compile).lower()}",
        f"--data.init_args.root={a.root}",
        f"--data.init_args.batch_size={a.batch_size}",
    ]
    if a.no_range_test:
        args += [f"--model.init_args.lr={a.lr}", "--trainer.callbacks=lit_recipes.callbacks.DataLoadingMonitor"]
        args += ["--trainer.callbacks.every_n_steps=10"]  # as in the recipe
    if a.no_checkpoint:
        args += ["--trainer.enable_checkpointing=false"]
    cli = LitRecipesCLI(args=args, trainer_defaults={"callbacks": [clock]})
    finish_wandb(cli.trainer)
    m = clock.marks
    steps = cli.trainer.global_step
    finder = next((c for c in cli.trainer.callbacks if type(c).__name__ == "LRRangeTest"), None)
    range_test_s = float(finder.results.get("elapsed_s", 0.0)) if finder is not None and finder.results else 0.0
    return {
        "kind": "lightning",
        "device": str(cli.trainer.strategy.root_device),
        "lr": float(cli.model.lr),
        "epochs": a.epochs,
        "steps": steps,
        "range_test_s": range_test_s,
        "setup_s": m["train_start"] - m["fit_start"] - range_test_s,  # data decode, optimizers, sanity val
        "train_s": m["train_end"] - m["train_start"],
        "test_s": m.get("test_end", 0.0) - m.get("test_start", 0.0),
        "epoch_s": clock.epochs,
        "val_acc": clock.val_acc,
        "test_acc": float(cli.trainer.callback_metrics["test/acc"]),
    }


# ------------------------------------------------------------------------------------ driver
def run_worker(kind: str, a: argparse.Namespace, root: Path, seed: int, lr: float, workdir: Path) -> dict:
    """One run in a fresh process; ``total_s`` is that process's wall time (interpreter start to exit)."""
    common = ["--root", str(root), "--seed", str(seed), "--lr", repr(lr), "--epochs", str(a.epochs)]
    common += ["--precision", a.precision, "--batch-size", str(a.batch_size)] + (["--compile"] if a.compile else [])
    if kind == "plain":
        cmd = [sys.executable, str(REPO / "benchmarks" / "plain_fast.py"), *common]
    else:
        cmd = [sys.executable, __file__, "--worker", kind, "--workdir", str(workdir), *common]
        cmd += ["--no-range-test"] if a.no_range_test else []
        cmd += ["--no-checkpoint"] if a.no_checkpoint else []
    env = {**os.environ, "WANDB_SILENT": "true", "NO_ALBUMENTATIONS_UPDATE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"bench_fast: the {kind} run for seed {seed} failed (exit {proc.returncode})")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(seed=seed, total_s=wall)
    return out


def summarize(runs: list[dict]) -> None:
    def ms(values: list[float], fmt: str = ".1f") -> str:
        if not values:
            return "-"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):{fmt}} ± {sd:{fmt}}"

    print(f"{'run':10s} {'seed':>4s} {'LR':>7s} {'total s':>8s} {'range s':>8s} {'train s':>8s} {'test acc':>8s}")
    for r in runs:
        print(
            f"{r['kind']:10s} {r['seed']:4d} {r['lr']:7.3f} {r['total_s']:8.1f} {r.get('range_test_s', 0):8.1f} "
            f"{r['train_s']:8.1f} {r['test_acc']:8.4f}"
        )
    light = [r for r in runs if r["kind"] == "lightning"]
    plain = [r for r in runs if r["kind"] == "plain"]
    for name, rs in (("lightning", light), ("plain", plain)):
        later = [s for r in rs for s in r["epoch_s"][1:]]
        print(
            f"{name:10s} test acc {ms([r['test_acc'] * 100 for r in rs], '.2f')} %, total {ms([r['total_s'] for r in rs])} s, "
            f"epoch (after the first) {ms(later, '.2f')} s"
        )
    if light and plain:
        le = statistics.mean(s for r in light for s in r["epoch_s"][1:] or r["epoch_s"])
        pe = statistics.mean(s for r in plain for s in r["epoch_s"][1:] or r["epoch_s"])
        steps = light[0]["steps"] / light[0]["epochs"]
        print(f"overhead ratio per epoch (after the first): {le / pe:.3f} ({(le - pe) / steps * 1000:.2f} ms/step)")
        print(
            "overhead ratio whole run: "
            f"{statistics.mean(r['total_s'] for r in light) / statistics.mean(r['total_s'] for r in plain):.3f} "
            f"(the Lightning run includes the LR range test: {ms([r['range_test_s'] for r in light])} s)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(REPO / "data" / "cifar10-jpeg"))
    ap.add_argument("--train-per-class", type=int, default=0, help="train on the first N images per class (0: all)")
    ap.add_argument("--test-per-class", type=int, default=0, help="test on the first N images per class (0: all)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "16-mixed", "32"])
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--lr", type=float, default=0.4, help="peak LR with --no-range-test (both runs)")
    ap.add_argument("--no-range-test", action="store_true", help="skip the range test; both runs use --lr")
    ap.add_argument(
        "--no-checkpoint", action="store_true", help="Lightning run without checkpoints (tests the last weights)"
    )
    ap.add_argument("--which", choices=["both", "lightning", "plain"], default="both")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", choices=["lightning"], help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(lightning_worker(a)))
        return

    import torch

    root = ensure_data(Path(a.root))
    tmp = Path(tempfile.mkdtemp(prefix="bench_fast_"))
    if a.train_per_class or a.test_per_class:
        root = subset(root, tmp / "data", a.train_per_class or 5000, a.test_per_class or 1000)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(
        f"{device}; torch {torch.__version__}; commit {sha.stdout.strip()}; {platform.python_version()}; "
        f"data {root}; {a.epochs} epochs, batch {a.batch_size}, {a.precision}, compile {a.compile}"
    )
    runs = []
    for seed in a.seeds:
        lr = a.lr
        if a.which in ("both", "lightning"):
            r = run_worker("lightning", a, root, seed, lr, tmp / f"lightning{seed}")
            runs.append(r)
            lr = r["lr"] if not a.no_range_test else a.lr
            print(
                f"  lightning seed {seed}: {r['total_s']:.1f} s, LR {lr:.4f}, test acc {r['test_acc']:.4f}", flush=True
            )
        if a.which in ("both", "plain"):
            r = run_worker("plain", a, root, seed, lr, tmp / f"plain{seed}")
            runs.append(r)
            print(
                f"  plain     seed {seed}: {r['total_s']:.1f} s, LR {lr:.4f}, test acc {r['test_acc']:.4f}", flush=True
            )
    summarize(runs)
    out = Path(a.out or REPO / "runs" / "bench_fast" / f"{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": device, "torch": torch.__version__, "commit": sha.stdout.strip(), "args": vars(a)}
    out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
