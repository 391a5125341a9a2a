"""A quiet console by default: what a person reads during a run is the run, not library noise.

:func:`install` (called by the ``lit-recipes`` entry point; ``--verbose`` skips it) :

* drops Lightning's advertising tip (litlogger) and its chatter that says nothing about this run
  ("TPU available: False", "Loading `train_dataloader` to estimate ...", "LOCAL_RANK: 0 - ...");
* ignores known third-party deprecation warnings that the user cannot act on (torch's
  ``_pytree`` ``LeafSpec`` deprecation raised inside Lightning, and the like: :data:`NOISY_WARNINGS`);
* prints the model summary and the "GPU available" line once per process and model
  (``lr-find`` and ``kfold`` build several Trainers for the same model);
* prints every other warning as one line (``warning: ...``; lit_recipes' own as
  ``lit-recipes: ...``) without the source line under it;
* ignores Lightning's ``sync_dist=True`` advice for epoch-level metrics: lit_recipes logs
  values that are already reduced across processes (torchmetrics' ``compute`` syncs);
* silences W&B's banner and run summary (``WANDB_SILENT=true`` unless already set).

Everything is process-wide and idempotent.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path

# (message regex, category): warnings nobody running lit-recipes can act on
NOISY_WARNINGS: list[tuple[str, type[Warning]]] = [
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated", Warning),  # torch._pytree via Lightning
    (r".*`?torch\.utils\._pytree\._register_pytree_node`? is deprecated", Warning),
    (r".*LeafSpec.*is deprecated", Warning),
    (r".*when logging on epoch level in distributed setting to accumulate the metric across devices", Warning),
    (r".*pkg_resources is deprecated as an API", Warning),
]
# Lightning info lines that say nothing about this run
NOISY_LOG_LINES = re.compile(
    r"^(💡 Tip:|TPU available: False|HPU available: False|IPU available: False|"
    r"Loading `train_dataloader` to estimate number of stepping batches|LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES|"
    r"You are using a CUDA device .* that has Tensor Cores)"
)

# Lightning info lines worth reading once, not again for every Trainer of the same process
ONCE_LOG_LINES = re.compile(r"^(GPU available: |Trainer will use only 1 of )")

_state = {"installed": False, "summaries": set(), "seen": set()}


class NoiseFilter(logging.Filter):
    """Drops the log records matching :data:`NOISY_LOG_LINES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, "_lit_recipes_shown", None)
        if decided is not None:  # the same record at the logger, then at the handler
            return decided
        try:
            msg = record.getMessage().lstrip()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        shown = not NOISY_LOG_LINES.match(msg)
        if shown and ONCE_LOG_LINES.match(msg):
            shown = msg not in _state["seen"]
            _state["seen"].add(msg)
        record._lit_recipes_shown = shown
        return shown


def _project_dirs() -> tuple[str, ...]:
    """The folders of lit_recipes' own code (the package and its callbacks/datamodules)."""
    import importlib.util

    dirs = {str(Path(__file__).resolve().parent)}
    for sub in ("lit_recipes.callbacks", "lit_recipes.datamodules"):
        spec = importlib.util.find_spec(sub)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            dirs.add(str(Path(loc).resolve()))
    return tuple(d + os.sep for d in dirs)


def format_warning(message, category, filename, lineno, line=None) -> str:
    """One line per warning: ``lit-recipes: <message>`` for lit_recipes' own (they report normal
    events), ``warning: <message> (<Category>)`` for the rest."""
    text = str(message).strip()
    try:
        ours = str(Path(filename).resolve()).startswith(_state.get("dirs") or _project_dirs())
    except (OSError, ValueError):
        ours = False
    if ours:
        return f"lit-recipes: {text}\n"
    return f"warning: {text} ({category.__name__})\n"


def ignore_noisy_warnings() -> None:
    for pattern, category in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)


def install(verbose: bool = False, lightning: bool = True) -> None:
    """Quiet the console of this process (a no-op when ``verbose``). ``lightning=False`` leaves
    Lightning unimported (``predict`` on image files)."""
    if verbose:
        return
    if not os.environ.get("WANDB_SILENT", "").strip():
        os.environ["WANDB_SILENT"] = "true"  # no W&B banner or run summary
    if not _state["installed"]:
        _state["dirs"] = _project_dirs()
        ignore_noisy_warnings()
        warnings.formatwarning = format_warning
        _state["installed"] = True
    if lightning and not _state.get("lightning"):
        _quiet_lightning()
        _state["lightning"] = True


def _quiet_lightning() -> None:
    import lightning.pytorch  # noqa: F401  (configures its loggers and its warning format first)
    from lightning.fabric.utilities import warnings as fabric_warnings
    from lightning.pytorch.callbacks.model_summary import ModelSummary

    # Lightning replaces warnings.formatwarning at import; take it back
    warnings.formatwarning = format_warning
    fabric_warnings._default_format_warning = format_warning
    ignore_noisy_warnings()  # Lightning's import may have pushed filters in front of ours
    noise = NoiseFilter()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if noise not in handler.filters:
                handler.addFilter(noise)
    for handler in logging.getLogger().handlers:  # Lightning propagates to root when root has handlers
        handler.addFilter(noise)
    # the filter on the loggers too: records of child loggers reach handlers added later
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(noise)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("lightning.pytorch.trainer", "lightning.pytorch.accelerators")):
            logging.getLogger(name).addFilter(noise)

    if not getattr(ModelSummary.on_fit_start, "_lit_recipes_once", False):
        original = ModelSummary.on_fit_start

        def on_fit_start(self, trainer, pl_module) -> None:
            key = (type(pl_module).__qualname__, getattr(pl_module, "model_name", None))
            key += (sum(p.numel() for p in pl_module.parameters()),)
            if key in _state["summaries"]:
                return
            _state["summaries"].add(key)
            original(self, trainer, pl_module)

        on_fit_start._lit_recipes_once = True
        ModelSummary.on_fit_start = on_fit_start


def is_verbose() -> bool:
    return os.environ.get("LIT_RECIPES_VERBOSE", "").strip() not in ("", "0") or "--verbose" in sys.argv


__all__ = ["NOISY_WARNINGS", "NoiseFilter", "format_warning", "install", "is_verbose"]
