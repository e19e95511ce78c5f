"""Each method variant against the baseline: table rows, test differences, gap closed, transfers.

A :class:`Row` holds what a per-batch-size table shows of one group, measured against the
baseline method's group of the same setup and batch size (:meth:`.aggregate.Setup.baseline`);
:func:`gap_closed` and :class:`Transfer` say how much of the large-batch gap a method closes
and what it keeps when its learning rate is carried to a larger batch without re-tuning.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from dreg_dist.records import BASELINE, Catalog
from dreg_dist.report.aggregate import Group, Setup
from dreg_dist.report.keys import WORKERS_KEY, Pairs
from dreg_dist.report.select import epochs_to_reach
from dreg_dist.report.stats import Difference, mean_ci, mean_of, mean_std, ratio, same_lr, sort_key


THRESHOLDS = (0.95, 0.99, 1.0)
"""Fractions of the baseline's best validation accuracy; 1.0 = epochs to its best (the paper's claim)."""
SPEEDUP_AT = 0.99

@dataclass
class Row:
    """One line of a per-batch-size table (numbers as fractions, not percent)."""

    group: Group
    best_val: tuple[Optional[float], Optional[float]]
    test: tuple[Optional[float], Optional[float]]
    epochs_to: dict[float, tuple[Optional[float], int, int]]
    """threshold -> (mean epochs over the seeds that reached it, seeds reached, seeds)."""
    speedup: Optional[float]
    """Vanilla's mean epochs to 99% of its best / this row's; None without a baseline or if not reached."""
    images_per_sec: Optional[float]
    cost: Optional[float] = None
    """Mean seconds per epoch over the baseline's at the same batch size (same sweep, same machine)."""
    step_cost: Optional[float] = None
    """Mean over its runs that have one of the benchmarked cost of an optimizer step over the
    baseline's (:class:`dreg_dist.report.step_costs.StepCosts`)."""
    best_in_budget: Optional[float] = None
    """Mean over seeds of the best validation accuracy reached within the baseline's compute
    (its epochs), estimated from epochs x this row's step cost (time/epoch where it has none)."""
    compute_to_best: tuple[Optional[float], int, int] = (None, 0, 0)
    """Compute to reach the baseline's best validation accuracy, in baseline epochs: the epochs
    to 100% (as ``epochs_to``) x this row's step cost (time/epoch where it has none)."""
    vs_baseline: Optional[Difference] = None
    """Test accuracy minus the baseline's, paired by seed where it can be (:func:`difference_on_test`)."""
    extras: dict[str, Optional[float]] = field(default_factory=dict)
    """The method's report columns (its description's ``report_columns``): mean over seeds."""


def group_order(g: Group) -> tuple:
    return (g.method != BASELINE, g.method, tuple(sort_key(v) for _, v in g.variant))


def make_row(group: Group, baseline: Optional[Group]) -> Row:
    """Table numbers of ``group`` against the ``baseline`` method's group (same setup and batch size)."""
    epochs_to: dict[float, tuple[Optional[float], int, int]] = {}
    base_by_seed = {r.seed: r.best_val_acc for r in baseline.runs} if baseline else {}
    base_mean = mean_of(base_by_seed.values())
    for frac in THRESHOLDS:
        reached: list[float] = []
        counted = 0
        for run in group.runs:
            ref = base_by_seed.get(run.seed)
            if ref is None:
                ref = base_mean
            if ref is None:
                continue
            counted += 1
            e = epochs_to_reach(run.curve, frac * ref)
            if e is not None:
                reached.append(e)
        epochs_to[frac] = (sum(reached) / len(reached) if reached else None, len(reached), counted)
    cost = ratio(mean_of(r.seconds_per_epoch for r in group.runs),
                  mean_of(r.seconds_per_epoch for r in baseline.runs) if baseline else None)
    step_cost = mean_of(r.step_cost for r in group.runs)
    used_cost = step_cost if step_cost is not None else cost
    speedup = None
    if baseline is not None:
        own = epochs_to[SPEEDUP_AT]
        base_row = epochs_to if group is baseline else make_row(baseline, baseline).epochs_to
        ref = base_row[SPEEDUP_AT]
        if own[0] and ref[0] and own[1] == own[2] and own[2] > 0:
            speedup = ref[0] / own[0]
    return Row(
        group=group,
        best_val=mean_std(group.best_vals),
        test=mean_std(group.test_accs),
        epochs_to=epochs_to,
        speedup=speedup,
        images_per_sec=mean_of(r.images_per_sec for r in group.runs),
        cost=cost,
        step_cost=step_cost,
        best_in_budget=_best_in_budget(group, baseline, used_cost),
        compute_to_best=_compute_to(epochs_to[THRESHOLDS[-1]], used_cost),
        vs_baseline=difference_on_test(group, baseline) if baseline is not None and group is not baseline else None,
        extras={key: mean_of(r.final_value(key) for r in group.runs) for key in report_columns(group.catalog, [group.method])},
    )


