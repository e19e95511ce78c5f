"""The transfer section that separates the rule, the budget and a re-tuned rate: a recipe tuned at
4096 moved to 8192 under the linear and the sqrt rule, at the tuned epochs and at the tuned run's
steps, and vanilla at 8192 at rates set directly. No training: run folders are planted with the
files the trainer writes (its start record names the peak rate it scaled to)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import pytest

from dreg_dist.report.analysis import analyse
from dreg_dist.report.markdown import write_report
from dreg_dist.report.runs import load_runs
from dreg_dist.report.step_gap import find_regimes
from dreg_dist.report.transfer_budget import families

from .test_report_select import plant_run

pytestmark = pytest.mark.usefixtures("resolver_in_process")
HEADING = "## Learning-rate transfer: rule, budget and a re-tuned rate"
STEPS_PER_EPOCH = {512: 87, 4096: 10, 8192: 5}  # 45,000 training images, the last partial batch dropped


def _plant(root: Path, method: str, batch: int, lr: float, vals: Sequence[float], tests: Sequence[float], *,
           epochs: int = 4, rule: str = "linear", base: int = 256, warmup: float = 2.0) -> None:
    """One run per seed; ``epochs`` stands for the study's budget (4 for 40, 8 for 80 at 8192)."""
    ratio = batch / base
    peak = lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]
    for seed, (val, test) in enumerate(zip(vals, tests)):
        name = f"{method}_bs{batch}_{rule}_ep{epochs}_lr{lr}_s{seed}"
        run = plant_run(root, name, method=method, batch=batch, seed=seed, lr=lr, test_acc=test,
                        curve=[val * (i + 1) / epochs for i in range(epochs)],
                        extra=[f"optim.lr_scaling={rule}", f"optim.base_batch_size={base}",
                               f"optim.warmup_epochs={warmup}"])
        lines = (run / "metrics.jsonl").read_text().splitlines()
        lines[0] = json.dumps({"kind": "start", "time": 0.0, "world_size": 1, "lr": peak,
                               "steps_per_epoch": STEPS_PER_EPOCH[batch]})
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        summary = json.loads((run / "summary.json").read_text())
        summary["global_steps"] = STEPS_PER_EPOCH[batch] * epochs
        (run / "summary.json").write_text(json.dumps(summary))


def _study(root: Path) -> None:
    _plant(root, "vanilla", 512, 0.1, (0.80, 0.82), (0.79, 0.81))
    _plant(root, "vanilla", 512, 0.2, (0.78, 0.80), (0.77, 0.79))
    _plant(root, "vanilla", 4096, 0.05, (0.60, 0.62), (0.59, 0.61))
    _plant(root, "vanilla", 4096, 0.1, (0.70, 0.72), (0.69, 0.71))  # tuned: peak 1.6
    _plant(root, "sam", 4096, 0.05, (0.72, 0.74), (0.71, 0.73))  # tuned: peak 0.8
    _plant(root, "sam", 4096, 0.1, (0.65, 0.66), (0.64, 0.65))
    # 8192: the linear rule (peak 3.2), the sqrt rule from 4096 (1.6 * sqrt 2), rates set directly
    _plant(root, "vanilla", 8192, 0.1, (0.50, 0.54), (0.49, 0.53))
    _plant(root, "vanilla", 8192, 1.6, (0.60, 0.62), (0.58, 0.60), rule="sqrt", base=4096)
    _plant(root, "vanilla", 8192, 0.8, (0.66, 0.68), (0.65, 0.67), rule="none")
    _plant(root, "vanilla", 8192, 1.6, (0.64, 0.66), (0.63, 0.65), rule="none")
    # the tuned run's steps and warmup steps: twice the epochs, twice the warmup
    _plant(root, "vanilla", 8192, 0.1, (0.62, 0.64), (0.61, 0.63), epochs=8, warmup=4.0)
    _plant(root, "sam", 8192, 0.05, (0.52, 0.55), (0.51, 0.54))
    _plant(root, "sam", 8192, 0.8, (0.63, 0.65), (0.62, 0.64), rule="sqrt", base=4096)


