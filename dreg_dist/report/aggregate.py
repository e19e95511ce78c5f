"""Group runs into compared settings, average over seeds, pick learning rates, build tables.

Config keys that differ between the runs are sorted into roles:

* ``train.seed``: averaged over (mean, std, min-max band);
* ``train.global_batch_size``: one table and one figure per batch size (group); a key that
  takes one value per batch size (``train.accumulation_steps`` set to keep the micro-batch
  fixed) belongs to the batch size and is named in its table's heading;
* how a batch is split (``train.accumulation_steps``, ``train.micro_batch_size``, and the
  number of worker processes the run trained on): when it varies, each setting of a batch
  size is a batch setup of its own, with its own table and its own baseline (a method that
  needs 8 real workers is compared with the baseline on the same 8 workers, the others with
  the baseline on 8 accumulated micro-batches);
* ``optim.lr``: each method variant is taken at its own best learning rate, chosen on
  mean best validation accuracy (:mod:`dreg_dist.report.select`);
* a method's keys that the sweep's grid lists under ``tune`` (``methods.sam.rho``): chosen
  jointly with the learning rate, on validation, as the method's own tuned knob;
* ``method``: the compared methods;
* keys of a method's own config section (its hyperparameters), and the optimizer
  (``optim.name``, shown only where it is not SGD): variants of that method
  (``sam (rho=0.1)``, ``vanilla (optimizer=lars)``);
* anything else (``model.arch``, ``data.name``, ``optim.momentum``, ...): separate setups,
  each with its own section in the report.

Keys that never change results (as each run's record says) are ignored. What a method adds
to the report (study axes, extra columns and curves, notes) comes from its description in the
run records (:class:`dreg_dist.records.Catalog`), never from method code.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Optional, Sequence

from dreg_dist.records import BASELINE, Catalog
from dreg_dist.report.runs import Run, catalog_of, iter_finite
from dreg_dist.report.select import LrResult, epochs_to_reach, select_lr
from dreg_dist.sweep.grid import key_alias, name_value

SEED_KEY = "train.seed"
BATCH_KEY = "train.global_batch_size"
LR_KEY = "optim.lr"
METHOD_KEY = "method"
WORKERS_KEY = "world_size"
"""Not a config key: the number of worker processes a run trained on (:attr:`Run.workers`)."""
LAYOUT_KEYS = ("train.accumulation_steps", "train.micro_batch_size", WORKERS_KEY)
"""How a global batch is split over workers and micro-steps: when one varies it is part of the
batch setup, never a separate setup (the smallest batch size stays every table's reference)."""
VARIANT_DEFAULTS: dict[str, Any] = {"optim.name": "sgd"}
"""Run keys compared as variants of a method (LARS or LAMB is a way to train vanilla), with the
value that is not named in labels."""
THRESHOLDS = (0.95, 0.99, 1.0)
"""Fractions of the baseline's best validation accuracy; 1.0 = epochs to its best (the paper's claim)."""
SPEEDUP_AT = 0.99

LABELS = {
    "model.arch": "arch", "data.name": "data", "model.num_classes": "classes", "optim.momentum": "momentum",
    "optim.name": "optimizer", "train.epochs": "epochs", "optim.lr": "lr", "train.global_batch_size": "batch",
    "train.accumulation_steps": "accumulation", "train.micro_batch_size": "micro-batch", WORKERS_KEY: "workers",
}
"""Short names of the run's keys in tables; a method's keys use its description's ``labels``."""

Pairs = tuple[tuple[str, Any], ...]


def label_of(key: str, catalog: Catalog) -> str:
    if key in LABELS:
        return LABELS[key]
    owner = catalog.owner_of(key)
    if owner is not None:
        return key_alias(key, catalog) or owner.field_of(key)
    return key


def pairs_label(pairs: Pairs, catalog: Catalog) -> str:
    return ", ".join(f"{label_of(k, catalog)}={name_value(v)}" for k, v in pairs)


def _result_keys(runs: Sequence[Run]) -> frozenset[str]:
    """The config keys of ``runs`` that can change results: all but those a run's record
    says change none of its results."""
    keys = {k for r in runs for k in r.flat}
    return frozenset(k for k in keys if all(r.record.changes_results(k) for r in runs if k in r.flat))


def _relevant(run: Run, keys: frozenset[str]) -> dict[str, Any]:
    """The run's result keys, less its method's fields that its other values make moot
    (its description's ``applies_when``), plus the worker count."""
    out = {k: v for k, v in run.flat.items() if k in keys}
    d = run.description
    if d.section:
        for field, (other, value) in d.applies_when.items():
            if f"{d.section}.{other}" in run.flat and run.flat[f"{d.section}.{other}"] != value:
                out.pop(f"{d.section}.{field}", None)
    if run.workers is not None:
        out[WORKERS_KEY] = run.workers
    return out


def _hashable(value: Any) -> Hashable:
    return tuple(value) if isinstance(value, list) else value


def sort_key(value: Any) -> tuple:
    """Order values: numbers numerically, R1 < R2 < R10, then everything else as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    text = name_value(value)
    if len(text) > 1 and text[0] in "Rr" and text[1:].isdigit():
        return (1, float(text[1:]), text)
    return (2, 0.0, text)


def mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (0 for one value); (None, None) when empty."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values)


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    vals = iter_finite(values)
    return sum(vals) / len(vals) if vals else None


@dataclass
class Group:
    """Runs that differ only by seed."""

    setup: Pairs
    method: str
    variant: Pairs
    batch_size: int
    lr: Optional[float]
    runs: list[Run] = field(default_factory=list)
    layout: Pairs = ()
    """The batch setup's other keys (see :data:`LAYOUT_KEYS`): accumulation, workers."""
    tuned: Pairs = ()
    """Values of the method keys tuned jointly with the learning rate (the grid's ``tune``)."""
    catalog: Catalog = field(default_factory=Catalog, repr=False, compare=False)
    """The descriptions of the analysis' methods (labels of their keys)."""

    def pairs_label(self, pairs: Pairs) -> str:
        return pairs_label(pairs, self.catalog)

    @property
    def label(self) -> str:
        shown = (*self.variant, *self.tuned)
        return self.method + (f" ({self.pairs_label(shown)})" if shown else "")

    @property
    def base_label(self) -> str:
        """The label without the tuned knobs: what the learning rate and knobs are selected for."""
        return self.method + (f" ({self.pairs_label(self.variant)})" if self.variant else "")

    @property
    def setting(self) -> tuple:
        """What the selection chooses among within a compare key: the learning rate and tuned knobs."""
        return (self.lr, tuple((k, _hashable(v)) for k, v in self.tuned))

    @property
    def variant_key(self) -> tuple:
        """The method variant, at any batch size."""
        return (self.setup, self.method, self.variant)

    @property
    def compare_key(self) -> tuple:
        """What learning rates are compared within."""
        return (*self.variant_key, self.batch_size, self.layout)

    @property
    def diverged(self) -> int:
        """How many of its runs stopped on a non-finite value."""
        return sum(r.diverged_at is not None for r in self.runs)

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.runs)

    @property
    def best_vals(self) -> list[float]:
        return iter_finite(r.best_val_acc for r in self.runs)

    @property
    def test_accs(self) -> list[float]:
        return iter_finite(r.test_acc for r in self.runs)

    def curve(self) -> list[tuple[float, float, float, float]]:
        """(epoch, mean, min, max) of validation accuracy over the seeds that reached the epoch."""
        return _band([r.curve for r in self.runs])

    def loss_curve(self) -> list[tuple[float, float, float, float]]:
        """(epoch, mean, min, max) of the training loss (see runs.train_loss) over seeds, by step."""
        return self.train_curve("loss")

    def train_curve(self, tag: str) -> list[tuple[float, float, float, float]]:
        """(epoch, mean, min, max) over seeds of a logged training value (``loss``,
        or a method's own value), by step."""
        by_step: dict[Any, list[tuple[float, float]]] = {}
        for r in self.runs:
            for rec in r.train:
                value = rec.get(tag)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    by_step.setdefault(rec["step"], []).append((rec["epoch"], float(value)))
        out = []
        for step in sorted(by_step):
            epochs = [e for e, _ in by_step[step]]
            values = [v for _, v in by_step[step] if math.isfinite(v)]
            if values:
                out.append((sum(epochs) / len(epochs), sum(values) / len(values), min(values), max(values)))
        return out


