"""``lit-recipes search`` (issue #18): the space, the pick, the pruner and bad input on constructed
inputs; one end-to-end run on digits that is killed, then resumed by two processes at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from conftest import BIN

from lit_recipes.commands.main import main as cli_main
from lit_recipes.commands.search import load_space, parse_param, parse_search_args, pick, trial_complexity
from lit_recipes.commands.search.report import log_report_to_wandb, log_trial_to_wandb
from lit_recipes.commands.search.study import _GridSampler, _one_se_pruner

WD = "model.init_args.optimizer.init_args.weight_decay"
DROP = "model.init_args.dropout"
LR = "model.init_args.lr"


# ------------------------------------------------------------------------------------ the space
def test_space_parses_every_distribution() -> None:
    p = parse_param(WD, "log_uniform(1e-5, 1e-2, simplest=high)")
    assert (p.dist, p.low, p.high, p.simplest) == ("log_uniform", 1e-5, 1e-2, "high")
    p = parse_param(DROP, "uniform(0, 0.5)")
    assert (p.dist, p.low, p.high, p.simplest) == ("uniform", 0.0, 0.5, "low")
    p = parse_param("data.init_args.batch_size", "int_uniform(16, 128)")
    assert (p.dist, p.low, p.high) == ("int_uniform", 16, 128) and isinstance(p.low, int)
    p = parse_param("model.init_args.model", "choice(lenet5_bn, cifar_resnet20, tv:resnet18)")
    assert p.choices == ("lenet5_bn", "cifar_resnet20", "tv:resnet18")
    p = parse_param("data.init_args.batch_size", [64, 128, 256])
    assert p.choices == (64, 128, 256)
    p = parse_param("x.y", "choice(1e-3, '1e-3', null, true)")
    assert p.choices == (1e-3, "1e-3", None, True)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("normal(0, 1)", "unknown distribution 'normal'"),
        ("uniform(0.5, 0.5)", "empty range uniform(0.5, 0.5)"),
        ("uniform(0.5, 0.1)", "empty range"),
        ("log_uniform(0, 1)", "log_uniform needs 0 < low"),
        ("int_uniform(1.5, 4)", "int_uniform bounds must be integers"),
        ("uniform(0)", "takes two bounds, got 1"),
        ("uniform(a, b)", "must be finite numbers"),
        ("choice()", "empty choice()"),
        ("choice(1, 1)", "lists a value twice"),
        ("uniform(0, 1, simplest=middle)", "simplest must be 'low' or 'high'"),
        ("uniform(0, 1, step=2)", "unknown option(s) step"),
        ("0.5", "cannot read '0.5'; write one of uniform(...)"),
        (0.5, "expected a distribution"),
    ],
)
def test_space_rejects_bad_entries_in_one_line(spec, message) -> None:
    with pytest.raises(ValueError, match=r"search space: model.init_args.dropout: ") as err:
        parse_param(DROP, spec)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("key", ["data.init_args.seed", "seed_everything", "kfold.num_folds"])
def test_space_refuses_keys_that_change_the_folds(key) -> None:
    with pytest.raises(ValueError, match=f"search space: {key} cannot be searched"):
        parse_param(key, "choice(1, 2)")


def test_complexity_is_the_distance_from_the_declared_simplest_end() -> None:
    wd = parse_param(WD, "log_uniform(1e-5, 1e-1, simplest=high)")
    drop = parse_param(DROP, "uniform(0, 0.5)")
    model = parse_param("model.init_args.model", "choice(lenet5, lenet5_bn, cifar_resnet20)")
    assert wd.complexity(1e-1) == pytest.approx(0.0) and wd.complexity(1e-3) == pytest.approx(0.5)
    assert drop.complexity(0.0) == 0.0 and drop.complexity(0.125) == pytest.approx(0.25)
    assert model.complexity("lenet5") == 0.0 and model.complexity("cifar_resnet20") == 1.0
    values = {WD: 1e-3, DROP: 0.5, "model.init_args.model": "lenet5_bn"}
    assert trial_complexity([wd, drop, model], values) == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert wd.grid(3) == pytest.approx([1e-5, 1e-3, 1e-1])
    assert parse_param("b", "int_uniform(1, 4)").grid(3) == [1, 2, 4]


def test_load_space_keeps_file_order(tmp_path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(f"{DROP}: uniform(0, 0.5, simplest=high)\n{WD}: log_uniform(1e-5, 1e-2)\n")
    assert [p.key for p in load_space(path)] == [DROP, WD]
    with pytest.raises(FileNotFoundError, match="search.space: file not found"):
        load_space(tmp_path / "missing.yaml")


def test_search_args_are_split_from_the_trial_args() -> None:
    opts, rest = parse_search_args(["--config", "a.yaml", "--search.trials", "4", "--search.space=s.yaml", "--x=1"])
    assert opts == {"trials": "4", "space": "s.yaml"} and rest == ["--config", "a.yaml", "--x=1"]
    with pytest.raises(ValueError, match="unknown search option --search.trails"):
        parse_search_args(["--search.trails=4"])


# ------------------------------------------------------------------------------------ the pick
def _t(number, values, state="COMPLETE", **params):
    return {"number": number, "state": state, "values": values, "params": params}


def test_one_se_rule_picks_the_simplest_within_one_standard_error() -> None:
    space = [parse_param("wd", "log_uniform(1e-4, 1e-2, simplest=high)")]
    trials = [
        _t(0, [0.90, 0.92, 0.94], wd=1e-4),  # best: mean 0.92, std 0.02, SE 0.02/sqrt(3) = 0.011547
        _t(1, [0.90, 0.91, 0.92], wd=1e-3),  # mean 0.91 >= 0.92 - 0.011547: within, simpler
        _t(2, [0.89, 0.90, 0.91], wd=1e-2),  # mean 0.90: outside
        _t(3, [0.99], state="PRUNED", wd=1e-2),  # pruned trials never take part
    ]
    p = pick(trials, space, maximize=True)
    assert p["best"] == 0 and p["within_one_se"] == [0, 1] and p["chosen"] == 1
    assert p["se"] == pytest.approx(0.02 / 3**0.5) and p["threshold"] == pytest.approx(0.92 - 0.02 / 3**0.5)
    assert pick(trials, space, maximize=True, rule="best")["chosen"] == 0
    # minimising a loss: the same numbers read the other way round
    p = pick([*trials[:3], _t(4, [0.90, 0.905, 0.91], wd=5e-3)], space, maximize=False)
    assert p["best"] == 2 and p["se"] == pytest.approx(0.01 / 3**0.5)  # #1 (0.91) is 1.7 SE worse
    assert p["within_one_se"] == [2, 4] and p["chosen"] == 2  # wd 1e-2 is the simplest end
    assert pick([_t(0, [0.5], state="PRUNED", wd=1e-3)], space, maximize=True) is None


def test_one_se_rule_breaks_equal_complexity_by_the_better_mean() -> None:
    space = [parse_param("m", "choice(small, big)")]
    trials = [_t(0, [0.80, 0.82], m="big"), _t(1, [0.79, 0.81], m="small"), _t(2, [0.80, 0.81], m="small")]
    p = pick(trials, space, maximize=True)  # SE of #0: 0.01; #1 (0.80) and #2 (0.805) within
    assert p["within_one_se"] == [0, 1, 2] and p["chosen"] == 2


def _study_with(best_folds: list[float]):
    study = optuna.create_study(direction="maximize")
    dist = {"wd": optuna.distributions.FloatDistribution(1e-5, 1.0, log=True)}
    study.add_trial(
        optuna.trial.create_trial(
            params={"wd": 1e-3},
            distributions=dist,
            value=sum(best_folds) / len(best_folds),
            intermediate_values=dict(enumerate(best_folds)),
        )
    )
    return study


def test_one_se_pruner_prunes_a_trial_that_trails_the_best_on_the_same_folds() -> None:
    study = _study_with([0.90, 0.92, 0.94])  # SE 0.011547
    pruner = _one_se_pruner(num_folds=3, margin=2.0, min_folds=1, maximize=True)

    def running(values):
        return optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, intermediate_values=values)

    assert pruner.prune(study, running({0: 0.80}))  # 0.10 behind on fold 0 > 2 SE
    assert not pruner.prune(study, running({0: 0.88}))  # 0.02 behind: < 2 SE (0.0231)
    assert pruner.prune(study, running({0: 0.87, 1: 0.89}))  # 0.03 behind on folds 0-1
    assert not pruner.prune(study, running({}))  # no fold yet
    assert not pruner.prune(study, running({0: 0.1, 1: 0.1, 2: 0.1}))  # every fold done: nothing to save
    assert not pruner.prune(optuna.create_study(direction="maximize"), running({0: 0.1}))  # no best yet
    late = _one_se_pruner(num_folds=3, margin=2.0, min_folds=2, maximize=True)
    assert not late.prune(study, running({0: 0.5}))  # min_folds=2
    loss = _one_se_pruner(num_folds=3, margin=2.0, min_folds=1, maximize=False)
    assert not loss.prune(study, running({0: 0.80})) and loss.prune(study, running({0: 0.99}))


# ------------------------------------------------------------------------------------ bad input
CONFIG = """\
seed_everything: 0
trainer:
  max_epochs: 2
  accelerator: cpu
  devices: 1
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  num_sanity_val_steps: 0
  callbacks:
    - class_path: lit_recipes.callbacks.LRRangeTest
      init_args: {num_steps: 10, min_lr: 1.0e-4, max_lr: 1.0, update_lr: false, plot: false}
