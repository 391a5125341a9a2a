"""ClassifierModule: optimizers and schedulers from YAML, init schemes, options, fine-tuning, subclassing."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, StochasticWeightAveraging
from torch import nn

from lit_recipes.commands.fit import build_cli
from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.models.init import init_weights
from lit_recipes.module import ClassifierModule

CONFIG = "lit_recipes/configs/digits_lenet.yaml"
QUIET = [
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=1",
    "--test_after_fit=false",
    "--trainer.callbacks=[]",  # no range test / gap monitor: these tests check the optimizer itself
]


class LRRecorder(Callback):
    def __init__(self):
        self.lrs, self.momenta = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        group = trainer.optimizers[0].param_groups[0]
        self.lrs.append(group["lr"])
        self.momenta.append(group.get("momentum", group.get("betas", (None,))[0]))


OPTIMIZERS = {
    "sgd_momentum": "{class_path: torch.optim.SGD, init_args: {lr: 0.1, momentum: 0.9}}",
    "sgd_nesterov": "{class_path: torch.optim.SGD, init_args: {lr: 0.1, momentum: 0.9, nesterov: true}}",
    "adam": "{class_path: torch.optim.Adam, init_args: {lr: 0.001}}",
    "adamw": "{class_path: torch.optim.AdamW, init_args: {lr: 0.001, weight_decay: 0.01}}",
    "nadam": "{class_path: torch.optim.NAdam}",
    "rmsprop": "{class_path: torch.optim.RMSprop}",
    "adagrad": "{class_path: torch.optim.Adagrad}",
    "asgd": "{class_path: torch.optim.ASGD}",
    "lbfgs": "{class_path: torch.optim.LBFGS, init_args: {max_iter: 2}}",
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_from_yaml_trains(name, tmp_path):
    lr = "0.5" if name == "lbfgs" else "0.01"
    cli = build_cli(
        [
            "--config",
            CONFIG,
            *QUIET,
            f"--trainer.default_root_dir={tmp_path}",
            f"--model.init_args.optimizer={OPTIMIZERS[name]}",
            "--model.init_args.lr_scheduler=null",
            f"--model.init_args.lr={lr}",
        ]
    )
    before = [p.detach().clone() for p in cli.model.parameters()]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    opt = cli.trainer.optimizers[0]
    assert type(opt).__name__.lower() == name.split("_")[0]
    assert all(math.isclose(g["lr"], float(lr) * g.get("lr_mult", 1.0)) for g in opt.param_groups)
    loss = cli.trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, cli.model.parameters()))


SCHEDULERS = {
    "StepLR": ("{class_path: torch.optim.lr_scheduler.StepLR, init_args: {step_size: 1, gamma: 0.5}}", "epoch"),
    "MultiStepLR": (
        "{class_path: torch.optim.lr_scheduler.MultiStepLR, init_args: {milestones: [1], gamma: 0.1}}",
        "epoch",
    ),
    "MultiplicativeLR": (
        "{class_path: torch.optim.lr_scheduler.MultiplicativeLR, init_args: {lr_lambda: null}}",
        "skip",
    ),
    "ExponentialLR": ("{class_path: torch.optim.lr_scheduler.ExponentialLR, init_args: {gamma: 0.5}}", "epoch"),
    "CosineAnnealingLR": ("{class_path: torch.optim.lr_scheduler.CosineAnnealingLR, init_args: {T_max: 2}}", "epoch"),
    "CosineAnnealingWarmRestarts": (
        "{class_path: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts, init_args: {T_0: 3}}",
        "epoch",
    ),
    "ReduceLROnPlateau": (
        "{class_path: torch.optim.lr_scheduler.ReduceLROnPlateau, init_args: {patience: 0, factor: 0.5, threshold: 10.0}}",
        "plateau",
    ),
    "CyclicLR": (
        "{class_path: torch.optim.lr_scheduler.CyclicLR, init_args: {base_lr: 0.01, max_lr: 0.1, step_size_up: 2}}",
        "step",
    ),
    "OneCycleLR": ("{class_path: torch.optim.lr_scheduler.OneCycleLR, init_args: {max_lr: 0.1}}", "step"),
    "OneCycle": ("{class_path: lit_recipes.schedules.OneCycle}", "step"),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_from_yaml(name, tmp_path):
    spec, kind = SCHEDULERS[name]
    if name == "MultiplicativeLR":
        # a lambda cannot be written in YAML; the class is injected the way the CLI does it
        spec = "{class_path: torch.optim.lr_scheduler.MultiplicativeLR, init_args: {lr_lambda: lit_recipes.schedules.halve}}"
        kind = "epoch"
    rec = LRRecorder()
    cli = build_cli(
        ["--config", CONFIG, *QUIET, f"--trainer.default_root_dir={tmp_path}", f"--model.init_args.lr_scheduler={spec}"]
    )
    cli.trainer.callbacks.append(rec)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    config = cli.trainer.lr_scheduler_configs[0]
    assert type(config.scheduler).__name__ == name
    lrs = rec.lrs
    assert len(lrs) == 8
    if kind == "step":
        assert config.interval == "step"
        assert len(set(round(x, 10) for x in lrs[:4])) > 1  # changes within an epoch
    elif kind == "plateau":
        assert config.monitor == "val/loss"
        assert lrs[4] == pytest.approx(lrs[0] * 0.5)  # threshold 10 => never "improves" => halved
    else:
        assert config.interval == "epoch"
        assert len(set(lrs[:4])) == 1 and lrs[4] != lrs[0]


def test_onecycle_peak_follows_current_lr(tmp_path):
    rec = LRRecorder()
    cli = build_cli(["--config", CONFIG, *QUIET, f"--trainer.default_root_dir={tmp_path}", "--model.init_args.lr=0.3"])
    cli.model.lr = 0.7  # e.g. set by an LR range test after the module was built
    cli.trainer.callbacks.append(rec)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert max(rec.lrs) == pytest.approx(0.7, rel=1e-6)
    assert rec.lrs[0] == pytest.approx(0.07, rel=1e-6)
    assert rec.momenta[0] == pytest.approx(0.95) and min(rec.momenta) < 0.95


def test_stochastic_weight_averaging_runs(trainer_kwargs, digits_dm):
    """After SWA the module holds the mean of the weights SWA took in (one snapshot per averaged epoch)."""
    model = ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=0.05)
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1)
    snapshots = []
    average = swa.update_parameters  # Lightning's own averaging step: record what it is given

    def recording_update(average_model, model, n_averaged, avg_fn):
        snapshots.append([p.detach().clone() for p in model.parameters()])
        return average(average_model, model, n_averaged, avg_fn)

    swa.update_parameters = recording_update
    trainer = L.Trainer(**{**trainer_kwargs, "max_epochs": 4, "limit_train_batches": 5}, callbacks=[swa])
    trainer.fit(model, datamodule=digits_dm)
    assert int(swa.n_averaged) == len(snapshots) >= 2
    final = [p.detach() for p in model.parameters()]
    for i, p in enumerate(final):
        mean = torch.stack([snap[i] for snap in snapshots]).mean(0)
        assert torch.allclose(p, mean, atol=1e-6)
    assert any(not torch.allclose(p, snapshots[-1][i], atol=1e-4) for i, p in enumerate(final))  # not the last


@pytest.mark.parametrize(
    "scheme,check",
    [
        ("kaiming_normal", lambda w, fan_in, fan_out: w.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)),
        ("kaiming_uniform", lambda w, fan_in, fan_out: w.abs().max().item() <= math.sqrt(6 / fan_out) + 1e-6),
        (
            "xavier_normal",
            lambda w, fan_in, fan_out: w.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.1),
        ),
        ("xavier_uniform", lambda w, fan_in, fan_out: w.abs().max().item() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-6),
        (
            "orthogonal",
            lambda w, fan_in, fan_out: torch.allclose(
                w.view(w.shape[0], -1) @ w.view(w.shape[0], -1).T, torch.eye(w.shape[0]), atol=1e-4
            ),
        ),
        (
            "sparse",
            lambda w, fan_in, fan_out: (
                (w.view(w.shape[0], -1) == 0).float().mean().item() == pytest.approx(0.1, abs=0.03)
            ),
        ),
    ],
)
def test_init_schemes_statistics(scheme, check):
    net = nn.Sequential(nn.Conv2d(16, 64, 3), nn.BatchNorm2d(64), nn.Flatten(), nn.Linear(64, 32))
    with torch.no_grad():
        net[1].weight.fill_(3.0)
        net[1].bias.fill_(2.0)
    init_weights(net, scheme)
    conv = net[0].weight
    assert check(conv, 16 * 9, 64 * 9)
    assert torch.all(net[0].bias == 0)
    assert torch.all(net[1].weight == 1) and torch.all(net[1].bias == 0)


def test_init_default_leaves_weights_and_unknown_scheme_errors():
    net = nn.Linear(4, 4)
    w = net.weight.detach().clone()
    init_weights(net, "default")
    assert torch.equal(w, net.weight)
    with pytest.raises(ValueError, match="unknown init scheme 'he'"):
        init_weights(net, "he")


def test_no_weight_decay_on_norm_and_bias_and_head_lr_mult():
    module = ClassifierModule("lenet5_bn", num_classes=10, in_channels=1, lr=0.1, head_lr_mult=10.0)
    groups = {g["name"]: g for g in module.parameter_groups()}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    for name, g in groups.items():
        assert all(p.ndim <= 1 for p in g["params"]) == name.endswith("no_decay")
        assert g.get("weight_decay", None) == (0.0 if name.endswith("no_decay") else None)
        assert g["lr_mult"] == (10.0 if name.startswith("head") else 1.0)
    head = {id(p) for p in module.model.classifier.parameters()}
    assert {id(p) for g in ("head", "head_no_decay") for p in groups[g]["params"]} == head


def test_scheduler_arguments_are_filled_from_the_optimizer_and_the_trainer():
    """lit_recipes.optimization on constructed inputs: no Trainer, a stand-in with the two attributes read."""
    from functools import partial
    from types import SimpleNamespace

    from lit_recipes.optimization import build_optimizer, build_scheduler, scheduler_config

    net = nn.Linear(3, 2)
    opt = build_optimizer(lambda p: torch.optim.SGD(p, lr=1.0), 0.2, net, lambda: [{"params": net.parameters()}])
    assert [g["lr"] for g in opt.param_groups] == [0.2] and opt.param_groups[0]["initial_lr"] == 0.2
    trainer = SimpleNamespace(estimated_stepping_batches=7, max_epochs=-1)
    one_cycle = build_scheduler(partial(torch.optim.lr_scheduler.OneCycleLR), opt, trainer)
    assert (one_cycle.total_steps, opt.param_groups[0]["max_lr"]) == (7, 0.2)
    assert scheduler_config(one_cycle)["interval"] == "step"
    cosine = build_scheduler(torch.optim.lr_scheduler.CosineAnnealingLR, opt, trainer)
    assert cosine.T_max == 1 and scheduler_config(cosine)["interval"] == "epoch"
    given = build_scheduler(partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4), opt, None)
    assert given.T_max == 4
    with pytest.raises(RuntimeError, match="OneCycleLR: total_steps comes from the Trainer"):
        build_scheduler(partial(torch.optim.lr_scheduler.OneCycleLR), opt, None)
    plateau = scheduler_config(torch.optim.lr_scheduler.ReduceLROnPlateau(opt))
    assert (plateau["monitor"], plateau["interval"]) == ("val/loss", "epoch")


def test_mixup_label_smoothing_dropout_class_weights_train(trainer_kwargs, digits_dm):
    model = ClassifierModule(
        "lenet5",
        num_classes=10,
        in_channels=1,
        lr=0.05,
        mixup_alpha=0.4,
        label_smoothing=0.1,
        dropout=0.3,
        class_weights="balanced",
    )
    trainer = L.Trainer(**{**trainer_kwargs, "limit_train_batches": 3, "limit_val_batches": 1})
    trainer.fit(model, datamodule=digits_dm)
    assert isinstance(model.model.head_drop, nn.Dropout) and model.model.head_drop.p == 0.3
    counts = torch.as_tensor(digits_dm.class_counts(), dtype=torch.float32)
    expected = counts.sum() / (10 * counts)
    assert torch.allclose(model.loss_weights, expected / expected.mean())
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def _smoothed_ce(logits: torch.Tensor, targets: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean label-smoothed cross-entropy, written out: (1 - eps) * NLL(target) + eps * mean over classes of NLL."""
    logp = torch.log_softmax(logits.double(), -1)
    nll = -logp.gather(1, targets[:, None]).squeeze(1)
    return ((1 - eps) * nll + eps * (-logp.mean(-1))).mean()