def _band(curves: Iterable[Sequence[tuple[float, float]]]) -> list[tuple[float, float, float, float]]:
    by_epoch: dict[float, list[float]] = {}
    for curve in curves:
        for epoch, acc in curve:
            by_epoch.setdefault(epoch, []).append(acc)
    return [(e, sum(v) / len(v), min(v), max(v)) for e, v in sorted(by_epoch.items())]


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
    baseline's (:class:`dreg_dist.report.runs.StepCosts`)."""
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


@dataclass
class Setup:
    key: Pairs
    groups: list[Group]
    selected: list[Group]
    """One group per (method variant, batch size): at its selected learning rate."""
    catalog: Catalog = field(default_factory=Catalog, repr=False, compare=False)

    def pairs_label(self, pairs: Pairs) -> str:
        return pairs_label(pairs, self.catalog)

    @property
    def label(self) -> str:
        return self.pairs_label(self.key) if self.key else ""

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({g.batch_size for g in self.groups})

    @property
    def batch_keys(self) -> list[tuple[int, Pairs]]:
        """Every (batch size, batch setup) with runs, in order: one table each."""
        keys = {(g.batch_size, g.layout) for g in self.groups}
        return sorted(keys, key=lambda k: (k[0], tuple(sort_key(v) for _, v in k[1])))

    def layouts(self, batch_size: int) -> list[Pairs]:
        return [layout for b, layout in self.batch_keys if b == batch_size]

    def batch_text(self, batch_size: int, layout: Pairs, always: bool = False) -> str:
        """'4096', and its setup ('4096 (accumulation=1, workers=8)') when the batch size has
        several (or ``always``)."""
        named = layout and (always or len(self.layouts(batch_size)) > 1)
        return f"{batch_size} ({self.pairs_label(layout)})" if named else str(batch_size)

    def _layout(self, batch_size: int, layout: Optional[Pairs]) -> Pairs:
        if layout is not None:
            return layout
        found = self.layouts(batch_size)
        if len(found) > 1:
            raise ValueError(f"batch size {batch_size} has {len(found)} batch setups: name one")
        return found[0] if found else ()

    def compared(self) -> dict[tuple, list[Group]]:
        """compare key (method variant x batch size) -> its groups, by learning rate (None last)."""
        out: dict[tuple, list[Group]] = {}
        for g in self.groups:
            out.setdefault(g.compare_key, []).append(g)
        return {k: sorted(v, key=lambda g: (g.lr is None, g.lr or 0.0, tuple(sort_key(x) for _, x in g.tuned)))
                for k, v in out.items()}

    def baseline(self, batch_size: int, layout: Optional[Pairs] = None) -> Optional[Group]:
        """The baseline method's selected group at ``batch_size`` in batch setup ``layout``
        (None: the batch size's only one)."""
        layout = self._layout(batch_size, layout)
        for g in self.selected:
            if g.method == BASELINE and g.batch_size == batch_size and g.layout == layout and not g.variant:
                return g
        return None

    def reference(self, group: Group) -> Optional[Group]:
        """The baseline at the smallest batch size, whose accuracy the large batch is to recover:
        in ``group``'s batch setup where it ran there, else in the first one that did."""
        small = self.batch_sizes[0]
        layouts = sorted(self.layouts(small), key=lambda layout: layout != group.layout)
        return next((b for b in (self.baseline(small, layout) for layout in layouts) if b is not None), None)

    def rows(self, batch_size: int, layout: Optional[Pairs] = None) -> list[Row]:
        layout = self._layout(batch_size, layout)
        base = self.baseline(batch_size, layout)
        groups = sorted((g for g in self.selected if g.batch_size == batch_size and g.layout == layout),
                        key=_group_order)
        return [make_row(g, base) for g in groups]

    def unvalidated(self, batch_size: int, layout: Pairs) -> list[Group]:
        """Groups of this batch setup whose method variant has no selected learning rate: every
        run it has stopped before its first validation (diverged), so no row shows it."""
        shown = {g.compare_key for g in self.selected}
        return [g for g in self.groups
                if g.batch_size == batch_size and g.layout == layout and g.compare_key not in shown]


