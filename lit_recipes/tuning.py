"""``lit-recipes lr-find``: the LR range test from a ``fit`` config, optionally per weight decay.

Usage::

    lit-recipes lr-find --config lit_recipes/configs/digits_lenet.yaml
    lit-recipes lr-find --config my.yaml --wd 1e-3 1e-4 1e-5 0 --lr_find.num_steps 200 --out runs/lr_find

For every weight decay (or once, with the config's own, when ``--wd`` is not given) it builds the
config's model, data and trainer afresh (same seed), runs :class:`~lit_recipes.callbacks.LRRangeTest`
at fit start and stops before the first epoch. It prints a table (weight decay, suggested LR,
lowest smoothed loss) and writes to ``--out`` (default ``<trainer.default_root_dir>/lr_find``):

* ``lr_find.png``: all the curves in one plot, each suggestion marked;
* ``lr_find.json``: every curve and the recommendation;
* ``lr_find.yaml``: the recommended ``model.init_args.lr`` (and weight decay) as a config that
  ``fit`` accepts after the recipe: ``lit-recipes fit --config my.yaml --config runs/lr_find/lr_find.yaml``.

The recommendation follows Smith (2018): among the weight decays whose suggested LR is within a
factor 2 of the highest suggestion ("still allows a high LR"), the largest weight decay.
Settings of an ``LRRangeTest`` already in the config's callbacks are the defaults of
``--lr_find.*``; that callback is not run twice.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L

from lit_recipes.artifacts import save_figure, save_json
from lit_recipes.callbacks.lr_finder import SUGGESTIONS, LRRangeTest, plot_lr_curves

FINDER_ARGS = ("min_lr", "max_lr", "num_steps", "mode", "suggestion", "divergence_factor", "beta")
HIGH_LR_FACTOR = 2.0


class _StopAfterSweep(L.Callback):
    """Ends ``fit`` right after the callbacks' ``on_fit_start`` (no sanity check, no epoch)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.num_sanity_val_steps = 0
        trainer.should_stop = True


def with_weight_decay(factory, weight_decay: float):
    """Wrap an optimizer factory: every parameter group that decays gets ``weight_decay``
    (groups the module keeps at 0 — norms and biases — stay at 0)."""

    def build(params):
        opt = factory(params)
        if "weight_decay" not in opt.defaults:
            raise ValueError(f"--wd: {type(opt).__name__} has no weight_decay")
        for group in opt.param_groups:
            if group.get("weight_decay", 0.0) != 0.0 or not group.get("name", "").endswith("_no_decay"):
                group["weight_decay"] = weight_decay
        return opt

    return build


def recommend(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The largest weight decay whose suggestion is within ``HIGH_LR_FACTOR`` of the best one."""
    ok = [r for r in rows if r["suggestion"] is not None]
    if not ok:
        return None
    top = max(r["suggestion"] for r in ok)
    high = [r for r in ok if r["suggestion"] >= top / HIGH_LR_FACTOR]
    return max(high, key=lambda r: -1.0 if r["weight_decay"] is None else r["weight_decay"])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lit-recipes lr-find",
        description="LR range test (per weight decay) from a fit config; other arguments go to the config "
        "parser (--config, --model.*, --data.*, --trainer.*).",
    )
    p.add_argument("--wd", type=float, nargs="+", default=None, help="weight decays to sweep (default: the config's)")
    p.add_argument("--out", default=None, help="output folder (default: <trainer.default_root_dir>/lr_find)")
    p.add_argument("--lr_find.min_lr", dest="min_lr", type=float)
    p.add_argument("--lr_find.max_lr", dest="max_lr", type=float)
    p.add_argument("--lr_find.num_steps", dest="num_steps", type=int)
    p.add_argument("--lr_find.mode", dest="mode", choices=("exponential", "linear"))
    p.add_argument("--lr_find.suggestion", dest="suggestion", choices=SUGGESTIONS)
    p.add_argument("--lr_find.divergence_factor", dest="divergence_factor", type=float)
    p.add_argument("--lr_find.beta", dest="beta", type=float)
    return p


def run_lr_find(
    cli_args: list[str],
    weight_decays: list[float | None],
    finder_kwargs: dict[str, Any],
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Run the range test once per weight decay; returns ``{"rows", "recommended", "paths"}``.
    Files and the table are written on rank 0 only."""
    from lit_recipes.cli import build_cli

    for wd in weight_decays:
        if wd is not None and not (math.isfinite(wd) and wd >= 0):
            raise ValueError(f"--wd: weight decay must be a number >= 0, got {wd}")
    if not any(a.startswith("--trainer.logger") for a in cli_args):
        cli_args = [*cli_args, "--trainer.logger=false"]
    rows: list[dict[str, Any]] = []
    optimizer_cfg = None
    trainer = None
    for wd in weight_decays:
        cli = build_cli(cli_args, save_config_callback=None)
        model, trainer = cli.model, cli.trainer
        optimizer_cfg = cli.config.get("model", {}).get("init_args", {}).get("optimizer")
        existing = [c for c in trainer.callbacks if isinstance(c, LRRangeTest)]
        kwargs = {k: getattr(existing[0], k) for k in FINDER_ARGS} if existing else {}
        kwargs.update({k: v for k, v in finder_kwargs.items() if v is not None})
        finder = LRRangeTest(**kwargs, plot=False, update_lr=False)
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LRRangeTest)]
        trainer.callbacks += [finder, _StopAfterSweep()]
        if wd is not None:
            if not hasattr(model, "optimizer_factory"):
                raise ValueError(f"--wd: {type(model).__name__} has no optimizer_factory to set the weight decay on")
            model.optimizer_factory = with_weight_decay(model.optimizer_factory, wd)
        trainer.fit(model, datamodule=cli.datamodule)
        res = dict(finder.results)
        if not res:
            raise ValueError("lr-find: the range test did not run (fast_dev_run is on?)")
        rows.append({"weight_decay": wd, **res})
    best = recommend(rows)
    paths: dict[str, Path] = {}
    if trainer is not None and trainer.is_global_zero:
        out_dir = Path(out) if out else Path(trainer.default_root_dir) / "lr_find"
        label = {True: "config's weight decay"}
        curves = {label.get(r["weight_decay"] is None, f"wd={r['weight_decay']:g}"): r for r in rows}
        paths["png"] = save_figure(plot_lr_curves(curves, "LR range test per weight decay"), out_dir / "lr_find.png")
        paths["json"] = save_json(out_dir / "lr_find.json", {"rows": rows, "recommended": best})
        if best is not None:
            paths["yaml"] = _write_snippet(out_dir / "lr_find.yaml", best, optimizer_cfg)
        _print_table(rows, best, paths)
    return {"rows": rows, "recommended": best, "paths": paths}


