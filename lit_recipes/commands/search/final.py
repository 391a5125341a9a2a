"""The end of a search: the report (trials, the pick, importances, the plot) and the chosen
configuration's final model (a refit on all training data, the best fold's model or the fold
ensemble), scored on the test split."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_recipes.artifacts import save_json
from lit_recipes.commands.search.options import PLOT, RESULTS, _Plan
from lit_recipes.commands.search.report import RULE_TEXT, log_report_to_wandb, pick, plot_search, trials_table
from lit_recipes.commands.search.space import format_value, space_to_dict
from lit_recipes.commands.search.study import _lock
from lit_recipes.commands.search.trials import _trial_args, _trial_record


def finalize(plan: _Plan, study) -> dict[str, Any] | None:
    """Build the report and the final model, once no trial is running (one worker at a time)."""
    from optuna.trial import TrialState

    busy = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    if busy:
        rank_zero_info(
            f"search {plan.name}: trial(s) {', '.join(f'#{t.number}' for t in busy)} still running in other "
            "workers; the last one writes the report (or run the same command again)"
        )
        return None
    with _lock(plan.search_dir, "final", blocking=False) as mine:
        if not mine:
            rank_zero_info(f"search {plan.name}: another worker is writing the report")
            return None
        report = build_search_report(plan, study)
        report["final"] = final_model(plan, report)
        save_json(plan.search_dir / RESULTS, report)
        if plan.wandb:
            try:
                log_report_to_wandb(report)
            except Exception as err:  # noqa: BLE001
                rank_zero_warn(f"search: could not log the report to W&B: {err}")
    return report


def build_search_report(plan: _Plan, study) -> dict[str, Any]:
    """The trials, the pick (with its rule spelled out), Optuna's importances and the plot."""
    import optuna

    trials = [_trial_record(t) for t in study.get_trials(deepcopy=False)]
    shown = [t for t in trials if not (t["state"] == "FAIL" and t["error"] is None)]  # killed and re-run
    choice = pick(shown, plan.params, plan.maximize, plan.opts.rule)
    report: dict[str, Any] = {
        "name": plan.name,
        "search_dir": str(plan.search_dir),
        "storage": plan.storage_url,
        "metric": plan.opts.metric,
        "direction": plan.opts.direction,
        "num_folds": plan.num_folds,
        "space": space_to_dict(plan.params),
        "sampler": plan.opts.sampler,
        "pruner": plan.opts.pruner,
        "std": "sample standard deviation over folds (ddof=1); SE = std / sqrt(folds)",
        "rule": RULE_TEXT[plan.opts.rule].format(metric=plan.opts.metric),
        "trials": shown,
        "pick": choice,
        "logger": plan.logger,
    }
    chosen = next((t for t in shown if choice and t["number"] == choice["chosen"]), None)
    report["chosen_params"] = chosen["params"] if chosen else None
    report["chosen_args"] = [f"--{k}={format_value(v)}" for k, v in chosen["params"].items()] if chosen else None
    complete = [t for t in shown if t["state"] == "COMPLETE"]
    report["importances"], report["importances_note"] = None, None
    if len(complete) >= 2 and len(plan.params) >= 1:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
                )
            report["importances"] = {k: float(v) for k, v in imp.items()}
        except Exception as err:  # noqa: BLE001 - e.g. no parameter varied among the complete trials
            report["importances_note"] = f"no importances: {err}"
    else:
        report["importances_note"] = "importances need at least 2 complete trials"
    report["plot"] = str(plot_search(report, plan.params, plan.search_dir / PLOT))
    return report


def final_model(plan: _Plan, report: dict[str, Any]) -> dict[str, Any] | None:
    """The chosen configuration's final model, scored on the test split."""
    from lit_recipes.commands.kfold import build_report, run_kfold
    from lit_recipes.commands.kfold.rundir import RESULT

    mode = plan.opts.final
    choice = report.get("pick")
    if mode == "none" or not choice:
        return None
    chosen = next(t for t in report["trials"] if t["number"] == choice["chosen"])
    trial_dir = plan.search_dir / "trials" / chosen["dir"]
    out: dict[str, Any] = {"mode": mode, "trial": chosen["number"], "trial_dir": str(trial_dir)}
    sign = 1.0 if plan.maximize else -1.0
    if mode == "refit":
        rank_zero_info(f"search {plan.name}: refit of trial #{chosen['number']} on all training data")
        run_kfold(
            _trial_args(plan, chosen["params"]),
            fold="refit",
            refit=True,
            report_hint=False,
            run_dir=str(trial_dir),
            name=f"{plan.name}-{chosen['dir']}",
        )
        res = json.loads((trial_dir / "refit" / RESULT).read_text())
        ckpts = sorted((trial_dir / "refit" / "checkpoints").glob("*.ckpt"))
        last = trial_dir / "refit" / "checkpoints" / "last.ckpt"
        out["checkpoint"] = str(last if last.is_file() else ckpts[-1]) if ckpts else None
        out["metrics"] = {k: v for k, v in res["metrics"].items() if k.startswith("test/")}
        out["train_size"] = res.get("train_size")
    elif mode == "best_fold":
        results = [json.loads((trial_dir / f"fold_{i}" / RESULT).read_text()) for i in range(plan.num_folds)]
        best = max(results, key=lambda r: (sign * r["metrics"][plan.opts.metric], -r["fold"]))
        out["fold"] = best["fold"]
        out["checkpoint"] = best.get("best_model_path")
        out["metrics"] = {k: v for k, v in best["metrics"].items() if k.startswith("test/")}
    else:
        kf = build_report(trial_dir, plot=False)
        ens = kf.get("ensemble") or {}
        out["checkpoints"] = [
            json.loads((trial_dir / f"fold_{i}" / RESULT).read_text()).get("best_model_path")
            for i in range(plan.num_folds)
        ]
        out["metrics"] = {k: ens[k] for k in ("test/acc", "test/nll") if k in ens}
        out["mean_single_fold_test/acc"] = ens.get("mean_single_fold_test/acc")
    if not out.get("metrics"):
        rank_zero_warn(f"search {plan.name}: the data has no test split; the final model is not scored")
    return out


def print_search_report(report: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    console.print(trials_table(report))
    p = report.get("pick")
    if not p:
        console.print("no complete trial: nothing to choose")
        return
    metric = report["metric"]
    console.print(
        f"best trial #{p['best']}: {metric} {p['best_mean']:.4f} (SE {p['se']:.4f}); within one SE: "
        + ", ".join(f"#{n}" for n in p["within_one_se"])
    )
    console.print(f"chosen trial #{p['chosen']} by the {report['rule']}")
    console.print("chosen: " + " ".join(report["chosen_args"] or []))
    final = report.get("final")
    if final and final.get("metrics"):
        shown = ", ".join(f"{k} {v:.4f}" for k, v in final["metrics"].items() if "acc_class_" not in k)
        where = final.get("checkpoint") or f"{len(final.get('checkpoints') or [])} fold checkpoints"
        console.print(f"final model ({final['mode']}): {shown} -> {where}")
    console.print(f"wrote {Path(report['search_dir']) / RESULTS} and {report['plot']}")


__all__ = ["build_search_report", "final_model", "finalize", "print_search_report"]
