"""The large-batch recipe options, exercised through real training runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ..conftest import assert_ok, final_weights, launch

pytestmark = pytest.mark.distributed

QUICKSTART = "configs/quickstart.yaml"




def test_accumulation_two_workers_two_micro_steps_equal_one_worker_four(tmp_path: Path, tiny: list[str]) -> None:
    # BN-free model, so how the global batch of 64 is cut (2 x 2 x 16 or 1 x 4 x 16) cannot matter.
    overrides = tiny + ["train.epochs=1", "optim.lr=0.4", "optim.nesterov=true"]
    a = launch(2, QUICKSTART, tmp_path / "k2m2", overrides + ["train.accumulation_steps=2"])
    assert_ok(a)
    b = launch(1, QUICKSTART, tmp_path / "k1m4", overrides + ["train.accumulation_steps=4"])
    assert_ok(b)
    c = launch(1, QUICKSTART, tmp_path / "k1m1", overrides)
    assert_ok(c)
    wa, wb, wc = final_weights(tmp_path / "k2m2"), final_weights(tmp_path / "k1m4"), final_weights(tmp_path / "k1m1")
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-5, rtol=0), key
        assert torch.allclose(wb[key], wc[key], atol=1e-5, rtol=0), key


@pytest.mark.parametrize("optimizer", ["lars", "lamb"])
def test_lars_and_lamb_train_from_config(tmp_path: Path, tiny: list[str], optimizer: str) -> None:
    lr = "optim.lr=0.5" if optimizer == "lars" else "optim.lr=0.002"
    done = launch(1, QUICKSTART, tmp_path / optimizer, tiny + [f"optim.name={optimizer}", lr, "optim.schedule=poly"])
    assert_ok(done)
    summary = json.loads((tmp_path / optimizer / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert all(torch.isfinite(v).all() for v in final_weights(tmp_path / optimizer).values() if v.is_floating_point())


def test_grad_clipping_bounds_the_update(tmp_path: Path, tiny: list[str]) -> None:
    # Plain SGD (no momentum, no weight decay) with the global gradient norm clipped to
    # 1e-2 moves the weights by at most lr * 1e-2 per step in total norm; unclipped, the
    # gradient norm here is O(1), so a missing clip would show by orders of magnitude.
    base = tiny + ["train.epochs=1", "optim.momentum=0.0", "optim.weight_decay=0.0", "optim.schedule=constant",
                   "method=vanilla"]
    # lr 1e-30 leaves float32 weights untouched: this run's checkpoint holds the initial weights.
    start = launch(1, QUICKSTART, tmp_path / "start", base + ["optim.lr=1e-30", "train.stop_after_steps=1"])
    assert_ok(start)
    clipped = launch(1, QUICKSTART, tmp_path / "clip",
                     base + ["optim.lr=0.4", "train.stop_after_steps=2", "train.grad_clip_norm=1e-2"])
    assert_ok(clipped)
    w0, w1 = final_weights(tmp_path / "start"), final_weights(tmp_path / "clip")
    moved = torch.sqrt(sum(((w1[k] - w0[k]) ** 2).sum() for k in w0 if w0[k].is_floating_point()))
    lr = 0.4 * 64 / 256
    assert 0.2 * lr * 1e-2 < moved.item() <= 2 * lr * 1e-2 * 1.01


def test_bf16_autocast_label_smoothing_and_channels_last(tmp_path: Path, tiny: list[str]) -> None:
    done = launch(1, QUICKSTART, tmp_path / "bf16",
                  tiny + ["train.amp=bf16", "train.label_smoothing=0.1", "train.channels_last=true",
                          "model.arch=cnn_small", "train.epochs=1", "data.synthetic_train_size=192"])
    assert_ok(done)
    summary = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert summary["status"] == "finished"
    records = [json.loads(x) for x in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss_R"] for r in records if r["kind"] == "train"]
    assert losses and all(0 < v < 10 for v in losses)


def test_compiled_training_matches_eager(tmp_path: Path, tiny: list[str]) -> None:
    # torch.compile (inductor on CPU) must train the dual-path model to the eager weights.
    overrides = tiny + ["train.epochs=1", "train.stop_after_steps=2"]
    eager = launch(1, QUICKSTART, tmp_path / "eager", overrides)
    assert_ok(eager)
    compiled = launch(1, QUICKSTART, tmp_path / "compiled", overrides + ["train.compile=true"], timeout=600)
    assert_ok(compiled)
    a, b = final_weights(tmp_path / "eager"), final_weights(tmp_path / "compiled")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4, rtol=0), key
