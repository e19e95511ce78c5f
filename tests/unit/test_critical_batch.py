"""The batch-size sections of a report: target crossings, the fitted trade-off, and the
noise-scale section, from small hand-made records (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dreg_dist.report.critical import (TargetError, crossing, fit, noise_section, parse_targets,
                                       trade_off_section, tuned)
from dreg_dist.report.runs import load_runs


def test_targets_parse_and_refuse_in_one_line() -> None:
    assert [(t.metric, t.value) for t in parse_targets("val=0.6, loss=1.2")] == [("val", 0.6), ("loss", 1.2)]
    for bad in ("val=60", "acc=0.6", "loss=-1", "val=x", ""):
        with pytest.raises(TargetError, match="--targets"):
            parse_targets(bad)


def test_crossing_interpolates_between_the_points_around_the_target() -> None:
    assert crossing([(0, 0.1), (10, 0.5), (20, 0.7)], 0.6, rising=True) == pytest.approx(15)
    assert crossing([(0, 2.0), (10, 1.0)], 1.5, rising=False) == pytest.approx(5)
    assert crossing([(0, 0.1), (10, 0.5)], 0.6, rising=True) is None


def test_fit_recovers_the_critical_batch_of_an_exact_trade_off() -> None:
    s_min, e_min = 100.0, 80_000.0
    points = [(b, s_min + e_min / b) for b in (256, 512, 1024, 2048, 4096)]
    f = fit(points)
    assert f is not None and f.b_crit == pytest.approx(800) and f.loo == pytest.approx((800, 800))
    assert fit(points[:2]) is None


def _run(root: Path, batch: int, lr: float, steps_to: int, noise: float) -> None:
    """A finished vanilla run whose validation accuracy passes 0.6 at step ``steps_to``."""
    run = root / f"bs{batch}_lr{lr}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"method: vanilla\ntrain:\n  global_batch_size: {batch}\n  seed: 0\n"
                                     f"optim:\n  lr: {lr}\n")
    lines = [{"kind": "start", "world_size": 1, "method": "vanilla", "steps_per_epoch": 100}]
    for step in range(1, 2 * steps_to + 1):
        lines.append({"kind": "train", "step": step, "epoch": step / 100, "loss": 2.0 - step / (2 * steps_to),
                      "noise_scale": noise})
        if step % 2 == 0:
            lines.append({"kind": "val", "step": step, "epoch": step / 100, "acc": 0.6 * step / steps_to})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (run / "summary.json").write_text(json.dumps({
        "status": "finished", "method": "vanilla", "world_size": 1, "global_batch_size": batch,
        "best": {"epoch": 1, "path": None, "val_acc": {"model": 0.9}}, "test": {"acc": 0.5},
        "noise_scale": {"measured": True, "final": {"noise_scale": noise}}}))


def test_sections_tune_on_validation_and_set_the_fit_against_the_live_estimate(tmp_path: Path) -> None:
    s_min, e_min = 100, 80_000
    for b in (256, 512, 1024, 2048):
        _run(tmp_path, b, 0.1, round(s_min + e_min / b), noise=700)
        _run(tmp_path, b, 0.2, round(2 * (s_min + e_min / b)), noise=100)  # slower: not chosen
    runs = load_runs(tmp_path)
    targets = parse_targets("val=0.6")
    best = tuned(runs, targets[0])
    assert {b: x.run.lr for b, x in best.items() if x} == {256: 0.1, 512: 0.1, 1024: 0.1, 2048: 0.1}
    text = "\n".join(trade_off_section(runs, targets, {}))
    assert "**B_crit = E_min / S_min = 799**" in text and "median 700" in text  # 800 up to rounded steps
    noise = "\n".join(noise_section(runs, {}))
    assert "| vanilla | 256 | 2 | 700 | 100-700 | 700 |" in noise and "Batch 256" in noise  # the best-validation run


def test_noise_scale_rows_are_per_variant_where_labels_are_given(tmp_path: Path) -> None:
    # LARS and plain SGD are both method "vanilla": one row each, not one pooled row
    _run(tmp_path, 4096, 0.1, 50, noise=300)
    _run(tmp_path, 4096, 0.2, 50, noise=900)
    runs = load_runs(tmp_path)
    labels = {r.path: "vanilla (optimizer=lars)" if r.lr == 0.2 else "vanilla" for r in runs}
    rows = [line for line in noise_section(runs, {}, labels) if line.startswith("| vanilla")]
    assert rows == ["| vanilla | 4096 | 1 | 300 | 300-300 | 300 |",
                    "| vanilla (optimizer=lars) | 4096 | 1 | 900 | 900-900 | 900 |"]
    assert [line for line in noise_section(runs, {}) if line.startswith("| vanilla")] == [
        "| vanilla | 4096 | 2 | 300 | 300-900 | 300 |"]


def test_the_noise_table_gives_the_value_near_the_peak_rate_not_the_annealed_end(tmp_path: Path) -> None:
    _run(tmp_path, 4096, 0.1, 20, noise=100)
    metrics = tmp_path / "bs4096_lr0.1" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    for i, r in enumerate(train):  # the rate decays linearly to 0 while B_simple climbs tenfold per step
        r["lr"], r["noise_scale"] = 1.0 - i / len(train), 10.0 * (i + 1)
    metrics.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    row = next(line for line in noise_section(load_runs(tmp_path), {}) if line.startswith("| vanilla"))
    # steps 1-21 of 40 are at >= half the peak rate: the median of 10..210 is 110; the final value stays 100
    assert row == "| vanilla | 4096 | 1 | 110 | 110-110 | 100 |"


def test_runs_without_a_noise_scale_get_no_section(tmp_path: Path) -> None:
    _run(tmp_path, 256, 0.1, 50, noise=1.0)
    summary = tmp_path / "bs256_lr0.1" / "summary.json"
    data = json.loads(summary.read_text())
    del data["noise_scale"]
    summary.write_text(json.dumps(data))
    assert noise_section(load_runs(tmp_path), {}) == []
