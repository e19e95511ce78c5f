"""The cells and fixed text of report.md: numbers as shown, a table row per group, the definitions.

Formatting only: what the numbers are is computed in :mod:`.compare` and :mod:`.stats`.
"""

from __future__ import annotations

import json
import math
from typing import Mapping, Optional, Sequence

from dreg_dist.records import BASELINE
from dreg_dist.report.aggregate import Group
from dreg_dist.report.compare import THRESHOLDS, GapClosed, Row
from dreg_dist.report.step_costs import StepCosts
from dreg_dist.report.stats import Difference, mean_ci
from dreg_dist.sweep.grid import name_value


def pct(x: Optional[float]) -> str:
    """A fraction as a percentage with two decimals ('81.25'); '—' when missing."""
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


def pct_pm(mean: Optional[float], std: Optional[float], n: int) -> str:
    if mean is None:
        return "—"
    return pct(mean) if n < 2 or std is None else f"{pct(mean)} ± {100 * std:.2f}"


def fmt_epochs(entry: tuple[Optional[float], int, int]) -> str:
    mean, reached, counted = entry
    if counted == 0:
        return "—"
    if mean is None:
        return "not reached"
    text = f"{mean:.0f}" if float(mean).is_integer() else f"{mean:.1f}"
    return text if reached == counted else f"{text} ({reached}/{counted} seeds)"


def fmt_num(x: Optional[float], spec: str) -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def fmt_lr(lr: Optional[float]) -> str:
    return "—" if lr is None else name_value(lr)


ROW_HEADER = ["method", "lr", "seeds", "best val acc (%)", "epochs to 95%", "epochs to 99%",
              f"epochs to {BASELINE}'s best", "speedup (99%)",
              "test acc (%)", "images/s"]


VS_BASELINE = f"vs {BASELINE}, test (points, 95% CI)"


def row_header(extras: Mapping[str, str], gap_batch: Optional[str] = None, *, step_cost: bool = False,
               vs_baseline: bool = False) -> list[str]:
    """The per-batch table's columns: ``step_cost`` with a benchmark's step costs, ``vs_baseline``
    when the table has a baseline, ``gap_batch`` (the reference batch) when a row closes a gap."""
    return (ROW_HEADER + list(extras.values()) + [f"time/epoch vs {BASELINE}"]
            + ([f"step cost vs {BASELINE} (bench)"] if step_cost else [])
            + [f"best val acc in {BASELINE}'s time (%)", f"compute to {BASELINE}'s best ({BASELINE} epochs)"]
            + ([VS_BASELINE] if vs_baseline else [])
            + ([f"gap to {BASELINE} at {gap_batch} closed (test, 95% CI)"] if gap_batch else []))


def fmt_gap(gap: Optional[GapClosed]) -> str:
    return "—" if gap is None else fmt_share(gap.value, gap.half_width)


def fmt_share(value: Optional[float], half_width: Optional[float]) -> str:
    """A share of a gap in % with its interval's half-width in points: '+52% ± 13', '+40% (1 seed)'."""
    if value is None:
        return "—"
    return f"{value * 100:+.0f}%" + (f" ± {half_width * 100:.0f}" if half_width is not None else " (1 seed)")


def fmt_points(diff: Optional[Difference]) -> str:
    """A difference of accuracies in percentage points with its interval: '+1.20 ± 0.80',
    '-0.30 ± 0.90 (inside seed noise)', '+0.40 (1 seed)'."""
    if diff is None:
        return "—"
    text = f"{diff.mean * 100:+.2f}"
    if diff.half_width is not None:
        text += f" ± {diff.half_width * 100:.2f}" + (" (inside seed noise)" if diff.inside_noise else "")
    elif diff.seeds == 1:
        text += " (1 seed)"
    return text + ("" if diff.paired else " (unpaired)")


def fmt_ratio(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.2f}x"


def row_cells(row: Row, extras: Mapping[str, str], gap: Optional[GapClosed] = None,
              with_gap: bool = False, *, step_cost: bool = False, vs_baseline: bool = False) -> list[str]:
    """One table row, columns as :func:`row_header` with the same flags."""
    return (_row_cells(row, extras) + [fmt_ratio(row.cost)] + ([fmt_ratio(row.step_cost)] if step_cost else [])
            + [pct(row.best_in_budget), fmt_epochs(row.compute_to_best)]
            + ([fmt_points(row.vs_baseline)] if vs_baseline else [])
            + ([fmt_gap(gap)] if with_gap else []))


def diverged_label(g: Group) -> str:
    return g.label + (f" (diverged: {g.diverged}/{len(g.runs)} seeds)" if g.diverged else "")