def _group_order(g: Group) -> tuple:
    return (g.method != BASELINE, g.method, tuple(sort_key(v) for _, v in g.variant))


def make_row(group: Group, baseline: Optional[Group]) -> Row:
    """Table numbers of ``group`` against the ``baseline`` method's group (same setup and batch size)."""
    epochs_to: dict[float, tuple[Optional[float], int, int]] = {}
    base_by_seed = {r.seed: r.best_val_acc for r in baseline.runs} if baseline else {}
    base_mean = _mean(base_by_seed.values())
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
    cost = _ratio(_mean(r.seconds_per_epoch for r in group.runs),
                  _mean(r.seconds_per_epoch for r in baseline.runs) if baseline else None)
    step_cost = _mean(r.step_cost for r in group.runs)
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
        images_per_sec=_mean(r.images_per_sec for r in group.runs),
        cost=cost,
        step_cost=step_cost,
        best_in_budget=_best_in_budget(group, baseline, used_cost),
        compute_to_best=_compute_to(epochs_to[THRESHOLDS[-1]], used_cost),
        vs_baseline=difference_on_test(group, baseline) if baseline is not None and group is not baseline else None,
        extras={key: _mean(r.final_value(key) for r in group.runs) for key in report_columns(group.catalog, [group.method])},
    )


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
    return _mean(best)


