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
factor 2 of the highest suggestion ("still allows a high LR"), the largest weight decay. With more
than one weight decay the sweep is repeated with ``--wd_seeds`` seeds (default 3: the config's
``seed_everything`` + 0, 1, 2) and a weight decay is recommended only when it is the pick of at
least two thirds of them (2 of 3); otherwise the table says "no clear winner" and no YAML is
written. Its LR is the median of its suggestions over the seeds.
Settings of an ``LRRangeTest`` already in the config's callbacks are the defaults of
``--lr_find.*``; that callback is not run twice.

Errors (a missing ``--config`` file, a bad ``--wd`` or ``--lr_find.*`` value) are raised as
``ValueError``/``FileNotFoundError`` with one line naming the argument, which ``lit-recipes`` prints
as ``lit-recipes: error: ...``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L

from lit_recipes.artifacts import fresh_folder, save_figure, save_json, save_text, set_run_dir
from lit_recipes.callbacks.lr_finder import SUGGESTIONS, LRRangeTest
from lit_recipes.callbacks.lr_plot import plot_lr_curves

FINDER_ARGS = ("min_lr", "max_lr", "num_steps", "mode", "suggestion", "divergence_factor", "beta")
HIGH_LR_FACTOR = 2.0
NO_CLEAR_WINNER = "no clear winner"


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


def stable_pick(picks: list[float | None]) -> tuple[float | None, int]:
    """The weight decay picked (by :func:`recommend`) on at least two thirds of the seeds
    (``ceil(2 n / 3)``: 2 of 3, 1 of 1), with its vote count; ``(None, best count)`` when no weight
    decay gets that many (a seed without any suggestion votes ``None``, which never wins)."""
    if not picks:
        raise ValueError("stable_pick: no picks given")
    need = math.ceil(2 * len(picks) / 3)
    counts: dict[float, int] = {}
    for wd in picks:
        if wd is not None:
            counts[wd] = counts.get(wd, 0) + 1
    if not counts:
        return None, 0
    wd, votes = max(counts.items(), key=lambda kv: kv[1])
    return (wd, votes) if votes >= need else (None, votes)


