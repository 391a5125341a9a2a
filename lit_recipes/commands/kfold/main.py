"""The console commands ``lit-recipes kfold`` and ``lit-recipes kfold-report``."""

from __future__ import annotations

import argparse

from lit_recipes.commands.kfold.report import build_report, log_report_to_wandb, print_report
from lit_recipes.commands.kfold.runner import run_kfold


def kfold_main(argv: list[str]) -> int:
    """``lit-recipes kfold --config CFG [--kfold.num_folds 5] [--kfold.fold i] [--kfold.refit true] ...``"""
    report = run_kfold(argv)
    if report is not None:
        print_report(report)
    return 0


def report_main(argv: list[str]) -> int:
    """``lit-recipes kfold-report DIR``: aggregate the folds a (cluster-parallel) k-fold run wrote."""
    parser = argparse.ArgumentParser(
        prog="lit-recipes kfold-report",
        description="Aggregate a k-fold run directory: table, mean ± std, fold ensemble, plot.",
    )
    parser.add_argument("run_dir", help="the k-fold run directory (holds kfold.json and fold_<i>/)")
    parser.add_argument("--allow-partial", action="store_true", help="aggregate the folds that are done")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--no-wandb", action="store_true", help="do not log a W&B summary run")
    ns = parser.parse_args(argv)
    report = build_report(ns.run_dir, allow_partial=ns.allow_partial, plot=not ns.no_plot)
    if (report.get("logger") or {}).get("wandb") and not ns.no_wandb:
        log_report_to_wandb(report)
    print_report(report)
    return 0
