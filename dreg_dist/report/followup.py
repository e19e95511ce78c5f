"""Follow-up grids of a learning-rate sweep, written from its runs.

The usual protocol for comparing methods at tuned learning rates is to sweep each method's
learning rates with one seed, select on validation, then spend the remaining budget on
more seeds *at the selected values only*. Two follow-ups serve it; both keep the first
grid's base config, overrides and axes:

* :func:`edge_grid`: where a method variant's best learning rate is the lowest or highest
  it tried, one more learning rate a grid step beyond it (same seeds), so that every
  selection ends up bracketed (or is reported as an edge);
* :func:`seed_grid`: new seeds at each variant's selected learning rate; with ``wide_only``
  only where the seed-paired 95% interval of its validation difference to the baseline is
  wider than a fraction of the large-batch gap (:func:`wide_selections`): more seeds where the
  seeds so far cannot tell an effect of that size from none, and the baseline with them, so
  every difference stays paired;
* the grids that move a selection to another batch or budget are in :mod:`.followup_moves`, and what
  every follow-up grid is built from in :mod:`.followup_grid`.

They list their cells in the grid's ``only`` entries (one per variant and batch size).

Runs of all stages are reported together (``launch/report.py STAGE1 STAGE2 ...``). The
selection does not move when seeds are added, because it is made on the seeds every
learning rate has (:mod:`dreg_dist.report.select`).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from dreg_dist.records import BASELINE
from dreg_dist.report.aggregate import Group, Setup
from dreg_dist.report.analysis import Analysis
from dreg_dist.report.compare import seed_difference
from dreg_dist.report.followup_grid import Grid, base_setup, check, chosen_group, compared, followup, under
from dreg_dist.report.errors import NothingToRun, ReportError
from dreg_dist.report.runs import Run
from dreg_dist.report.select import common_seeds, edge_of
from dreg_dist.report.stats import freeze
from dreg_dist.report.step_gap import by_seed
from dreg_dist.sweep.grid import name_value


WIDE_FRACTION = 1 / 3
"""More seeds where a selection's 95% half-width exceeds this share of the gap (the issue's rule:
an interval of a third of the gap cannot exclude an effect that closes a third of it)."""


def _val(run: Run) -> Optional[float]:
    return run.best_val_acc


UNJUDGED = "no baseline at this batch or at a smaller one"
"""What :func:`wide_selections` says of a selection it cannot judge: ``--wide-only`` then needs the
folders of the baseline and the reference (``--against``)."""


def wide_selections(setup: Setup, fraction: float = WIDE_FRACTION) -> dict[tuple, str]:
    """Compare key -> why, for each selected method variant above the setup's smallest batch
    whose seed-paired 95% half-width of best validation accuracy minus the baseline's is over
    ``fraction`` of the baseline's gap to the smallest batch, or that has one seed (no interval
    yet: it reads ``one seed``), or that has no baseline or reference to be judged against
    (:data:`UNJUDGED`). Validation only: how many seeds a selection gets is a choice."""
    out: dict[tuple, str] = {}
    for g in setup.selected:
        base = setup.baseline(g.batch_size, g.layout)
        if g is base:
            continue
        ref = setup.reference(g)
        if g.batch_size == min(setup.batch_sizes) and len(setup.batch_sizes) > 1:
            continue  # at the reference's own batch there is no gap to close
        if g.batch_size == min(setup.batch_sizes) or base is None or ref is None or not ref.best_vals \
                or not base.best_vals:
            out[g.compare_key] = UNJUDGED
            continue
        gap = statistics.fmean(ref.best_vals) - statistics.fmean(base.best_vals)
        diff = seed_difference(by_seed(g, _val), by_seed(base, _val))
        if diff is None or gap <= 0:
            continue
        if diff.half_width is None:
            out[g.compare_key] = "one seed"
        elif diff.half_width > fraction * gap:
            out[g.compare_key] = (f"+-{100 * diff.half_width:.2f} points over {diff.seeds} seeds, "
                                  f"over {fraction:.2g} of the gap of {100 * gap:.2f}")
    return out


def seed_grid(analysis: Analysis, grid: Mapping[str, Any], seeds: Sequence[int], name: str,
              wide_only: bool = False, own: Optional[Sequence[Path]] = None) -> tuple[Grid, list[str]]:
    """New ``seeds`` at each selected learning rate of the runs in ``analysis`` (those with runs
    in the folders ``own``, when given), whose first grid is ``grid`` (``sweep.json``'s
    ``grid``); and one line per selection for its header. ``wide_only``: only the selections
    whose interval is wide (:func:`wide_selections`, against the baselines anywhere in
    ``analysis``), and the baseline at a batch setup where any selection of the analysis is."""
    check(grid, analysis)
    if not seeds:
        raise ReportError("--seeds needs at least one seed")
    used = {r.seed for _, groups in compared(analysis) for g in groups if under(g, own) for r in g.runs}
    if used & set(seeds):
        raise ReportError(f"seed(s) {sorted(used & set(seeds))} already ran in this sweep; pick new ones")
    wide: dict[tuple, str] = {}
    for setup in analysis.setups:
        wide.update(wide_selections(setup))
    wide_batches = {(k[0], k[-2], k[-1]) for k, why in wide.items() if why != UNJUDGED}  # (setup, batch, layout)
    picks: dict[tuple, tuple[Group, Optional[float]]] = {}
    lines = []
    for key, groups in compared(analysis):
        chosen = analysis.selected_lr.get(freeze(key))
        if own is not None and not under(chosen_group(groups, chosen), own):
            continue
        if wide_only:
            group = chosen_group(groups, chosen)
            if wide.get(group.compare_key) == UNJUDGED:
                raise ReportError(f"{group.label} at {group.batch_size} has {UNJUDGED} to be judged against: "
                                  "name the folders of the baseline and the reference with --against")
            is_base = group.method == BASELINE and not group.variant
            reason = wide.get(group.compare_key) or (
                "the baseline of a wide selection" if is_base and (key[0], key[-2], key[-1]) in wide_batches else None)
            if chosen is None or reason is None:
                continue
            picks[key] = (group, chosen.lr)
            lines.append(f"{group.label} batch {groups[0].batch_size}: lr {name_value(chosen.lr)} ({reason})")
            continue
        picks[key] = (chosen_group(groups, chosen), chosen.lr if chosen is not None else None)
        lines.append(f"{chosen_group(groups, chosen).label} batch {groups[0].batch_size}: "
                     + (f"lr {name_value(chosen.lr)}" if chosen is not None else "none (no validation result)"))
    if wide_only and not picks:
        raise NothingToRun(f"no selection has a 95% interval wider than {WIDE_FRACTION:.2g} of the gap: no more "
                           "seeds needed")
    which = "each method variant's" if not wide_only else (
        f"the method variants whose 95% interval against the baseline is wider than {WIDE_FRACTION:.2g} of the "
        "gap (and the baseline), at their")
    description = (f"Seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} at {which} "
                   "learning rate selected on "
                   f"validation in '{grid.get('name')}'. " + base_setup(grid))
    return followup(grid, name, description, seeds, picks), lines


def edge_grid(analysis: Analysis, grid: Mapping[str, Any], name: str) -> tuple[Grid, list[str]]:
    """One more learning rate beyond each selection at the edge of what its variant tried
    (a geometric grid step further), with the seeds the selection was made on."""
    check(grid, analysis)
    common = common_seeds(analysis.lr_results)
    picks: dict[tuple, tuple[Group, Optional[float]]] = {}
    lines = []
    seeds: set[int] = set()
    for key, groups in compared(analysis):
        chosen = analysis.selected_lr.get(freeze(key))
        lrs = sorted({g.lr for g in groups})
        edge = edge_of(chosen.lr, lrs) if chosen is not None else None
        if edge is None:
            picks[key] = (groups[0], None)  # bracketed already: none of its cells
            continue
        step = lrs[0] * lrs[0] / lrs[1] if edge == "lowest" else lrs[-1] * lrs[-1] / lrs[-2]
        step = float(f"{step:.6g}")  # 0.0125 / 2 is written 0.00625, not 0.006250000000000001
        group = chosen_group(groups, chosen)
        picks[key] = (group, step)
        seeds |= set(common.get(freeze(key)) or {s for g in groups for s in g.seeds})
        lines.append(f"{group.label} batch {group.batch_size}: best at lr {name_value(chosen.lr)} "
                     f"of {', '.join(name_value(x) for x in lrs)}; adds {name_value(step)}")
    if not lines:
        raise NothingToRun("every selected learning rate is inside its grid: nothing to extend")
    description = (f"Learning rates beyond the edge of '{grid.get('name')}' where a variant's best was its lowest or "
                   "highest. " + base_setup(grid))
    return followup(grid, name, description, sorted(seeds), picks), lines