def compute_cost(setup: "Setup", group: Group) -> Optional[float]:
    """What one of ``group``'s epochs costs in the baseline's epochs at its batch setup: the
    benchmarked step cost where its runs have one (timed side by side, so far less noisy than
    the sweep's wall-clock), else its mean time/epoch over the baseline's; None when unknown."""
    step_cost = _mean(r.step_cost for r in group.runs)
    if step_cost is not None:
        return step_cost
    base = setup.baseline(group.batch_size, group.layout)
    if base is None:
        return None
    return _ratio(_mean(r.seconds_per_epoch for r in group.runs), _mean(r.seconds_per_epoch for r in base.runs))


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
"""Two-sided 95% Student-t quantiles by degrees of freedom (1.96 beyond 10 would understate)."""


def mean_ci(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and the half-width of its 95% t-interval over seeds (None with fewer than 2)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    if len(values) < 2:
        return values[0], None
    df = len(values) - 1
    return statistics.fmean(values), T95.get(df, 2.0) * statistics.stdev(values) / math.sqrt(len(values))


@dataclass
class Difference:
    """A mean difference of a per-seed quantity and the half-width of its 95% t-interval."""

    mean: float
    half_width: Optional[float]
    """None with one seed, or for a difference of means (nothing to pair)."""
    seeds: int
    """Seeds the interval is over (0: a difference of means)."""
    paired: bool
    """Per-seed differences (runs with the same seed share initialisation and data order, so
    pairing removes that part of the seed noise); else the method's seeds against the other
    side's mean, taken as exact."""

    @property
    def inside_noise(self) -> bool:
        """Whether the interval includes 0: the difference cannot be told from seed noise."""
        return self.half_width is not None and abs(self.mean) <= self.half_width

    def scaled(self, factor: float) -> "Difference":
        return Difference(self.mean * factor, None if self.half_width is None else self.half_width * abs(factor),
                          self.seeds, self.paired)


def _test_by_seed(group: Group) -> dict[int, float]:
    return {r.seed: r.test_acc for r in group.runs if r.test_acc is not None}


def difference_on_test(group: Group, base: Group) -> Optional[Difference]:
    """``group``'s test accuracy minus ``base``'s: the mean of per-seed differences when ``base``
    has every seed ``group`` has, else ``group``'s seeds against ``base``'s mean."""
    mine, theirs = _test_by_seed(group), _test_by_seed(base)
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


def gap_closed(setup: "Setup", group: Group) -> Optional[GapClosed]:
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
        a, b = _mean(self.tuned.test_accs), _mean(self.moved.test_accs)
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
        m2, v2, m1, v1 = (_mean(side.values()) for side in sides)
        if m2 is None or v2 is None or m1 is None or v1 is None:
            return None
        return Difference((m2 - v2) - (m1 - v1), None, 0, False)


def _workers(layout: Pairs) -> Any:
    return dict(layout).get(WORKERS_KEY)


def transfers(setup: "Setup") -> list[Transfer]:
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
                    and _same_lr(tuned.lr, moved.lr) and moved.tuned == tuned.tuned):
                out.append(Transfer(tuned, moved, setup.baseline(tuned.batch_size, tuned.layout),
                                    setup.baseline(moved.batch_size, moved.layout)))
    tables: dict[tuple, list[Transfer]] = {}
    for t in out:
        tables.setdefault((t.moved.batch_size, t.moved.layout), []).append(t)
    for rows in tables.values():
        sources = {(t.base_tuned.batch_size, t.base_tuned.layout) for t in rows if t.base_tuned is not None}
        base_tuned, base_moved = rows[0].base_tuned, rows[0].base_moved
        if (not any(t.is_baseline for t in rows) and len(sources) == 1 and base_tuned is not None
                and base_moved is not None and _same_lr(base_tuned.lr, base_moved.lr)):
            out.append(Transfer(base_tuned, base_moved, base_tuned, base_moved))
    return sorted(out, key=lambda t: (t.moved.batch_size, tuple(sort_key(v) for _, v in t.moved.layout),
                                      t.tuned.batch_size, _group_order(t.tuned)))


