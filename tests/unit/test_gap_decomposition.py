"""The step-count-against-generalization section: a large batch at the reference's epochs and at
the reference's optimizer steps, found from the runs, its gap split into a step part and a
generalization part. No training: run folders are planted with the files the trainer writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pytest

from dreg_dist.report.analysis import analyse
from dreg_dist.report.markdown import write_report
from dreg_dist.report.runs import load_runs
from dreg_dist.report.step_gap import find_regimes

from .test_report_select import plant_run

pytestmark = pytest.mark.usefixtures("resolver_in_process")
HEADING = "## Step count against generalization"
STEPS_PER_EPOCH = {512: 87, 4096: 10}  # 45,000 training images, the last partial batch dropped


def _plant(root: Path, method: str, batch: int, epochs: int, lr: float, vals: Sequence[float],
           tests: Sequence[float], *, steps: int = 0, diverged: Sequence[int] = (), extra: Sequence[str] = ()) -> None:
    """One run per seed (0, 1, ...) whose best validation accuracy is ``vals[seed]`` (reached at the
    last epoch) and test accuracy ``tests[seed]``; ``steps``: summary.json's ``global_steps``
    (default: the batch's steps per epoch x epochs); a seed in ``diverged`` stops on a non-finite
    value after its last validation, with no summary.json."""
    for seed, (val, test) in enumerate(zip(vals, tests)):
        name = f"{method}_bs{batch}_ep{epochs}_lr{lr}_s{seed}" + "".join(f"_{e}" for e in extra)
        curve = [val * (i + 1) / epochs for i in range(epochs)]
        run = plant_run(root, name, method=method, batch=batch, seed=seed, lr=lr, curve=curve, test_acc=test,
                        finished=seed not in diverged, extra=extra)
        if seed in diverged:  # it stops 28 epochs short of its schedule
            stop = (epochs - 28) * 10 if epochs > 28 else epochs * 10
            kept = [line for line in (run / "metrics.jsonl").read_text().splitlines()
                    if json.loads(line).get("step", 0) <= stop]
            (run / "metrics.jsonl").write_text("\n".join(kept + [json.dumps({"kind": "diverged", "step": stop + 1})])
                                               + "\n")
            continue
        summary = json.loads((run / "summary.json").read_text())
        summary["global_steps"] = steps or STEPS_PER_EPOCH[batch] * epochs
        (run / "summary.json").write_text(json.dumps(summary))


def _fixed_epochs(root: Path) -> None:
    _plant(root, "vanilla", 512, 40, 0.1, (0.80, 0.82), (0.78, 0.80))
    _plant(root, "vanilla", 4096, 40, 0.1, (0.60, 0.64), (0.58, 0.62))
    _plant(root, "vanilla", 4096, 40, 0.2, (0.55, 0.57), (0.70, 0.72))  # best on test, worse on validation
    _plant(root, "sam", 4096, 40, 0.1, (0.66, 0.68), (0.64, 0.66))


def _section(text: str) -> str:
    assert HEADING in text
    return text.split(HEADING, 1)[1].split("\n## ", 1)[0]


def _rows(section: str, title: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header and the rows (by method) of the table under ``title:``."""
    lines = section.split(f"\n{title}:\n", 1)[1].strip().splitlines()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows[0], {r[0]: dict(zip(rows[0], r)) for r in rows[2:]}  # type: ignore[misc]


def test_gap_splits_into_the_step_part_and_the_generalization_part(tmp_path: Path) -> None:
    fixed, matched = tmp_path / "runs" / "fixed", tmp_path / "runs" / "matched"  # two sweeps, one report
    _fixed_epochs(fixed)
    _plant(fixed, "dreg", 4096, 40, 0.1, (0.65, 0.67), (0.63, 0.65))  # never run at matched steps: no row
    _plant(matched, "vanilla", 4096, 348, 0.1, (0.70, 0.71), (0.75, 0.77))  # best on test, worse on validation
    _plant(matched, "vanilla", 4096, 348, 0.2, (0.74, 0.76), (0.72, 0.75))
    _plant(matched, "sam", 4096, 348, 0.1, (0.79, 0.81), (0.77, 0.79))
    (regimes,) = find_regimes(analyse(load_runs(fixed) + load_runs(matched)))
    assert regimes.batch_size == 4096 and regimes.reference.batch_size == 512

    text = write_report([fixed, matched], tmp_path / "rep", say=lambda _: None, figures=False).read_text()
    section = _section(text)
    assert "### Batch 4096: 40 and 348 epochs" in section
    _, test = _rows(section, "Test accuracy")
    assert set(test) == {"vanilla", "sam"}  # dreg ran only at fixed epochs
    v = test["vanilla"]
    assert v["lr (40 / 348 epochs)"] == "0.1 / 0.2"  # each regime's own selection, on validation
    assert v["steps (reference / 40 / 348)"] == "3,480 / 400 / 3,480"
    assert v["seeds (reference / 40 / 348)"] == "0, 1"
    assert v["reference: vanilla at 512, 40 epochs (%)"] == "79.00 ± 12.71"
    assert v["4096, 40 epochs (%)"] == "60.00 ± 25.41" and v["4096, 348 epochs (%)"] == "73.50 ± 19.06"
    # per seed: gap 20, 18; step part 14, 13; generalization part 6, 5 (points)
    assert v["gap (points, 95% CI)"] == "+19.00 ± 12.71"
    assert v["step part (points)"] == "+13.50 ± 6.35"
    assert v["generalization part (points)"] == "+5.50 ± 6.35 (inside seed noise)"
    assert v["gap closed by steps"] == "+71% ± 33"  # 13.5 / 19, the interval over the gap's mean
    s = test["sam"]  # gap 14, 14; step part 13, 13; generalization 1, 1
    assert (s["gap (points, 95% CI)"], s["step part (points)"], s["generalization part (points)"]) == (
        "+14.00 ± 0.00", "+13.00 ± 0.00", "+1.00 ± 0.00")
    assert s["gap closed by steps"] == "+93% ± 0" and s["lr (40 / 348 epochs)"] == "0.1 / 0.1"
    _, val = _rows(section, "Best validation accuracy")
    v = val["vanilla"]  # ref 80, 82; fixed 60, 64; matched 74, 76
    assert (v["gap (points, 95% CI)"], v["step part (points)"], v["generalization part (points)"]) == (
        "+19.00 ± 12.71", "+13.00 ± 12.71", "+6.00 ± 0.00")
    assert v["gap closed by steps"] == "+68% ± 67"


def test_one_seed_and_diverged_runs_are_named(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "g"
    _fixed_epochs(root)
    _plant(root, "vanilla", 4096, 348, 0.1, (0.74,), (0.72,), steps=3500)  # one seed; 0.6% over 3,480
    _plant(root, "sam", 4096, 348, 0.1, (0.79, 0.60), (0.77, 0.0), diverged=(1,))
    text = write_report(root, tmp_path / "rep", say=lambda _: None, figures=False).read_text()
    _, test = _rows(_section(text), "Test accuracy")
    v = test["vanilla"]
    assert v["seeds (reference / 40 / 348)"] == "0, 1 / 0, 1 / 0"
    assert v["steps (reference / 40 / 348)"] == "3,480 / 400 / 3,500"
    assert v["step part (points)"] == "+14.00 (1 seed)" and v["gap closed by steps"] == "+74% (1 seed)"
    s = test["sam"]
    assert s["4096, 348 epochs (%)"] == "77.00 (diverged: 1/2 seeds)"
    assert s["steps (reference / 40 / 348)"] == "3,480 / 400 / 3,200-3,480"  # stopped at its last logged step
    assert s["step part (points)"] == "+13.00 (1 seed)"  # seed 1 has no test accuracy


def test_no_section_without_a_matched_steps_setup(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "g"
    _fixed_epochs(root)
    assert HEADING not in write_report(root, tmp_path / "a", say=lambda _: None, figures=False).read_text()
    # Longer, but 3,300 steps: 5.2% short of the reference's 3,480, not the matched-steps regime.
    _plant(root, "vanilla", 4096, 300, 0.1, (0.74, 0.76), (0.72, 0.75))
    assert HEADING not in write_report(root, tmp_path / "b", say=lambda _: None, figures=False).read_text()


def test_no_section_without_a_reference(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "g"
    _plant(root, "vanilla", 4096, 40, 0.1, (0.60, 0.64), (0.58, 0.62))
    _plant(root, "vanilla", 4096, 348, 0.1, (0.74, 0.76), (0.72, 0.75), steps=3480)
    assert not find_regimes(analyse(load_runs(root)))
    assert HEADING not in write_report(root, tmp_path / "rep", say=lambda _: None, figures=False).read_text()



def test_the_matched_regime_may_warm_up_for_the_references_steps_too(tmp_path: Path) -> None:
    """Matched steps with the warmup matched in steps as well (17.4 epochs of 10 steps = the
    reference's 2 epochs of 87): the budget is epochs and warmup, so it is still the same recipe;
    a setup that differs in anything else (momentum) is not."""
    root = tmp_path / "runs" / "g"
    _fixed_epochs(root)
    _plant(root, "vanilla", 4096, 348, 0.1, (0.74, 0.76), (0.72, 0.75), extra=["optim.warmup_epochs=17.4"])
    (regimes,) = find_regimes(analyse(load_runs(root)))
    assert regimes.warmups() == "2.0 and 17.4 warmup epochs"
    text = write_report(root, tmp_path / "rep", say=lambda _: None, figures=False).read_text()
    assert "### Batch 4096: 40 and 348 epochs, 2.0 and 17.4 warmup epochs" in _section(text)
    _, test = _rows(_section(text), "Test accuracy")
    assert test["vanilla"]["step part (points)"] == "+13.50 ± 6.35"
    other = tmp_path / "runs" / "h"
    _fixed_epochs(other)
    _plant(other, "vanilla", 4096, 348, 0.1, (0.74, 0.76), (0.72, 0.75), extra=["optim.momentum=0.5"])
    assert not find_regimes(analyse(load_runs(other)))