@pytest.mark.parametrize("mixup", [False, True])
def test_mixup_and_label_smoothing_loss_is_the_formula(digits_dm, monkeypatch, mixup):
    """On a fixed batch, with mixup's draw fixed (lam 0.3, reversed order): the training loss is
    lam * CE_eps(f(x_mix), y) + (1 - lam) * CE_eps(f(x_mix), y[perm]), x_mix = lam * x + (1 - lam) * x[perm]."""
    torch.manual_seed(0)
    eps, lam = 0.3, 0.3
    model = ClassifierModule(
        "lenet5", num_classes=10, in_channels=1, label_smoothing=eps, mixup_alpha=0.4 if mixup else 0.0
    ).eval()
    with torch.no_grad():
        model.model.classifier.weight.mul_(100)  # confident logits, far from uniform: smoothing changes the loss
    x, y = next(iter(digits_dm.eval_dataloader("train", batch_size=32)))[:2]
    perm = torch.arange(len(y) - 1, -1, -1)
    monkeypatch.setattr(torch.distributions.Beta, "sample", lambda self, *a, **k: torch.tensor(lam))
    monkeypatch.setattr(torch, "randperm", lambda n, **k: perm[:n].clone())
    with torch.no_grad():
        loss, _, acc_targets = model.training_loss((x, y))
        if mixup:
            mixed = model(lam * x + (1 - lam) * x[perm])

            def formula(e):
                return lam * _smoothed_ce(mixed, y, e) + (1 - lam) * _smoothed_ce(mixed, y[perm], e)

            assert torch.equal(acc_targets, y[perm])  # lam < 0.5: accuracy counts the dominant image's label
        else:
            logits = model(x)

            def formula(e):
                return _smoothed_ce(logits, y, e)

            assert torch.equal(acc_targets, y)
    assert float(loss) == pytest.approx(float(formula(eps)), rel=1e-5)
    assert abs(float(formula(eps)) - float(formula(0.0))) > 0.05  # smoothing moves this loss: the check bites


