"""Model registry: CIFAR forms, torchvision fallback, errors, fx traceability, zero-init."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual

from dreg_dist.models import UnknownModelError, available_models, build_model, input_size

CIFAR_ARCHS = ["resnet18", "vgg16", "mobilenet_v2", "cnn_small", "cnn_small_gn", "cnn_tiny", "cnn_base"]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_cifar_output_shape(arch: str) -> None:
    model = build_model(arch, 10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert input_size(arch) == 32


@pytest.mark.parametrize(
    "arch, expected_millions",
    [
        ("resnet18", 11.17),
        ("vgg16", 14.73),
        ("mobilenet_v2", 2.24),
        ("cnn_small", 0.39),
        ("cnn_small_gn", 0.39),
        ("cnn_tiny", 0.098),
        ("cnn_base", 0.391),
    ],
)
def test_cifar_param_counts(arch: str, expected_millions: float) -> None:
    assert _n_params(build_model(arch, 10)) / 1e6 == pytest.approx(expected_millions, abs=0.02)


def test_resnet18_cifar_stem() -> None:
    model = build_model("resnet18", 10)
    assert isinstance(model.conv1, nn.Conv2d)
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert model.conv1.out_channels == 64 and model.conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    # torchvision module paths are kept: configs name DReg layers by them
    assert isinstance(model.get_submodule("layer4.1.conv2"), nn.Conv2d)


def test_vgg16_cifar_head_and_init() -> None:
    model = build_model("vgg16", 10)
    assert isinstance(model.classifier, nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (512, 10)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    first_conv = model.features[0]
    assert isinstance(first_conv, nn.Conv2d)
    # kaiming normal fan_out: std = sqrt(2 / (out_channels * 3 * 3))
    expected_std = (2.0 / (64 * 9)) ** 0.5
    assert first_conv.weight.std().item() == pytest.approx(expected_std, rel=0.2)
    assert torch.all(first_conv.bias == 0)


def test_mobilenet_v2_cifar_strides_and_spatial_size() -> None:
    model = build_model("mobilenet_v2", 10).eval()
    assert model.features[0][0].stride == (1, 1)
    assert isinstance(model.get_submodule("features.17.conv.1.0"), nn.Conv2d)
    depthwise = model.get_submodule("features.17.conv.1.0")
    assert depthwise.groups == depthwise.in_channels == 160 * 6
    # ...and it is the last 3x3 conv, i.e. DReg level R1
    convs3x3 = [
        n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert convs3x3[-1] == "features.17.conv.1.0"
    seen: dict[str, tuple[int, ...]] = {}
    model.features.register_forward_hook(lambda m, i, o: seen.__setitem__("shape", o.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert seen["shape"] == (1, 1280, 4, 4)


def test_cnn_small_layer_names() -> None:
    for arch, norm in [("cnn_small", nn.BatchNorm2d), ("cnn_small_gn", nn.GroupNorm), ("cnn_tiny", nn.BatchNorm2d),
                       ("cnn_base", nn.BatchNorm2d)]:
        model = build_model(arch, 10)
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        assert convs == ["conv1", "conv2", "conv3", "conv4"]
        assert model.conv4.kernel_size == (3, 3)
        assert all(isinstance(getattr(model, f"bn{i}"), norm) for i in range(1, 5))
        assert isinstance(model.fc, nn.Linear)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in build_model("cnn_small_gn", 10).modules())


def test_cnn_tiny_downsamples_in_the_stem() -> None:
    model = build_model("cnn_tiny", 10).eval()
    assert model.conv1.stride == (2, 2)
    assert [getattr(model, f"conv{i}").out_channels for i in range(1, 5)] == [16, 32, 64, 128]
    seen = {}
    model.conv4.register_forward_hook(lambda m, i, o: seen.__setitem__("shape", o.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert seen["shape"] == (1, 128, 4, 4)  # 32 -> 16 (stem) -> 8 -> 4 (pools)


def test_cnn_base_is_cnn_tiny_at_twice_the_width() -> None:
    tiny, base = build_model("cnn_tiny", 10), build_model("cnn_base", 10)
    assert base.conv1.stride == (2, 2)
    assert [getattr(base, f"conv{i}").out_channels for i in range(1, 5)] == [32, 64, 128, 256]
    for i in (2, 3, 4):  # inner convs: twice the inputs and twice the outputs
        assert getattr(base, f"conv{i}").weight.numel() == 4 * getattr(tiny, f"conv{i}").weight.numel()
    assert _n_params(base) / _n_params(tiny) == pytest.approx(3.96, abs=0.01)


def test_cnn_small_gn_is_independent_of_batch_split() -> None:
    model = build_model("cnn_small_gn", 10).train()
    x = torch.randn(4, 3, 32, 32)
    whole = model(x)
    halves = torch.cat([model(x[:2]), model(x[2:])])
    torch.testing.assert_close(whole, halves)


@pytest.mark.parametrize("arch", ["resnet50", "mobilenet_v3_small"])
def test_torchvision_by_name(arch: str) -> None:
    model = build_model(arch, 7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 7)
    assert input_size(arch) == 224


def test_torchvision_prefix_gives_imagenet_form() -> None:
    model = build_model("torchvision.resnet18", 10)
    assert any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert input_size("torchvision.resnet18") == 224
    assert input_size("resnet18") == 32


def test_googlenet_returns_plain_logits_in_training() -> None:
    model = build_model("googlenet", 5).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)


def test_unknown_model_suggests_close_name() -> None:
    with pytest.raises(UnknownModelError) as info:
        build_model("resnet19", 10)
    message = str(info.value)
    assert "resnet18" in message and "did you mean" in message
    assert "\n" not in message
    for arch in CIFAR_ARCHS:
        assert arch in message
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownModelError, match="cnn_small"):
        input_size("torchvision.cnn_small")


def test_available_models_lists_cifar_names_first() -> None:
    names = available_models()
    assert names[: len(CIFAR_ARCHS)] == CIFAR_ARCHS
    assert "torchvision" in names[-1]


@pytest.mark.parametrize(
    "arch, size", [(a, 32) for a in CIFAR_ARCHS] + [("resnet50", 64), ("mobilenet_v3_small", 64)]
)
def test_fx_traceable(arch: str, size: int) -> None:
    model = build_model(arch, 10).eval()
    traced = fx.symbolic_trace(model).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def _bn_weights_zero(bns: list[nn.Module]) -> bool:
    return all(torch.all(bn.weight == 0) for bn in bns)


def test_zero_init_residual_resnet18() -> None:
    model = build_model("resnet18", 10, zero_init_residual=True)
    last_bns = [model.get_submodule(f"layer{i}.{j}.bn2") for i in range(1, 5) for j in range(2)]
    assert _bn_weights_zero(last_bns)
    # only the last BN of each block, not the rest
    assert torch.all(model.bn1.weight == 1)
    assert torch.all(model.get_submodule("layer1.0.bn1").weight == 1)
    default = build_model("resnet18", 10)
    assert torch.all(default.get_submodule("layer1.0.bn2").weight == 1)


def test_zero_init_residual_mobilenet_v2() -> None:
    model = build_model("mobilenet_v2", 10, zero_init_residual=True)
    blocks = [m for m in model.features if isinstance(m, InvertedResidual)]
    residual = [b for b in blocks if b.use_res_connect]
    plain = [b for b in blocks if not b.use_res_connect]
    assert residual and plain
    assert _bn_weights_zero([b.conv[-1] for b in residual])
    assert all(torch.all(b.conv[-1].weight == 1) for b in plain)
    # the expand/depthwise BNs inside residual blocks stay at 1
    inner = [
        m
        for b in residual
        for m in b.conv.modules()
        if isinstance(m, nn.BatchNorm2d) and m is not b.conv[-1]
    ]
    assert inner and all(torch.all(bn.weight == 1) for bn in inner)


def test_zero_init_residual_torchvision_resnet50() -> None:
    model = build_model("resnet50", 7, zero_init_residual=True)
    assert _bn_weights_zero([model.get_submodule(f"layer{i}.0.bn3") for i in range(1, 5)])
    assert torch.all(model.get_submodule("layer1.0.bn2").weight == 1)


def test_zero_init_residual_ignored_for_plain_models() -> None:
    model = build_model("vgg16", 10, zero_init_residual=True)
    assert all(
        torch.all(m.weight == 1) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    )
