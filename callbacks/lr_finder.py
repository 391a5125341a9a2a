"""``LRRangeTest``: Leslie Smith's learning-rate range test as a callback that leaves no trace.

The sweep runs inside the callback (manual steps on the real optimizer, never through the fit
loop), so the model, optimizer, schedulers, loop counters and RNG streams are exactly as before it
when training starts; the suggestion is then written to ``pl_module.lr`` and the optimizer and
scheduler are rebuilt from it (a 1cycle schedule built before the sweep can not overwrite it).

It closes three gaps of Lightning's ``Tuner.lr_find``:

* under DDP the loss of every step is averaged across ranks, so every rank sees the same curve,
  stops at the same step and applies the same LR (Lightning-AI/pytorch-lightning#19611, #19912);
* it works at any epoch, not only before the first step (#4846: there the best loss starts at 0);
* the schedulers are rebuilt after the LR is applied, so a ``OneCycle``/``OneCycleLR`` peaks at the
  found LR (#16787, #10089).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from lit_recipes.artifacts import log_image, run_dir, save_figure, save_json
from lit_recipes.callbacks.lr_rules import DEFAULT_RULE, RULES, smooth_losses, suggest, suggest_index, sweep_lrs

SUGGESTIONS = RULES
"""Suggestion rules (:data:`lit_recipes.callbacks.lr_rules.RULES`; default ``knee``)."""

# keys of a parameter group / attributes of a scheduler that carry an LR (rescaled mid-training)
_GROUP_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
_SCHED_LR_LISTS = ("base_lrs", "max_lrs", "min_lrs", "_last_lr")
_MARK_STYLE = {"knee": ("tab:green", "knee"), "edge": ("tab:red", "valley edge"), "plateau": ("0.4", "plateau")}


def plot_lr_curves(curves: dict[str, dict[str, Any]], title: str = "LR range test"):
    """One figure with the smoothed loss of every result (``{label: results}``) against the LR
    (log x), the suggestion of each marked with a dot. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    finite_vals: list[float] = []
    for label, res in curves.items():
        lrs = res["lrs"]
        sm = res.get("curve") or res["smoothed"]  # the curve the rule read (log-LR smoothed for knee)
        (line,) = ax.plot(lrs, sm, label=label)
        finite_vals += [v for v in sm if math.isfinite(v)]
        for name, j in (res.get("marks") or {}).items():
            if name in _MARK_STYLE and j is not None and j < len(lrs):
                color, text = _MARK_STYLE[name]
                ax.axvline(
                    lrs[j], color=color, ls="--", lw=0.9, label=f"{text} {lrs[j]:.2g}" if len(curves) == 1 else None
                )
        if res.get("level") is not None and len(curves) == 1:
            ax.axhline(res["level"], color="tab:green", ls=":", lw=0.8, label="valley level (min + 10 % of the drop)")
        i = res.get("suggestion_index")
        if i is not None:
            lr = res.get("suggestion") or lrs[i]
            ax.plot(lr, sm[i], "o", color=line.get_color(), markersize=8, markeredgecolor="black")
            ax.annotate(f"{lr:.2g}", (lr, sm[i]), textcoords="offset points", xytext=(5, 6), fontsize=8)
    if res.get("mode", "exponential") == "exponential":
        ax.set_xscale("log")
    if finite_vals:  # keep the divergence spike from flattening the interesting part
        lo, first = min(finite_vals), max(finite_vals[:3] or finite_vals)
        ax.set_ylim(lo - 0.05 * abs(first - lo) - 1e-3, first + 0.5 * abs(first - lo) + 1e-3)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if len(curves) > 1 or any(r.get("suggestion_index") is not None for r in curves.values()):
        ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------- callback