def test_per_sample_loss_matches_cross_entropy(digits_dm):
    model = ClassifierModule("lenet5", num_classes=10, in_channels=1).eval()
    batch = next(iter(digits_dm.eval_dataloader("train")))
    losses = model.per_sample_loss(batch)
    assert losses.shape == (len(batch[0]),)
    assert torch.allclose(losses.mean(), torch.nn.functional.cross_entropy(model(batch[0]), batch[1]), atol=1e-6)


def test_finetune_from_exported_backbone(tmp_path, trainer_kwargs):
    """Pretrain on digits 0-4, fine-tune on 5-9 with a new head, frozen backbone for one epoch."""

    class Subset(DigitsDataModule):
        def __init__(self, classes, **kw):
            super().__init__(**kw)
            self.classes = classes

        def load_sources(self):
            from lit_recipes.datamodules import array_source

            pool, _, test, _ = super().load_sources()
            out = []
            for src in (pool, test):
                keep = [i for i in range(len(src)) if int(src.targets[i]) in self.classes]
                images = torch.stack([torch.from_numpy(src.get(i)[0]) for i in keep]).numpy()
                targets = [self.classes.index(int(src.targets[i])) for i in keep]
                out.append(array_source(images, targets))
            return out[0], None, out[1], [str(c) for c in self.classes]

    L.seed_everything(0)
    pre = ClassifierModule("lenet5_bn", num_classes=5, in_channels=1, lr=0.05)
    L.Trainer(**{**trainer_kwargs, "max_epochs": 3}).fit(pre, datamodule=Subset([0, 1, 2, 3, 4]))
    weights = tmp_path / "backbone.pt"
    torch.save(pre.model.state_dict(), weights)

    ft = ClassifierModule(
        "lenet5_bn",
        num_classes=5,
        in_channels=1,
        lr=0.01,
        pretrained=str(weights),
        head_lr_mult=10,
        freeze_backbone_epochs=1,
    )
    saved = torch.load(weights, weights_only=True)
    loaded = ft.model.state_dict()
    assert list(loaded) == list(saved)
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())  # every tensor, BN statistics included
    conv_key = next(k for k in saved if k.endswith("weight") and "classifier" not in k)
    frozen = ft.model.state_dict()[conv_key].clone()

    class EpochCheck(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                assert torch.equal(pl_module.model.state_dict()[conv_key], frozen)

    dm = Subset([5, 6, 7, 8, 9])
    trainer = L.Trainer(**{**trainer_kwargs, "max_epochs": 6}, callbacks=[EpochCheck()])
    trainer.fit(ft, datamodule=dm)
    assert not torch.equal(ft.model.state_dict()[conv_key], frozen)  # unfrozen after epoch 0
    acc = trainer.test(ft, datamodule=dm, verbose=False)[0]["test/acc"]
    assert acc > 0.85


def test_pretrained_with_other_head_reinitialises_it(tmp_path):
    src = ClassifierModule("cifar_resnet20", num_classes=10, in_channels=3)
    path = tmp_path / "w.pt"
    torch.save(src.model.state_dict(), path)
    dst = ClassifierModule("cifar_resnet20", num_classes=4, in_channels=3, pretrained=str(path))
    assert dst.model.classifier.out_features == 4
    saved, loaded = torch.load(path, weights_only=True), dst.model.state_dict()
    head = {k for k, _ in dst.head_parameters(named=True)}
    assert head == {"classifier.weight", "classifier.bias"} and set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], v) for k, v in saved.items() if k not in head)  # the backbone: loaded
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ClassifierModule("cifar_resnet20", num_classes=4, pretrained=str(tmp_path / "missing.pt"))


