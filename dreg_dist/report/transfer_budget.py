"""Learning-rate transfer to a larger batch with the rule, the budget and a re-tuned rate apart.

Moving a recipe tuned at batch B to 2B under the linear rule at the same epochs changes three
things at once: the peak rate doubles, and the optimizer steps and the warmup steps halve. A
study that also runs the larger batch under another rule (``optim.lr_scaling=sqrt`` from B:
``optim.base_batch_size=B`` and the rate the trainer peaked at there), for the tuned run's steps
and warmup steps (more epochs, a longer warmup), and at other rates set directly
(``optim.lr_scaling=none``) separates them. This section finds those runs itself: setups that
differ from the tuning setup only in :data:`RULE_KEYS` and :data:`BUDGET_KEYS`, at a batch size
larger than the one a method variant was tuned at (its selection over two or more settings).

* Each **cell** is the variant at the larger batch under one rule and budget at one rate, shown as
  the peak rate the trainer scaled to (its start record) and as a multiple of the tuned run's.
* **Re-tuned**: where rates were also set directly for the variant at one larger batch and budget,
  the best of all its cells there on validation (the rules' cells included): the control for "what
  survives the larger batch is a lower peak rate".

Test accuracy is reported, never chosen on; each cell's change from the tuned batch is paired by
seed where the cell's seeds all ran there.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Optional

from dreg_dist.report.aggregate import Group, Setup
from dreg_dist.report.analysis import Analysis
from dreg_dist.report.cells import fmt_ci, fmt_lr, fmt_points
from dreg_dist.report.compare import group_order, seed_difference
from dreg_dist.report.keys import BUDGET_KEYS, EPOCHS_KEY, RULE_KEYS, WARMUP_KEY, WORKERS_KEY, same_but
from dreg_dist.report.mdtable import table
from dreg_dist.report.stats import Difference, mean_of
from dreg_dist.report.step_gap import Metric, by_seed, group_steps
from dreg_dist.sweep.grid import name_value

RULE_KEY = RULE_KEYS[0]
MOVED_KEYS = RULE_KEYS + BUDGET_KEYS
RULE_NAMES = {"linear": "linear", "sqrt": "sqrt", "none": "set directly"}


@dataclass(frozen=True)
class Cell:
    """A method variant at the larger batch at one rule, budget and rate."""

    group: Group
    setup: Setup

    def _value(self, key: str) -> object:
        return self.group.runs[0].flat.get(key) if self.group.runs else None

    @property
    def rule(self) -> str:
        value = self._value(RULE_KEY) or "linear"
        return RULE_NAMES.get(str(value), str(value))

    @property
    def budget(self) -> tuple[object, object]:
        """(epochs, warmup epochs)."""
        return self._value(EPOCHS_KEY), self._value(WARMUP_KEY)

    @property
    def budget_text(self) -> str:
        epochs, warmup = self.budget
        return f"{name_value(epochs)} epochs, warmup {name_value(warmup)}"

    @property
    def steps(self) -> Optional[int]:
        return group_steps(self.group)

    @property
    def peak(self) -> Optional[float]:
        return mean_of(r.peak_lr for r in self.group.runs)


@dataclass
class Family:
    """One method variant's selection at the tuning batch and its cells at one larger batch setup."""

    tuned: Group
    tuned_setup: Setup
    batch_size: int
    layout: tuple
    cells: list[Cell] = field(default_factory=list)

    @property
    def tuned_peak(self) -> Optional[float]:
        return mean_of(r.peak_lr for r in self.tuned.runs)

    def budgets(self) -> list[tuple[object, object]]:
        def order(b: tuple[object, object]) -> tuple:
            steps = [c.steps or 0 for c in self.cells if c.budget == b]
            return (max(steps), str(b))
        return sorted({c.budget for c in self.cells}, key=order)

    def retuned(self, budget: tuple[object, object]) -> Optional[Cell]:
        """The best cell on validation at ``budget`` when rates were set directly there besides
        (two or more peak rates in all; the rules' own cells are candidates too)."""
        cells = [c for c in self.cells if c.budget == budget and c.group.best_vals]
        if (len({round(c.peak, 12) for c in cells if c.peak is not None}) < 2
                or not any(c.rule == RULE_NAMES["none"] for c in cells)):
            return None
        return max(cells, key=lambda c: (statistics.fmean(c.group.best_vals), -(c.peak or 0.0)))