def _row_cells(row: Row, extras: Mapping[str, str]) -> list[str]:
    g = row.group
    return [
        diverged_label(g),
        fmt_lr(g.lr),
        ", ".join(str(s) for s in g.seeds),
        pct_pm(row.best_val[0], row.best_val[1], len(g.best_vals)),
        fmt_epochs(row.epochs_to[THRESHOLDS[0]]),
        fmt_epochs(row.epochs_to[THRESHOLDS[1]]),
        fmt_epochs(row.epochs_to[THRESHOLDS[2]]),
        "—" if row.speedup is None else f"{row.speedup:.2f}x",
        pct_pm(row.test[0], row.test[1], len(g.test_accs)),
        fmt_num(row.images_per_sec, ".0f"),
        *(fmt_num(row.extras.get(key), ".4g") for key in extras),
    ]


DEFINITIONS = """\
How the numbers are computed:

- **Validation accuracy** is measured on the `data.val_size` images held out of the training set.
  For a method that scores several outputs it is the best of them at each epoch, the quantity
  the exported (epoch, output) is chosen on. Curves show the mean over seeds, shaded from the
  minimum to the maximum seed.
- **Best val acc**: each run's best validation accuracy (over epochs and outputs);
  mean ± sample standard deviation over seeds. A run that **diverged** (a logged value
  became infinite and the trainer stopped) counts with the best accuracy it reached before.
- **Epochs to 95% / 99% / {b}'s best**: the first epoch at which a run's validation accuracy
  reaches 95% / 99% / 100% of the best validation accuracy of the {b} run with the same batch
  size and seed (the mean over {b}'s seeds where that seed is missing), averaged over seeds;
  "(k/n seeds)" when only k of n seeds got there. The last is the paper's claim: a method that
  helps reaches {b}'s best in fewer epochs (or at all, when {b}'s best is its last epoch).
- **Speedup (99%)**: {b}'s mean epochs to 99% of its own best divided by the method's mean
  epochs to the same target (shown only when every seed reached it).
- **Test acc**: the exported model (best (epoch, output) on validation) scored once on the test
  split; it plays no part in any choice.
- **images/s**: mean training throughput over the logging windows; **time/epoch**: a run's
  wall-clock per epoch (validation included; the median over its epochs, so that a pause or a
  resume does not count) over the {b} run's at the same batch size, mean over seeds. Runs of one
  sweep share a machine, so read it as a cost ratio, not an absolute speed.{cost}
- **Vs {b}, test**: the method's test accuracy minus {b}'s at the same batch size, in
  percentage points. Where {b} ran every seed the method ran, it is the mean of the per-seed
  differences (runs with the same seed share initialisation and data order, so pairing
  removes that part of the seed noise) with a Student-t 95% interval over them; otherwise
  ("unpaired") the method's seeds against {b}'s mean, taken as exact. A difference whose
  interval includes 0 is marked **inside seed noise**: these seeds cannot tell it from none.
- **Gap closed**: that difference over ({b}'s mean test accuracy at the smallest batch size
  in the report - {b}'s at this one), interval included (the two means are taken as exact):
  0% is {b} at this batch, 100% recovers the small-batch accuracy.
"""
COST_WALL_CLOCK = """ **Best val acc in {b}'s time**: the best validation
  accuracy a run reached by the epoch whose wall-clock (epochs x time/epoch) matches {b}'s
  whole run, mean over seeds; the "vs compute" figure shows the whole curve on that axis.
  **Compute to {b}'s best**: epochs to {b}'s best x time/epoch, in {b}-epoch equivalents
  ({b}'s own is its epochs to its best)."""
COST_STEP = """
- **Step cost vs {b} (bench)**: the cost of one optimizer step of the run's configuration over
  {b}'s at the same batch setup, timed interleaved in one process by a benchmark (far less
  noisy than the sweep's wall-clock){machine}; mean over the group's runs the benchmark
  measured ("—": none was). **Best val acc in {b}'s time** uses it where a group has one
  (else time/epoch): the best validation accuracy a run reached by the epoch whose compute
  (epochs x step cost, in {b}-epoch equivalents) matches {b}'s whole run, mean over seeds;
  the "vs compute" figure shows the whole curve on that axis. **Compute to {b}'s best**: epochs
  to {b}'s best x step cost, in {b}-epoch equivalents ({b}'s own is its epochs to its best)."""


def definitions(step_costs: Optional[StepCosts]) -> str:
    """How the numbers are computed, saying which cost ratio the compute columns use."""
    if step_costs is None:
        cost = COST_WALL_CLOCK.format(b=BASELINE)
    else:
        machine = ", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(step_costs.machine.items()))
        cost = COST_STEP.format(b=BASELINE, machine=f" on {machine}" if machine else "")
    return DEFINITIONS.format(b=BASELINE, cost=cost)


def fmt_ci(values: Sequence[float], group: Optional[Group] = None) -> str:
    """Mean ± 95% interval of accuracies in % (the mean alone for one seed); with ``group``,
    how many of its runs diverged (those have no test accuracy)."""
    mean, half = mean_ci(values)
    text = "—" if mean is None else pct(mean) + (f" ± {100 * half:.2f}" if half is not None else "")
    if group is not None and group.diverged:
        seeds = f"{group.diverged}/{len(group.runs)} seeds"
        text = f"diverged ({seeds})" if mean is None else f"{text} (diverged: {seeds})"
    return text