class LRRangeTest(Callback):
    """Learning-rate range test (Smith 2015/2018): train up to ``num_steps`` steps while the LR
    grows from ``min_lr`` to ``max_lr``, suggest an LR from the loss curve, put everything back and
    apply the suggestion to ``pl_module.lr`` (the full story: ``docs/lr_range_test.md``).

    Step ``k`` sets every group's LR to ``sweep_lr[k] * group["lr_mult"]`` and trains on the next
    batch of the training loader (cycled when shorter) with ``pl_module.training_loss`` (or the mean
    of ``per_sample_loss``); under DDP the loss and gradients are averaged over ranks, so all ranks
    share one curve. The sweep stops when the EMA-smoothed loss (``beta``, bias-corrected) exceeds
    ``divergence_factor`` x its best, or on a NaN/inf loss. Then weights, buffers, gradients,
    optimizer and scheduler states, train/eval modes and RNG states are restored. At fit start the
    optimizer and schedulers are rebuilt from the new ``pl_module.lr`` (a ``OneCycle`` peaks at the
    suggestion); at a later ``epoch`` every LR the optimizer and schedule carry is rescaled instead.

    Default rule ``knee`` (:func:`lit_recipes.callbacks.lr_rules.knee_rule`): on the losses smoothed
    by a moving median over half a decade of LR, the valley's right edge (largest LR within 10 % of the
    total drop of the minimum) when the curve rises out of it, else 10 x the knee (a plateau: BN nets
    that never diverge). The older rules stay selectable; with ``minimum``, a suggestion in the last
    10 % of a sweep that never diverged is not applied unless ``on_no_divergence: apply``.

    Applying the suggestion is never silent: one info line ``range test overrides lr=0.05 with
    0.079; set update_lr: false to keep yours`` (``lit-recipes fit`` turns ``update_lr`` off itself
    when an LR is given on the command line: the LR you typed wins).

    Outputs on rank 0 in ``run_dir(trainer)``: ``lr_find.json`` (``lr_find_epoch{E}.json``) with the
    curve, every rule's suggestion, the marks the rule used, stop reason and wall time; the PNG curve
    with the knee/valley edge/plateau marked (W&B: ``lr_find/curve``, ``lr_find/suggestion``).
    ``self.results`` holds the same.

    Args:
        min_lr: first LR of the sweep.
        max_lr: last LR of the sweep (reached only if the loss has not diverged by then).
        num_steps: number of steps (at least 10).
        mode: ``"exponential"`` (geometric spacing) or ``"linear"``.
        suggestion: the rule whose LR is applied, one of :data:`SUGGESTIONS` (default ``knee``).
        divergence_factor: stop once the smoothed loss exceeds this times the best smoothed loss
            (``None``: run all ``num_steps``).
        beta: smoothing factor of the loss average.
        epoch: ``None`` runs the test at fit start (before the sanity check); an integer runs it
            at the start of that training epoch (re-running mid-training).
        update_lr: apply the suggestion (``False``: only record and plot it).
        skip_begin: points skipped at the start by the ``steepest``/``lightning`` rules.
        skip_end: points skipped at the end by the ``steepest``/``lightning`` rules.
        plot: write and log the PNG curve.
        on_no_divergence: what to do when the rule flags its suggestion as a fallback case (``minimum``:
            in the last 10 % of a sweep that never diverged): ``"keep"`` the module's LR (default;
            ``results["applied"]`` is then False) or ``"apply"`` it anyway.

    In YAML (``lit-recipes fit``)::

        trainer:
          callbacks:
            - class_path: lit_recipes.callbacks.LRRangeTest
              init_args: {min_lr: 1.0e-5, max_lr: 10, num_steps: 100}

    Raises:
        ValueError: ``min_lr >= max_lr``, ``num_steps < 10``, an unknown ``mode``/``suggestion``,
            a module without an ``lr`` attribute, or more than one optimizer.
    """

    def __init__(
        self,
        min_lr: float = 1e-7,
        max_lr: float = 10.0,
        num_steps: int = 100,
        mode: Literal["exponential", "linear"] = "exponential",
        suggestion: Literal["knee", "minimum", "valley", "steepest", "minimum_div_10", "lightning"] = DEFAULT_RULE,
        divergence_factor: float | None = 4.0,
        beta: float = 0.98,
        epoch: int | None = None,
        update_lr: bool = True,
        skip_begin: int = 10,
        skip_end: int = 1,
        plot: bool = True,
        on_no_divergence: Literal["keep", "apply"] = "keep",
    ) -> None:
        super().__init__()
        if on_no_divergence not in ("keep", "apply"):
            raise ValueError(f"LRRangeTest: on_no_divergence must be 'keep' or 'apply', got {on_no_divergence!r}")
        self.on_no_divergence = on_no_divergence
        if not (math.isfinite(min_lr) and min_lr > 0):
            raise ValueError(f"LRRangeTest: min_lr must be a positive number, got {min_lr}")
        if not (math.isfinite(max_lr) and max_lr > min_lr):
            raise ValueError(f"LRRangeTest: need min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
        if int(num_steps) != num_steps or num_steps < 10:
            raise ValueError(f"LRRangeTest: num_steps must be an integer >= 10, got {num_steps}")
        if mode not in ("exponential", "linear"):
            raise ValueError(f"LRRangeTest: mode must be 'exponential' or 'linear', got {mode!r}")
        if suggestion not in SUGGESTIONS:
            raise ValueError(f"LRRangeTest: suggestion must be one of {', '.join(SUGGESTIONS)}, got {suggestion!r}")
        if divergence_factor is not None and not divergence_factor > 1:
            raise ValueError(f"LRRangeTest: divergence_factor must be > 1 or null, got {divergence_factor}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"LRRangeTest: beta must be in [0, 1), got {beta}")
        if epoch is not None and epoch < 0:
            raise ValueError(f"LRRangeTest: epoch must be >= 0 or null, got {epoch}")
        if skip_begin < 0 or skip_end < 0:
            raise ValueError(f"LRRangeTest: skip_begin/skip_end must be >= 0, got {skip_begin}, {skip_end}")
        self.min_lr = float(min_lr)
        self.max_lr = float(max_lr)
        self.num_steps = int(num_steps)
        self.mode = mode
        self.suggestion = suggestion
        self.divergence_factor = divergence_factor
        self.beta = beta
        self.epoch = epoch
        self.update_lr = update_lr
        self.skip_begin = skip_begin
        self.skip_end = skip_end
        self.plot = plot
        self.results: dict[str, Any] = {}
        self.suggested_lr: float | None = None
        self._done: list[str] = []  # "fit_start" / "epoch{E}": sweeps already run (survives resume)

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"done": list(self._done), "suggested_lr": self.suggested_lr}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._done = list(state_dict.get("done", []))
        self.suggested_lr = state_dict.get("suggested_lr")

    def lr_at(self, step: int) -> float:
        """The sweep's LR at step ``step`` (override to test another spacing)."""
        return sweep_lrs(self.min_lr, self.max_lr, self.num_steps, self.mode)[step]

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        lr = getattr(pl_module, "lr", None)
        if not isinstance(lr, int | float) or isinstance(lr, bool):
            raise ValueError(
                f"LRRangeTest: {type(pl_module).__name__} has no numeric `lr` attribute to apply the suggestion to"
            )

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.epoch is not None:
            return
        if "fit_start" in self._done:  # resumed: the optimizer/scheduler come from the checkpoint
            if self.update_lr and self.suggested_lr is not None:
                pl_module.lr = self.suggested_lr
            return
        trainer.fit_loop.setup_data()
        self._run(trainer, pl_module, "fit_start")

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        key = f"epoch{self.epoch}"
        if self.epoch is None or trainer.current_epoch != self.epoch or key in self._done:
            return
        self._run(trainer, pl_module, key)

    # ------------------------------------------------------------------ the sweep
    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, key: str) -> None:
        if trainer.fast_dev_run:
            rank_zero_warn("LRRangeTest: skipped because fast_dev_run is on")
            return
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"LRRangeTest: needs exactly one optimizer, the module configures {len(trainer.optimizers)}"
            )
        loader = trainer.train_dataloader
        if loader is None or isinstance(loader, dict | list | tuple):
            raise ValueError("LRRangeTest: needs a single training DataLoader")
        start = time.perf_counter()
        with isolate_rng():
            curve = self._sweep(trainer, pl_module, loader)
        curve["elapsed_s"] = time.perf_counter() - start
        self._finish(trainer, pl_module, key, curve)

    def _batches(self, loader) -> Iterator[Any]:
        try:
            n = len(loader)
        except TypeError:
            n = None
        if n is not None and n < self.num_steps:
            rank_zero_info(f"LRRangeTest: {self.num_steps} steps but the training loader has {n} batches; cycling it")
        while True:
            empty = True
            for batch in loader:
                empty = False
                yield batch
            if empty:
                raise ValueError("LRRangeTest: the training loader is empty")

    def _loss(self, pl_module: L.LightningModule, batch: Any) -> torch.Tensor:
        if hasattr(pl_module, "training_loss"):
            return pl_module.training_loss(batch)[0]
        if hasattr(pl_module, "per_sample_loss"):
            return pl_module.per_sample_loss(batch).mean()
        raise ValueError(
            f"LRRangeTest: {type(pl_module).__name__} needs a training_loss(batch) or per_sample_loss(batch) method"
        )

    def _sweep(self, trainer: L.Trainer, pl_module: L.LightningModule, loader) -> dict[str, Any]:
        strategy = trainer.strategy
        optimizer = trainer.optimizers[0]
        params = [p for p in pl_module.parameters() if p.requires_grad]
        snapshot = _Snapshot(pl_module, optimizer, trainer.lr_scheduler_configs)
        lrs: list[float] = []
        raw: list[float] = []
        smoothed: list[float] = []
        avg, best = 0.0, math.inf
        stop_reason = "completed"
        world = trainer.world_size
        try:
            pl_module.train()
            batches = self._batches(loader)
            with torch.enable_grad():
                for k in range(self.num_steps):
                    lr = self.lr_at(k)
                    for group in optimizer.param_groups:
                        group["lr"] = lr * group.get("lr_mult", 1.0)
                    batch = strategy.batch_to_device(next(batches))
                    optimizer.zero_grad(set_to_none=True)
                    with trainer.precision_plugin.train_step_context():
                        loss = self._loss(pl_module, batch)
                    loss.backward()
                    if world > 1:
                        _average_gradients(strategy, params)
                    if trainer.gradient_clip_val:
                        pl_module.configure_gradient_clipping(
                            optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm
                        )
                    value = float(strategy.reduce(loss.detach().float(), reduce_op="mean"))
                    lrs.append(lr)
                    raw.append(value)
                    if not math.isfinite(value):
                        smoothed.append(float("nan"))
                        stop_reason = f"non-finite loss at step {k} (lr {lr:.3g})"
                        break
                    optimizer.step()
                    avg = self.beta * avg + (1 - self.beta) * value
                    s = avg / (1 - self.beta ** (k + 1))
                    smoothed.append(s)
                    diverged = self.divergence_factor is not None and k > 0 and s > self.divergence_factor * best
                    best = min(best, s)
                    # identical on every rank (the curve is all-reduced); the vote makes it certain
                    if strategy.reduce_boolean_decision(bool(diverged), all=False):
                        stop_reason = f"diverged at step {k} (lr {lr:.3g}): smoothed loss {s:.4g} > {self.divergence_factor} x best {best:.4g}"
                        break
        finally:
            snapshot.restore()
        return {"lrs": lrs, "losses": raw, "smoothed": smoothed, "stop_reason": stop_reason, "steps": len(lrs)}

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, key: str, curve: dict[str, Any]) -> None:
        lrs, raw, sm = curve["lrs"], curve["losses"], curve["smoothed"]
        diverged = curve["stop_reason"] != "completed"
        opts = {"diverged": diverged, "beta": self.beta, "skip_begin": self.skip_begin, "skip_end": self.skip_end}
        every = {rule: suggest(lrs, raw, rule, **opts) for rule in RULES}
        chosen = every[self.suggestion]
        lr = chosen.lr
        finite = [v for v in sm if math.isfinite(v)]
        self.results = {
            **curve,
            "mode": self.mode,
            "min_lr": self.min_lr,
            "max_lr": self.max_lr,
            "num_steps": self.num_steps,
            "beta": self.beta,
            "rule": self.suggestion,
            "suggestion": lr,
            "suggestion_index": chosen.index,
            "reason": chosen.reason,
            "fallback": chosen.fallback,
            "marks": chosen.marks,
            "level": chosen.level,
            "curve": chosen.curve,
            "suggestions": {rule: res.lr for rule, res in every.items()},
            "min_loss": min(finite) if finite else None,
            "lr_before": float(pl_module.lr),
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            "applied": False,
        }
        self._done.append(key)
        old = float(pl_module.lr)
        if lr is None:
            rank_zero_warn(
                f"LRRangeTest: no suggestion ({curve['stop_reason']} after {curve['steps']} steps; {chosen.reason}) "
                f"— keeping lr={old:g}. Lower min_lr or check the data/model."
            )
        else:
            rank_zero_info(
                f"LRRangeTest: suggested lr {lr:.4g} ({self.suggestion}: {chosen.reason}) after {curve['steps']} "
                f"steps, {curve['stop_reason']}; {curve['elapsed_s']:.1f}s"
            )
            reject = chosen.fallback and self.on_no_divergence == "keep"
            if chosen.fallback:
                rank_zero_warn(
                    f"LRRangeTest: the suggestion {lr:.3g} is at the end of a sweep that never diverged (the lowest "
                    "loss is then where the model trained longest, not a good peak LR); "
                    + (f"keeping lr={old:g}. " if reject else "applying it anyway (on_no_divergence: apply). ")
                    + "The default rule `knee` handles such curves"
                )
            self.suggested_lr = lr
            if self.update_lr and not reject:
                if not math.isclose(lr, old, rel_tol=1e-9):  # never replace the configured LR silently
                    rank_zero_info(
                        f"LRRangeTest: range test overrides lr={old:g} with {lr:.3g}; set update_lr: false to keep yours"
                    )
                self._apply(trainer, pl_module, lr, key == "fit_start")
                self.results["applied"] = True
        self._save(trainer, key)

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule, lr: float, at_fit_start: bool) -> None:
        old = float(pl_module.lr)
        pl_module.lr = lr
        if at_fit_start:
            trainer.strategy.setup_optimizers(trainer)
            return
        factor = lr / old
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                for k in _GROUP_LR_KEYS:
                    if isinstance(group.get(k), int | float):
                        group[k] *= factor
        for cfg in trainer.lr_scheduler_configs:
            sched = cfg.scheduler
            for attr in _SCHED_LR_LISTS:
                if isinstance(getattr(sched, attr, None), list):
                    setattr(sched, attr, [v * factor for v in getattr(sched, attr)])
            if isinstance(getattr(sched, "eta_min", None), int | float):
                sched.eta_min *= factor

    def _save(self, trainer: L.Trainer, key: str) -> None:
        if not trainer.is_global_zero:
            return
        stem = "lr_find" if key == "fit_start" else f"lr_find_{key}"
        out = run_dir(trainer)
        save_json(out / f"{stem}.json", self.results)
        for logger in trainer.loggers:
            metrics = {"lr_find/steps": float(self.results["steps"])}
            if self.results["suggestion"] is not None:
                metrics["lr_find/suggestion"] = float(self.results["suggestion"])
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.plot:
            title = f"LR range test ({self.suggestion}: {_fmt(self.results['suggestion'])})"
            label = "loss smoothed in log-LR" if self.suggestion == "knee" else "smoothed loss (EMA)"
            fig = plot_lr_curves({label: self.results}, title=title)
            ax = fig.axes[0]
            ax.plot(self.results["lrs"], self.results["losses"], color="0.7", lw=0.8, zorder=0, label="raw loss")
            ax.legend(fontsize=8)
            path = save_figure(fig, out / f"{stem}.png")
            log_image(trainer, "lr_find/curve", path)