def recommend_over_seeds(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """:func:`recommend` per seed, then :func:`stable_pick`. Returns ``None`` when no seed had a
    suggestion; else ``{"weight_decay", "suggestion" (median LR of the winner over the seeds, or
    None), "votes", "seeds", "picks", "clear"}`` (``clear`` False: no clear winner)."""
    seeds = list(dict.fromkeys(r.get("seed") for r in rows))
    if all(r["weight_decay"] is None for r in rows):  # the config's own weight decay: nothing to pick
        lrs = [r["suggestion"] for r in rows if r["suggestion"] is not None]
        if not lrs:
            return None
        return {
            "weight_decay": None,
            "suggestion": statistics.median(lrs),
            "votes": len(lrs),
            "seeds": len(seeds),
            "picks": [None] * len(seeds),
            "clear": True,
        }
    picks = []
    for seed in seeds:
        best = recommend([r for r in rows if r.get("seed") == seed])
        picks.append(None if best is None else best["weight_decay"])
    if all(p is None for p in picks):
        return None
    wd, votes = stable_pick(picks)
    if wd is None:
        return {
            "weight_decay": None,
            "suggestion": None,
            "votes": votes,
            "seeds": len(seeds),
            "picks": picks,
            "clear": False,
        }
    lrs = [r["suggestion"] for r in rows if r["weight_decay"] == wd and r["suggestion"] is not None]
    return {
        "weight_decay": wd,
        "suggestion": statistics.median(lrs),
        "votes": votes,
        "seeds": len(seeds),
        "picks": picks,
        "clear": True,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lit-recipes lr-find",
        description="LR range test (per weight decay) from a fit config; other arguments go to the config "
        "parser (--config, --model.*, --data.*, --trainer.*).",
    )
    p.add_argument("--wd", type=float, nargs="+", default=None, help="weight decays to sweep (default: the config's)")
    p.add_argument("--wd_seeds", type=int, default=3, help="seeds per weight decay when --wd has several (default 3)")
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
    seeds: list[int | None] | None = None,
) -> dict[str, Any]:
    """Run the range test once per weight decay and seed; returns ``{"rows", "recommended", "paths"}``
    (``seeds`` ``None``: one run with the config's seed). Files and the table are written on rank 0 only."""
    from lit_recipes.commands.fit import build_cli

    for wd in weight_decays:
        if wd is not None and not (math.isfinite(wd) and wd >= 0):
            raise ValueError(f"--wd: weight decay must be a number >= 0, got {wd}")
    if not any(a.startswith("--trainer.logger") for a in cli_args):
        cli_args = [*cli_args, "--trainer.logger=false"]
    rows: list[dict[str, Any]] = []
    optimizer_cfg = None
    trainer = None
    scratch = Path(tempfile.mkdtemp(prefix="lit-recipes-lr-find-"))  # the sweeps' callback files: not kept
    for seed in seeds or [None]:
        seed_args = [] if seed is None else [f"--seed_everything={seed}"]
        for wd in weight_decays:
            cli = build_cli([*cli_args, *seed_args], save_config_callback=None)
            model, trainer = cli.model, cli.trainer
            set_run_dir(trainer, scratch)  # never into default_root_dir: it may be an earlier run's folder
            optimizer_cfg = cli.config.get("model", {}).get("init_args", {}).get("optimizer")
            existing = [c for c in trainer.callbacks if isinstance(c, LRRangeTest)]
            kwargs = {k: getattr(existing[0], k) for k in FINDER_ARGS} if existing else {}
            kwargs.update({k: v for k, v in finder_kwargs.items() if v is not None})
            finder = LRRangeTest(**kwargs, plot=False, update_lr=False)
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LRRangeTest)]
            trainer.callbacks += [finder, _StopAfterSweep()]
            if wd is not None:
                if not hasattr(model, "optimizer_factory"):
                    raise ValueError(
                        f"--wd: {type(model).__name__} has no optimizer_factory to set the weight decay on"
                    )
                model.optimizer_factory = with_weight_decay(model.optimizer_factory, wd)
            trainer.fit(model, datamodule=cli.datamodule)
            res = dict(finder.results)
            if not res:
                raise ValueError("lr-find: the range test did not run (--trainer.fast_dev_run is on?)")
            rows.append({"weight_decay": wd, "seed": seed, **res})
    shutil.rmtree(scratch, ignore_errors=True)
    best = recommend_over_seeds(rows)
    paths: dict[str, Path] = {}
    if trainer is not None and trainer.is_global_zero:
        out_dir = _out_folder(out, trainer)
        first_seed = rows[0]["seed"]
        curves = {_wd_label(r["weight_decay"]): r for r in rows if r["seed"] == first_seed}
        title = "LR range test" + (" per weight decay" if len(curves) > 1 else "")
        if first_seed is not None and len(rows) > len(curves):
            title += f" (seed {first_seed})"
        paths["png"] = save_figure(plot_lr_curves(curves, title), out_dir / "lr_find.png")
        paths["json"] = save_json(out_dir / "lr_find.json", {"rows": rows, "recommended": best})
        if best is not None and best["clear"]:
            paths["yaml"] = _write_snippet(out_dir / "lr_find.yaml", best, optimizer_cfg)
        _print_table(rows, best, paths)
    return {"rows": rows, "recommended": best, "paths": paths}


def _out_folder(out: str | Path | None, trainer) -> Path:
    """``--out`` as given when new, empty or holding only an earlier lr-find's files (replaced);
    inside another run's folder, a new ``lr_find`` sub-folder; by default ``<default_root_dir>/lr_find``,
    or ``lr_find-2`` ... when that one holds files: never over another command's files."""
    if out:
        return fresh_folder(out, replaceable=("lr_find.png", "lr_find.json", "lr_find.yaml"), sub="lr_find")
    return fresh_folder(Path(trainer.default_root_dir) / "lr_find")


def _wd_label(wd: float | None) -> str:
    return "config's weight decay" if wd is None else f"wd={wd:g}"


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
    return save_text(path, text)


def _fmt_lr(v: float | None) -> str:
    return "none" if v is None else f"{v:.4g}"