def _workers(group: Group) -> object:
    return dict(group.layout).get(WORKERS_KEY)


def _tunings(analysis: Analysis) -> list[tuple[Setup, Group]]:
    """Every selection made over two or more settings: (its setup, the selected group)."""
    out = []
    for setup in analysis.setups:
        compared = setup.compared()
        for g in setup.selected:
            if len({x.setting for x in compared.get(g.compare_key, []) if x.lr is not None}) >= 2:
                out.append((setup, g))
    return out


def families(analysis: Analysis) -> list[Family]:
    """Each (tuned selection, larger batch setup) with cells, where at least one cell is outside the
    tuning setup's rule and budget or the variant ran at two or more rates there; in table order."""
    tunings = _tunings(analysis)
    # A batch the variant was tuned at in the tuning setup is no transfer, whatever else ran there
    # (a longer budget at the tuned batch is the step-count section's).
    tuned_at = {(s.key, t.method, t.variant, t.batch_size) for s, t in tunings}
    found: dict[tuple, Family] = {}
    for setup in analysis.setups:
        for g in setup.groups:
            if g.lr is None:
                continue
            below = [(s, t) for s, t in tunings if same_but(s.key, setup.key, MOVED_KEYS)
                     and (t.method, t.variant) == (g.method, g.variant) and t.batch_size < g.batch_size
                     and _workers(t) == _workers(g) and _knobs(t) == _knobs(g)]
            if not below:
                continue
            s, t = max(below, key=lambda st: st[1].batch_size)
            if (s.key, g.method, g.variant, g.batch_size) in tuned_at:
                continue
            key = (s.key, t.compare_key, g.batch_size, g.layout)
            family = found.setdefault(key, Family(t, s, g.batch_size, g.layout))
            family.cells.append(Cell(g, setup))
    out = [f for f in found.values()
           if any(c.setup is not f.tuned_setup for c in f.cells) or any(f.retuned(b) for b in f.budgets())]
    return sorted(out, key=lambda f: (f.batch_size, f.tuned.batch_size, group_order(f.tuned)))


def _knobs(group: Group) -> tuple:
    """Its tuned knobs but the budget's (a longer warmup belongs to the budget)."""
    return tuple((k, v) for k, v in group.tuned if k not in BUDGET_KEYS)


def change(cell: Cell, family: Family, metric: Metric = lambda r: r.test_acc) -> Optional[Difference]:
    """The cell minus the tuned run, per seed where the tuned batch ran the cell's seeds."""
    return seed_difference(by_seed(cell.group, metric), by_seed(family.tuned, metric))


def _rate(peak: float) -> str:
    """A peak rate to four significant digits (1.6 * sqrt 2 shows as 2.263)."""
    return fmt_lr(float(f"{peak:.4g}"))


def _ratio(cell: Cell, family: Family) -> str:
    base = family.tuned_peak
    return "—" if cell.peak is None or not base else f"{_rate(cell.peak)} ({cell.peak / base:.2g}x)"


def _row(family: Family, cell: Cell, rule: str, peak: str, change_text: str) -> list[str]:
    g = cell.group
    return [family.tuned.label, cell.budget_text, f"{cell.steps:,}" if cell.steps else "—", rule, peak,
            ", ".join(map(str, g.seeds)), fmt_ci(g.best_vals), fmt_ci(g.test_accs, g), change_text]


def _cell_row(family: Family, cell: Cell, rule: str) -> list[str]:
    return _row(family, cell, rule, _ratio(cell, family), fmt_points(change(cell, family)))


