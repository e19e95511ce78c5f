"""The gradient noise scale: its estimators against a problem with a closed-form answer, its
moving averages, the batch-size advice, and what a run records (one worker).

Linear regression with Gaussian inputs x ~ N(0, I_d) and label noise y = x.w* + sigma eps has,
at weights w with delta = w - w*, the per-example gradient g = x (x.delta - sigma eps) of the
loss (x.w - y)^2 / 2, so G = delta and (Isserlis) E[g g'] = (|delta|^2 + sigma^2) I + 2 delta delta':
|G|^2 = |delta|^2 and tr(Sigma) = (d + 1)|delta|^2 + d sigma^2.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dreg_dist.config import ConfigError, load_config
from dreg_dist.methods.base import StepContext
from dreg_dist.noise_scale import (STEADY_RULE, advice, estimates, examples_over_min, simple_noise_scale,
                                   steady_noise_scale, steps_over_min)
from dreg_dist.train.noise import NoiseScaleMeter
from dreg_dist.train.preflight import preflight

from ..conftest import REPO, assert_ok, launch

D, SIGMA = 20, 1.0


def truth(delta: torch.Tensor) -> tuple[float, float]:
    g_sq = float(delta.pow(2).sum())
    return g_sq, (D + 1) * g_sq + D * SIGMA ** 2


def regression(seed: int = 0) -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, D) / D ** 0.5)
    return model, torch.zeros(D)


def accumulate(model: nn.Module, ctx: StepContext, wstar: torch.Tensor, batch: int, blocks: int,
               gen: torch.Generator, loss_scale: float = 1.0) -> None:
    """One step's backward, as plain accumulation does it: each block's mean loss over blocks."""
    b = batch // blocks
    for i in range(blocks):
        x = torch.randn(b, D, generator=gen)
        y = x @ wstar + SIGMA * torch.randn(b, generator=gen)
        with ctx.no_sync(last=i == blocks - 1, samples=b):
            loss = 0.5 * (model(x)[:, 0] - y).pow(2).mean()
            (loss / blocks * loss_scale).backward()


def test_estimators_are_exact_on_their_defining_equations() -> None:
    # E|G_B|^2 = |G|^2 + tr(Sigma) / B: feed the expectations, get the truth back.
    g_sq, trace = 2.0, 300.0
    small, big = g_sq + trace / 32, g_sq + trace / 512
    got = estimates(small, big, 32, 512)
    assert got == pytest.approx((g_sq, trace))
    assert simple_noise_scale(*got) == pytest.approx(150.0)
    assert simple_noise_scale(-1.0, 3.0) is None
    with pytest.raises(ValueError, match="b_small < b_big"):
        estimates(small, big, 512, 512)


@pytest.mark.parametrize("batch,blocks", [(64, 4), (256, 4), (1024, 2)])
def test_one_worker_estimate_is_within_ten_percent_of_the_closed_form(batch: int, blocks: int) -> None:
    model, wstar = regression()
    g_sq, trace = truth(model.weight.detach()[0] - wstar)
    meter = NoiseScaleMeter(model, torch.device("cpu"), batch, 1, decay=0.999, enabled=True, hookable=False,
                            scale=lambda: None)
    assert meter.mode == "block"
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2000):  # the weights stay put: the truth is the same at every step
        model.zero_grad(set_to_none=True)
        ctx = StepContext(model, model, contextlib.nullcontext, scaler, first_block=meter.first_block())
        accumulate(model, ctx, wstar, batch, blocks, gen)
        meter.step([p.grad for p in model.parameters()], torch.tensor(False))
    assert meter.small_batch == batch // blocks
    got = {k: float(v) for k, v in meter.rank_values().items()}
    assert got["grad_sq_norm"] == pytest.approx(g_sq, rel=0.10)
    assert got["grad_trace_cov"] == pytest.approx(trace, rel=0.10)
    logged = meter.logged(got)
    assert logged["noise_scale"] == pytest.approx(trace / g_sq, rel=0.15)


def test_skipped_steps_and_single_blocks_leave_the_averages_alone() -> None:
    model, wstar = regression()
    meter = NoiseScaleMeter(model, torch.device("cpu"), 64, 1, decay=0.9, enabled=True, hookable=False,
                            scale=lambda: None)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    gen = torch.Generator().manual_seed(2)

    def step(blocks: int, skipped: bool) -> None:
        model.zero_grad(set_to_none=True)
        ctx = StepContext(model, model, contextlib.nullcontext, scaler, first_block=meter.first_block())
        accumulate(model, ctx, wstar, 64, blocks, gen)
        meter.step([p.grad for p in model.parameters()], torch.tensor(skipped))

    step(1, False)  # one block: no small batch this step
    assert not meter.measured and meter.rank_values() == {}
    assert "accumulation_steps >= 2" in (meter.why_off() or "")
    assert meter.why_off() is None  # said once
    step(2, False)
    before = {k: float(v) for k, v in meter.rank_values().items()}
    step(2, True)
    assert {k: float(v) for k, v in meter.rank_values().items()} == before


def test_an_fp16_scale_is_divided_out() -> None:
    # fp16 training backwards the loss times the grad scaler's scale: the meter divides it out.
    model, wstar = regression()
    values = []
    for scale in (None, torch.tensor(1024.0)):
        meter = NoiseScaleMeter(model, torch.device("cpu"), 64, 1, decay=0.5, enabled=True, hookable=False,
                                scale=lambda s=scale: s)
        gen = torch.Generator().manual_seed(3)
        model.zero_grad(set_to_none=True)
        ctx = StepContext(model, model, contextlib.nullcontext, torch.amp.GradScaler("cpu", enabled=False),
                          first_block=meter.first_block())
        accumulate(model, ctx, wstar, 64, 2, gen, loss_scale=1.0 if scale is None else float(scale))
        meter.step([p.grad for p in model.parameters()], torch.tensor(False))
        values.append({k: float(v) for k, v in meter.rank_values().items()})
    assert values[1] == pytest.approx(values[0], rel=1e-5)


def test_advice_states_the_model_predictions() -> None:
    assert steps_over_min(4096, 700) == pytest.approx(1 + 700 / 4096)
    assert examples_over_min(4096, 700) == pytest.approx(1 + 4096 / 700)
    text = advice(700.0, 4096)
    assert "Batch 4096 is 5.9x the measured noise scale (B_simple ~ 700)" in text
    assert "~1.17x the minimum number of steps" in text and "~6.85x the minimum number of examples" in text
    assert "Batch 512 would need ~2.37x the minimum steps" in text
    assert "well-tuned learning rate" in text
    assert "within a factor of two" in advice(600.0, 1024, assumptions=False)
    assert "below the measured noise scale" in advice(4000.0, 256)
    assert "not measured" in advice(None, 256)
    assert not math.isnan(examples_over_min(1, 1))


def test_the_steady_noise_scale_leaves_out_the_annealed_end() -> None:
    # a cosine-like decay while B_simple climbs: the median of the points at >= half the peak rate
    lrs = [0.1, 0.5, 1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.01]
    bs = [50, 100, 200, 300, 400, 500, 2000, 20000, 400000]
    assert steady_noise_scale(zip(lrs, bs)) == 300  # median of 100, 200, 300, 400, 500
    assert steady_noise_scale(zip([1.0] * 4, [10, 20, 30, 1000])) == 25  # constant rate: the whole run
    assert steady_noise_scale([(None, 5.0), (1.0, None)]) is None
    # the peak is over every logged rate, also where B_simple was undefined: 0.45 is below half of 1.0
    assert steady_noise_scale([(1.0, None), (0.6, 100), (0.45, 5000)]) == 100
    assert advice(300.0, 4096, of=STEADY_RULE).startswith(f"Batch 4096 is 13.7x the measured noise scale "
                                                           f"(B_simple ~ 300, {STEADY_RULE})")


def test_a_run_records_its_noise_scale_and_says_when_it_cannot(tmp_path: Path, tiny: list[str]) -> None:
    run = tmp_path / "acc2"
    assert_ok(launch(1, "configs/quickstart.yaml", run, tiny + ["method=vanilla", "train.epochs=1",
                                                                  "train.accumulation_steps=2"]))
    summary = json.loads((run / "summary.json").read_text())["noise_scale"]
    assert summary["measured"] and summary["mode"] == "block" and summary["small_batch"] == 32
    assert summary["final"]["noise_scale"] > 0 and len(summary["history"]) == 1
    # one evaluation, so the value near the peak rate is that evaluation's, and the advice names it
    assert summary["history"][0]["lr"] >= 0 and summary["steady"] == pytest.approx(summary["final"]["noise_scale"])
    assert summary["advice"].startswith("Batch 64 is") and "well-tuned learning rate" in summary["advice"]
    assert STEADY_RULE in summary["advice"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all({"grad_sq_norm", "grad_trace_cov"} <= set(r) for r in logged if r.get("kind") == "train")

    single = tmp_path / "acc1"
    done = launch(1, "configs/quickstart.yaml", single, tiny + ["method=vanilla", "train.epochs=1"])
    assert_ok(done)
    assert done.stdout.count("the gradient noise scale is not measured") == 1
    assert json.loads((single / "summary.json").read_text())["noise_scale"]["measured"] is False


def test_a_run_resumed_with_nothing_left_to_train_keeps_its_noise_scale() -> None:
    # A run killed after its last checkpoint and launched again trains no step: its summary must
    # still say what the run measured (it said "not measured" before, a study's selected run among them).
    model, wstar = regression()

    def meter() -> NoiseScaleMeter:
        return NoiseScaleMeter(model, torch.device("cpu"), 64, 1, decay=0.9, enabled=True, hookable=False,
                               scale=lambda: None)

    first = meter()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        ctx = StepContext(model, model, contextlib.nullcontext, scaler, first_block=first.first_block())
        accumulate(model, ctx, wstar, 64, 4, gen)
        first.step([p.grad for p in model.parameters()], torch.tensor(False))
    first.logged({k: float(v) for k, v in first.rank_values().items()})  # one rank: its means are its own
    first.record(step=3, epoch=1.0, lr=0.1)
    done = first.summary()
    assert done["measured"] and done["final"]["noise_scale"] > 0 and done["small_batch"] == 16

    resumed = meter()
    resumed.load_state_dict(first.state_dict())
    again = resumed.summary()
    assert again["measured"] and again["final"] == done["final"] and again["history"] == done["history"]
    assert again["small_batch"] == 16 and again["steady"] == pytest.approx(done["steady"])
    assert meter().summary() == {"measured": False}  # a run that never measured still says so


def test_a_bad_moving_average_decay_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"log.noise_scale_ema' must be in \(0, 1\), got 1.5; try 0.95"):
        preflight(load_config(REPO / "configs/quickstart.yaml", ["log.noise_scale_ema=1.5"]), 1)


def test_the_trainer_measures_before_the_update_touches_the_gradient(tmp_path: Path, tiny: list[str]) -> None:
    # Clipping (and on CUDA the fp16 grad scaler's unscale and update) rewrite .grad in place
    # during the update: the first step's estimate (same weights in both runs) must not see it.
    first = {}
    for name, extra in {"plain": [], "clipped": ["train.grad_clip_norm=0.001"]}.items():
        run = tmp_path / name
        assert_ok(launch(1, "configs/quickstart.yaml", run, tiny + ["method=vanilla", "train.epochs=1",
                                                                      "train.accumulation_steps=2", *extra]))
        train = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        first[name] = next(r for r in train if r.get("kind") == "train")
    for key in ("grad_sq_norm", "grad_trace_cov"):
        assert first["clipped"][key] == pytest.approx(first["plain"][key], rel=1e-5), key
