"""`lit-recipes fit` as torchrun runs it, reporting each rank's final metrics as JSON.

Usage: torchrun --standalone --nproc_per_node=2 tests/ddp_scripts/fit_ddp.py OUT_DIR [CLI ARGS...]
(or plain ``python`` for the single-process reference).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lit_recipes.commands.fit import build_cli


def main() -> None:
    out = Path(sys.argv[1])
    cli = build_cli(sys.argv[2:])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    test = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    metrics.update({k: float(v) for k, v in test.items()})
    report = {
        "rank": cli.trainer.global_rank,
        "world_size": cli.trainer.world_size,
        "strategy": type(cli.trainer.strategy).__name__,
        "global_step": cli.trainer.global_step,
        "metrics": metrics,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{cli.trainer.global_rank}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
