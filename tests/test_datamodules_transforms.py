"""albumentations pipelines from YAML: lists, albumentations' serialised form, defaults, bad names."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
import yaml

from lit_recipes.datamodules.transforms import AlbumentationsTransform, build_pipeline, pad_crop_flip


def test_list_spec_from_yaml_builds_the_pipeline_and_output_is_normalised_chw():
    spec = yaml.safe_load(
        """
        - {name: PadIfNeeded, args: {min_height: 12, min_width: 12, border_mode: reflect_101}}
        - {name: RandomCrop, args: {height: 8, width: 8}}
        - HorizontalFlip
        - {name: CoarseDropout, num_holes_range: [1, 1], hole_height_range: [2, 2], hole_width_range: [2, 2], p: 1.0}
        """
    )
    pipe = build_pipeline(spec)
    assert [type(t).__name__ for t in pipe.transforms] == [
        "PadIfNeeded",
        "RandomCrop",
        "HorizontalFlip",
        "CoarseDropout",
    ]
    assert pipe.transforms[0].border_mode == 4  # cv2.BORDER_REFLECT_101
    tf = AlbumentationsTransform(pipe, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = tf(np.full((8, 8, 3), 255, np.uint8))
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    assert ((out == 1.0).sum() == 3 * 64 - 3 * 4) and ((out == -1.0).sum() == 3 * 4)  # one 2x2 hole, rest white


def test_serialised_albumentations_dict_round_trips():
    compose = A.Compose([A.HorizontalFlip(p=1.0)])
    pipe = build_pipeline(A.to_dict(compose))
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert np.array_equal(pipe(image=image)["image"], image[:, ::-1])


def test_unknown_name_lists_close_matches_and_bad_args_name_the_transform():
    with pytest.raises(
        ValueError, match=r"unknown albumentations transform 'HorizontallFlip'; did you mean HorizontalFlip"
    ):
        build_pipeline(["HorizontallFlip"])
    with pytest.raises(ValueError, match=r"transform RandomCrop: bad arguments"):
        build_pipeline([{"name": "RandomCrop", "args": {"hieght": 3}}])
    with pytest.raises(ValueError, match=r"'Normalize' is not allowed.*normalize: dataset"):
        build_pipeline([{"name": "Normalize"}])
    with pytest.raises(ValueError, match="border_mode must be one of"):
        build_pipeline([{"name": "PadIfNeeded", "border_mode": "mirror"}])


def test_defaults_and_empty_pipeline():
    assert build_pipeline([]) is None
    assert build_pipeline(None) is None  # eval default: normalise only
    default = pad_crop_flip((32, 32), 4, cutout=8, fill=(125, 123, 114))
    pipe = build_pipeline(None, default)
    names = [type(t).__name__ for t in pipe.transforms]
    assert names == ["PadIfNeeded", "RandomCrop", "HorizontalFlip", "CoarseDropout"]
    out = pipe(image=np.zeros((32, 32, 3), np.uint8))["image"]
    assert out.shape == (32, 32, 3)
    assert (np.all(out == (125, 123, 114), axis=-1)).sum() == 64  # the 8x8 cutout, filled with the mean colour


def _augmented_batches(seed: int, num_workers: int = 0) -> list[torch.Tensor]:
    """Three images (a ramp, so every crop offset and flip shows) through a pad/crop/flip pipeline,
    each repeated 4 times, loaded in one shuffled-off DataLoader after ``seed_everything(seed)``."""
    from lightning.pytorch import seed_everything
    from torch.utils.data import DataLoader, Dataset

    images = [np.arange(i, i + 8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3) for i in range(3)]

    class Images(Dataset):
        def __init__(self, tf) -> None:
            self.tf = tf

        def __len__(self) -> int:
            return 12

        def __getitem__(self, i: int) -> torch.Tensor:
            return self.tf(images[i % 3])

    seed_everything(seed, workers=True, verbose=False)
    tf = AlbumentationsTransform(build_pipeline(None, pad_crop_flip((8, 8), 2)), mean=(0.0,) * 3, std=(1.0,) * 3)
    loader = DataLoader(Images(tf), batch_size=4, num_workers=num_workers)
    return [b.clone() for b in loader]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_augmentation_repeats_under_a_seed_and_changes_with_it(num_workers):
    """albumentations seeds each Compose from OS entropy: without the transform seeding it from torch,
    two runs with the same seed would train on different crops (the LR range test curve changed)."""
    a, b = _augmented_batches(0, num_workers), _augmented_batches(0, num_workers)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = _augmented_batches(1, num_workers)
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    flat = torch.cat(a)  # the same source image is augmented differently across the 12 draws
    assert len({tuple(flat[i].flatten()[:40].tolist()) for i in range(0, 12, 3)}) > 1