def _rows(text: str) -> list[dict[str, str]]:
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


def test_each_rule_and_budget_is_a_cell_and_the_rerun_rates_give_a_retuned_row(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "g"
    _study(root)
    analysis = analyse(load_runs(root))
    found = families(analysis)
    assert [(f.tuned.method, f.tuned.batch_size, f.batch_size, len(f.cells)) for f in found] == [
        ("vanilla", 4096, 8192, 5), ("sam", 4096, 8192, 2)]
    assert not find_regimes(analysis)  # 400 steps at 8192 are not the 512 reference's 348: no step split

    text = write_report(root, tmp_path / "rep", say=lambda _: None, figures=False).read_text()
    assert "### Batch 8192 from 4096" in text
    rows = _rows(text)
    vanilla = [r for r in rows if r["method"] == "vanilla"]
    assert [(r["budget"], r["rule"], r["peak lr (x tuned)"]) for r in vanilla] == [
        ("4 epochs, warmup 2.0", "tuned at 4096", "1.6"),
        ("4 epochs, warmup 2.0", "linear", "3.2 (2x)"),
        ("4 epochs, warmup 2.0", "sqrt", "2.263 (1.4x)"),
        ("4 epochs, warmup 2.0", "set directly", "0.8 (0.5x)"),
        ("4 epochs, warmup 2.0", "set directly", "1.6 (1x)"),
        ("4 epochs, warmup 2.0", "re-tuned (best of 4 on validation)", "0.8 (0.5x)"),
        ("8 epochs, warmup 4.0", "linear", "3.2 (2x)")]  # one rate at this budget: nothing re-tuned
    assert [r["steps"] for r in vanilla] == ["40", "20", "20", "20", "20", "20", "40"]
    linear = vanilla[1]
    # per seed 0.49 - 0.69, 0.53 - 0.71: -20, -18 points
    assert linear["test change from the tuned batch (points, 95% CI)"] == "-19.00 ± 12.71"
    assert linear["best val acc (%)"] == "52.00 ± 25.41" and linear["seeds"] == "0, 1"
    sam = [r for r in rows if r["method"] == "sam"]
    assert [(r["rule"], r["peak lr (x tuned)"]) for r in sam] == [
        ("tuned at 4096", "0.8"), ("linear", "1.6 (2x)"), ("sqrt", "1.131 (1.4x)")]
    # The lower-rate test, on validation (chosen) and test (reported): 0.8 against the linear rule's 3.2.
    line = next(x for x in text.splitlines() if x.startswith("- vanilla at 8192, 4 epochs"))
    assert "the best rate on validation is 0.8, 0.25x the linear rule's (lower)" in line
    assert "best validation accuracy by +15.00 ± 12.71" in line and "test accuracy by +15.00 ± 12.71" in line


def test_the_linear_rule_winning_is_said_and_no_section_without_moved_runs(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "g"
    _study(root)
    _plant(root, "vanilla", 8192, 0.4, (0.40, 0.42), (0.40, 0.42), rule="none", epochs=8, warmup=4.0)
    text = write_report(root, tmp_path / "rep", say=lambda _: None, figures=False).read_text()
    assert ("- vanilla at 8192, 8 epochs, warmup 4.0: the linear rule's rate (3.2) is also the best of the rates "
            "tried on validation") in text
    plain = tmp_path / "runs" / "plain"  # tuning and the linear transfer in one setup: the older section's
    for method, batch, lr, vals in (("vanilla", 512, 0.1, (0.8, 0.82)), ("vanilla", 512, 0.2, (0.78, 0.8)),
                                    ("vanilla", 4096, 0.05, (0.6, 0.62)), ("vanilla", 4096, 0.1, (0.7, 0.72)),
                                    ("vanilla", 8192, 0.1, (0.5, 0.54))):
        _plant(plain, method, batch, lr, vals, vals)
    assert not families(analyse(load_runs(plain)))
    assert HEADING not in write_report(plain, tmp_path / "rep2", say=lambda _: None, figures=False).read_text()
