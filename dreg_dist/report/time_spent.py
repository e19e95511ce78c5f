"""What each sweep folder of a report cost in wall-clock, from its runs' own records.

A study's recipe log gives the wall time of every stage. Summing the runs' ``wall_time_s`` would
count a run paused for other work (or count only the last launch of one resumed), so each run is
its median epoch (:attr:`Run.seconds_per_epoch`, validation included) times its epochs: the time
it would have taken alone on the cores it had. Runs of one folder that ran side by side (one per
core) overlap; the folder's total is the sum over its runs, and the table says how many processes
each run trained on (GradientMix's 8 took both cores).
"""

from __future__ import annotations

from typing import Sequence

from dreg_dist.report.mdtable import table
from dreg_dist.report.runs import Run


def _minutes(run: Run) -> float | None:
    per_epoch = run.seconds_per_epoch
    epochs = run.flat.get("train.epochs")
    if per_epoch is None or not isinstance(epochs, (int, float)):
        return None
    return per_epoch * float(epochs) / 60.0


def time_spent_section(runs: Sequence[Run]) -> list[str]:
    """A table per sweep folder: finished runs, processes a run, minutes in all and per run."""
    folders: dict[str, list[Run]] = {}
    for run in runs:
        folders.setdefault(run.path.parent.name, []).append(run)
    rows = []
    total = 0.0
    for name in sorted(folders):
        timed = [(r, m) for r in folders[name] if (m := _minutes(r)) is not None]
        if not timed:
            continue
        minutes = [m for _, m in timed]
        total += sum(minutes)
        workers = sorted({r.workers or 1 for r, _ in timed})
        rows.append([f"`{name}`", len(timed), ", ".join(map(str, workers)), f"{sum(minutes):.0f}",
                     f"{min(minutes):.0f}-{max(minutes):.0f}"])
    if not rows:
        return []
    return ["## Time spent", "",
            "Each finished run's median epoch (validation included) times its epochs, in minutes: what it "
            "took on the cores it had, pauses and resumes left out. Runs of one folder ran side by side "
            "where the machine had a core for each, so a folder's wall time is less than its sum. "
            f"In all: {total:.0f} run-minutes ({total / 60:.1f} run-hours).", "",
            table(["folder", "runs", "processes a run", "minutes (sum)", "minutes a run"], rows), ""]
