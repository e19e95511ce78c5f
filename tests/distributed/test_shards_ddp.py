"""Training from shards end to end: real torchrun/gloo workers, DataLoader worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dreg_dist.data.shard_writer import convert

from ..conftest import assert_ok, final_weights, launch
from ..unit.test_shards import write_jpeg_tree

pytestmark = pytest.mark.distributed

QUICKSTART_CONFIG = "configs/quickstart.yaml"


def test_two_workers_on_shards_train_like_one(tmp_path: Path, tiny: list[str]) -> None:
    tree = write_jpeg_tree(tmp_path / "tree", classes=2, train=20, val=4)
    out = tmp_path / "shards"
    convert(tree, out, shard_mb=0.02, workers=1)  # several shards per split
    # GroupNorm model, so splitting the batch over workers cannot change the result. The
    # 2-worker run decodes in a DataLoader process per rank, the 1-worker run inline.
    overrides = tiny + [
        "data.name=shards", f"data.root={out}", "data.image_size=16", "data.val_size=8",
        "data.decoder=torchvision", "model.num_classes=2", "train.global_batch_size=8", "train.epochs=1",
    ]
    one = launch(1, QUICKSTART_CONFIG, tmp_path / "k1", overrides + ["data.num_workers=0"])
    assert_ok(one)
    two = launch(2, QUICKSTART_CONFIG, tmp_path / "k2", overrides + ["data.num_workers=1"])
    assert_ok(two)
    assert "4 steps/epoch" in two.stdout and "skipped" not in two.stderr
    w1, w2 = final_weights(tmp_path / "k1"), final_weights(tmp_path / "k2")
    assert w1.keys() == w2.keys()
    for key in w1:
        if w1[key].is_floating_point():
            assert torch.allclose(w1[key], w2[key], atol=1e-4, rtol=0), key
    summary = json.loads((tmp_path / "k2" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_steps"] == 4
    assert summary["test"]["count"] == 8  # every val/ image scored exactly once across the two workers