def _print_table(rows: list[dict[str, Any]], best: dict[str, Any] | None, paths: dict[str, Path]) -> None:
    w = sys.stdout.write
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    multi = len(seeds) > 1
    w(f"{'weight decay':>14}  {'suggested lr':>12}  {'min loss':>9}  {'steps':>5}  stop\n")
    for wd in dict.fromkeys(r["weight_decay"] for r in rows):
        rs = [r for r in rows if r["weight_decay"] == wd]
        name = "config" if wd is None else f"{wd:g}"
        lr = "/".join(_fmt_lr(r["suggestion"]) for r in rs)
        losses = [r["min_loss"] for r in rs if r["min_loss"] is not None]
        ml = f"{min(losses):.4f}" if losses else "nan"
        steps = "/".join(str(r["steps"]) for r in rs)
        stop = "/".join(dict.fromkeys(r["stop_reason"].split(" at ")[0].split(":")[0] for r in rs))
        mark = "  <- recommended" if best is not None and best["clear"] and best["weight_decay"] == wd else ""
        w(f"{name:>14}  {lr:>12}  {ml:>9}  {steps:>5}  {stop}{mark}\n")
    if multi:
        w(f"(one value per seed: {', '.join(str(s) for s in seeds)})\n")
    if best is None:
        w("no suggestion for any weight decay: the loss never fell; lower --lr_find.min_lr or check the data\n")
    elif not best["clear"]:
        picks = ", ".join("none" if p is None else f"{p:g}" for p in best["picks"])
        w(
            f"{NO_CLEAR_WINNER}: the weight decay picked per seed was {picks} (none on 2 of 3 seeds); "
            "keep the config's weight decay or compare them in full runs\n"
        )
    elif multi and best["weight_decay"] is not None:
        w(
            f"recommended: weight decay {best['weight_decay']:g} (picked on {best['votes']} of {best['seeds']} "
            f"seeds), lr {best['suggestion']:.4g} (median over the seeds)\n"
        )
    for kind, p in paths.items():
        w(f"wrote {p}\n" if kind != "yaml" else f"wrote {p}  (lit-recipes fit --config <recipe> --config {p})\n")


def _config_files(rest: list[str]) -> list[str]:
    files = []
    for i, a in enumerate(rest):
        if a == "--config":
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                raise ValueError("--config: needs a file name")
            files.append(rest[i + 1])
        elif a.startswith("--config="):
            files.append(a.split("=", 1)[1])
    return files


def lr_find_main(argv: list[str]) -> int:
    """Entry point of ``lit-recipes lr-find`` (registered in ``lit_recipes.commands.main.COMMANDS``)."""
    ns, rest = _parser().parse_known_args(argv)
    files = _config_files(rest)
    if not files:
        raise ValueError("lr-find needs --config <recipe>.yaml (the file `lit-recipes fit` would take)")
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"--config: file not found: {f}")
    if ns.wd_seeds < 1:
        raise ValueError(f"--wd_seeds: must be an integer >= 1, got {ns.wd_seeds}")
    finder_kwargs = {k: getattr(ns, k) for k in FINDER_ARGS}
    LRRangeTest(**{k: v for k, v in finder_kwargs.items() if v is not None})  # bad values fail here, at once
    wds = ns.wd if ns.wd else [None]
    seeds = None
    if len(wds) > 1:
        base = _config_seed(rest)
        seeds = [base + k for k in range(ns.wd_seeds)]
    run_lr_find(rest, wds, finder_kwargs, ns.out, seeds)
    return 0


def _config_seed(rest: list[str]) -> int:
    """The ``seed_everything`` the arguments give (last one wins), else the configs', else 0."""
    import yaml

    seed = 0
    for f in _config_files(rest):
        data = yaml.safe_load(Path(f).read_text()) or {}
        value = data.get("seed_everything") if isinstance(data, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            seed = value
    for i, a in enumerate(rest):
        text = a.split("=", 1)[1] if a.startswith("--seed_everything=") else None
        if a == "--seed_everything" and i + 1 < len(rest):
            text = rest[i + 1]
        if text is not None:
            try:
                seed = int(text)
            except ValueError:
                raise ValueError(f"--seed_everything: must be an integer, got {text!r}") from None
    return seed


__all__ = ["lr_find_main", "recommend", "recommend_over_seeds", "run_lr_find", "stable_pick", "with_weight_decay"]
