"""Best-path export: strict load, equal logits, self-contained artifact, cost report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from dreg_dist.dreg import DualPathModel, choose_path, cost_report, path_state_dict, write_export
from dreg_dist.models import build_model


def _trained_dual(arch: str) -> DualPathModel:
    torch.manual_seed(0)
    dual = DualPathModel(build_model(arch, 10), "R1", seed=0)
    opt = torch.optim.SGD(dual.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(2):
        r, l = dual(x)
        (torch.nn.functional.cross_entropy(r, y) + 3 * torch.nn.functional.cross_entropy(l, y)).backward()
        opt.step()
        opt.zero_grad()
    return dual.eval()


@pytest.mark.parametrize("path", ["R", "L"])
def test_path_state_dict_loads_strictly_into_registry_model(path: str) -> None:
    dual = _trained_dual("resnet18")
    plain = build_model("resnet18", 10)
    plain.load_state_dict(path_state_dict(dual, path), strict=True)
    plain.eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert (plain(x) - dual(x, path=path)).abs().max().item() <= 1e-5


def test_choose_path() -> None:
    assert choose_path({"R": 0.5, "L": 0.6}) == "L"
    assert choose_path({"R": 0.6, "L": 0.6}) == "R"
    assert choose_path({"R": 0.9, "L": 0.1}, "L") == "L"
    with pytest.raises(ValueError, match="needs the validation accuracy of both paths"):
        choose_path({"R": 0.5})


def test_export_artifact_loads_without_the_package(tmp_path: Path) -> None:
    dual = _trained_dual("cnn_small")
    meta = write_export(
        dual,
        tmp_path / "export",
        arch="cnn_small",
        num_classes=10,
        val_acc={"R": 0.40, "L": 0.55},
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    assert meta["path"] == "L"
    on_disk = json.loads((tmp_path / "export" / "meta.json").read_text())
    assert on_disk["dreg_layer"] == "conv4"
    assert on_disk["val_acc"] == {"R": 0.40, "L": 0.55}
    assert on_disk["normalization"]["std"] == [0.25, 0.25, 0.25]
    assert sorted(os.listdir(tmp_path / "export")) == ["meta.json", "model.pt2", "model_state.pt"]

    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = dual(x, path="L")
    torch.save({"x": x, "expected": expected}, tmp_path / "probe.pt")
    script = (
        "import sys, torch\n"
        f"probe = torch.load({str(tmp_path / 'probe.pt')!r})\n"
        f"m = torch.export.load({str(tmp_path / 'export' / 'model.pt2')!r}).module()\n"
        "out = m(probe['x'])\n"
        "assert 'dreg_dist' not in sys.modules, 'artifact pulled in dreg_dist'\n"
        "print((out - probe['expected']).abs().max().item())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -I: isolated mode (no cwd on sys.path, no user site); cwd elsewhere, so the repo is out of reach.
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) <= 1e-5

    state = torch.load(tmp_path / "export" / "model_state.pt", weights_only=True)
    build_model("cnn_small", 10).load_state_dict(state, strict=True)


def test_cost_report_counts_the_extra_branch() -> None:
    dual = DualPathModel(build_model("resnet18", 10), "R1")
    before = {k: v.clone() for k, v in dual.state_dict().items()}
    report = cost_report(dual, (3, 32, 32))
    conv = dual.net.layer4[1].conv2
    bn = dual.net.layer4[1].bn2
    extra = conv.weight.numel() + bn.weight.numel() + bn.bias.numel()
    assert report.dual_params - report.plain_params == extra
    assert 0 < report.extra_forward_pct < 15
    assert 0 < report.extra_train_pct < 15
    assert report.dual_train_flops > 2 * report.dual_forward_flops
    # Counting must not touch the caller's BN statistics.
    for k, v in dual.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_export_of_a_channels_last_model_is_contiguous_and_silent(tmp_path: Path) -> None:
    from dreg_dist.dreg import write_plain_export

    model = build_model("cnn_tiny", 10).to(memory_format=torch.channels_last).eval()
    with warnings.catch_warnings():
        # torch.export.save warns on strided (channels_last) weights
        warnings.filterwarnings("error", message="No complete tensor")
        write_plain_export(model, tmp_path, arch="cnn_tiny", num_classes=10, val_acc={"model": 0.5},
                           path=None, dreg_layer=None)
    state = torch.load(tmp_path / "model_state.pt", weights_only=True)
    assert all(v.is_contiguous() for v in state.values())
    x = torch.randn(3, 3, 32, 32)
    program = torch.export.load(tmp_path / "model.pt2").module()
    torch.testing.assert_close(program(x), model(x))
    assert model.conv1.weight.stride() == (27, 1, 9, 3)  # the caller's model is left as it was
