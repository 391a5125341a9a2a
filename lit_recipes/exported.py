"""Use an exported model without Lightning: ``lit_recipes.load_exported(dir)``.

``lit-recipes export <ckpt> <dir>`` writes ``model.pt`` (the network's state_dict) and
``model.json``: the architecture (``model``, ``num_classes``, ``in_channels``, ``model_kwargs``)
and what a prediction needs besides the weights: the class names, the input size, the colour
mode, the normalisation mean/std and the eval transform. :func:`load_exported` rebuilds the
network from the registry and returns a :class:`Predictor` that reads image files (or arrays)
exactly as the datamodule did at evaluation time::

    predictor = load_exported("model_out")
    rows = predictor.predict(["cat.jpg", "dog.png"], top_k=3)
    rows[0]["class"], rows[0]["prob"]

Nothing here imports Lightning (only torch, numpy, PIL, and albumentations when the recipe has
a custom eval pipeline).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lit_recipes.errors import BadInput
from lit_recipes.imageio import read_image, resize_array

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FORMAT_VERSION = 2
CKPT_KEY = "lit_recipes_data"  # where ClassifierModule stores data_metadata() in its checkpoints


# ---------------------------------------------------------------------------------- metadata
def data_metadata(datamodule: Any) -> dict[str, Any] | None:
    """What a predictor needs from the training data: class names, image mode, input size,
    normalisation and the eval pipeline (``None`` when ``datamodule`` is not a set-up
    lit_recipes datamodule). Stored in every checkpoint and written by ``lit-recipes export``."""
    try:
        class_names = [str(c) for c in datamodule.class_names]
        mean, std = datamodule.mean, datamodule.std
        in_channels = int(datamodule.in_channels)
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return None
    if mean is None or std is None:
        return None
    hw = getattr(datamodule, "image_hw", None)
    if hw is None:
        hw = _first_image_hw(datamodule)
    eval_pipeline = None
    spec = getattr(datamodule, "eval_transforms", None)
    if spec not in (None, []):
        try:
            import albumentations as A

            from lit_recipes.datamodules.transforms import build_pipeline

            pipe = build_pipeline(spec)
            eval_pipeline = A.to_dict(pipe) if pipe is not None else None
        except Exception:  # noqa: BLE001 - metadata is best effort; the predictor then refuses to guess
            eval_pipeline = {"unserialisable": str(spec)}
    return {
        "class_names": class_names,
        "image_mode": "L" if in_channels == 1 else "RGB",
        "input_size": list(hw) if hw is not None else None,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "eval_pipeline": eval_pipeline,
    }


def _first_image_hw(datamodule: Any) -> tuple[int, int] | None:
    pool = getattr(datamodule, "pool", None)
    if pool is None:
        return None
    if getattr(pool, "images", None) is not None:
        return tuple(int(v) for v in pool.images.shape[1:3])
    try:
        return tuple(int(v) for v in pool.get(0)[0].shape[:2])
    except Exception:  # noqa: BLE001
        return None


def describe_eval_transform(meta: dict[str, Any]) -> list[str]:
    """The eval transform as readable steps (written to ``model.json`` as ``eval_transform``)."""
    steps = [f"decode with PIL, convert to {meta['image_mode']}"]
    if meta.get("input_size"):
        h, w = meta["input_size"]
        steps.append(f"resize to {h}x{w} (height x width, PIL bilinear) when the size differs")
    if meta.get("eval_pipeline"):
        steps.append("albumentations eval pipeline (eval_pipeline)")
    steps.append("scale to [0, 1], subtract mean, divide by std (per channel)")
    return steps


# ---------------------------------------------------------------------------------- images
def list_images(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files of a folder (recursively), a glob pattern, a single file, or a list of those;
    sorted, deduplicated.

    Raises:
        FileNotFoundError: nothing matches ``spec`` (names it).
    """
    import glob

    specs = [spec] if isinstance(spec, str | Path) else list(spec)
    found: list[Path] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            found += [f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS]
        elif p.is_file():
            found.append(p)
        else:
            found += [Path(f) for f in glob.glob(str(s), recursive=True) if Path(f).is_file()]
    files = sorted(set(found))
    if not files:
        raise FileNotFoundError(f"no image files found at {', '.join(str(s) for s in specs)}")
    return files


