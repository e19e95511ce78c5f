"""The dual-path surgery: each path equals the plain model carrying that branch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dreg_dist.dreg import (
    DRegLayerError,
    DualPathModel,
    UnsupportedModelError,
    level_candidates,
    plain_model,
    trace,
)
from dreg_dist.models import build_model


def _train_one_step(dual: DualPathModel, x: torch.Tensor) -> None:
    """Move BN statistics and both branches so that R and L really differ."""
    opt = torch.optim.SGD(dual.parameters(), lr=0.05)
    dual.train()
    logits_r, logits_l = dual(x)
    (logits_r.logsumexp(1).mean() - 2 * logits_l[:, 0].mean()).backward()
    opt.step()
    dual.eval()


CASES = [
    ("resnet18", 32, "R1", "layer4.1.conv2"),
    ("vgg16", 32, "R1", "features.40"),
    ("mobilenet_v2", 32, "R1", "features.17.conv.1.0"),
    ("cnn_small", 32, "R1", "conv4"),
    ("resnet50", 64, "R1", "layer4.2.conv2"),
    ("regnet_y_400mf", 64, "R1", "trunk_output.block4.block4-5.f.b.0"),
    # Its late depthwise convs are 5x5, so R1 would be an early layer: name the last one.
    ("mobilenet_v3_small", 64, "features.11.block.1.0", "features.11.block.1.0"),
]


@pytest.mark.parametrize("arch,size,layer,expected_path", CASES)
def test_each_path_equals_plain_model_with_that_branch(
    arch: str, size: int, layer: str, expected_path: str
) -> None:
    torch.manual_seed(0)
    dual = DualPathModel(build_model(arch, 10), layer, seed=1, init_scale=0.3)
    assert dual.layer_path == expected_path
    x = torch.randn(4, 3, size, size)
    _train_one_step(dual, x)
    with torch.no_grad():
        both_r, both_l = dual(x)
        for path, both in (("R", both_r), ("L", both_l)):
            single = dual(x, path=path)
            reference = plain_model(dual, path).eval()(x)
            assert torch.allclose(single, reference, atol=1e-5, rtol=0)
            assert torch.allclose(both, reference, atol=1e-5, rtol=0)
        # Batch statistics: some random-init nets are near-constant in eval mode.
        train_r, train_l = dual.train()(x)
        assert not torch.allclose(train_r, train_l, atol=1e-6), "paths should differ"


def test_trunk_runs_once_and_downstream_twice() -> None:
    model = build_model("resnet18", 10)
    dual = DualPathModel(model, "R1")
    calls = {"conv1": 0, "fc": 0, "layer4.1.conv1": 0}
    for name in calls:
        dual.net.get_submodule(name).register_forward_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
        )
    dual(torch.randn(2, 3, 32, 32))
    assert calls == {"conv1": 1, "layer4.1.conv1": 1, "fc": 2}


def test_layer_in_residual_shortcut_does_not_leak_between_paths() -> None:
    # torchvision's BasicBlock does ``out += identity``; with the layer in the shortcut
    # the in-place add would write path R's result into the shared trunk tensor.
    torch.manual_seed(0)
    dual = DualPathModel(build_model("resnet18", 10), "layer4.0.downsample.0", seed=3)
    x = torch.randn(4, 3, 32, 32)
    _train_one_step(dual, x)
    with torch.no_grad():
        r, l = dual(x)
        assert torch.allclose(r, plain_model(dual, "R").eval()(x), atol=1e-5, rtol=0)
        assert torch.allclose(l, plain_model(dual, "L").eval()(x), atol=1e-5, rtol=0)


def test_linear_layer_can_be_the_dreg_layer() -> None:
    torch.manual_seed(0)
    dual = DualPathModel(build_model("cnn_small", 10), "fc", seed=0)
    assert dual.site.norm_path is None
    x = torch.randn(3, 3, 32, 32)
    _train_one_step(dual, x)
    with torch.no_grad():
        r, l = dual(x)
        assert torch.allclose(l, plain_model(dual, "L").eval()(x), atol=1e-5, rtol=0)
        assert not torch.allclose(r, l)


def test_reverse_topological_levels() -> None:
    gm = trace(build_model("resnet18", 10))
    levels = level_candidates(gm)
    assert levels[:3] == ["layer4.1.conv2", "layer4.1.conv1", "layer4.0.conv2"]
    assert DualPathModel(build_model("resnet18", 10), "R3").layer_path == "layer4.0.conv2"


def test_per_path_norm_has_own_statistics_and_shared_norm_does_not() -> None:
    x = torch.randn(8, 3, 32, 32)
    per_path = DualPathModel(build_model("cnn_small", 10), "R1", norm="per_path")
    shared = DualPathModel(build_model("cnn_small", 10), "R1", norm="shared")
    assert per_path.site.norm_path == "bn4"
    assert any(k.startswith("norm_L.") for k in per_path.state_dict())
    assert not any(k.startswith("norm_L.") for k in shared.state_dict())
    per_path.train()(x)
    shared.train()(x)
    # Shared: both paths pass through the same BN, which counts two batches per step.
    assert int(shared.net.bn4.num_batches_tracked) == 2
    assert int(per_path.net.bn4.num_batches_tracked) == 1
    assert int(per_path.norm_L.num_batches_tracked) == 1
    assert not torch.allclose(per_path.net.bn4.running_var, per_path.norm_L.running_var)


def test_branch_init_is_seeded_small_and_nonzero() -> None:
    base = build_model("cnn_small", 10)
    a = DualPathModel(base, "R1", seed=7, init_scale=0.01)
    same_seed = DualPathModel(base, "R1", seed=7, init_scale=0.01)
    other_seed = DualPathModel(base, "R1", seed=8, init_scale=0.01)
    w_r, w_l = a.branch_weights()
    assert torch.equal(w_l, same_seed.branch_weights()[1])
    assert not torch.equal(w_l, other_seed.branch_weights()[1])
    rel = (w_r - w_l).norm() / w_r.norm()
    assert 0.005 < rel.item() < 0.02


def test_sync_bn_conversion_after_wrapping_is_used_by_forward() -> None:
    dual = DualPathModel(build_model("cnn_small", 10), "R1").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = dual(x)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(dual)
    assert isinstance(converted.net.bn1, nn.SyncBatchNorm)
    assert isinstance(converted.norm_L, nn.SyncBatchNorm)
    calls = []
    converted.net.bn1.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        after = converted(x)
    assert calls, "forward must call the live (converted) module"
    assert torch.allclose(before[0], after[0]) and torch.allclose(before[1], after[1])


@pytest.mark.parametrize(
    "layer,needle",
    [
        ("layer9.conv", "valid choices: R1=layer4.1.conv2"),
        ("R99", "levels R1..R"),
        ("layer4.1.bn2", "DReg replicates a Conv2d or Linear layer"),
    ],
)
def test_bad_layer_errors_list_candidates(layer: str, needle: str) -> None:
    with pytest.raises(DRegLayerError) as info:
        DualPathModel(build_model("resnet18", 10), layer)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_untraceable_model_is_rejected_with_advice() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if y.mean() > 0:  # data-dependent branch: not traceable
                y = -y
            return y.flatten(1)

    with pytest.raises(UnsupportedModelError, match="cannot be traced by torch.fx"):
        DualPathModel(DataDependent(), "R1")


def test_layer_called_twice_is_rejected() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(x)).mean((2, 3))

    with pytest.raises(DRegLayerError, match="called 2 times"):
        DualPathModel(Twice(), "conv")


def test_zero_init_scale_is_rejected() -> None:
    with pytest.raises(ValueError, match="init_scale must be > 0"):
        DualPathModel(build_model("cnn_small", 10), "R1", init_scale=0.0)


def test_per_path_gives_path_l_its_own_downstream_statistics_and_export_equals_a_lone_path() -> None:
    """MobileNetV2 has two norm layers after the DReg layer's own (features.17.conv.3,
    features.18.1). Under per_path each path's statistics come from its activations alone: after
    training forwards of the dual model, the export of either path equals a plain model that
    saw the same batches by itself; with shared downstream statistics it would not."""
    from dreg_dist.dreg import plain_model

    torch.manual_seed(0)
    dual = DualPathModel(build_model("mobilenet_v2", 10), "R1", norm="per_path")
    assert dual.stats_paths == ("features.17.conv.3", "features.18.1")
    shared_affine = dual.stats_L["features__18__1"].weight is dual.net.features[18][1].weight
    assert shared_affine  # the rest of the network stays shared: statistics only
    alone = {p: plain_model(dual, p).train() for p in ("R", "L")}
    dual.train()
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(6, 3, 32, 32)
            dual(x)
            for model in alone.values():
                model(x)
    for path, model in alone.items():
        exported, reference = plain_model(dual, path).state_dict(), model.state_dict()
        for key, value in reference.items():
            torch.testing.assert_close(exported[key], value, rtol=0, atol=0, msg=f"{path} {key}")
    l_var = dual.stats_L["features__18__1"].running_var
    assert not torch.equal(l_var, dual.net.features[18][1].running_var)  # the paths' statistics differ

    # A state_dict of an earlier release (no stats_L keys) loads: path L starts from the shared statistics.
    old = {k: v.clone() for k, v in dual.state_dict().items() if not k.startswith("stats_L.")}
    dual.load_state_dict(old)
    assert torch.equal(dual.stats_L["features__18__1"].running_var, old["net.features.18.1.running_var"])
    shared = DualPathModel(build_model("mobilenet_v2", 10), "R1", norm="shared")
    assert shared.stats_paths == () and not any(k.startswith("stats_L.") for k in shared.state_dict())
