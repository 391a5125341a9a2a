"""Labeled evaluation of the LR range test's suggestion rules.

Three stages, each cached in a JSON file under ``benchmarks/data/`` so that a rerun of the (cheap)
rule evaluation needs no training:

1. ``sweeps``: one full range test (``LRRangeTest`` defaults, divergence stop off so the whole curve
   is kept; the stop is replayed in stage 3) per labeled sweep = (setting, seed);
2. ``bands``: per *setting*, once (seed 0), a coarse grid of short 1cycle runs (``steps``
   optimizer steps: 60 on CIFAR (80 on 5k images), 176 = 8 epochs on digits) at the peaks 0.01, 0.03, 0.1, 0.3, 1, 3
   (and 0.003 on digits), run from the middle outwards only as far as the band needs; the score is the balanced test accuracy (mean per-class recall: the one-vs-rest task
   is 90 % negatives). A peak is *good* when its score above chance is at least ``GOOD_FRACTION`` of
   the best score above chance; the good band is the contiguous run of good peaks around the best
   one, each end moved half-way (in log-LR) to the measured bad neighbour (x sqrt(3) on the x3 grid,
   and past the end of the grid);
3. ``eval``: every rule of :mod:`lit_recipes.callbacks.lr_rules` on every sweep (after replaying the
   callback's divergence stop), its suggestion, whether it lies in the band, and whether the
   callback would have needed its fallback (no suggestion, or ``minimum`` at the tail of a sweep that
   never diverged).

    LIT_RECIPES_DATA=... OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_lr_rules.py --stage sweeps
    LIT_RECIPES_DATA=... OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_lr_rules.py --stage bands
    .venv/bin/python benchmarks/bench_lr_rules.py                  # stage eval: seconds, from the caches

The 10,000-image ResNet-20 setting of ``bench_superconvergence.py`` (``resnet20_cifar10k``) is scored
too. Its band comes from that benchmark's 8-epoch 1cycle runs of seed 0 at known peaks
(``--kinds 1cycle@0.15`` ... and the range-test runs) in ``benchmarks/data/superconvergence_runs.jsonl``
(:func:`sc_grid`); its sweeps are recorded here (``--stage sweeps --only resnet20_cifar10k``) and
also imported from that benchmark's range tests (``--import-sc runs/bench_superconvergence/*/lr_find.json
--variant V``, cached in ``benchmarks/data/lr_rules_sc10k.json``; they ran under OneCycle's momentum
0.95, the recorded ones under SGD's 0.9).

Sweep variants (``--variant``, :data:`VARIANTS`): ``dense`` (the default) is ``LRRangeTest``'s
sweep, 1e-4 -> 10 in 150 steps; ``wide`` its sweep before 2026-12, 1e-7 -> 10 in 100 steps.

Settings: ResNet-20 on 1,000, 5,000 (no band measured) and 10,000 CIFAR-10 JPEGs, Page's ResNet-9 at 1/4 width on 2,000,
VGG-11-BN at 1/4 width on 3,000 (the full-width nets cost 5-7x a ResNet-20 on the CPU),
LeNet-5-BN on scikit-learn's digits, and LeNet-5-BN on digits "3" vs the rest; three seeds each
(every sweep and grid point is cached as soon as it is done, so a partial run still counts).
SGD 0.9 Nesterov, weight decay 5e-4 (the recipes').
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch

from lit_recipes.callbacks.lr_finder import LRRangeTest
from lit_recipes.module import ClassifierModule
from lit_recipes.schedules import OneCycle

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "benchmarks" / "data"
SWEEPS_JSON = DATA_DIR / "lr_rules_sweeps.json"
BANDS_JSON = DATA_DIR / "lr_rules_bands.json"
SC10K_JSON = DATA_DIR / "lr_rules_sc10k.json"
"""The range tests that ``bench_superconvergence.py`` ran in its 10,000-image ResNet-20 setting
(``--import-sc`` adds them; see ``import_sc``)."""
SC_RUNS = DATA_DIR / "superconvergence_runs.jsonl"
"""``bench_superconvergence.py``'s runs: the seed-0 1cycle runs at known peaks are the 10k setting's grid."""
GOOD_FRACTION = 0.9
BN_GRID = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]

SETTINGS: dict[str, dict] = {  # cheapest first
    "lenet5bn_digits": {"model": "lenet5_bn", "data": ("digits", None), "batch": 64, "steps": 176},
    "lenet5bn_digits3_vs_rest": {"model": "lenet5_bn", "data": ("ovr", 3), "batch": 64, "steps": 176},
    "resnet9q_cifar2k": {"model": "resnet9_quarter", "data": ("cifar", 200), "batch": 128, "steps": 60},
    "vgg11bn_q_cifar3k": {"model": "vgg11_bn_quarter", "data": ("cifar", 300), "batch": 128, "steps": 60},
    "resnet20_cifar1k": {"model": "cifar_resnet20", "data": ("cifar", 100), "batch": 128, "steps": 60},
    "resnet20_cifar5k": {"model": "cifar_resnet20", "data": ("cifar", 500), "batch": 128, "steps": 80},
    # bench_superconvergence's setting; its band comes from that benchmark's 8-epoch runs (SC_RUNS)
    "resnet20_cifar10k": {"model": "cifar_resnet20", "data": ("cifar", 1000), "batch": 128, "steps": None},
}
VARIANTS: dict[str, dict] = {
    "wide": {"min_lr": 1e-7, "max_lr": 10.0, "num_steps": 100},  # LRRangeTest's defaults before 2026-12
    "dense": {"min_lr": 1e-4, "max_lr": 10.0, "num_steps": 150},  # its defaults now: 30 steps a decade
}
DEFAULT_VARIANT = "dense"
"""Sweep variants: ``LRRangeTest`` arguments; a sweep of variant ``v`` is cached as ``setting/sN@v``."""


def sweep_key(name: str, seed: int, variant: str = DEFAULT_VARIANT) -> str:
    return f"{name}/s{seed}@{variant}"


def key_variant(key: str) -> str:
    return key.rsplit("@", 1)[1]  # every cached sweep's key names its variant (``sweep_key``, ``import_sc``)


# ------------------------------------------------------------------------------------------ data
def make_datamodule(setting: dict, seed: int):
    kind, arg = setting["data"]
    if kind == "cifar":
        from lit_recipes.datamodules import CIFAR10DataModule
        from lit_recipes.localdata import DataNotFound, cifar10_jpeg_subset

        try:
            root = cifar10_jpeg_subset(per_class_train=arg, per_class_test=100)
        except DataNotFound as err:
            raise SystemExit(f"bench_lr_rules: {err}") from None
        return CIFAR10DataModule(str(root), batch_size=setting["batch"], val_fraction=0.0, seed=seed, drop_last=True)
    from lit_recipes.datamodules import DigitsDataModule

    digits = DigitsDataModule(batch_size=setting["batch"], val_fraction=0.0, seed=seed, drop_last=True)
    if kind == "digits":
        return digits
    from lit_recipes.datamodules.one_vs_rest import OneVsRestDataModule

    return OneVsRestDataModule(digits, positive=arg)


def make_model(name: str, num_classes: int, in_channels: int):
    if name == "resnet9_quarter":  # Page's ResNet-9 at 1/4 width (full width is ~7x ResNet-20's cost)
        from lit_recipes.models.resnet9 import ResNet9, cfgs

        cfgs.setdefault("resnet9_quarter", [(16, False, 0), (32, True, 2), (64, True, 0), (128, True, 2)])
        return ResNet9("resnet9_quarter", num_classes=num_classes, in_channels=in_channels)
    if name == "vgg11_bn_quarter":  # VGG-11 configuration A at 1/4 width, BN after every conv
        from lit_recipes.models.vgg import VGG, cfgs

        cfgs.setdefault("vgg11_quarter", [16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"])
        return VGG("vgg11_quarter", num_classes=num_classes, in_channels=in_channels, batch_norm=True)
    return name


class _StopAfterSweep(L.Callback):
    def on_fit_start(self, trainer, pl_module) -> None:
        trainer.num_sanity_val_steps = 0
        trainer.should_stop = True


def _trainer(max_steps: int, callbacks: list) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
        default_root_dir=str(REPO / "runs" / "bench_lr_rules"),
    )


def record_sweep(name: str, seed: int, variant: str = DEFAULT_VARIANT) -> dict:
    setting = SETTINGS[name]
    L.seed_everything(seed, workers=True)
    dm = make_datamodule(setting, seed)
    dm.setup("fit")
    module = ClassifierModule(
        make_model(setting["model"], dm.num_classes, dm.in_channels), dm.num_classes, dm.in_channels
    )
    finder = LRRangeTest(divergence_factor=None, update_lr=False, plot=False, **VARIANTS[variant])
    t0 = time.perf_counter()
    _trainer(1, [finder, _StopAfterSweep()]).fit(module, datamodule=dm)
    r = finder.results
    return {
        "setting": name,
        "seed": seed,
        "variant": variant,
        "lrs": r["lrs"],
        "losses": r["losses"],
        "wall_s": time.perf_counter() - t0,
    }


@torch.no_grad()
def balanced_accuracy(module: ClassifierModule, loader, num_classes: int) -> float:
    module.eval()
    hits = np.zeros(num_classes)
    counts = np.zeros(num_classes)
    for batch in loader:
        x, y = batch[0], batch[1]
        pred = module(x).argmax(1)
        for c in range(num_classes):
            m = y == c
            counts[c] += int(m.sum())
            hits[c] += int((pred[m] == c).sum())
    present = counts > 0
    return float((hits[present] / counts[present]).mean())


def band_run(name: str, peak: float, seed: int = 0) -> float:
    setting = SETTINGS[name]
    L.seed_everything(seed, workers=True)
    dm = make_datamodule(setting, seed)
    dm.setup("fit")
    module = ClassifierModule(
        make_model(setting["model"], dm.num_classes, dm.in_channels),
        dm.num_classes,
        dm.in_channels,
        lr=peak,
        lr_scheduler=partial(OneCycle),
    )
    _trainer(setting["steps"], []).fit(module, datamodule=dm)
    dm.setup("test")
    score = balanced_accuracy(module, dm.test_dataloader(), dm.num_classes)
    return score if math.isfinite(score) else 0.0


def band_from_grid(grid: list[float], scores: list[float], chance: float) -> tuple[float, float]:
    """The good band ``(lo, hi)`` of a grid of peaks (see the module docstring): the run of good peaks
    around the best one, each end moved half-way (in log-LR) to the measured bad neighbour, or by
    x sqrt(3) (half a step of the x3 grid) past the end of the grid. On the x3 grid both are x sqrt(3)."""
    best = max(range(len(grid)), key=lambda i: scores[i])
    ok = [s - chance >= GOOD_FRACTION * (scores[best] - chance) for s in scores]
    lo = hi = best
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    while hi < len(grid) - 1 and ok[hi + 1]:
        hi += 1
    left = math.sqrt(grid[lo - 1] * grid[lo]) if lo > 0 else grid[lo] / math.sqrt(3)
    right = math.sqrt(grid[hi] * grid[hi + 1]) if hi < len(grid) - 1 else grid[hi] * math.sqrt(3)
    return left, right


def sc_grid(path: Path = SC_RUNS, seed: int = 0) -> tuple[list[float], list[float]]:
    """The 10k setting's grid: every 1cycle run of ``seed`` in ``bench_superconvergence``'s JSONL at a
    known peak (``1cycle@<lr>`` and the range-test runs), final test accuracy averaged per peak."""
    acc: dict[float, list[float]] = {}
    lines = path.read_text().splitlines() if path.is_file() else []
    for row in (json.loads(line) for line in lines if line.strip()):
        if row["kind"].startswith("1cycle") and row["seed"] == seed:
            acc.setdefault(round(float(row["lr"]), 4), []).append(float(row["final_acc"]))
    grid = sorted(acc)
    return grid, [sum(acc[p]) / len(acc[p]) for p in grid]


# ------------------------------------------------------------------------------------------ stages
def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, key: str, value) -> None:
    """Add ``key`` to the cache at ``path`` (read-modify-write, so separate runs never erase each other's)."""
    data = _load(path)
    data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=0))
    tmp.replace(path)