model:
  class_path: lit_recipes.module.ClassifierModule
  init_args:
    model: lenet5_bn
    lr: 0.003
    optimizer:
      class_path: torch.optim.Adam
      init_args: {lr: 0.003, weight_decay: 0.0001}
data:
  class_path: lit_recipes.datamodules.DigitsDataModule
  init_args: {batch_size: 32}
"""


@pytest.mark.parametrize(
    ("space", "extra", "message"),
    [
        (f"{DROP}x: uniform(0, 0.5)", [], f"search space: unknown config key {DROP}x"),
        (f"{WD}: uniform(0.1, 0.1)", [], "empty range uniform(0.1, 0.1)"),
        (f"{DROP}: gauss(0, 1)", [], "unknown distribution 'gauss'"),
        (f"{DROP}: uniform(0, 0.5)", ["--search.trials=0"], "search.trials must be an integer >= 1, got 0"),
        (f"{DROP}: choice(0.1, high)", [], f"search space: the config rejects {DROP}=high"),
    ],
)
def test_bad_input_is_one_line_before_anything_trains(tmp_path, capsys, space, extra, message) -> None:
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    (tmp_path / "space.yaml").write_text(space + "\n")
    argv = ["search", "--config", str(tmp_path / "cfg.yaml"), f"--search.space={tmp_path / 'space.yaml'}"]
    argv += extra or ["--search.trials=2"]
    argv += [f"--search.dir={tmp_path / 'search'}"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[0] and err[0].startswith("lit-recipes: error: "), err
    assert all(line.startswith("lit-recipes: hint: ") for line in err[1:]) and len(err) <= 2, err  # docs/errors.md
    assert not (tmp_path / "search").exists()  # no study, no trial folder


# ------------------------------------------------------------------------------------ W&B grouping
def test_wandb_one_group_per_study_one_run_per_trial(monkeypatch, tmp_path) -> None:
    import wandb

    calls = []

    class Run:
        def __init__(self, **kw):
            calls.append(kw)
            self.logged, self.summary = [], {}

        def log(self, data, step=None):
            self.logged.append((step, data))

        def finish(self):
            pass

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(wandb, "init", lambda **kw: Run(**kw))
    info = {"name": "study-a", "search_dir": str(tmp_path), "metric": "val/acc", "logger": {"project": "p"}}
    trial = {"number": 3, "state": "COMPLETE", "params": {DROP: 0.1}, "values": [0.9, 0.8], "mean": 0.85,
             "std": 0.07, "n_folds": 2}  # fmt: skip
    log_trial_to_wandb(info, trial)
    report = {**info, "space": {DROP: "uniform(0, 0.5)"}, "trials": [trial], "pick": {"chosen": 3},
              "chosen_params": {DROP: 0.1}, "final": {"metrics": {"test/acc": 0.9}}}  # fmt: skip
    log_report_to_wandb(report)
    assert [c["group"] for c in calls] == ["study-a", "study-a"]
    assert calls[0]["job_type"] == "trial" and calls[0]["name"] == "study-a-trial3" and calls[0]["config"][DROP] == 0.1
    assert calls[1]["job_type"] == "search" and calls[0]["project"] == "p"


def test_grid_sampler_tolerates_a_requeued_trial() -> None:
    """A re-queued trial has fixed parameters and no grid id; Optuna's GridSampler.after_trial
    would look the id up when one grid point is left."""
    study = optuna.create_study(sampler=_GridSampler.make({"x": [1, 2, 3]}, seed=0))
    study.enqueue_trial({"x": 2})
    study.optimize(lambda t: t.suggest_categorical("x", [1, 2, 3]), n_trials=5)
    assert sorted(t.params["x"] for t in study.trials) == [1, 2, 2, 3]


# ------------------------------------------------------------------------------------ end to end
def _grid_order(values: list) -> list:
    """The order in which the search's grid sampler (seed 0) visits one parameter's values."""
    study = optuna.create_study(sampler=_GridSampler.make({"p": values}, seed=0))
    seen = []
    study.optimize(lambda t: seen.append(t.suggest_categorical("p", values)) or 0.0, n_trials=len(values))
    return seen


def _search_cmd(tmp_path: Path) -> list[str]:
    return [
        str(BIN / "lit-recipes"), "search", "--config", str(tmp_path / "cfg.yaml"),
        "--search.space", str(tmp_path / "space.yaml"), "--search.trials", "4", "--search.sampler", "grid",
        "--search.prune_margin", "20", f"--search.dir={tmp_path / 'search'}", "--kfold.num_folds", "3",
    ]  # fmt: skip


@pytest.mark.timeout(900)  # ~1.5 min on 2 idle cores; several times that on a shared machine
def test_search_killed_then_resumed_by_two_processes(tmp_path) -> None:
    """4 trials x 3 folds on digits, a grid over the learning rate with one hopeless value (pruned after
    its first fold), killed during the third trial, resumed by two processes on the same SQLite
    study: the killed trial continues in its folder, the report and the refit model appear."""
    good, bad = [0.002, 0.003, 0.004], 1e-6  # Adam at 1e-6: two epochs learn nothing
    order = _grid_order([0, 1, 2, 3])  # positions in visiting order
    values = [None] * 4
    values[order[1]] = bad  # visited second: after one complete trial to compare with
    it = iter(good)
    for pos in range(4):
        if values[pos] is None:
            values[pos] = next(it)
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    (tmp_path / "space.yaml").write_text(f"{LR}: choice({', '.join(map(str, values))})\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    search = tmp_path / "search"
    log1 = open(tmp_path / "first.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(_search_cmd(tmp_path), env=env, stdout=log1, stderr=subprocess.STDOUT, cwd=tmp_path)
    marker = search / "trials" / "trial_0002" / "fold_0" / "result.json"
    deadline = time.time() + 300
    while not marker.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.is_file(), (tmp_path / "first.log").read_text()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fold0_before = marker.read_text()

    study = optuna.load_study(study_name="cfg-space", storage=f"sqlite:///{search / 'study.db'}")
    states = {t.number: t.state.name for t in study.trials}
    assert states[0] == "COMPLETE" and states[1] == "PRUNED" and states[2] == "RUNNING", states

    logs = [open(tmp_path / f"resume{i}.log", "w") for i in range(2)]  # noqa: SIM115
    procs = [
        subprocess.Popen(_search_cmd(tmp_path), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        for log in logs
    ]
    for p in procs:
        p.wait(timeout=600)
    outs = [(tmp_path / f"resume{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]

    study = optuna.load_study(study_name="cfg-space", storage=f"sqlite:///{search / 'study.db'}")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4 and sum(t.state.name == "PRUNED" for t in finished) == 1
    assert [t.params[LR] for t in finished if t.state.name == "PRUNED"] == [bad]
    assert sorted(t.params[LR] for t in finished if t.state.name == "COMPLETE") == sorted(good)
    assert study.trials[2].state.name == "FAIL"  # the killed one, re-queued once
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 2]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].user_attrs["dir"] == "trial_0002"
    assert marker.read_text() == fold0_before  # its finished fold was not trained again

    report = json.loads((search / "search_results.json").read_text())
    assert [t["state"] for t in report["trials"] if t["state"] != "FAIL"].count("COMPLETE") == 3
    assert report["pick"]["chosen"] in report["pick"]["within_one_se"]
    assert "one-standard-error rule" in report["rule"]
    png = (search / "search.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    final = report["final"]
    assert final["mode"] == "refit" and Path(final["checkpoint"]).is_file()
    assert final["metrics"]["test/acc"] > 0.5  # two epochs of LeNet-5 on digits learn (chance: 0.1)
    # the recipe's range test ran again in every fold of every trial that trained
    for t in report["trials"]:
        if t["state"] == "COMPLETE":
            for i in range(3):
                assert (search / "trials" / t["dir"] / f"fold_{i}" / "lr_find.json").is_file()
    assert any("chosen trial" in out for out in outs)
    # the search aggregates its folds itself: no "aggregate with `lit-recipes kfold-report`" per fold
    assert not any("kfold-report" in out for out in [*outs, (tmp_path / "first.log").read_text()])
