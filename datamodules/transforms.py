"""albumentations pipelines declared in YAML, and the datamodule mixin that builds them.

A pipeline is either a list of transforms::

    train_transforms:
      - {name: PadIfNeeded, args: {min_height: 40, min_width: 40, border_mode: reflect_101}}
      - {name: RandomCrop, args: {height: 32, width: 32}}
      - HorizontalFlip                       # a bare name: default arguments
      - {name: CoarseDropout, num_holes_range: [1, 1], hole_height_range: [8, 8], hole_width_range: [8, 8]}

or albumentations' own serialised form (``A.to_dict(compose)``, loaded with ``A.from_dict``).
``null`` means the data set's default, ``[]`` means none. Normalisation and the conversion to a
``(C, H, W)`` float tensor are always done by the datamodule with its ``mean``/``std``
(``normalize: ...``), so ``Normalize`` / ``ToTensorV2`` are refused in a pipeline. An unknown
transform name is a ``ValueError`` listing the closest albumentations names.

albumentations' update check is disabled (``NO_ALBUMENTATIONS_UPDATE=1``) before it is imported,
so nothing touches the network.

Example:
    >>> pipe = build_pipeline([{"name": "HorizontalFlip", "args": {"p": 1.0}}])
    >>> tf = AlbumentationsTransform(pipe, mean=(0.5,), std=(0.25,))
    >>> tf(np.zeros((8, 8, 1), np.uint8)).shape
    torch.Size([1, 8, 8])
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402

from lit_recipes.datamodules.device_resident import DeviceAugment  # noqa: E402
from lit_recipes.datamodules.sources import ToTensorNormalize  # noqa: E402

TransformSpec = list[str | dict[str, Any]] | dict[str, Any] | None

BORDER_MODES = {
    "constant": cv2.BORDER_CONSTANT,
    "reflect": cv2.BORDER_REFLECT,
    "reflect_101": cv2.BORDER_REFLECT_101,
    "replicate": cv2.BORDER_REPLICATE,
    "wrap": cv2.BORDER_WRAP,
}
REFUSED = {
    "Normalize": "normalisation is done by the datamodule (set normalize: dataset | imagenet | none | [mean, std])",
    "ToTensorV2": "the datamodule converts to a (C, H, W) float tensor itself",
}


def transform_names() -> list[str]:
    """Every albumentations transform class name usable in a pipeline."""
    names = []
    for name in dir(A):
        obj = getattr(A, name)
        if isinstance(obj, type) and issubclass(obj, A.BasicTransform) and not name.startswith("_"):
            names.append(name)
    return sorted(names)


def _resolve(name: str) -> type:
    short = name.rsplit(".", 1)[-1] if name.startswith("albumentations.") else name
    if short in REFUSED:
        raise ValueError(f"transform {short!r} is not allowed in a pipeline: {REFUSED[short]}")
    cls = getattr(A, short, None)
    if isinstance(cls, type) and issubclass(cls, A.BasicTransform):
        return cls
    close = difflib.get_close_matches(short, transform_names(), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see albumentations' list of transforms"
    raise ValueError(f"unknown albumentations transform {name!r}{hint}")


def _build_one(item: str | dict[str, Any]) -> A.BasicTransform:
    if isinstance(item, str):
        name, args = item, {}
    elif isinstance(item, dict):
        keys = [k for k in ("name", "class", "class_path") if k in item]
        if not keys:
            raise ValueError(f"a transform entry needs a 'name', got {item!r}")
        name = item[keys[0]]
        if "args" in item or "init_args" in item:
            args = dict(item.get("args") or item.get("init_args") or {})
        else:
            args = {k: v for k, v in item.items() if k not in ("name", "class", "class_path")}
    else:
        raise ValueError(f"a transform entry must be a name or a mapping, got {item!r}")
    cls = _resolve(str(name))
    if isinstance(args.get("border_mode"), str):
        mode = args["border_mode"].lower()
        if mode not in BORDER_MODES:
            raise ValueError(f"transform {name}: border_mode must be one of {', '.join(BORDER_MODES)}, got {mode!r}")
        args["border_mode"] = BORDER_MODES[mode]
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    try:
        return cls(**args)
    except (TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"transform {name}: bad arguments {args!r}: {first}") from None


def _check_refused(transform: Any) -> None:
    for t in getattr(transform, "transforms", []):
        _check_refused(t)
    if type(transform).__name__ in REFUSED:
        raise ValueError(f"transform {type(transform).__name__!r} is not allowed: {REFUSED[type(transform).__name__]}")


def build_pipeline(spec: TransformSpec, default: Sequence[A.BasicTransform] | None = None) -> A.Compose | None:
    """An ``A.Compose`` from a YAML spec (list of transforms, or albumentations' serialised dict).

    ``None`` gives ``default`` (``None`` when there is no default), ``[]`` gives ``None``.
    """
    if spec is None:
        return A.Compose(list(default)) if default else None
    if isinstance(spec, dict):
        serialised = spec if "transform" in spec else {"transform": spec}
        if "__class_fullname__" not in serialised["transform"]:
            raise ValueError(
                "a transform mapping must be albumentations' serialised form (with 'transform' / "
                f"'__class_fullname__'); got keys {sorted(spec)}; use a list of transforms instead"
            )
        try:
            compose = A.from_dict(serialised)
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"cannot load the serialised albumentations pipeline: {err}") from None
        _check_refused(compose)
        return compose
    if isinstance(spec, str):
        raise ValueError(f"transforms must be a list (or albumentations' serialised dict), got the string {spec!r}")
    transforms = [_build_one(item) for item in spec]
    return A.Compose(transforms) if transforms else None


class AlbumentationsTransform:
    """uint8 HWC image -> albumentations pipeline -> normalised float ``(C, H, W)`` tensor.

    Seeded: albumentations (2.x) gives every ``Compose`` its own generator, seeded from OS entropy
    unless told otherwise, so ``seed_everything`` alone does not make augmentation repeatable. The
    first image a process transforms seeds the pipeline from torch's generator in that process: in
    the main process that stream follows ``seed_everything``; in a DataLoader worker torch is seeded
    with the loader's base seed + worker id, so workers differ from each other and runs repeat."""

    def __init__(self, pipeline: A.Compose | None, mean: Sequence[float], std: Sequence[float]) -> None:
        self.pipeline = pipeline
        self.to_tensor = ToTensorNormalize(mean, std)
        self._seeded_in: int | None = None  # the pid whose torch generator seeded the pipeline

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        if self.pipeline is not None:
            if self._seeded_in != os.getpid():
                self.pipeline.set_random_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
                self._seeded_in = os.getpid()
            image = self.pipeline(image=image)["image"]
        if image.ndim == 2:
            image = image[..., None]
        return self.to_tensor(image)


def pad_crop_flip(
    hw: tuple[int, int], pad: int, flip: bool = True, cutout: int = 0, fill: Sequence[int] | int = 0, reflect=True
) -> list[A.BasicTransform]:
    """The CIFAR-style default: pad by ``pad`` (reflect or constant), random crop back to ``hw``,
    horizontal flip, optional cutout (one ``cutout`` x ``cutout`` hole filled with ``fill``)."""
    h, w = hw
    out: list[A.BasicTransform] = []
    if pad > 0:
        border = cv2.BORDER_REFLECT_101 if reflect else cv2.BORDER_CONSTANT
        out += [A.PadIfNeeded(h + 2 * pad, w + 2 * pad, border_mode=border, fill=0), A.RandomCrop(h, w)]
    if flip:
        out.append(A.HorizontalFlip(p=0.5))
    if cutout > 0:
        out.append(
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(cutout, cutout),
                hole_width_range=(cutout, cutout),
                fill=fill,
                p=1.0,
            )
        )
    return out


