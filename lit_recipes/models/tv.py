"""Any ``torchvision.models`` classifier behind the zoo's interface (``create_model("tv:<name>")``).

The torchvision network is kept whole as ``self.model``; its final classification layer (the last
``Linear`` — or, for SqueezeNet, the last 1x1 ``Conv2d`` — producing the class scores) is replaced
by ``nn.Identity`` and moved to ``self.classifier`` as an ``nn.Linear``. So ``forward_features``
returns torchvision's pooled pre-logit vector (N, num_features), including any hidden layers of its
head (VGG's, AlexNet's and MaxViT's MLPs), and ``forward_head`` is dropout + ``self.classifier``.
When ``in_channels != 3`` the first convolution is rebuilt for the new channel count, its weights
summed over the RGB channels (one channel) or tiled and rescaled (more channels), as timm does.

Weights are either a torchvision weight name ("IMAGENET1K_V1", "DEFAULT": downloaded, so online
only) or the path of a local ``state_dict`` file (loaded with ``torch.load(weights_only=True)``).
A file may hold torchvision's own layout (``torchvision.models.resnet18(num_classes=7).state_dict()``),
this wrapper's layout (``create_model("tv:resnet18", ...).state_dict()``), a ``{"state_dict": ...}``
dictionary, or a checkpoint of a module holding the wrapper as ``model``. Its classifier is loaded
when the class count matches and re-initialised (a log line says so) when it differs.

Example:
    >>> net = create_torchvision_model("resnet18", num_classes=10, in_channels=1)
    >>> net(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn

from lit_recipes.models.base import ClassifierNet
from lit_recipes.models.weights import WeightsError, safe_load

__all__ = ["TorchvisionNet", "create_torchvision_model"]

log = logging.getLogger(__name__)

# torchvision networks whose auxiliary heads are switched off (they change the training output type).
_AUX_LOGITS = ("googlenet", "inception_v3")


def _adapt_input_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Convert an (O, C, kh, kw) convolution weight to ``in_channels`` input channels (timm's rule)."""
    c = weight.shape[1]
    if in_channels == c:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / c)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (c / in_channels)