def _fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.3g}"


def _average_gradients(strategy, params: list[torch.nn.Parameter]) -> None:
    """All-reduce (mean) every gradient in one flat tensor; missing grads count as zeros."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = strategy.reduce(torch.cat([g.reshape(-1) for g in grads]), reduce_op="mean")
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


class _Snapshot:
    """Everything the sweep may change, copied before and put back after."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler_configs) -> None:
        self.module = module
        self.tensors = {
            **{f"p:{n}": p.detach().clone() for n, p in module.named_parameters()},
            **{f"b:{n}": b.detach().clone() for n, b in module.named_buffers() if b is not None},
        }
        self.grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in module.named_parameters()}
        self.modes = {m: m.training for m in module.modules()}
        self.optimizer = optimizer
        self.opt_state = copy.deepcopy(optimizer.state_dict())
        self.schedulers = [(c.scheduler, copy.deepcopy(c.scheduler.state_dict())) for c in scheduler_configs]

    @torch.no_grad()
    def restore(self) -> None:
        for n, p in self.module.named_parameters():
            p.copy_(self.tensors[f"p:{n}"])
            saved = self.grads[n]
            p.grad = None if saved is None else saved.clone()
        for n, b in self.module.named_buffers():
            if b is not None:
                b.copy_(self.tensors[f"b:{n}"])
        for m, mode in self.modes.items():
            m.training = mode
        self.optimizer.load_state_dict(self.opt_state)
        for sched, state in self.schedulers:
            sched.load_state_dict(state)


__all__ = ["LRRangeTest", "SUGGESTIONS", "plot_lr_curves", "smooth_losses", "suggest", "suggest_index", "sweep_lrs"]
