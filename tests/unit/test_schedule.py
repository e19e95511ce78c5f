"""Learning-rate scaling and the per-iteration schedule."""

from __future__ import annotations

import math

import pytest
import torch

from dreg_dist.config.schema import OptimConfig
from dreg_dist.optim import build_optimizer, build_scheduler, lr_multiplier, param_groups, peak_lr


def test_lr_scaling_rules() -> None:
    assert peak_lr(OptimConfig(lr=0.1, lr_scaling="linear"), 4096) == pytest.approx(1.6)
    assert peak_lr(OptimConfig(lr=0.1, lr_scaling="sqrt"), 4096) == pytest.approx(0.4)
    assert peak_lr(OptimConfig(lr=0.1, lr_scaling="none"), 4096) == pytest.approx(0.1)


def test_warmup_then_cosine() -> None:
    cfg = OptimConfig(warmup_epochs=2, warmup_start_factor=0.1, schedule="cosine")
    f = lr_multiplier(cfg, steps_per_epoch=10, epochs=12)
    assert f(0) == pytest.approx(0.1)
    assert f(10) == pytest.approx(0.55)
    assert f(20) == pytest.approx(1.0)
    assert f(70) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(120) == pytest.approx(0.0, abs=1e-12)


def test_step_and_poly_decay() -> None:
    step = lr_multiplier(OptimConfig(warmup_epochs=0, schedule="multistep", milestones=[2, 4], gamma=0.1), 5, 6)
    assert [round(step(s), 6) for s in (0, 9, 10, 19, 20)] == [1.0, 1.0, 0.1, 0.1, 0.01]
    poly = lr_multiplier(OptimConfig(warmup_epochs=0, schedule="poly", poly_power=2.0), 10, 1)
    assert poly(5) == pytest.approx(0.25)


def test_scheduler_steps_per_iteration() -> None:
    model = torch.nn.Linear(2, 2)
    cfg = OptimConfig(lr=0.1, warmup_epochs=1, warmup_start_factor=0.0, schedule="constant")
    opt = build_optimizer(model, cfg, lr=1.0)
    sched = build_scheduler(opt, cfg, steps_per_epoch=4, epochs=2)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_no_weight_decay_on_norm_and_bias_by_default() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    groups = param_groups(model, 5e-4, decay_norm_and_bias=False)
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[1]["weight_decay"] == 0.0
    assert len(param_groups(model, 5e-4, decay_norm_and_bias=True)) == 1