def report_columns(catalog: Catalog, method_names: Iterable[str]) -> dict[str, str]:
    """Extra table columns (summary key -> title) of the given methods, in a stable order."""
    out: dict[str, str] = {}
    for name in sorted(set(method_names)):
        d = catalog.get(name)
        if d is not None:
            out.update(d.report_columns)
    return out


@dataclass
class StudyPoint:
    value: Any
    group: Group


@dataclass
class Analysis:
    runs: list[Run]
    setups: list[Setup]
    roles: dict[str, list[str]]
    """role -> varying keys: setup, variant, method, batch, lr, seed."""
    lr_results: list[LrResult]
    selected_lr: dict[Hashable, LrResult]
    catalog: Catalog = field(default_factory=Catalog, repr=False, compare=False)
    """The descriptions of the runs' methods, from their records."""

    def pairs_label(self, pairs: Pairs) -> str:
        return pairs_label(pairs, self.catalog)

    def label_of(self, key: str) -> str:
        return label_of(key, self.catalog)

    @property
    def lr_varies(self) -> bool:
        """Whether some method variant was run at two or more settings (learning rate, tuned knobs)."""
        settings: dict[tuple, set] = {}
        for s in self.setups:
            for g in s.groups:
                if g.lr is not None:
                    settings.setdefault(g.compare_key, set()).add(g.setting)
        return any(len(v) > 1 for v in settings.values())

    def lr_values(self) -> dict[tuple, list[float]]:
        out: dict[tuple, list[float]] = {}
        for s in self.setups:
            for g in s.groups:
                if g.lr is not None:
                    out.setdefault(g.compare_key, []).append(g.lr)
        return {k: sorted(set(v)) for k, v in out.items()}

    @property
    def study_keys(self) -> list[str]:
        return [k for k in self.study_titles() if k in self.roles.get("variant", [])]

    def study_titles(self) -> dict[str, str]:
        """Dotted key -> axis title of every study key of the methods in the analysis."""
        out: dict[str, str] = {}
        for name in sorted({r.method for r in self.runs}):
            d = self.catalog.get(name)
            if d is not None:
                out.update({f"{d.section}.{k}": title for k, title in d.study_keys.items()})
        return out

    def study(self, setup: Setup, key: str) -> dict[tuple[int, Pairs], list[StudyPoint]]:
        """(batch size, the other variant keys, and the batch setup where the batch size has
        several) -> points along ``key`` (selected groups only)."""
        out: dict[tuple[int, Pairs], list[StudyPoint]] = {}
        for g in setup.selected:
            values = dict(g.variant)
            if key not in values:
                continue
            rest = tuple((k, v) for k, v in g.variant if k != key)
            if len(setup.layouts(g.batch_size)) > 1:
                rest += g.layout
            out.setdefault((g.batch_size, rest), []).append(StudyPoint(values[key], g))
        for points in out.values():
            points.sort(key=lambda p: sort_key(p.value))
        return dict(sorted(out.items(), key=lambda kv: (kv[0][0], self.pairs_label(kv[0][1]))))


