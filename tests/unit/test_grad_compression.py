"""train.grad_compression: fp16/bf16 DDP compress hooks (gloo supports both on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dreg_dist.config import ConfigError, load_config
from dreg_dist.train.preflight import preflight

from ..conftest import REPO, launch

QUICKSTART = "configs/quickstart.yaml"


def test_default_is_none_and_values_are_checked() -> None:
    assert load_config(REPO / QUICKSTART).train.grad_compression == "none"
    assert load_config(REPO / QUICKSTART, ["train.grad_compression=bf16"]).train.grad_compression == "bf16"
    with pytest.raises(ConfigError):
        load_config(REPO / QUICKSTART, ["train.grad_compression=int8"])


@pytest.mark.parametrize("codec", ["fp16", "bf16"])
def test_cannot_combine_with_gradientmix_hook(codec: str) -> None:
    cfg = load_config(REPO / QUICKSTART, [f"train.grad_compression={codec}", "method=gradientmix"])
    with pytest.raises(ConfigError, match="can't be combined"):
        preflight(cfg, world_size=2)
    # Strength 0 registers no hook, so compression is allowed; so is every other method.
    preflight(load_config(REPO / QUICKSTART, [f"train.grad_compression={codec}", "method=gradientmix",
                                                    "methods.gradientmix.strength=0"]), world_size=2)
    preflight(load_config(REPO / QUICKSTART, [f"train.grad_compression={codec}"]), world_size=2)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.mark.distributed
def test_two_gloo_workers_train_with_compressed_gradients(tmp_path: Path, tiny: list[str]) -> None:
    overrides = tiny + ["train.epochs=1"]
    runs = {}
    # fp16 goes through the same registration path with torch's fp16 hook; one codec suffices here.
    for codec in ("none", "bf16"):
        done = launch(2, QUICKSTART, tmp_path / codec, overrides + [f"train.grad_compression={codec}"])
        assert done.returncode == 0, (codec, done.stdout[-2000:], done.stderr[-2000:])
        summary = json.loads((tmp_path / codec / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["world_size"] == 2
        runs[codec] = _weights(tmp_path / codec)
    for codec in ("bf16",):
        moved = False
        for key, ref in runs["none"].items():
            if not ref.is_floating_point():
                continue
            got = runs[codec][key]
            assert torch.isfinite(got).all(), (codec, key)
            # Close to the fp32 all-reduce (a few low-precision roundings per step) ...
            assert torch.allclose(got, ref, rtol=0, atol=2e-2), (codec, key, (got - ref).abs().max())
            moved |= not torch.equal(got, ref)
        # ... but not identical: the hook really ran.
        assert moved, codec
