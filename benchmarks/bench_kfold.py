"""k-fold driver overhead on digits: ``run_kfold`` vs the bare work of k folds vs k ``lit-recipes fit`` runs.

Three ways to get the same k models, timed side by side in one process run (wall clock):

* **bare loop**: for each fold, ``build_cli`` (fresh model, datamodule, Trainer) +
  ``set_fold`` + ``fit`` + ``validate``/``test`` of the best checkpoint: the minimum work a hand-written
  k-fold loop does (no softmax outputs kept, no files of its own, no report);
* **driver**: ``lit_recipes.commands.kfold.run_kfold`` (the same per fold, plus the test-split softmax pass,
  ``result.json``/``test_probs.npz``, the report JSON + PNG);
* **k x fit CLI**: ``k`` times one ``lit-recipes fit --test_after_fit true`` subprocess (measured once,
  multiplied by k): what running k separate trainings by hand costs, process start-up included.

Same recipe for all: ``digits_lenet.yaml``, ``--epochs`` epochs, no logger, no progress bar. Mean ± std
over ``--repeats`` alternating runs.

    python benchmarks/bench_kfold.py                # 5 folds, 5 epochs, 2 repeats
    python benchmarks/bench_kfold.py --folds 3 --epochs 2 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from lit_recipes.commands.fit import build_cli
from lit_recipes.commands.kfold import run_kfold

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "lit_recipes" / "configs" / "digits_lenet.yaml")


def recipe(epochs: int) -> list[str]:
    return [
        "--config", CONFIG, f"--trainer.max_epochs={epochs}", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.accelerator=cpu",
    ]  # fmt: skip


def bare_loop(args: list[str], k: int, out: Path) -> float:
    t0 = time.perf_counter()
    for i in range(k):
        cli = build_cli([*args, f"--trainer.default_root_dir={out}/f{i}", f"--checkpoint.dirpath={out}/f{i}/ckpt"])
        cli.datamodule.set_fold(i, k)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    return time.perf_counter() - t0


def driver(args: list[str], k: int, out: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    report = run_kfold(args, num_folds=k, run_dir=str(out), overwrite=True)
    return time.perf_counter() - t0, report["summary"]["test/acc"]["mean"]


def one_fit_cli(args: list[str], out: Path) -> float:
    cmd = [str(Path(sys.executable).parent / "lit-recipes"), "fit", *args, "--test_after_fit=true"]
    cmd += [f"--trainer.default_root_dir={out}", f"--checkpoint.dirpath={out}/ckpt"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "WANDB_MODE": "disabled"})
    return time.perf_counter() - t0


def fmt(xs: list[float]) -> str:
    return f"{statistics.mean(xs):7.2f} ± {statistics.stdev(xs):.2f} s" if len(xs) > 1 else f"{xs[0]:7.2f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ns = ap.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)

    args, k = recipe(ns.epochs), ns.folds
    bare, drv, accs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bare_loop(args, 2, tmp / "warmup")  # imports, first-call costs
        for r in range(ns.repeats):
            order = ("bare", "driver") if r % 2 == 0 else ("driver", "bare")
            for which in order:
                if which == "bare":
                    bare.append(bare_loop(args, k, tmp / f"bare{r}"))
                else:
                    t, acc = driver(args, k, tmp / f"kfold{r}")
                    drv.append(t)
                    accs.append(acc)
        fit_cli = one_fit_cli(args, tmp / "fit")

    print(f"k-fold driver overhead on digits: {k} folds x {ns.epochs} epochs, {ns.repeats} repeat(s)")
    print(f"torch {torch.__version__}, lightning {L.__version__}, {os.cpu_count()} CPU core(s), no GPU")
    print(f"  bare loop (build+fit+validate+test)   : {fmt(bare)}  ({statistics.mean(bare) / k:.2f} s/fold)")
    print(f"  run_kfold driver (+probs, files, report): {fmt(drv)}  ({statistics.mean(drv) / k:.2f} s/fold)")
    print(
        f"  {k} x `lit-recipes fit` (1 run x {k})     : {k * fit_cli:7.2f} s    ({fit_cli:.2f} s/run, process start included)"
    )
    over = statistics.mean(drv) - statistics.mean(bare)
    print(
        f"  driver / bare loop = {statistics.mean(drv) / statistics.mean(bare):.3f}  (overhead {over / k:+.2f} s per fold)"
    )
    print(f"  driver / {k} x fit CLI = {statistics.mean(drv) / (k * fit_cli):.3f}")
    print(f"  mean fold test/acc = {statistics.mean(accs):.4f}")


if __name__ == "__main__":
    main()