def rows(setup: Setup, batch_size: int, layout: Optional[Pairs] = None) -> list[Row]:
    """One table row per selected group of a batch setup, against its baseline, in table order."""
    base, groups = setup.at(batch_size, layout)
    return [make_row(g, base) for g in sorted(groups, key=group_order)]


def _compute_to(entry: tuple[Optional[float], int, int], cost: Optional[float]
                ) -> tuple[Optional[float], int, int]:
    mean, reached, counted = entry
    if cost is None:
        return (None, 0, 0)  # shown as unknown, not as "not reached"
    return (mean * cost if mean is not None else None, reached, counted)


def _best_in_budget(group: Group, baseline: Optional[Group], cost: Optional[float]) -> Optional[float]:
    if baseline is None or cost is None:
        return None
    budget = max((e for r in baseline.runs for e, _ in r.curve), default=None)  # in baseline epochs
    if budget is None:
        return None
    best = [max((a for e, a in r.curve if e * cost <= budget + 1e-9), default=None) for r in group.runs]
    return mean_of(best)


def compute_cost(setup: Setup, group: Group) -> Optional[float]:
    """What one of ``group``'s epochs costs in the baseline's epochs at its batch setup: the
    benchmarked step cost where its runs have one (timed side by side, so far less noisy than
    the sweep's wall-clock), else its mean time/epoch over the baseline's; None when unknown."""
    step_cost = mean_of(r.step_cost for r in group.runs)
    if step_cost is not None:
        return step_cost
    base = setup.baseline(group.batch_size, group.layout)
    if base is None:
        return None
    return ratio(mean_of(r.seconds_per_epoch for r in group.runs), mean_of(r.seconds_per_epoch for r in base.runs))


def _test_by_seed(group: Group) -> dict[int, float]:
    return {r.seed: r.test_acc for r in group.runs if r.test_acc is not None}


def difference_on_test(group: Group, base: Group) -> Optional[Difference]:
    """``group``'s test accuracy minus ``base``'s (:func:`seed_difference`)."""
    return seed_difference(_test_by_seed(group), _test_by_seed(base))


def seed_difference(mine: dict[int, float], theirs: dict[int, float]) -> Optional[Difference]:
    """``mine`` minus ``theirs`` (seed -> value): the mean of per-seed differences when ``theirs``
    has every seed ``mine`` has, else ``mine``'s seeds against ``theirs``' mean."""
    if not mine or not theirs:
        return None
    if set(mine) <= set(theirs):
        mean, half = mean_ci([mine[s] - theirs[s] for s in sorted(mine)])
        assert mean is not None
        return Difference(mean, half, len(mine), True)
    mean, half = mean_ci(list(mine.values()))
    assert mean is not None
    return Difference(mean - statistics.fmean(theirs.values()), half, len(mine), False)


@dataclass
class GapClosed:
    """(method - baseline at batch B) / (baseline at the reference batch - baseline at B), on test accuracy."""

    value: Optional[float]
    half_width: Optional[float]
    """Of the 95% interval of :func:`difference_on_test` (paired by seed where it can be), over the
    gap; the gap's two means are taken as exact."""
    reference_batch: int
    reference_layout: Pairs = ()
    paired: bool = False


def gap_closed(setup: Setup, group: Group) -> Optional[GapClosed]:
    """How much of the large-batch gap ``group`` closes, against the baseline at the setup's
    smallest batch size (:meth:`Setup.reference`) and the baseline of its own batch setup;
    None at that batch size or without both baselines."""
    small = min(setup.batch_sizes)
    if group.batch_size == small:
        return None
    ref, base = setup.reference(group), setup.baseline(group.batch_size, group.layout)
    if ref is None or base is None or not ref.test_accs or not base.test_accs:
        return None
    gap = statistics.fmean(ref.test_accs) - statistics.fmean(base.test_accs)
    diff = difference_on_test(group, base)
    if gap <= 0 or diff is None:
        return None
    closed = diff.scaled(1 / gap)
    return GapClosed(closed.mean, closed.half_width, small, ref.layout, diff.paired)


