"""Interruptions: ``lit-recipes fit``, ``kfold`` and ``search`` SIGKILLed at random points, then resumed.

For each command, one uninterrupted run is the reference. Then, ``--kills`` times in all (spread
over the three commands: fit and kfold 2 of every 5, search 1), the same command is started in a
fresh folder, SIGKILLed at a seeded random point, and resumed the documented way. The kill points:
10 % during start-up (30-100 % of the reference's time to its first training epoch), 80 % during
training (counted from the moment the killed process starts its first epoch: uniform over the
reference's training span, first epoch start to last epoch end, so the spread does not depend on
how loaded the machine is), 10 % after it (the test, the result files, the report). Resumes:

* ``fit``: ``lit-recipes fit --config CFG --ckpt_path <run>/checkpoints/last.ckpt`` (the same
  command again when the kill came before the first ``last.ckpt``);
* ``kfold`` and ``search``: the same command again.

Compared with the reference, bit for bit: every final tensor of every ``last.ckpt`` (fit: the run;
kfold: each fold; search: each fold of each trial) with ``torch.equal``, and the metrics (fit: the
best score and the best checkpoint's name; kfold: each fold's ``result.json`` metrics; search: each
trial's fold values, its state, and the pick). Epochs redone: the training epochs started in the
killed and the resumed processes together, minus the reference's (an ``EpochLog`` callback in the
config appends one line per epoch start to a file; ``os.write`` survives SIGKILL); at most the
epoch in flight when the process died is redone, so this is 0 or 1 per kill.

The config is deterministic on the CPU: digits, LeNet-5 (BN), SGD with momentum and a per-step
1cycle schedule, plain shuffling, seed 7, ``OMP_NUM_THREADS=1``.

    OMP_NUM_THREADS=1 python benchmarks/bench_faults.py             # 22 kills, ~10-15 min on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/bench_faults.py --kills 6   # a quick look

Writes ``benchmarks/data/faults.json`` and prints one row per kill.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EPOCH_LOG_ENV = "BENCH_FAULTS_EPOCH_LOG"
EARLY = 0.1  # the share of kills aimed at the start-up (before the first training epoch)
LATE = 0.1  # the share aimed after the training (test, result files, report)

CONFIG = """\
seed_everything: 7
trainer:
  max_epochs: 4
  limit_train_batches: 15
  limit_val_batches: 2
  limit_test_batches: 2
  enable_progress_bar: false
  enable_model_summary: false
  logger: false
  accelerator: cpu
  default_root_dir: runs
  callbacks:
    - class_path: bench_faults.EpochLog
model:
  class_path: lit_recipes.module.ClassifierModule
  init_args:
    model: lenet5_bn
    lr: 0.05
    optimizer:
      class_path: torch.optim.SGD
      init_args: {lr: 0.05, momentum: 0.9}
    lr_scheduler:
      class_path: lit_recipes.schedules.OneCycle
data:
  class_path: lit_recipes.datamodules.DigitsDataModule
  init_args:
    batch_size: 32
    val_fraction: 0.1
    test_fraction: 0.2
"""
SPACE = "model.init_args.lr: choice(0.02, 0.05)\n"

COMMANDS = {
    "fit": ["fit", "--config", "cfg.yaml"],
    "kfold": ["kfold", "--config", "cfg.yaml", "--kfold.num_folds", "2", "--kfold.run_dir", "kf"],
    "search": [
        "search",
        "--config",
        "cfg.yaml",
        "--search.space",
        "space.yaml",
        "--search.trials",
        "2",
        "--search.sampler",
        "grid",
        "--search.pruner",
        "none",
        "--search.final",
        "none",
        "--search.dir",
        "search",
        "--kfold.num_folds",
        "2",
        "--trainer.max_epochs",
        "3",
    ],  # fmt: skip
}


class EpochLog(Callback):
    """Appends ``<pid> <epoch> <time>`` to ``$BENCH_FAULTS_EPOCH_LOG`` at every training epoch start."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        path = os.environ.get(EPOCH_LOG_ENV)
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{os.getpid()} {trainer.current_epoch} {time.time():.3f}\n".encode())
            finally:
                os.close(fd)