# ---------------------------------------------------------------------------------- predictor
class Predictor:
    """A ready-to-call classifier: ``predictor(images) -> logits``, ``predict(images) -> rows``.

    ``images`` are file paths, uint8 HWC arrays or a preprocessed float tensor ``(N, C, H, W)``.

    Attributes:
        net: the ``torch.nn.Module`` (eval mode).
        class_names, mean, std, input_size, image_mode: from the export's metadata.
    """

    def __init__(self, net, spec: dict[str, Any], device: str = "cpu") -> None:
        import torch

        self.spec = spec
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.num_classes = int(spec["num_classes"])
        names = spec.get("class_names") or [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"model.json: {len(names)} class_names for num_classes={self.num_classes}")
        self.class_names = list(names)
        self.image_mode = spec.get("image_mode") or ("L" if int(spec["in_channels"]) == 1 else "RGB")
        self.input_size = tuple(spec["input_size"]) if spec.get("input_size") else None
        c = int(spec["in_channels"])
        self.mean = tuple(spec.get("mean") or (0.0,) * c)
        self.std = tuple(spec.get("std") or (1.0,) * c)
        self.tta_flip = bool(spec.get("tta_flip", False))
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        self._pipeline = None
        pipe = spec.get("eval_pipeline")
        if pipe:
            if "unserialisable" in pipe:
                raise ValueError(f"model.json: the eval pipeline {pipe['unserialisable']} could not be exported")
            import albumentations as A

            self._pipeline = A.from_dict(pipe)

    def __repr__(self) -> str:
        size = "x".join(map(str, self.input_size)) if self.input_size else "any size"
        return (
            f"Predictor({self.spec.get('model')}, {self.num_classes} classes, {self.image_mode} {size}, "
            f"mean={self.mean}, std={self.std})"
        )

    def transform(self, image: str | Path | np.ndarray):
        """One image (path or uint8 HWC array) -> the normalised ``(C, H, W)`` float tensor."""
        import torch

        if isinstance(image, str | Path):
            arr = read_image(image, self.image_mode, self.input_size)
        else:
            arr = np.asarray(image)
            if arr.ndim == 2:
                arr = arr[..., None]
            if arr.dtype != np.uint8 or arr.ndim != 3:
                raise ValueError(f"images must be uint8 HxWxC arrays, got {arr.dtype} {arr.shape}")
            arr = resize_array(arr, self.input_size)
        if self._pipeline is not None:
            arr = self._pipeline(image=arr)["image"]
            if arr.ndim == 2:
                arr = arr[..., None]
        # a copy only when needed: np.asarray(PIL image) is read-only, and torch warns on those
        x = torch.from_numpy(np.require(arr, requirements=("C", "W"))).permute(2, 0, 1).float().div_(255.0)
        return (x - self._mean_t) / self._std_t

    def batch(self, images) -> Any:
        """Images (paths / arrays / a tensor) -> one ``(N, C, H, W)`` tensor on the device."""
        import torch

        if isinstance(images, torch.Tensor):
            x = images if images.ndim == 4 else images[None]
        else:
            items = [images] if isinstance(images, str | Path | np.ndarray) else list(images)
            if not items:
                raise ValueError("images is empty")
            x = torch.stack([self.transform(im) for im in items])
        return x.to(self.device)

    def __call__(self, images) -> Any:
        """Logits ``(N, num_classes)`` (averaged with the horizontal flip when the model was trained
        with ``tta_flip``)."""
        import torch

        x = self.batch(images)
        with torch.inference_mode():
            logits = self.net(x)
            if self.tta_flip:
                logits = (logits + self.net(torch.flip(x, dims=[-1]))) / 2
        return logits.float().cpu()

    def predict(self, images, top_k: int = 3, batch_size: int = 64) -> list[dict[str, Any]]:
        """One dict per image: ``class`` (name), ``index``, ``prob`` and the ``top_k``
        ``[(name, prob), ...]``. File paths are also given back as ``file``."""
        import torch

        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        items = [images] if isinstance(images, str | Path | np.ndarray) else list(images)
        k = min(top_k, self.num_classes)
        rows: list[dict[str, Any]] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            probs = torch.softmax(self(chunk), dim=-1)
            top_p, top_i = probs.topk(k, dim=-1)
            for j, item in enumerate(chunk):
                row: dict[str, Any] = {}
                if isinstance(item, str | Path):
                    row["file"] = str(item)
                idx = int(top_i[j, 0])
                row.update(
                    index=idx,
                    **{"class": self.class_names[idx]},
                    prob=float(top_p[j, 0]),
                    top_k=[(self.class_names[int(i)], float(p)) for p, i in zip(top_p[j], top_i[j])],
                )
                rows.append(row)
        return rows