class AlbumentationsMixin:
    """Train/eval transforms from ``train_transforms`` / ``eval_transforms`` YAML specs.

    A datamodule using it sets ``train_transforms``, ``eval_transforms``, ``cutout`` and the class
    attributes ``default_flip`` / ``default_reflect`` (the default pipeline: pad by 1/8 of the size,
    random crop, optional flip and cutout), and provides ``image_shape()`` -> ``(H, W)``. The same
    flip/translate/cutout run on the device when ``device_resident: true``.
    """

    default_flip: bool = True
    default_reflect: bool = True

    def _init_transforms(self, train_transforms: TransformSpec, eval_transforms: TransformSpec, cutout: int) -> None:
        if cutout < 0:
            raise ValueError(f"cutout must be >= 0, got {cutout}")
        self.train_transforms = train_transforms
        self.eval_transforms = eval_transforms
        self.cutout = cutout
        build_pipeline(train_transforms)  # fail now (at config time) on a bad spec
        build_pipeline(eval_transforms)
        self._check_resident_transforms()

    def _check_resident_transforms(self) -> None:
        """The device-resident path runs only flip / translate / cutout on the device: refuse a custom
        pipeline there instead of silently training without it."""
        if not getattr(self, "device_resident", False):
            return
        for key, spec in (("train_transforms", self.train_transforms), ("eval_transforms", self.eval_transforms)):
            if spec not in (None, []):
                raise ValueError(
                    f"{type(self).__name__}: {key} is not applied on the device-resident path (device_resident: "
                    "true runs only flip / translate / cutout on the device); remove it, or set device_resident: false"
                )

    def image_shape(self) -> tuple[int, int]:
        raise NotImplementedError

    def default_pad(self) -> int:
        return max(1, min(self.image_shape()) // 8)

    def default_train_pipeline(self) -> list[A.BasicTransform]:
        fill = tuple(int(round(m * 255)) for m in self.mean)
        return pad_crop_flip(
            self.image_shape(),
            self.default_pad(),
            flip=self.default_flip,
            cutout=self.cutout,
            fill=fill if len(fill) > 1 else fill[0],
            reflect=self.default_reflect,
        )

    def build_train_transform(self):
        return AlbumentationsTransform(
            build_pipeline(self.train_transforms, self.default_train_pipeline()), self.mean, self.std
        )

    def build_eval_transform(self):
        return AlbumentationsTransform(build_pipeline(self.eval_transforms), self.mean, self.std)

    def device_augment(self) -> DeviceAugment | None:
        """Flip / translate (pad 1/8 of the size) / cutout on the device: the default pipeline's
        equivalent. ``train_transforms: []`` turns it off; a custom pipeline is refused (ValueError)."""
        self._check_resident_transforms()
        if self.train_transforms == []:
            return None
        return DeviceAugment(flip=self.default_flip, translate=self.default_pad(), cutout=self.cutout)


__all__ = [
    "AlbumentationsMixin",
    "AlbumentationsTransform",
    "TransformSpec",
    "build_pipeline",
    "pad_crop_flip",
    "transform_names",
]