def stage_sweeps(only: list[str] | None, seeds: list[int], variant: str = DEFAULT_VARIANT) -> None:
    for seed in seeds:
        for name in SETTINGS:
            key = sweep_key(name, seed, variant)
            if key in _load(SWEEPS_JSON) or (only and name not in only):
                continue
            if not only and name in ("resnet20_cifar5k", "resnet20_cifar10k"):
                continue  # the costly settings run only when named with --only
            sweep = record_sweep(name, seed, variant)
            _save(SWEEPS_JSON, key, sweep)
            print(f"sweep {key}: {len(sweep['lrs'])} steps, {sweep['wall_s']:.0f}s", flush=True)


def _next_peak(grid: list[float], done: dict[float, float], chance: float) -> float | None:
    """The next grid point the band still needs: the band is the run of good peaks around the best,
    so it is bounded once a bad (or no) point sits on each side of that run."""
    pts = sorted(done)
    best = max(pts, key=lambda p: done[p])
    good = {p: done[p] - chance >= GOOD_FRACTION * (done[best] - chance) for p in pts}
    i = pts.index(best)
    lo = hi = i
    while lo > 0 and good[pts[lo - 1]]:
        lo -= 1
    while hi < len(pts) - 1 and good[pts[hi + 1]]:
        hi += 1
    below = [p for p in grid if p < pts[lo] and p not in done]
    above = [p for p in grid if p > pts[hi] and p not in done]
    if lo == 0 and below:
        return max(below)
    if hi == len(pts) - 1 and above:
        return min(above)
    return None