def _write_snippet(path: Path, best: dict[str, Any], optimizer_cfg) -> Path:
    import yaml

    init: dict[str, Any] = {"lr": float(f"{best['suggestion']:.4g}")}
    if best["weight_decay"] is not None:
        class_path = getattr(optimizer_cfg, "class_path", None) if optimizer_cfg is not None else None
        if class_path is None:
            raise ValueError(
                "--wd: the config's model.init_args.optimizer has no class_path; write the optimizer "
                "(e.g. class_path: torch.optim.SGD) into the config to sweep its weight decay"
            )
        init["optimizer"] = {"class_path": class_path, "init_args": {"weight_decay": best["weight_decay"]}}
    header = (
        "# written by `lit-recipes lr-find`: the range test's LR"
        + (" and weight decay" if best["weight_decay"] is not None else "")
        + "\n# use: lit-recipes fit --config <your recipe>.yaml --config "
        + str(path)
        + "\n"
    )
    text = header + yaml.safe_dump({"model": {"init_args": init}}, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _print_table(rows: list[dict[str, Any]], best: dict[str, Any] | None, paths: dict[str, Path]) -> None:
    w = sys.stdout.write
    w(f"{'weight decay':>14}  {'suggested lr':>12}  {'min loss':>9}  {'steps':>5}  stop\n")
    for r in rows:
        wd = "config" if r["weight_decay"] is None else f"{r['weight_decay']:g}"
        lr = "none" if r["suggestion"] is None else f"{r['suggestion']:.4g}"
        ml = "nan" if r["min_loss"] is None else f"{r['min_loss']:.4f}"
        mark = "  <- recommended" if r is best else ""
        w(f"{wd:>14}  {lr:>12}  {ml:>9}  {r['steps']:>5}  {r['stop_reason'].split(':')[0]}{mark}\n")
    if best is None:
        w("no suggestion for any weight decay: the loss never fell; lower --lr_find.min_lr or check the data\n")
    for kind, p in paths.items():
        w(f"wrote {p}\n" if kind != "yaml" else f"wrote {p}  (lit-recipes fit --config <recipe> --config {p})\n")


def lr_find_main(argv: list[str]) -> int:
    """Entry point of ``lit-recipes lr-find`` (registered in ``lit_recipes.cli.COMMANDS``)."""
    ns, rest = _parser().parse_known_args(argv)
    if not any(a == "--config" or a.startswith("--config=") for a in rest):
        raise ValueError("lr-find needs --config <recipe>.yaml (the file `lit-recipes fit` would take)")
    finder_kwargs = {k: getattr(ns, k) for k in FINDER_ARGS}
    LRRangeTest(**{k: v for k, v in finder_kwargs.items() if v is not None})  # bad values fail here, at once
    run_lr_find(rest, ns.wd if ns.wd else [None], finder_kwargs, ns.out)
    return 0


__all__ = ["lr_find_main", "recommend", "run_lr_find", "with_weight_decay"]