class FocalLossModule(ClassifierModule):
    """The README's subclassing example: a custom loss through per_sample_loss."""

    def __init__(self, gamma: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.gamma = gamma

    def per_sample_loss(self, batch, logits=None):
        ce = super().per_sample_loss(batch, logits)
        return (1 - torch.exp(-ce)) ** self.gamma * ce


def test_subclass_example_trains_with_plain_trainer(trainer_kwargs, digits_dm):
    L.seed_everything(0)
    model = FocalLossModule(model="lenet5_bn", num_classes=10, in_channels=1, lr=0.05)
    trainer = L.Trainer(**{**trainer_kwargs, "max_epochs": 6})
    trainer.fit(model, datamodule=digits_dm)
    assert trainer.callback_metrics["val/acc"] > 0.8


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"lr": 0}, "lr must be a positive number, got 0"),
        ({"lr": -0.1}, "lr must be a positive number"),
        ({"num_classes": 1}, "num_classes must be >= 2, got 1"),
        ({"model": "resnet1000"}, "unknown model 'resnet1000'; known models: .*cifar_resnet20"),
        ({"init": "he"}, "init must be one of"),
        ({"ohem_keep": 0.0}, r"ohem_keep must be in \(0, 1\]"),
    ],
)
def test_bad_module_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassifierModule(**{"model": "lenet5", "num_classes": 10, "in_channels": 1, **kwargs})


