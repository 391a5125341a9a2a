"""The embedded digits data and the shared base contract (splits, folds, batches, weights, eval loaders)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_recipes.datamodules import DigitsDataModule, WeightedEpochSampler


def test_digits_split_is_stratified_seeded_and_disjoint(digits_dm):
    assert (digits_dm.num_classes, digits_dm.in_channels, len(digits_dm.class_names)) == (10, 1, 10)
    train, val = digits_dm.train_indices, digits_dm.val_indices
    assert len(train) + len(val) == len(digits_dm.train_targets) == 1437
    assert not set(train) & set(val)
    t = digits_dm.train_targets
    frac = np.bincount(t[val], minlength=10) / np.bincount(t, minlength=10)
    assert np.all(np.abs(frac - 0.1) < 0.03)  # every class held out at ~10 %
    again = DigitsDataModule(batch_size=64)
    again.setup("fit")
    assert np.array_equal(again.val_indices, val)
    other = DigitsDataModule(batch_size=64, seed=7)
    other.setup("fit")
    assert not np.array_equal(other.val_indices, val)


def test_batches_carry_pool_indices_and_normalised_images(digits_dm):
    images, targets, indices = next(iter(digits_dm.train_dataloader()))
    assert images.shape == (64, 1, 8, 8) and images.dtype == torch.float32
    assert torch.equal(torch.as_tensor(digits_dm.train_targets)[indices], targets)
    assert set(indices.tolist()) <= set(digits_dm.train_indices.tolist())
    # normalisation from training-set statistics: the whole training split has mean 0, std 1
    x = torch.cat([b[0] for b in digits_dm.eval_dataloader("train")])
    assert x.mean().item() == pytest.approx(0.0, abs=1e-4) and x.std().item() == pytest.approx(1.0, abs=1e-3)
    test_batch = next(iter(digits_dm.test_dataloader()))
    assert test_batch[2].max() < 360  # test indices are positions in the test source


def test_eval_dataloader_shards_by_rank(digits_dm):
    subset = digits_dm.train_indices[:50]
    shards = [
        torch.cat([b[2] for b in digits_dm.eval_dataloader("train", subset, rank=r, world_size=2)]) for r in (0, 1)
    ]
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert sorted(shards[0].tolist() + shards[1].tolist()) == sorted(subset.tolist())


def test_set_fold_partitions_pool_and_test_never_enters(digits_dm):
    seen = []
    for fold in range(5):
        digits_dm.set_fold(fold, 5)
        assert not set(digits_dm.train_indices) & set(digits_dm.val_indices)
        seen.extend(digits_dm.val_indices.tolist())
    assert sorted(seen) == list(range(len(digits_dm.train_targets)))
    with pytest.raises(ValueError, match=r"fold must be in \[0, 5\), got 5"):
        digits_dm.set_fold(5, 5)
    with pytest.raises(ValueError, match="num_folds must be >= 2"):
        digits_dm.set_fold(0, 1)
    with pytest.raises(ValueError, match="larger than class"):
        digits_dm.set_fold(0, 500)


def test_sample_weights_drive_the_sampler(digits_dm):
    w = np.zeros(len(digits_dm.train_targets))
    w[digits_dm.train_indices[:10]] = 1.0
    digits_dm.set_sample_weights(w)
    drawn = torch.cat([b[2] for b in digits_dm.train_dataloader()])
    assert set(drawn.tolist()) <= set(digits_dm.train_indices[:10].tolist())
    assert len(drawn) == len(digits_dm.train_indices)  # an epoch keeps its length
    with pytest.raises(ValueError, match="expected 1437 weights"):
        digits_dm.set_sample_weights([1.0, 2.0])
    digits_dm.set_sample_weights(None)
    assert digits_dm.train_dataloader().sampler.__class__.__name__ == "RandomSampler"


def test_weighted_sampler_shards_equal_the_single_process_draw():
    w = torch.rand(101)
    single = list(WeightedEpochSampler(w, seed=3, num_replicas=1, rank=0))
    shards = [list(WeightedEpochSampler(w, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 51
    interleaved = [x for pair in zip(*shards) for x in pair][:101]
    assert interleaved == single
    s = WeightedEpochSampler(w, seed=3, num_replicas=1, rank=0)
    s.set_epoch(1)
    assert list(s) != single  # a new draw each epoch


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"val_fraction": 1.5}, r"val_fraction must be in \[0, 1\)"),
        ({"normalize": "imagenet"}, "needs 3-channel images"),
        ({"normalize": "zscore"}, "normalize must be dataset | imagenet | none"),
    ],
)
def test_bad_datamodule_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs).setup("fit")


def test_batch_size_larger_than_training_split():
    dm = DigitsDataModule(batch_size=5000)
    dm.setup("fit")
    with pytest.raises(ValueError, match="batch_size 5000 is larger than the training split"):
        dm.train_dataloader()


# ---------------------------------------------------------------- base arguments through **kwargs
DATAMODULES = ["DigitsDataModule", "CIFAR10DataModule", "ImageFolderDataModule", "MNISTDataModule"]


def base_argument_names() -> list[str]:
    import inspect

    from lit_recipes.datamodules import ClassificationDataModule

    return [n for n in inspect.signature(ClassificationDataModule.__init__).parameters if n != "self"]


@pytest.mark.parametrize("name", DATAMODULES)
def test_fit_help_lists_every_base_argument_of_each_datamodule(name, capsys):
    """Subclasses pass the base arguments on through ``**kwargs``; jsonargparse resolves them to the
    base signature, so ``lit-recipes fit --data.help <class>`` still documents each of them."""
    from lit_recipes.commands.fit import build_cli

    with pytest.raises(SystemExit) as exit_info:
        build_cli(["--data.help", f"lit_recipes.datamodules.{name}"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    names = base_argument_names()
    assert len(names) == 12
    missing = [n for n in names if f"--data.{n} " not in help_text]
    assert missing == []
    assert "--data.seed SEED      seed of the split, the folds and the weighted sampler." in help_text


@pytest.mark.parametrize("name", DATAMODULES)
def test_a_configured_base_argument_reaches_the_base_of_each_datamodule(name, tmp_path):
    """The data section of the CLI's parser, instantiated: base arguments set on the subclass arrive
    in the base, the subclass's own defaults (batch_size 128 for CIFAR-10 / MNIST) stay."""
    from lightning.pytorch.cli import LightningArgumentParser

    from lit_recipes.datamodules import ClassificationDataModule

    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(ClassificationDataModule, "data", required=True)
    init_args = {"val_fraction": 0.25, "seed": 3, "sampling": "weighted", "eval_batch_size": 17, "image_size": 16}
    if name != "DigitsDataModule":
        init_args["root"] = str(tmp_path)
    cfg = parser.parse_object({"data": {"class_path": f"lit_recipes.datamodules.{name}", "init_args": init_args}})
    dm = parser.instantiate(cfg).data
    assert type(dm).__name__ == name
    assert (dm.val_fraction, dm.seed, dm.sampling, dm.eval_batch_size, dm.image_hw) == (
        0.25,
        3,
        "weighted",
        17,
        (16, 16),
    )
    assert dm.batch_size == (128 if name in ("CIFAR10DataModule", "MNISTDataModule") else 64)
    assert set(base_argument_names()) <= set(dm.hparams)  # every constructor argument, defaults included
    assert dm.hparams["val_fraction"] == 0.25 and dm.hparams["num_workers"] == 0


def test_fit_config_sets_base_arguments_of_the_digits(tmp_path):
    from lit_recipes.commands.fit import build_cli

    base = ["--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    cli = build_cli(["--data.seed=5", "--data.val_fraction=0.2", "--data.test_fraction=0.25", *base])
    dm = cli.datamodule
    assert (dm.seed, dm.val_fraction, dm.test_fraction, dm.batch_size) == (5, 0.2, 0.25, 64)
    assert set(base_argument_names()) <= set(dm.hparams) and dm.hparams["seed"] == 5


def test_hparams_list_every_constructor_argument_outside_the_cli():
    from lit_recipes.datamodules import MNISTDataModule

    dm = MNISTDataModule(root="nowhere", seed=4)
    expected = {*base_argument_names(), "root", "download", "train_transforms", "eval_transforms", "cutout"}
    assert set(dm.hparams) == expected
    assert (dm.hparams["seed"], dm.hparams["batch_size"], dm.hparams["normalize"]) == (4, 128, "dataset")
    digits = DigitsDataModule(batch_size=32)
    assert set(digits.hparams) == {*base_argument_names(), "test_fraction"}
    assert (digits.hparams["batch_size"], digits.hparams["test_fraction"]) == (32, 0.2)
