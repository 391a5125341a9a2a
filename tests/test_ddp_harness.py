"""The DDP harness every callback reuses: `lit-recipes fit` under torchrun, 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, run_torchrun

SCRIPT = str(REPO / "tests" / "ddp_scripts" / "fit_ddp.py")
COMMON = [
    "--config",
    "lit_recipes/configs/digits_lenet.yaml",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.max_epochs=6",
    "--trainer.accelerator=cpu",
    "--test_after_fit=false",
    "--trainer.callbacks=[]",
]
# the tolerance of single- vs two-process agreement: same global batch (2 x 32 vs 64) and schedule, but a
# different shuffle (DistributedSampler) => the same accuracy within 3 points on digits after 6 epochs
TOLERANCE = 0.03


@pytest.mark.ddp
def test_fit_under_torchrun_agrees_across_ranks_and_with_one_process(tmp_path):
    ddp = run_torchrun(
        [
            SCRIPT,
            str(tmp_path / "ddp"),
            *COMMON,
            "--trainer.strategy=ddp",
            "--trainer.devices=2",
            "--data.init_args.batch_size=32",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    single = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            str(tmp_path / "single"),
            *COMMON,
            "--trainer.devices=1",
            "--data.init_args.batch_size=64",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-4000:]
    r0, r1 = (json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1))
    ref = json.loads((tmp_path / "single" / "rank0.json").read_text())
    assert (r0["world_size"], r0["strategy"]) == (2, "DDPStrategy")
    # both ranks report the same (synced) metrics and took the same number of steps
    assert r0["global_step"] == r1["global_step"]
    for key in ("val/acc", "val/loss", "test/acc", "test/loss"):
        assert r0["metrics"][key] == pytest.approx(r1["metrics"][key], abs=1e-6), key
    # the global batch is the same, so the number of optimizer steps is (about) the same
    assert abs(r0["global_step"] - ref["global_step"]) <= 6
    for key in ("val/acc", "test/acc"):
        assert r0["metrics"][key] == pytest.approx(ref["metrics"][key], abs=TOLERANCE), key
    assert ref["metrics"]["test/acc"] > 0.9