class TorchvisionNet(ClassifierNet):
    """A torchvision classifier split into ``forward_features`` and ``forward_head``.

    Args:
        model: A torchvision classification network; it is modified in place.
        arch: Name used in error messages (``"tv:<torchvision name>"``).
        num_classes: Number of output classes; the pretrained head is kept only if it already has
            that many outputs.
        in_channels: Number of input image channels; the first convolution is rebuilt if it differs.
        head_classes: Number of outputs of ``model``'s own classification layer (used to find it).
        min_input_size: Smallest input the network accepts (torchvision's ``meta["min_size"]``).
        drop_rate: Dropout before the linear classifier.

    Raises:
        ValueError: The classification layer or the first convolution cannot be found.
    """

    def __init__(
        self,
        model: nn.Module,
        arch: str,
        num_classes: int,
        in_channels: int = 3,
        head_classes: int = 1000,
        min_input_size: int = 1,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.min_input_size = min_input_size
        self.head_name = self._find_head(model, head_classes)
        head = model.get_submodule(self.head_name)
        self.num_features = head.in_features if isinstance(head, nn.Linear) else head.in_channels
        classifier = nn.Linear(self.num_features, head_classes, bias=head.bias is not None)
        with torch.no_grad():
            classifier.weight.copy_(head.weight.flatten(1))
            if head.bias is not None:
                classifier.bias.copy_(head.bias)
        model.set_submodule(self.head_name, nn.Identity())
        self.stem_name = self._find_stem(model)
        if in_channels != 3:
            old = model.get_submodule(self.stem_name)
            new = nn.Conv2d(
                in_channels,
                old.out_channels,
                old.kernel_size,
                stride=old.stride,
                padding=old.padding,
                dilation=old.dilation,
                bias=old.bias is not None,
                padding_mode=old.padding_mode,
            )
            with torch.no_grad():
                new.weight.copy_(_adapt_input_weight(old.weight, in_channels))
                if old.bias is not None:
                    new.bias.copy_(old.bias)
            model.set_submodule(self.stem_name, new)
        self.model = model
        self.classifier = classifier
        self.num_classes = head_classes
        if num_classes != head_classes:
            self.reset_classifier(num_classes)
        self.set_head_dropout(drop_rate)

    def _find_head(self, model: nn.Module, head_classes: int) -> str:
        found = None
        for name, m in model.named_modules():
            if (isinstance(m, nn.Linear) and m.out_features == head_classes) or (
                isinstance(m, nn.Conv2d) and m.out_channels == head_classes and m.kernel_size == (1, 1)
            ):
                found = name
        if found is None:
            raise ValueError(f"{self.arch}: cannot find a classification layer with {head_classes} outputs")
        return found

    def _find_stem(self, model: nn.Module) -> str:
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and m.in_channels == 3 and m.groups == 1:
                return name
        raise ValueError(f"{self.arch}: cannot find the first (3-channel) convolution")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Run the torchvision network up to its classification layer: (N, num_features)."""
        self.check_input(x)
        return self.model(x)

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a state dict in torchvision's or this wrapper's layout (see the module docstring).

        The classifier is re-initialised when the class count differs and the first convolution is
        adapted when the channel count differs.

        Raises:
            ValueError: Keys are missing or unexpected, or a tensor has a shape that cannot be adapted.
        """
        sd = dict(state_dict)
        if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = dict(sd["state_dict"])

        def is_wrapper_layout(d: Mapping[str, object]) -> bool:
            return any(k.startswith("model.") for k in d) and all(k.startswith(("model.", "classifier.")) for k in d)

        if not is_wrapper_layout(sd) and all(k.startswith("model.") for k in sd):
            stripped = {k[len("model.") :]: v for k, v in sd.items()}
            if is_wrapper_layout(stripped):
                sd = stripped
        if not is_wrapper_layout(sd):
            head_keys = {
                f"{self.head_name}.weight": "classifier.weight",
                f"{self.head_name}.bias": "classifier.bias",
            }
            sd = {head_keys.get(k, f"model.{k}"): v for k, v in sd.items()}
        if "classifier.weight" in sd and sd["classifier.weight"].ndim == 4:
            sd["classifier.weight"] = sd["classifier.weight"].flatten(1)

        target = self.state_dict()
        stem_key = f"model.{self.stem_name}.weight"
        skipped: set[str] = set()
        if "classifier.weight" in sd and sd["classifier.weight"].shape != target["classifier.weight"].shape:
            log.info(
                "%s: the weights have %d classes, the model %d: the classifier is re-initialised",
                self.arch,
                sd["classifier.weight"].shape[0],
                self.num_classes,
            )
            skipped = {"classifier.weight", "classifier.bias"}
            sd = {k: v for k, v in sd.items() if k not in skipped}
        if stem_key in sd and sd[stem_key].shape[1] != target[stem_key].shape[1]:
            sd[stem_key] = _adapt_input_weight(sd[stem_key], target[stem_key].shape[1])
        bad = [k for k, v in sd.items() if k in target and v.shape != target[k].shape]
        if bad:
            k = bad[0]
            raise ValueError(
                f"{self.arch}: weight {k!r} has shape {tuple(sd[k].shape)}, the model {tuple(target[k].shape)}"
            )
        missing, unexpected = self.load_state_dict(sd, strict=False)
        missing = [k for k in missing if k not in skipped]
        if missing or unexpected:
            raise ValueError(
                f"{self.arch}: the weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )


def _fetch_weights(name: str, weights: str, tv_weights) -> None:
    """Make sure torchvision's ``weights`` are in torch.hub's cache; a download that fails (no
    network) is one :class:`~lit_recipes.models.weights.WeightsError` (a ``ValueError``) naming the setting and the URL, with
    nothing printed before it (torch.hub's "Downloading: ..." line is shown only once it worked)."""
    import contextlib
    import io
    import os

    url = tv_weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            tv_weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad hash a RuntimeError
        reason = " ".join(str(getattr(err, "reason", None) or err).split()) or type(err).__name__
        raise WeightsError(
            f"tv:{name} weights {weights!r} (model_kwargs.weights) need a download from {url}, which failed: {reason}",
            f"run once with network access (cached in {cached.parent}), or set weights to a local state_dict file "
            "or null",
        ) from None
    sys.stdout.write(said.getvalue())


def create_torchvision_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    weights: str | None = None,
    **kwargs,
) -> TorchvisionNet:
    """Build ``torchvision.models.<name>`` wrapped as a :class:`TorchvisionNet`.

    Args:
        name: A torchvision classification model, one of
            ``torchvision.models.list_models(module=torchvision.models)``.
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        weights: ``None`` (random initialisation), a torchvision weight name such as
            ``"IMAGENET1K_V1"`` or ``"DEFAULT"`` (downloaded: needs network access), or the path of a
            local state-dict file.
        **kwargs: ``drop_rate`` (dropout before the classifier); everything else goes to the
            torchvision constructor (e.g. ``dropout``, ``image_size``).

    Returns:
        The wrapped network.

    Raises:
        ValueError: ``name`` is not a torchvision classification model (the message lists some).
        FileNotFoundError: ``weights`` is neither a torchvision weight name nor an existing file.
    """
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(
            f"unknown torchvision model {name!r}; valid names include {', '.join(available[:10])}, ... "
            f"({len(available)} in all, see torchvision.models.list_models(module=torchvision.models))"
        )
    drop_rate = float(kwargs.pop("drop_rate", 0.0))
    weight_enum = torchvision.models.get_model_weights(name)
    tv_weights = None
    weight_file: Path | None = None
    if weights is not None:
        if weights in weight_enum.__members__:
            tv_weights = weight_enum[weights]
        else:
            weight_file = Path(weights).expanduser()
            if not weight_file.is_file():
                raise FileNotFoundError(
                    f"tv:{name}: weights file {str(weight_file)!r} not found (and {weights!r} is not one of "
                    f"torchvision's weight names for {name}: {', '.join(weight_enum.__members__)})"
                )
    if tv_weights is not None:
        _fetch_weights(name, weights, tv_weights)
    if name in _AUX_LOGITS:
        kwargs.setdefault("aux_logits", False)
        if tv_weights is None:
            kwargs.setdefault("init_weights", True)
    model = torchvision.models.get_model(name, weights=tv_weights, **kwargs)
    head_classes = len(tv_weights.meta["categories"]) if tv_weights is not None else 1000
    min_sizes = [min(w.meta["min_size"]) for w in weight_enum if "min_size" in w.meta]
    net = TorchvisionNet(
        model,
        arch=f"tv:{name}",
        num_classes=num_classes,
        in_channels=in_channels,
        head_classes=head_classes,
        min_input_size=min(min_sizes, default=1),
        drop_rate=drop_rate,
    )
    if weight_file is not None:
        net.load_weights(safe_load(weight_file))  # weights_only=True; a pickle: one line naming the file
    return net
