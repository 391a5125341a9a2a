"""The model zoo: a contract test over every registered model, plus sizes, errors and torchvision weights."""

from __future__ import annotations

import inspect

import pytest
import torch
import torchvision
from torch import nn

from lit_recipes.models import ClassifierNet, create_model, is_model, list_models
from lit_recipes.models.registry import _MODEL_ENTRYPOINTS

ALL_MODELS = [*list_models(), "tv:resnet18"]


def _train_step(net: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    net.train()
    out = net(x)
    assert out.shape == (x.shape[0], num_classes)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.arange(x.shape[0]) % num_classes).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_contract(name: str) -> None:
    torch.manual_seed(0)
    net = create_model(name, num_classes=10, in_channels=3, drop_rate=0.1)
    assert isinstance(net, ClassifierNet)
    assert net.num_classes == 10 and net.head_drop.p == 0.1
    x = torch.randn(2, 3, 32, 32)
    _train_step(net, x, 10)

    net.eval()
    with torch.no_grad():
        out = net(x)
        assert torch.allclose(net.forward_head(net.forward_features(x)), out)
        assert net.forward_head(net.forward_features(x), pre_logits=True).shape == (2, net.num_features)
        m = net.min_input_size
        assert net(torch.randn(1, 3, m, m)).shape == (1, 10)
    if m > 1:
        with pytest.raises(ValueError, match=f"{name}.*{m}x{m}"):
            net(torch.randn(1, 3, m - 1, m - 1))

    net.reset_classifier(5)
    assert net.num_classes == 5
    with torch.no_grad():
        assert net(x).shape == (2, 5)

    if m <= 8:  # 8x8 one-channel digits
        _train_step(create_model(name, num_classes=10, in_channels=1), torch.randn(2, 1, 8, 8), 10)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("cifar_resnet20", 0.27e6), ("cifar_resnet56", 0.85e6), ("resnet18", 11.17e6)],
)
def test_parameter_counts(name: str, expected: float) -> None:
    n = sum(p.numel() for p in create_model(name, num_classes=10).parameters())
    assert n == pytest.approx(expected, rel=0.01)


def test_factories_follow_the_convention() -> None:
    expected = {"lenet5", "lenet5_bn", "alexnet", "nin", "googlenet", "mobilenet_v2", "resnet9"}
    expected |= {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")}
    expected |= {f"resnet{d}" for d in (18, 34, 50)} | {f"cifar_resnet{d}" for d in (20, 32, 44, 56, 110)}
    assert expected <= set(list_models())
    assert list_models("cifar_*") == sorted(f"cifar_resnet{d}" for d in (20, 32, 44, 56, 110))
    assert is_model("vgg11") and is_model("tv:anything") and not is_model("vgg12")
    for name, fn in _MODEL_ENTRYPOINTS.items():
        params = inspect.signature(fn).parameters
        assert params["num_classes"].default == 10 and params["in_channels"].default == 3, name
        assert fn.__doc__, name


def test_stems_and_224_inputs() -> None:
    assert create_model("resnet18").forward_features(torch.zeros(1, 3, 32, 32)).shape[-1] == 4  # small stem
    with torch.no_grad():
        for name, kwargs in [
            ("lenet5", {}),
            ("alexnet", {}),
            ("resnet18", {"small_input": False}),
            ("mobilenet_v2", {"small_input": False, "width_mult": 0.5}),
        ]:
            net = create_model(name, num_classes=7, **kwargs).eval()
            assert net(torch.randn(1, 3, 224, 224)).shape == (1, 7), name
    assert create_model("resnet18", small_input=False).forward_features(torch.zeros(1, 3, 224, 224)).shape[-1] == 7


def test_resnet9_channels_last_bf16() -> None:
    net = create_model("resnet9", num_classes=10).to(memory_format=torch.channels_last)
    assert net.scale == 0.125
    x = torch.randn(2, 3, 16, 16).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.shape == (2, 10) and torch.isfinite(out.float()).all()


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet7'.*cifar_resnet20.*lenet5"):
        create_model("resnet7")
    with pytest.raises(ValueError, match="unknown torchvision model 'resnet7'.*alexnet"):
        create_model("tv:resnet7")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model("lenet5", num_classes=1)
    with pytest.raises(ValueError, match="in_channels"):
        create_model("lenet5", in_channels=0)


def test_too_small_input_names_model_and_minimum() -> None:
    net = create_model("vgg11", num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match=r"^vgg11 cannot take 8x8 inputs: .* at least 32x32$"):
        net(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="lenet5_bn"):
        create_model("lenet5_bn")(torch.zeros(1, 3, 2, 2))


def test_tv_weights_from_file(tmp_path) -> None:
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "resnet18_7.pt"
    torch.save(source.state_dict(), path)

    # Different class count: the body is loaded, the head re-initialised for 10 classes.
    net = create_model("tv:resnet18", num_classes=10, weights=str(path))
    assert torch.equal(net.model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert net.classifier.out_features == 10
    # Same class count: the head is loaded too, and the wrapper computes what torchvision computes.
    net = create_model("tv:resnet18", num_classes=7, weights=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), source.eval()(x), atol=1e-5)

    # The wrapper's own layout round-trips, one-channel stem included.
    gray = create_model("tv:resnet18", num_classes=7, in_channels=1).eval()
    torch.save({"state_dict": gray.state_dict()}, tmp_path / "gray.pt")
    again = create_model("tv:resnet18", num_classes=7, in_channels=1, weights=str(tmp_path / "gray.pt")).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), gray(x))


def test_tv_weight_errors(tmp_path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        create_model("tv:resnet18", weights=str(missing))
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(ValueError, match="tv:resnet18"):
        create_model("tv:resnet18", weights=str(tmp_path / "r34.pt"))