def _env(folder: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "benchmarks"), env.get("PYTHONPATH")]))
    env[EPOCH_LOG_ENV] = str(folder / "epochs.log")
    return env


def _prepare(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "cfg.yaml").write_text(CONFIG)
    (folder / "space.yaml").write_text(SPACE)


def _run(folder: Path, args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "lit-recipes"), *args], cwd=folder, env=_env(folder), capture_output=True, text=True, timeout=timeout
    )


def _epochs_started(folder: Path) -> int:
    log = folder / "epochs.log"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def _epoch_times(folder: Path) -> list[float]:
    return [float(line.split()[2]) for line in (folder / "epochs.log").read_text().splitlines()]


def _load(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _outcome(command: str, folder: Path) -> tuple[dict[str, dict], dict]:
    """(name -> final state_dict of every last.ckpt, metrics) of a finished run in ``folder``."""
    if command == "fit":
        runs = sorted(glob.glob(str(folder / "runs" / "*" / "*" / "checkpoints" / "last.ckpt")))
        last = _load(runs[-1])  # the newest run (a kill before the first epoch leaves an older folder)
        (state,) = [s for k, s in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
        metrics = {
            "epoch": int(last["epoch"]),
            "best_score": float(state["best_model_score"]),
            "best_file": Path(state["best_model_path"]).name,
        }
        return {"run": last["state_dict"]}, metrics
    if command == "kfold":
        states, metrics = {}, {}
        for fold in sorted((folder / "kf").glob("fold_*")):
            states[fold.name] = _load(fold / "checkpoints" / "last.ckpt")["state_dict"]
            metrics[fold.name] = json.loads((fold / "result.json").read_text())["metrics"]
        return states, metrics
    report = json.loads((folder / "search" / "search_results.json").read_text())
    states = {}
    for ckpt in sorted((folder / "search" / "trials").glob("*/fold_*/checkpoints/last.ckpt")):
        states[str(ckpt.relative_to(folder / "search" / "trials"))] = _load(ckpt)["state_dict"]
    finished = [t for t in report["trials"] if t["state"] in ("COMPLETE", "PRUNED")]
    by_params = {json.dumps(t["params"], sort_keys=True): (t["state"], t["values"]) for t in finished}
    metrics = {"trials": by_params, "n_finished": len(finished), "chosen_params": report.get("chosen_params")}
    return states, metrics


def _trial_dirs_by_params(folder: Path) -> dict[str, str]:
    report = json.loads((folder / "search" / "search_results.json").read_text())
    return {json.dumps(t["params"], sort_keys=True): t["dir"] for t in report["trials"] if t["state"] == "COMPLETE"}


def _same(command: str, ref_folder: Path, folder: Path, ref, got) -> tuple[bool, bool, list[str]]:
    """(weights identical, metrics identical, what differs)."""
    ref_states, ref_metrics = ref
    states, metrics = got
    if command == "search":  # a re-queued trial has another number and folder: match by parameters
        ref_dirs, dirs = _trial_dirs_by_params(ref_folder), _trial_dirs_by_params(folder)
        rename = {dirs[p]: ref_dirs[p] for p in dirs if p in ref_dirs}
        states = {rename.get(k.split("/", 1)[0], k.split("/", 1)[0]) + "/" + k.split("/", 1)[1]: v
                  for k, v in states.items() if k.split("/", 1)[0] in rename}  # fmt: skip
    diffs = []
    if states.keys() != ref_states.keys():
        diffs.append(f"checkpoints {sorted(states)} vs {sorted(ref_states)}")
    for name in sorted(set(states) & set(ref_states)):
        a, b = states[name], ref_states[name]
        bad = [k for k in b if k not in a or not torch.equal(a[k], b[k])]
        if bad:
            diffs.append(f"{name}: {len(bad)} tensors differ ({bad[0]})")
    weights_ok = not diffs
    metrics_ok = metrics == ref_metrics
    if not metrics_ok:
        diffs.append(f"metrics {metrics} vs {ref_metrics}")
    return weights_ok, metrics_ok, diffs


def _resume_args(command: str, folder: Path) -> list[str]:
    if command != "fit":
        return COMMANDS[command]
    lasts = sorted(glob.glob(str(folder / "runs" / "*" / "*" / "checkpoints" / "last.ckpt")))
    if not lasts:
        return COMMANDS["fit"]  # killed before the first epoch ended: nothing to resume, start again
    return [*COMMANDS["fit"], "--ckpt_path", os.path.relpath(lasts[-1], folder)]


def _resume_point(command: str, folder: Path) -> str:
    """What the killed run left to resume from (for the table)."""
    pattern = {
        "fit": "runs/*/*/checkpoints/last.ckpt",
        "kfold": "kf/fold_*/checkpoints/last.ckpt",
        "search": "search/trials/*/fold_*/checkpoints/last.ckpt",
    }[command]
    found = sorted(folder.glob(pattern))
    done = {
        "fit": [],
        "kfold": sorted(p.parent.name for p in folder.glob("kf/fold_*/result.json")),
        "search": sorted(f"{p.parts[-3]}/{p.parent.name}" for p in folder.glob("search/trials/*/fold_*/result.json")),
    }[command]
    if not found:
        return "nothing (before the first epoch end)"
    epochs = []
    for p in found:
        try:
            where = p.relative_to(folder).parts[-4:-2] if command == "search" else p.relative_to(folder).parts[-3:-2]
            epochs.append(f"{'/'.join(where)}:e{int(_load(p)['epoch'])}")
        except Exception as err:  # noqa: BLE001 - reported, the resume decides what to do with it
            epochs.append(f"{p.name}: unreadable ({type(err).__name__})")
    return f"last.ckpt {' '.join(epochs)}" + (f"; done {' '.join(done)}" if done else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=22)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "data" / "faults.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="bench_faults-"))
    t_start = time.time()
    refs: dict[str, dict] = {}
    for command in COMMANDS:
        folder = root / f"ref-{command}"
        _prepare(folder)
        t0 = time.time()
        proc = _run(folder, COMMANDS[command])
        wall = time.time() - t0
        if proc.returncode != 0:
            raise SystemExit(f"reference {command} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        times = _epoch_times(folder)
        fit_epochs = 4 if command != "search" else 3  # epochs per fit (search: --trainer.max_epochs 3)
        epoch_s = (times[fit_epochs - 1] - times[0]) / (fit_epochs - 1)  # the first fit's epochs
        refs[command] = {
            "folder": folder,
            "wall": wall,
            "first_epoch_s": times[0] - t0,
            # from the first epoch's start to the end of the last one (estimated: its start + one epoch)
            "training_s": times[-1] - times[0] + epoch_s,
            "epochs": _epochs_started(folder),
            "outcome": _outcome(command, folder),
        }
        print(
            f"reference {command}: {wall:.1f} s, {refs[command]['epochs']} epochs, "
            f"first epoch after {refs[command]['first_epoch_s']:.1f} s, training {refs[command]['training_s']:.1f} s",
            flush=True,
        )

    cycle = ["fit", "kfold", "search", "fit", "kfold"]  # search (the slowest) gets fewer kills
    order = [cycle[i % len(cycle)] for i in range(args.kills)]
    rows = []
    print(f"\n{'#':>3} {'command':7} {'kill at':>8} {'redone':>6} {'weights':>8} {'metrics':>8}  resumed from")
    for i, command in enumerate(order):
        ref = refs[command]
        folder = root / f"kill{i:02d}-{command}"
        _prepare(folder)
        proc = subprocess.Popen(
            [str(BIN / "lit-recipes"), *COMMANDS[command]],
            cwd=folder,
            env=_env(folder),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        t0 = time.time()
        phase = rng.random()
        if phase < EARLY:  # during start-up: after 30-100 % of the reference's time to its first epoch
            time.sleep(rng.uniform(0.3, 1.0) * ref["first_epoch_s"])
        else:  # from the killed process's first epoch start: into its training, or past it (test, report)
            while _epochs_started(folder) == 0 and proc.poll() is None:
                time.sleep(0.02)
            after = ref["wall"] - ref["first_epoch_s"] - ref["training_s"]
            late = phase > 1.0 - LATE
            time.sleep(
                ref["training_s"] + rng.uniform(0.0, 0.9) * after if late else rng.uniform(0.0, ref["training_s"])
            )
        delay = time.time() - t0
        killed = proc.poll() is None
        if killed:
            proc.kill()
        proc.wait()
        point = _resume_point(command, folder) if killed else "(finished before the kill)"
        resume = _run(folder, _resume_args(command, folder))
        row = {"n": i, "command": command, "delay_s": round(delay, 2), "killed": killed, "resumed_from": point}
        if resume.returncode != 0:
            row.update(rc=resume.returncode, error=resume.stderr.strip().splitlines()[-3:], identical=False)
        else:
            w_ok, m_ok, diffs = _same(command, ref["folder"], folder, ref["outcome"], _outcome(command, folder))
            redone = _epochs_started(folder) - ref["epochs"]
            row.update(rc=0, weights_identical=w_ok, metrics_identical=m_ok, epochs_redone=redone, diffs=diffs[:5])
            row["identical"] = w_ok and m_ok
        rows.append(row)
        print(
            f"{i:>3} {command:7} {delay:7.1f}s {row.get('epochs_redone', '-')!s:>6} "
            f"{'same' if row.get('weights_identical') else 'DIFF':>8} {'same' if row.get('metrics_identical') else 'DIFF':>8}"
            f"  {point}" + ("" if row["rc"] == 0 else f"  resume rc {row['rc']}: {row['error']}"),
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    killed_rows = [r for r in rows if r["killed"]]
    summary = {
        "kills": len(killed_rows),
        "identical": sum(r["identical"] for r in killed_rows),
        "max_epochs_redone": max((r.get("epochs_redone", 0) for r in killed_rows), default=0),
        "by_command": {
            c: {
                "kills": sum(r["command"] == c for r in killed_rows),
                "identical": sum(r["command"] == c and r["identical"] for r in killed_rows),
                "epochs_redone": sorted(r.get("epochs_redone", -1) for r in killed_rows if r["command"] == c),
            }
            for c in COMMANDS
        },
    }
    result = {
        "summary": summary,
        "rows": rows,
        "references": {
            c: {
                "wall_s": round(r["wall"], 1),
                "first_epoch_s": round(r["first_epoch_s"], 1),
                "training_s": round(r["training_s"], 1),
                "epochs": r["epochs"],
            }
            for c, r in refs.items()
        },
        "config": CONFIG,
        "space": SPACE,
        "commands": {c: "lit-recipes " + " ".join(a) for c, a in COMMANDS.items()},
        "seed": args.seed,
        "wall_s": round(time.time() - t_start, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS=1",
        "versions": _versions(),
        "commit": _commit(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n{summary['identical']}/{summary['kills']} killed runs identical to the uninterrupted one after the "
        f"resume; at most {summary['max_epochs_redone']} epoch(s) redone per kill; {result['wall_s']:.0f} s"
    )
    for c, s in summary["by_command"].items():
        print(f"  {c:7} {s['identical']}/{s['kills']} identical, epochs redone {s['epochs_redone']}")
    if args.keep:
        print(f"folders kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def _versions() -> dict[str, str]:
    import lightning
    import optuna

    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
            "optuna": optuna.__version__}  # fmt: skip


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