@dataclass
class Transfer:
    """A method variant at a larger batch size with the learning rate selected at a smaller one,
    not re-tuned (``launch/report.py --transfer-grid``): ``optim.lr`` is per
    ``optim.base_batch_size`` and scaled by the configured rule, so its value is the same."""

    tuned: Group
    """At the tuning batch: the selected learning rate of two or more."""
    moved: Group
    """At the larger batch: every run at that learning rate."""
    base_tuned: Optional[Group]
    base_moved: Optional[Group]
    """The baseline's groups at the two batch setups."""

    @property
    def is_baseline(self) -> bool:
        return self.tuned is self.base_tuned

    @property
    def change(self) -> Optional[float]:
        """Mean test accuracy at the larger batch minus at the tuning batch."""
        a, b = mean_of(self.tuned.test_accs), mean_of(self.moved.test_accs)
        return b - a if a is not None and b is not None else None

    def loss_vs_baseline(self) -> Optional[Difference]:
        """Mean over seeds of (method - baseline at the larger batch) - (method - baseline at the
        tuning batch) in test accuracy, over the seeds all four have; a difference of the four
        means (no interval) when no seed has all four."""
        if self.base_tuned is None or self.base_moved is None or self.is_baseline:
            return None
        sides = [_test_by_seed(g) for g in (self.moved, self.base_moved, self.tuned, self.base_tuned)]
        seeds = sorted(set.intersection(*(set(side) for side in sides)))
        if seeds:
            m2, v2, m1, v1 = sides
            mean, half = mean_ci([(m2[s] - v2[s]) - (m1[s] - v1[s]) for s in seeds])
            assert mean is not None
            return Difference(mean, half, len(seeds), True)
        m2, v2, m1, v1 = (mean_of(side.values()) for side in sides)
        if m2 is None or v2 is None or m1 is None or v1 is None:
            return None
        return Difference((m2 - v2) - (m1 - v1), None, 0, False)


def _workers(layout: Pairs) -> Any:
    return dict(layout).get(WORKERS_KEY)


def transfers(setup: Setup) -> list[Transfer]:
    """Every (method variant, tuning batch setup with two or more settings, larger batch setup on
    the same number of workers where all its runs use the selected one), in table order. Each
    larger batch setup's table also gets the baseline's own transfer, between the baselines of
    the batch setups its other rows come from (run there at one learning rate, it is what the
    rows' loss against the baseline is measured on)."""
    compared = setup.compared()
    out = []
    for key, groups in compared.items():
        tuned = next((g for g in setup.selected if g.compare_key == key), None)
        if tuned is None or len({g.setting for g in groups if g.lr is not None}) < 2:
            continue
        for others in compared.values():
            moved = others[0]
            if (len(others) == 1 and moved.variant_key == tuned.variant_key and moved.batch_size > tuned.batch_size
                    and _workers(moved.layout) == _workers(tuned.layout)
                    and same_lr(tuned.lr, moved.lr) and moved.tuned == tuned.tuned):
                out.append(Transfer(tuned, moved, setup.baseline(tuned.batch_size, tuned.layout),
                                    setup.baseline(moved.batch_size, moved.layout)))
    tables: dict[tuple, list[Transfer]] = {}
    for t in out:
        tables.setdefault((t.moved.batch_size, t.moved.layout), []).append(t)
    for rows in tables.values():
        sources = {(t.base_tuned.batch_size, t.base_tuned.layout) for t in rows if t.base_tuned is not None}
        base_tuned, base_moved = rows[0].base_tuned, rows[0].base_moved
        if (not any(t.is_baseline for t in rows) and len(sources) == 1 and base_tuned is not None
                and base_moved is not None and same_lr(base_tuned.lr, base_moved.lr)):
            out.append(Transfer(base_tuned, base_moved, base_tuned, base_moved))
    return sorted(out, key=lambda t: (t.moved.batch_size, tuple(sort_key(v) for _, v in t.moved.layout),
                                      t.tuned.batch_size, group_order(t.tuned)))


def report_columns(catalog: Catalog, method_names: Iterable[str]) -> dict[str, str]:
    """Extra table columns (summary key -> title) of the given methods, in a stable order."""
    out: dict[str, str] = {}
    for name in sorted(set(method_names)):
        d = catalog.get(name)
        if d is not None:
            out.update(d.report_columns)
    return out