def _tuned_row(family: Family) -> list[str]:
    t, peak = family.tuned, family.tuned_peak
    where = family.tuned_setup.batch_text(t.batch_size, t.layout)
    return _row(family, Cell(t, family.tuned_setup), f"tuned at {where}", "—" if peak is None else _rate(peak), "—")


RULE_ORDER = {"linear": 0, "sqrt": 1, "set directly": 2}


def _table(batch_families: list[Family]) -> str:
    header = ["method", "budget", "steps", "rule", "peak lr (x tuned)", "seeds", "best val acc (%)",
              "test acc (%)", "test change from the tuned batch (points, 95% CI)"]
    body = []
    for f in batch_families:
        body.append(_tuned_row(f))
        for budget in f.budgets():
            cells = sorted((c for c in f.cells if c.budget == budget),
                           key=lambda c: (RULE_ORDER.get(c.rule, 3), c.peak or 0.0))
            body += [_cell_row(f, c, c.rule) for c in cells]
            best = f.retuned(budget)
            if best is not None:
                body.append(_cell_row(f, best, f"re-tuned (best of {len(cells)} on validation)"))
    return table(header, body)


def _lower_rate_lines(family: Family) -> list[str]:
    """Per budget with a re-tuned cell and a linear-rule cell: is the re-tuned rate lower, and what
    it recovers on validation and test."""
    out = []
    for budget in family.budgets():
        best = family.retuned(budget)
        linear = next((c for c in family.cells if c.budget == budget and c.rule == "linear"), None)
        if best is None or linear is None or best.peak is None or not linear.peak:
            continue
        where = f"{family.tuned.label} at {family.batch_size}, {best.budget_text}"
        if best is linear:
            out.append(f"- {where}: the linear rule's rate ({_rate(linear.peak)}) is also the best "
                       "of the rates tried on validation: a lower rate does not do better here.")
            continue
        val = seed_difference(by_seed(best.group, lambda r: r.best_val_acc),
                              by_seed(linear.group, lambda r: r.best_val_acc))
        test = seed_difference(by_seed(best.group, lambda r: r.test_acc), by_seed(linear.group, lambda r: r.test_acc))
        word = "lower" if best.peak < linear.peak else "higher"
        out.append(f"- {where}: the best rate on validation is {_rate(best.peak)}, "
                   f"{best.peak / linear.peak:.2g}x the linear rule's ({word}); against the linear rule it changes "
                   f"best validation accuracy by {fmt_points(val)} and test accuracy by {fmt_points(test)} points.")
    return out


def transfer_budget_section(analysis: Analysis) -> list[str]:
    """The section (see the module doc); empty when no run moves the rule or the budget."""
    found = families(analysis)
    if not found:
        return []
    out = ["## Learning-rate transfer: rule, budget and a re-tuned rate", "",
           "Each method variant at a larger batch than it was tuned at, under each rule (linear: the configured "
           "rate scaled by the batch; sqrt: by its square root from the tuned batch; set directly: a rate given "
           "as is), each budget (epochs and warmup epochs; steps from summary.json) and each rate it ran at. "
           "**peak lr**: the rate the trainer scaled to (its start record), and its multiple of the tuned run's. "
           "**re-tuned**: where rates were also set directly at one budget, the best of all the variant's cells "
           "there on validation. **test change**: test accuracy minus the tuned run's, the mean of per-seed differences "
           "with a Student-t 95% interval where the tuned batch ran every seed of the cell. Test accuracy is "
           "reported, never chosen on.", ""]
    batches: dict[tuple, list[Family]] = {}
    for f in found:
        batches.setdefault((f.batch_size, f.layout, f.tuned.batch_size), []).append(f)
    for (batch, layout, tuned_batch), group in batches.items():
        setup = group[0].tuned_setup
        out += [f"### Batch {setup.batch_text(batch, layout)} from {tuned_batch}", "", _table(group), ""]
        lines = [line for f in group for line in _lower_rate_lines(f)]
        if lines:
            out += ["The lower-rate explanation (the re-tuned rate against the linear rule's, same budget):", "",
                    *lines, ""]
    return out


__all__ = ["Cell", "Family", "change", "families", "transfer_budget_section"]
