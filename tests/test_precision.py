"""Precision and memory options from the CLI: bf16-mixed, channels_last, torch.compile, accumulation, clipping."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_recipes.commands.fit import build_cli
from lit_recipes.module import ClassifierModule

CONFIG = "lit_recipes/configs/digits_lenet.yaml"


def quiet(tmp_path, *extra):
    return [
        "--config", CONFIG, "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.enable_checkpointing=false", "--test_after_fit=false", "--trainer.callbacks=[]",
        "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}", *extra,
    ]  # fmt: skip


class Probe(Callback):
    """Records, inside the training step itself (no autocast of its own), the dtype of every conv/linear
    activation and of the gradient flowing back into it, and the gradient norm before and after clipping."""

    def __init__(self):
        self.act_dtypes, self.grad_dtypes, self.param_grad_dtypes = set(), set(), set()
        self.opt_steps, self.pre_clip, self.post_clip = 0, [], []

    @staticmethod
    def _norm(pl_module) -> float:
        return float(
            torch.cat([p.grad.detach().flatten() for p in pl_module.parameters() if p.grad is not None]).norm()
        )

    def on_fit_start(self, trainer, pl_module):
        def hook(module, inputs, output):
            if module.training and torch.is_grad_enabled():  # training steps only
                self.act_dtypes.add(output.dtype)
                if output.requires_grad:
                    output.register_hook(lambda g: self.grad_dtypes.add(g.dtype))

        for m in pl_module.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
                m.register_forward_hook(hook)
        # Lightning runs the closure (step, backward, this callback's hook, clipping) inside optimizer.step();
        # right after it the .grad tensors are still the clipped ones the update used (SGD does not modify them)
        for opt in trainer.optimizers:
            opt.register_step_post_hook(lambda *_: self.post_clip.append(self._norm(pl_module)))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        # Lightning calls this hook before it clips (Precision._after_closure -> _clip_gradients)
        self.opt_steps += 1
        self.pre_clip.append(self._norm(pl_module))
        self.param_grad_dtypes |= {p.grad.dtype for p in pl_module.parameters() if p.grad is not None}


def test_bf16_mixed_on_cpu_trains(tmp_path):
    probe = Probe()
    cli = build_cli(quiet(tmp_path, "--trainer.precision=bf16-mixed", "--trainer.max_epochs=3"))
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert probe.act_dtypes == {torch.bfloat16}  # every conv/linear ran in bf16 inside the step
    assert probe.grad_dtypes == {torch.bfloat16}  # and the backward pass through them too
    assert probe.param_grad_dtypes == {torch.float32}  # master weights and their gradients stay fp32
    assert all(p.dtype == torch.float32 for p in cli.model.parameters())
    assert cli.trainer.callback_metrics["val/acc"] > 0.8


def test_16_mixed_on_cpu_falls_back_to_bf16_with_a_warning(tmp_path):
    """fp16 AMP needs a GPU: Lightning turns `--trainer.precision=16-mixed` on a CPU into bf16-mixed and says so."""
    with pytest.warns(UserWarning, match="AMP with fp16 is not supported on CPU"):
        cli = build_cli(quiet(tmp_path, "--trainer.precision=16-mixed", "--trainer.max_epochs=1"))
    assert cli.trainer.precision == "bf16-mixed"


@pytest.mark.gpu
def test_16_mixed_on_gpu_scales_the_loss(tmp_path):
    args = [
        a for a in quiet(tmp_path, "--trainer.precision=16-mixed", "--trainer.max_epochs=2") if "accelerator" not in a
    ]
    cli = build_cli([*args, "--trainer.accelerator=cuda"])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    scaler = cli.trainer.precision_plugin.scaler
    assert scaler is not None and scaler.get_scale() > 0
    assert all(p.dtype == torch.float32 for p in cli.model.parameters())
    assert cli.trainer.callback_metrics["val/acc"] > 0.8


def test_channels_last_model_and_inputs(tmp_path, trainer_kwargs, digits_dm):
    model = ClassifierModule("cifar_resnet20", num_classes=10, in_channels=1, lr=0.05, channels_last=True)
    seen = []

    class FormatProbe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            conv = next(m for m in pl_module.modules() if isinstance(m, torch.nn.Conv2d))
            seen.append(conv.weight.is_contiguous(memory_format=torch.channels_last))

    trainer = L.Trainer(
        **{**trainer_kwargs, "limit_train_batches": 2, "limit_val_batches": 1}, callbacks=[FormatProbe()]
    )
    trainer.fit(model, datamodule=digits_dm)
    assert seen and all(seen)
    x = torch.randn(2, 1, 8, 8)
    ref = ClassifierModule("cifar_resnet20", num_classes=10, in_channels=1).eval()
    ref.model.load_state_dict(model.model.state_dict())
    assert torch.allclose(model.eval()(x), ref(x), atol=1e-5)


def test_gradient_accumulation_and_clipping(tmp_path):
    probe = Probe()
    cli = build_cli(
        quiet(
            tmp_path, "--trainer.accumulate_grad_batches=4", "--trainer.gradient_clip_val=0.01", "--trainer.max_epochs=1", "--trainer.limit_train_batches=8",
        )
    )  # fmt: skip
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 2 and probe.opt_steps == 2  # 8 batches / 4
    assert len(probe.pre_clip) == len(probe.post_clip) == 2
    assert min(probe.pre_clip) > 0.1  # the accumulated gradient is far above the limit ...
    assert max(probe.post_clip) <= 0.01 * (1 + 1e-4)  # ... and the optimizer stepped with the clipped one
    assert max(probe.post_clip) >= 0.01 * (1 - 1e-4)  # norm clipping scales it down to the limit, not to zero


def test_clipping_bounds_the_update(trainer_kwargs, digits_dm):
    probe = Probe()
    model = ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=0.05)
    trainer = L.Trainer(
        **{**trainer_kwargs, "limit_train_batches": 3, "limit_val_batches": 0},
        gradient_clip_val=0.05, gradient_clip_algorithm="norm", callbacks=[probe],
    )  # fmt: skip
    trainer.fit(model, datamodule=digits_dm)
    assert len(probe.pre_clip) == len(probe.post_clip) == 3
    for before, after in zip(probe.pre_clip, probe.post_clip):
        assert before > 0.05 and after == pytest.approx(0.05, rel=1e-4)


@pytest.mark.slow
def test_torch_compile_on_cpu_matches_eager(trainer_kwargs, digits_dm):
    L.seed_everything(0)
    eager = ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=0.05)
    compiled = ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=0.05, compile=True)
    compiled.model.load_state_dict(eager.model.state_dict())
    trainer = L.Trainer(**{**trainer_kwargs, "limit_train_batches": 2, "limit_val_batches": 1})
    trainer.fit(compiled, datamodule=digits_dm)
    assert compiled._compiled is not None
    # the compiled wrapper is not saved: checkpoints of a compiled run load into an eager model and back
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    x = torch.randn(4, 1, 8, 8)
    eager.model.load_state_dict(compiled.model.state_dict())
    assert torch.allclose(compiled.eval()(x), eager.eval()(x), atol=1e-4)