def test_model_too_big_for_input_size_says_why(trainer_kwargs, digits_dm):
    model = ClassifierModule("vgg11", num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match=r"vgg11 cannot take 8x8 inputs.*32x32"):
        L.Trainer(**{**trainer_kwargs, "limit_train_batches": 1}).fit(model, datamodule=digits_dm)


class _MemoryLogger(L.pytorch.loggers.Logger):
    def __init__(self):
        super().__init__()
        self.steps: dict[str, list[int]] = {}

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        for k in metrics:
            self.steps.setdefault(k, []).append(step)


@pytest.mark.parametrize("refresh_rate", [0, 3])
def test_step_loss_is_logged_only_where_it_is_read(trainer_kwargs, digits_dm, refresh_rate):
    """`train/loss_step` reaches the logger every `log_every_n_steps` as before, and self.log is skipped on the
    steps that neither the logger nor a progress-bar refresh reads (each call costs Lightning bookkeeping)."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    logger = _MemoryLogger()
    model = ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=0.05)
    calls = []
    real_log = model.log
    model.log = lambda name, *a, **k: (
        (calls.append(model.trainer.global_step) if name == "train/loss_step" else None) or real_log(name, *a, **k)
    )
    bar = [TQDMProgressBar(refresh_rate=refresh_rate)] if refresh_rate else []
    kwargs = {**trainer_kwargs, "logger": logger, "log_every_n_steps": 5, "max_epochs": 2, "limit_train_batches": 12}
    trainer = L.Trainer(**{**kwargs, "enable_progress_bar": bool(refresh_rate)}, callbacks=bar, limit_val_batches=1)
    trainer.fit(model, datamodule=digits_dm)
    assert logger.steps["train/loss_step"] == [4, 9, 14, 19]  # Lightning's cadence: unchanged
    epoch_ends = [11, 23]
    expected = {4, 9, 14, 19, *epoch_ends}
    if refresh_rate:
        expected |= {e * 12 + i for e in range(2) for i in range(12) if (i + 1) % refresh_rate == 0}
    assert calls == sorted(expected)
    assert torch.isfinite(trainer.callback_metrics["train/loss_step"])