def _bad(source: str | Path, key: str, what: str, hint: str | None = None) -> BadInput:
    return BadInput(f"invalid exported model: {what} ({source}, key {key!r})", hint)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_tv_model(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def check_spec(spec: Any, source: str | Path = "model.json") -> dict[str, Any]:
    """Check every field of an export spec (``model.json``, or the spec of a checkpoint) before
    anything is built: a fault is one :class:`~lit_recipes.errors.BadInput` naming ``source`` and
    the key. Returns ``spec``.

    ``model`` is a name of the model registry; ``num_classes`` an integer >= 2, ``in_channels`` >= 1;
    ``model_kwargs`` a mapping; ``image_mode`` ``L`` (1 channel) or ``RGB`` (3 channels);
    ``input_size`` ``[height, width]``; ``mean``/``std`` one finite number per channel, every std > 0;
    ``class_names`` one name per class; ``dropout`` in [0, 1)."""
    from lit_recipes.models import is_model

    if not isinstance(spec, dict):
        raise BadInput(f"invalid exported model: not a JSON object ({source})")
    for key in ("model", "num_classes", "in_channels"):
        if key not in spec:
            raise _bad(source, key, f"{key!r} is missing")
    name = spec["model"]
    if not isinstance(name, str) or not is_model(name) or (name.startswith("tv:") and not _is_tv_model(name[3:])):
        raise _bad(
            source,
            "model",
            f"model {name!r} is not a model of this lit_recipes",
            "see lit_recipes.models.list_models()",
        )
    n, c = spec["num_classes"], spec["in_channels"]
    if not _is_int(n) or n < 2:
        raise _bad(source, "num_classes", f"num_classes must be an integer >= 2, got {n!r}")
    if not _is_int(c) or c < 1:
        raise _bad(source, "in_channels", f"in_channels must be an integer >= 1, got {c!r}")
    if not isinstance(spec.get("model_kwargs") or {}, dict):
        raise _bad(source, "model_kwargs", f"model_kwargs must be a mapping, got {spec['model_kwargs']!r}")
    mode = spec.get("image_mode")
    if mode is not None and (mode not in ("L", "RGB") or (mode == "L") != (c == 1)):
        raise _bad(source, "image_mode", f"image_mode {mode!r} does not fit in_channels={c} (L: 1 channel, RGB: 3)")
    size = spec.get("input_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        raise _bad(source, "input_size", f"input_size must be [height, width] (positive integers), got {size!r}")
    for key in ("mean", "std"):
        values = spec.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != c or not all(_is_number(v) for v in values):
            raise _bad(source, key, f"{key} must be {c} finite number(s), one per channel, got {values!r}")
        if key == "std" and any(v <= 0 for v in values):
            raise _bad(source, key, f"std must be > 0 for every channel, got {values!r} (images would become NaN)")
    names = spec.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != n):
        got = len(names) if isinstance(names, list) else repr(names)
        raise _bad(source, "class_names", f"class_names must list {n} names (num_classes), got {got}")
    dropout = spec.get("dropout") or 0.0
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise _bad(source, "dropout", f"dropout must be in [0, 1), got {dropout!r}")
    pipe = spec.get("eval_pipeline")
    if pipe is not None and not isinstance(pipe, dict):
        raise _bad(source, "eval_pipeline", f"eval_pipeline must be an albumentations dict, got {pipe!r}")
    if isinstance(pipe, dict) and "unserialisable" in pipe:
        raise _bad(source, "eval_pipeline", f"the eval pipeline {pipe['unserialisable']} could not be exported")
    return spec


def build_net(spec: dict[str, Any], source: str | Path = "model.json"):
    """The untrained network described by an export spec (``model.json``), checked first
    (:func:`check_spec`). Nothing is downloaded: a torchvision model's ``weights`` are left out (the
    exported weights replace them anyway)."""
    from lit_recipes.models import create_model

    check_spec(spec, source)
    kwargs = dict(spec.get("model_kwargs") or {})
    if spec["model"].startswith("tv:"):
        kwargs.pop("weights", None)  # pretrained weights would be downloaded, then overwritten by model.pt
    try:
        net = create_model(spec["model"], num_classes=spec["num_classes"], in_channels=spec["in_channels"], **kwargs)
    except (TypeError, ValueError, FileNotFoundError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _bad(
            source, "model_kwargs", f"{spec['model']} does not accept model_kwargs {kwargs!r}: {first}"
        ) from None
    dropout = float(spec.get("dropout") or 0.0)
    if dropout > 0 and hasattr(net, "set_head_dropout"):
        net.set_head_dropout(dropout)  # same module layout (state_dict keys) as in training
    return net


def load_weights(path: Path) -> dict[str, Any]:
    """``model.pt`` loaded with ``weights_only=True`` (no file can run code): a plain state_dict, or
    one :class:`~lit_recipes.errors.BadInput` naming the file."""
    import pickle

    import torch

    if path.stat().st_size == 0:
        raise BadInput(f"exported weights are empty (0 bytes): {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower() or "weights_only" in str(err):
            raise BadInput(
                f"exported weights hold Python objects a safe load refuses: {path}",
                "model.pt must be a plain state_dict, as `lit-recipes export` writes it",
            ) from None
        raise BadInput(f"exported weights are not readable (corrupt): {path}") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError, KeyError, IndexError):
        raise BadInput(
            f"exported weights are truncated or corrupt (torch.load cannot read them): {path}",
            "export again: lit-recipes export <checkpoint> <folder> --overwrite",
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInput(f"exported weights are not a state_dict (name -> tensor): {path}")
    return state


def load_exported(path: str | Path, device: str = "cpu") -> Predictor:
    """Load ``lit-recipes export``'s folder (or its ``model.json``) as a :class:`Predictor`.

    Raises:
        FileNotFoundError: ``model.json`` or ``model.pt`` is missing.
        ValueError: the spec is malformed or the weights do not fit the architecture.
    """
    path = Path(path)
    if path.is_file() and path.suffix not in (".json", ".pt"):
        raise BadInput(
            f"load_exported takes an exported model folder (model.pt + model.json), not a file: {path}",
            "a checkpoint is loaded with lit_recipes.exported.predictor_from_checkpoint(<ckpt>), "
            "or exported first with `lit-recipes export <ckpt> <folder>`",
        )
    folder = path.parent if path.suffix in (".json", ".pt") else path
    spec_path, weights = folder / "model.json", folder / "model.pt"
    for f in (spec_path, weights):
        if not f.is_file():
            raise FileNotFoundError(f"load_exported: {f} not found (write it with `lit-recipes export CKPT {folder}`)")
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as err:
        raise BadInput(f"exported model: {spec_path} is not valid JSON: {err}") from None
    except UnicodeDecodeError:
        raise BadInput(f"exported model: {spec_path} is not a text (JSON) file") from None
    net = build_net(spec, spec_path)
    state = load_weights(weights)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise BadInput(f"exported weights {weights} do not fit {spec['model']}: {first}") from None
    return Predictor(net, spec, device=device)


def predictor_from_checkpoint(ckpt_path: str | Path, device: str = "cpu") -> Predictor:
    """A :class:`Predictor` straight from a ``.ckpt`` written by ``lit-recipes fit`` (no export
    step; Lightning is not imported)."""
    spec, state = spec_from_checkpoint(ckpt_path)
    net = build_net(spec, ckpt_path)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise BadInput(f"checkpoint {ckpt_path} does not fit {spec['model']}: {first}") from None
    return Predictor(net, spec, device=device)


def spec_from_checkpoint(ckpt_path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(spec, model state_dict)`` of a lit_recipes checkpoint: what ``export`` writes."""
    from lit_recipes.checkpoints import load_checkpoint

    ckpt_path = Path(ckpt_path)
    ckpt = load_checkpoint(ckpt_path)  # the checks of fit/test/export: exists, a file, safe load, Lightning
    spec = checkpoint_spec(ckpt, ckpt_path)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return spec, state


def checkpoint_spec(ckpt: dict[str, Any], name: str | Path = "checkpoint") -> dict[str, Any]:
    """The export spec (``model.json``'s content) of a loaded lit_recipes checkpoint dict."""
    hparams = ckpt.get("hyper_parameters", {})
    if not isinstance(hparams.get("model"), str):
        raise BadInput(f"{name}: the checkpoint's model is not a registry name; export its state_dict by hand")
    for key in ("num_classes", "in_channels"):
        if not _is_int(hparams.get(key)):
            raise BadInput(f"{name}: the checkpoint's hyper_parameters lack an integer {key!r}")
    spec: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": hparams["model"],
        "num_classes": int(hparams["num_classes"]),
        "in_channels": int(hparams["in_channels"]),
        "model_kwargs": dict(hparams.get("model_kwargs") or {}),
        "dropout": float(hparams.get("dropout") or 0.0),
        "tta_flip": bool(hparams.get("tta_flip", False)),
    }
    meta = ckpt.get(CKPT_KEY)
    if meta:
        spec.update(meta)
        spec["eval_transform"] = describe_eval_transform(meta)
    return spec


__all__ = [
    "Predictor",
    "build_net",
    "check_spec",
    "checkpoint_spec",
    "data_metadata",
    "list_images",
    "load_exported",
    "load_weights",
    "predictor_from_checkpoint",
    "read_image",
    "spec_from_checkpoint",
]
