"""A true resume point: ``last.ckpt`` at the end of every epoch, with the random-number state.

Lightning 2.6's ``ModelCheckpoint(save_last=True)`` copies ``last.ckpt`` only when it saves a
top-k checkpoint (``on_validation_end``/``on_train_epoch_end`` call ``_save_last_checkpoint`` only
if ``_last_global_step_saved == trainer.global_step``), so with ``monitor="val/acc", save_top_k=1``
the "last" checkpoint is the last *improvement*. :class:`LastCheckpoint` writes it at the end of
every training epoch as well (after validation when the epoch validates), apart from the best one.

Lightning does not store the random-number generators in a checkpoint, so a resumed run shuffles
its data and draws its dropout masks from whatever state the new process has. :class:`LastCheckpoint`
stores torch's (CPU and CUDA), NumPy's and Python's generator states in its own state (plain
tensors, ints and floats: the file loads with ``torch.load(..., weights_only=True)``) and puts them
back when a fit resumes from the file, before the training data loader draws its first permutation.

An interrupted run (Ctrl-C, SIGTERM) resumes from the last finished epoch: the epoch in flight is
redone, so the result is the same as without the interruption. On an interruption no checkpoint is
written (Lightning would resume a mid-epoch one without replaying the interrupted epoch's data
order); ``ModelCheckpoint``'s own mid-epoch saves (``val_check_interval`` < 1,
``every_n_train_steps``) still happen when configured, and resume without that guarantee.
The states are rank 0's (the process that writes the file); under DDP the other ranks' generators
are not stored.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_recipes.lightning_compat import epoch_batches_done

RNG_KEY = "lit_recipes_rng"


def rng_state() -> dict[str, Any]:
    """The process's generator states as tensors, ints and floats only (safe to ``torch.load``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": None if py_gauss is None else float(py_gauss),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` stored."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]), float(n["gauss"]))
    )
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


class LastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is written at the end of every training epoch
    (not only when a top-k checkpoint is saved) and carries the generator states, so that
    ``fit --ckpt_path <run>/checkpoints/last.ckpt`` continues from the last epoch exactly.

    Same arguments as ``ModelCheckpoint``; its state key is ``ModelCheckpoint``'s, so checkpoints
    written with the plain callback keep their best-checkpoint tracking when resumed."""

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._ensure_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        # where ModelCheckpoint saves after validation (check_val_every_n_epoch > 1, ...) and this is
        # the validation at the end of the epoch (not a mid-epoch val_check_interval): the resume point
        if not self._should_save_on_train_epoch_end(trainer) and epoch_batches_done(trainer):
            self._ensure_last(trainer)

    def _ensure_last(self, trainer) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        if (
            not self.save_last
            or trainer.fast_dev_run
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step  # saved at this step already
        ):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), RNG_KEY: rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop(RNG_KEY, None)
        super().load_state_dict(state_dict)
        if rng is not None:
            # called while the trainer restores the checkpoint, before the sanity check (which
            # Lightning runs under isolate_rng) and before the training loader draws its order
            set_rng_state(rng)


__all__ = ["RNG_KEY", "LastCheckpoint", "rng_state", "set_rng_state"]