def stage_bands(only: list[str] | None) -> None:
    """Grid points are run from the middle (0.1, 0.3, 1) outwards, only as far as the band needs
    (a bad point on each side of the good run, or the end of the grid)."""
    for name in SETTINGS:
        if (only and name not in only) or SETTINGS[name]["steps"] is None:
            continue
        grid = [0.003, *BN_GRID] if SETTINGS[name]["data"][0] != "cifar" else BN_GRID
        chance = 1 / (2 if SETTINGS[name]["data"][0] == "ovr" else 10)
        while True:
            entry = _load(BANDS_JSON).get(name, {"grid": [], "scores": []})
            done = dict(zip(entry["grid"], entry["scores"]))
            todo = [p for p in (0.1, 0.3, 1.0) if p not in done]
            peak = todo[0] if todo else _next_peak(grid, done, chance)
            if peak is None:
                break
            t0 = time.perf_counter()
            done[peak] = band_run(name, peak)
            pts = sorted(done)
            _save(BANDS_JSON, name, {"grid": pts, "scores": [done[p] for p in pts]})
            print(
                f"band {name} peak {peak:g}: balanced acc {done[peak]:.3f} ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )


def evaluate(verbose: bool = True, variant: str = DEFAULT_VARIANT) -> dict:
    from lit_recipes.callbacks.lr_rules import DEFAULT_RULE, RULES, apply_stop, suggest

    sweeps, bands = _load(SWEEPS_JSON), _load(BANDS_JSON)
    if not sweeps or not bands:
        raise SystemExit("bench_lr_rules: run --stage sweeps and --stage bands first (caches missing)")
    chance = {name: 1 / (2 if SETTINGS[name]["data"][0] == "ovr" else 10) for name in SETTINGS}
    band, pending = {}, []
    for n, b in bands.items():
        done = dict(zip(b["grid"], b["scores"]))
        grid = [0.003, *BN_GRID] if SETTINGS[n]["data"][0] != "cifar" else BN_GRID
        if all(p in done for p in (0.1, 0.3, 1.0)) and _next_peak(grid, done, chance[n]) is None:
            band[n] = band_from_grid(b["grid"], b["scores"], chance[n])
        else:
            pending.append(n)  # the grid has not bounded the band yet: its sweeps are not scored
    sc10k = _load(SC10K_JSON)
    sc_peaks, sc_scores = sc_grid()
    if len(sc_peaks) >= 3:
        band["resnet20_cifar10k"] = band_from_grid(sc_peaks, sc_scores, chance["resnet20_cifar10k"])
    if sc10k:
        sweeps = {**sweeps, **sc10k["sweeps"]}
    sweeps = {k: sw for k, sw in sweeps.items() if key_variant(k) == variant}
    rows = []
    for key, sw in sweeps.items():
        if sw["setting"] not in band:
            continue
        lo, hi = band[sw["setting"]]
        lrs, losses, stop = apply_stop(sw["lrs"], sw["losses"])
        row = {"sweep": key, "band": (lo, hi), "steps": len(lrs), "stop": stop, "rules": {}}
        for rule in RULES:
            res = suggest(lrs, losses, rule, diverged=stop != "completed")
            lr = res.lr
            row["rules"][rule] = {"lr": lr, "in_band": lr is not None and lo <= lr <= hi, "fallback": res.fallback}
        rows.append(row)
    total = len(rows)
    summary = {
        rule: {
            "in_band": sum(r["rules"][rule]["in_band"] for r in rows),
            "fallback": sum(r["rules"][rule]["fallback"] for r in rows),
            "in_band_no_fallback": sum(r["rules"][rule]["in_band"] and not r["rules"][rule]["fallback"] for r in rows),
            "sweeps": total,
        }
        for rule in RULES
    }
    unscored = sorted(k for k, sw in sweeps.items() if sw["setting"] not in band)
    if verbose:
        if unscored:
            print(f"not scored (band not measured yet): {', '.join(unscored)}")
        print("good bands (balanced test accuracy of short 1cycle runs, seed 0):")
        for n, b in bands.items():
            if n in band or n in pending:
                grid = "  ".join(f"{p:g}:{s:.3f}" for p, s in zip(b["grid"], b["scores"]))
                txt = f"band {band[n][0]:.3g}-{band[n][1]:.3g}" if n in band else "band pending"
                print(f"  {n:26s} {txt:18s} {grid}")
        if "resnet20_cifar10k" in band:
            lo, hi = band["resnet20_cifar10k"]
            grid = "  ".join(f"{p:g}:{s:.3f}" for p, s in zip(sc_peaks, sc_scores))
            print(
                f"  {'resnet20_cifar10k':26s} band {lo:.3g}-{hi:.3g}  {grid} (8-epoch runs of bench_superconvergence)"
            )
        head = f"{'sweep':30s} {'band':>13s} {'stop':>9s} " + " ".join(f"{r:>15s}" for r in RULES)
        print("\n" + head)
        for r in rows:
            cells = []
            for rule in RULES:
                c = r["rules"][rule]
                txt = "none" if c["lr"] is None else f"{c['lr']:.2g}"
                txt += ("" if c["in_band"] else " x") + (" F" if c["fallback"] else "")
                cells.append(f"{txt:>15s}")
            stop = "diverged" if r["stop"] != "completed" else "complete"
            print(f"{r['sweep']:30s} {r['band'][0]:5.2g}-{r['band'][1]:<6.2g} {stop:>9s} " + " ".join(cells))
        print("\n(x: outside the good band; F: the callback would use its fallback)")
        print(f"{'rule':15s} in band   no fallback & in band   fallbacks")
        for rule, s in summary.items():
            mark = "  <- default" if rule == DEFAULT_RULE else ""
            print(
                f"{rule:15s} {s['in_band']:>3d}/{total:<3d}   {s['in_band_no_fallback']:>3d}/{total:<3d}"
                f"                 {s['fallback']:>3d}{mark}"
            )
    return {"rows": rows, "summary": summary, "bands": band, "pending": pending, "unscored": unscored}


def import_sc(files: list[str], variant: str = DEFAULT_VARIANT) -> None:
    """Add the range tests of ``bench_superconvergence.py`` runs (their ``lr_find.json``) to
    :data:`SC10K_JSON` as sweeps of the setting ``resnet20_cifar10k``, keyed ``sc-<run folder>@<variant>``
    (the sweep variant they ran; rename folders of different runs apart before importing). Their band
    comes from :func:`sc_grid`."""
    data = _load(SC10K_JSON) or {"sweeps": {}}
    for f in files:
        path = Path(f)
        res = json.loads(path.read_text())
        key = f"resnet20_cifar10k/sc-{path.parent.name}@{variant}"
        data["sweeps"][key] = {"setting": "resnet20_cifar10k", "lrs": res["lrs"], "losses": res["losses"]}
    SC10K_JSON.write_text(json.dumps(data))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=("sweeps", "bands", "eval", "all"), default="eval")
    p.add_argument("--only", nargs="+", default=None, help="settings to run (sweeps/bands)", choices=list(SETTINGS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sweep seeds to record")
    p.add_argument("--variant", choices=list(VARIANTS), default=DEFAULT_VARIANT, help="sweep variant to record/score")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--import-sc", nargs="+", metavar="LR_FIND_JSON", help="add bench_superconvergence range tests")
    args = p.parse_args()
    defaults = {k: v.default for k, v in inspect.signature(LRRangeTest).parameters.items()}
    if any(defaults[k] != v for k, v in VARIANTS[DEFAULT_VARIANT].items()):  # keep the table honest
        p.error(f"DEFAULT_VARIANT {DEFAULT_VARIANT!r} is not LRRangeTest's default sweep any more: update VARIANTS")
    if args.import_sc:
        import_sc(args.import_sc, args.variant)
    torch.set_num_threads(args.threads)
    if args.stage in ("sweeps", "all"):
        stage_sweeps(args.only, args.seeds, args.variant)
    if args.stage in ("bands", "all"):
        stage_bands(args.only)
    if args.stage in ("eval", "all"):
        result = evaluate(variant=args.variant)
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
        print(
            f"\ntorch {torch.__version__}, lightning {L.__version__}, python {sys.version.split()[0]}, "
            f"{platform.machine()}, git {sha.stdout.strip()}"
        )
        return 0 if any(s["sweeps"] for s in result["summary"].values()) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