def _follows_batch(runs: Sequence[Run], key: str) -> bool:
    """Whether ``key`` takes a single value among the runs of each batch size."""
    per_batch: dict[int, set[Hashable]] = {}
    for run in runs:
        per_batch.setdefault(run.batch_size, set()).add(_hashable(run.flat.get(key)))
    return len(per_batch) > 1 and all(len(v) == 1 for v in per_batch.values())


def classify_keys(runs: Sequence[Run], keys: Optional[frozenset[str]] = None,
                  tuned: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """The varying config keys of ``runs`` by role (see the module doc); ``keys``: those that
    can change results (default: asked of the config); ``tuned``: method keys selected with the
    learning rate."""
    keys = _result_keys(runs) if keys is None else keys
    catalog = catalog_of(runs)
    values: dict[str, set[Hashable]] = {}
    for run in runs:
        for k, v in _relevant(run, keys).items():
            values.setdefault(k, set()).add(_hashable(v))
    present = {r.method for r in runs}
    roles: dict[str, list[str]] = {"seed": [], "batch": [], "lr": [], "tuned": [], "method": [], "variant": [],
                                   "setup": []}
    for key in sorted(values):
        if len(values[key]) < 2 and not (key == METHOD_KEY and len(present) > 1):
            continue
        if key == SEED_KEY:
            roles["seed"].append(key)
        elif key == BATCH_KEY:
            roles["batch"].append(key)
        elif key == LR_KEY:
            roles["lr"].append(key)
        elif key == METHOD_KEY:
            roles["method"].append(key)
        elif key in LAYOUT_KEYS:
            roles["batch"].append(key)
        elif key in tuned and catalog.owner_of(key) is not None:
            roles["tuned"].append(key)
        elif catalog.owner_of(key) is not None or key in VARIANT_DEFAULTS:
            roles["variant"].append(key)
        elif _follows_batch(runs, key):
            roles["batch"].append(key)
        else:
            roles["setup"].append(key)
    return roles


def analyse(runs: Sequence[Run], tuned: Iterable[str] = ()) -> Analysis:
    """Group, average and select learning rates (and the ``tuned`` method keys with them) for a
    sweep's runs."""
    # A run that never validated has nothing to report, unless it diverged: that is a result
    # (a learning rate too high), shown as such rather than left out.
    runs = [r for r in runs if r.val or r.diverged_at is not None]
    keys = _result_keys(runs)
    catalog = catalog_of(runs)
    roles = classify_keys(runs, keys, frozenset(tuned))
    groups: dict[tuple, Group] = {}
    for run in runs:
        rel = _relevant(run, keys)
        setup = tuple((k, rel.get(k)) for k in roles["setup"])
        variant = tuple((k, rel[k]) for k in roles["variant"]
                        if k in rel and not (k in VARIANT_DEFAULTS and rel[k] == VARIANT_DEFAULTS[k]))
        layout = tuple((k, rel.get(k)) for k in roles["batch"] if k != BATCH_KEY)
        knobs = tuple((k, rel[k]) for k in roles["tuned"] if k in rel)
        key = (tuple((k, _hashable(v)) for k, v in setup), run.method,
               tuple((k, _hashable(v)) for k, v in variant), run.batch_size,
               tuple((k, _hashable(v)) for k, v in layout), run.lr, tuple((k, _hashable(v)) for k, v in knobs))
        if key not in groups:
            groups[key] = Group(setup=setup, method=run.method, variant=variant, batch_size=run.batch_size, lr=run.lr,
                                layout=layout, tuned=knobs, catalog=catalog)
        groups[key].runs.append(run)
    for g in groups.values():
        g.runs.sort(key=lambda r: (r.seed, r.name))

    lr_results = [LrResult(key=freeze(g.compare_key), lr=g.lr if g.lr is not None else float("nan"),
                           val_accs=tuple(g.best_vals), test_accs=tuple(g.test_accs),
                           seeds=tuple(r.seed for r in g.runs if r.best_val_acc is not None),
                           knobs=tuple(sort_key(v) for _, v in g.tuned), setting=g.setting[1])
                  for g in groups.values()]
    selected = select_lr(lr_results)

    setups: dict[tuple, Setup] = {}
    for g in sorted(groups.values(), key=lambda g: (tuple(sort_key(v) for _, v in g.setup), g.batch_size,
                                                    tuple(sort_key(v) for _, v in g.layout), _group_order(g),
                                                    g.lr or 0.0)):
        skey = tuple((k, _hashable(v)) for k, v in g.setup)
        setup = setups.setdefault(skey, Setup(key=g.setup, groups=[], selected=[], catalog=catalog))
        setup.groups.append(g)
        chosen = selected.get(freeze(g.compare_key))
        if chosen is not None and _same_lr(chosen.lr, g.lr) and chosen.setting == g.setting[1]:
            setup.selected.append(g)
    return Analysis(runs=list(runs), setups=list(setups.values()), roles=roles, lr_results=lr_results,
                    selected_lr=selected, catalog=catalog)


def _same_lr(a: Optional[float], b: Optional[float]) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return (a is None or (isinstance(a, float) and math.isnan(a))) and b is None
    return a == b


def freeze(key: Any) -> Hashable:
    if isinstance(key, (list, tuple)):
        return tuple(freeze(k) for k in key)
    return key


def batch_groups(batch_sizes: Sequence[int], spec: Optional[str] = None) -> list[list[int]]:
    """Batch sizes per figure: ``"2048,4096;6144,8192,10240"`` (missing sizes get their own),
    or one figure per batch size."""
    present = sorted(set(batch_sizes))
    if not spec:
        return [[b] for b in present]
    out: list[list[int]] = []
    used: set[int] = set()
    for part in spec.split(";"):
        sizes = [int(x) for x in part.replace(" ", "").split(",") if x]
        sizes = [b for b in sizes if b in present and b not in used]
        if sizes:
            out.append(sizes)
            used.update(sizes)
    out.extend([b] for b in present if b not in used)
    return out
