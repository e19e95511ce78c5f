"""Step count against generalization: how much of the large-batch gap the missing steps explain.

At the same epochs a large batch takes fewer optimizer steps than the small-batch reference
(40 epochs of 45,000 images: 3,480 steps at 512, 400 at 4096, the last partial batch dropped). A
study that also trains the large batch for as many more epochs as give it the reference's steps (348
epochs at 4096) splits the gap in two:

* gap = reference - large batch at the reference's epochs ("fixed epochs");
* step part = large batch at matched steps - large batch at fixed epochs;
* generalization part = reference - large batch at matched steps (what the steps do not buy).

The two regimes are found from the runs, not named on the command line: two setups of the
analysis whose keys differ only in the budget (``train.epochs``, and ``optim.warmup_epochs``
where the matched run also warms up for the reference's steps), where the one with more epochs has a batch
size the other has too, larger than the other's reference (the baseline at its smallest batch
size), run for the reference's optimizer steps to within :data:`STEPS_TOLERANCE` (summary.json's
``global_steps``). Each method variant with runs in both regimes is taken at its learning rate
selected on validation in each; test accuracy is shown, never chosen on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from dreg_dist.records import BASELINE
from dreg_dist.report.aggregate import Group, Setup
from dreg_dist.report.analysis import Analysis
from dreg_dist.report.cells import fmt_ci, fmt_lr, fmt_points, fmt_share
from dreg_dist.report.compare import group_order, seed_difference
from dreg_dist.report.keys import BUDGET_KEYS, EPOCHS_KEY, WARMUP_KEY, Pairs, same_but
from dreg_dist.report.mdtable import table
from dreg_dist.report.runs import Run
from dreg_dist.report.stats import Difference
from dreg_dist.sweep.grid import name_value

STEPS_TOLERANCE = 0.05
"""Relative difference of optimizer steps still counted as the reference's: a batch size that
does not divide the training set leaves a few steps over or short per epoch."""

Metric = Callable[[Run], Optional[float]]
METRICS: tuple[tuple[str, Metric], ...] = (("Test accuracy", lambda r: r.test_acc),
                                           ("Best validation accuracy", lambda r: r.best_val_acc))


@dataclass(frozen=True)
class Regimes:
    """A large batch at the reference's epochs and at the reference's optimizer steps."""

    fixed: Setup
    matched: Setup
    batch_size: int
    layout: Pairs
    reference: Group
    """The baseline at the fixed-epochs setup's smallest batch size, at its selected learning rate."""

    def epochs(self, setup: Setup) -> str:
        return name_value(dict(setup.key)[EPOCHS_KEY])

    def warmups(self) -> Optional[str]:
        """'W and W2 warmup epochs' where the two regimes also differ in warmup, else None."""
        a, b = dict(self.fixed.key).get(WARMUP_KEY), dict(self.matched.key).get(WARMUP_KEY)
        return None if a is None or b is None or a == b else f"{name_value(a)} and {name_value(b)} warmup epochs"

    @property
    def batch_text(self) -> str:
        return self.fixed.batch_text(self.batch_size, self.layout)

    @property
    def reference_text(self) -> str:
        ref = self.reference
        return f"{BASELINE} at {self.fixed.batch_text(ref.batch_size, ref.layout)}, {self.epochs(self.fixed)} epochs"


@dataclass(frozen=True)
class Split:
    """One accuracy's gap and its two parts, in accuracy (fractions), reference minus large batch."""

    gap: Optional[Difference]
    steps: Optional[Difference]
    generalization: Optional[Difference]

    @property
    def closed_by_steps(self) -> Optional[Difference]:
        """The step part over the gap's mean (taken as exact, as the report's gap closed is)."""
        if self.gap is None or self.steps is None or self.gap.mean <= 0:
            return None
        return self.steps.scaled(1 / self.gap.mean)


@dataclass(frozen=True)
class Decomposition:
    """One method variant in both regimes."""

    regimes: Regimes
    fixed: Group
    matched: Optional[Group]
    """None when every run of the variant at matched steps diverged before its first validation."""
    unvalidated: Sequence[Group] = ()

    def split(self, metric: Metric) -> Split:
        ref, fixed = by_seed(self.regimes.reference, metric), by_seed(self.fixed, metric)
        matched = by_seed(self.matched, metric) if self.matched is not None else {}
        return Split(gap=_negated(seed_difference(fixed, ref)), steps=seed_difference(matched, fixed),
                     generalization=_negated(seed_difference(matched, ref)))


def by_seed(group: Group, metric: Metric) -> dict[int, float]:
    """Seed -> ``metric`` of each of ``group``'s runs that has it."""
    return {r.seed: v for r in group.runs if (v := metric(r)) is not None}


def _negated(diff: Optional[Difference]) -> Optional[Difference]:
    """Reference minus the other side: :func:`seed_difference` pairs the other side's seeds
    against the reference's, so it is taken that way round and turned."""
    return diff.scaled(-1.0) if diff is not None else None


def group_steps(group: Group) -> Optional[int]:
    """The steps the group's runs were run for: the most any took (a diverged seed stopped short)."""
    steps = [s for s in (r.global_steps for r in group.runs) if s is not None]
    return max(steps) if steps else None


def _same_but_budget(a: Setup, b: Setup) -> bool:
    return EPOCHS_KEY in dict(a.key) and EPOCHS_KEY in dict(b.key) and same_but(a.key, b.key, BUDGET_KEYS)


def _fewer_epochs(a: Setup, b: Setup) -> bool:
    ea, eb = dict(a.key)[EPOCHS_KEY], dict(b.key)[EPOCHS_KEY]
    numbers = all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in (ea, eb))
    return numbers and ea < eb


def _steps_match(steps: Optional[int], reference: Optional[int]) -> bool:
    return steps is not None and bool(reference) and abs(steps - reference) <= STEPS_TOLERANCE * reference


def find_regimes(analysis: Analysis) -> list[Regimes]:
    """Every (fixed-epochs setup, matched-steps setup, large batch setup) in the analysis (see the
    module doc), in the order of the setups and batch sizes."""
    out = []
    for fixed in analysis.setups:
        for matched in analysis.setups:
            if matched is fixed or not _same_but_budget(fixed, matched) or not _fewer_epochs(fixed, matched):
                continue
            for batch, layout in matched.batch_keys:
                large = [g for g in fixed.selected if g.batch_size == batch and g.layout == layout]
                ref = fixed.reference(large[0]) if large else None
                if ref is None or ref.batch_size >= batch:
                    continue
                ref_steps = group_steps(ref)
                if any(_steps_match(group_steps(g), ref_steps) for g in matched.groups
                       if g.batch_size == batch and g.layout == layout):
                    out.append(Regimes(fixed, matched, batch, layout, ref))
    return out


def decompositions(regimes: Regimes) -> list[Decomposition]:
    """Each method variant the fixed-epochs setup selected at the large batch that also ran at
    matched steps, in table order; one that ran only at fixed epochs is left out."""
    out = []
    for fixed in sorted((g for g in regimes.fixed.selected if g.batch_size == regimes.batch_size
                         and g.layout == regimes.layout), key=group_order):
        same = [g for g in regimes.matched.groups if (g.method, g.variant, g.batch_size, g.layout)
                == (fixed.method, fixed.variant, fixed.batch_size, fixed.layout)]
        if not same:
            continue
        chosen = next((g for g in regimes.matched.selected if g in same), None)
        out.append(Decomposition(regimes, fixed, chosen, () if chosen is not None else same))
    return out


def _steps_text(group: Optional[Group]) -> str:
    steps = sorted({s for s in (r.global_steps for r in group.runs) if s is not None}) if group else []
    if not steps:
        return "—"
    return f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,}-{steps[-1]:,}"


def _setting(group: Optional[Group]) -> str:
    if group is None:
        return "—"
    return fmt_lr(group.lr) + (f" ({group.pairs_label(group.tuned)})" if group.tuned else "")


def _seeds_text(groups: Sequence[Optional[Group]]) -> str:
    texts = [", ".join(map(str, g.seeds)) if g is not None else "—" for g in groups]
    return texts[0] if len(set(texts)) == 1 else " / ".join(texts)


def _cell(d: Decomposition, group: Optional[Group], metric: Metric) -> str:
    if group is None:
        runs = [r for g in d.unvalidated for r in g.runs]
        return f"diverged before validating ({len(runs)}/{len(runs)} seeds)"
    return fmt_ci([v for v in (metric(r) for r in group.runs) if v is not None], group)


def _table(regimes: Regimes, rows: Sequence[Decomposition], metric: Metric) -> str:
    short, long = regimes.epochs(regimes.fixed), regimes.epochs(regimes.matched)
    header = ["method", f"lr ({short} / {long} epochs)", f"seeds (reference / {short} / {long})",
              f"steps (reference / {short} / {long})", f"reference: {regimes.reference_text} (%)",
              f"{regimes.batch_text}, {short} epochs (%)", f"{regimes.batch_text}, {long} epochs (%)",
              "gap (points, 95% CI)", "step part (points)", "generalization part (points)", "gap closed by steps"]
    body = []
    for d in rows:
        split = d.split(metric)
        closed = split.closed_by_steps
        share = fmt_share(closed.mean, closed.half_width) + ("" if closed.paired else " (unpaired)") if closed \
            else ("— (no gap)" if split.gap is not None and split.gap.mean <= 0 else "—")
        groups = (regimes.reference, d.fixed, d.matched)
        body.append([d.fixed.base_label, f"{_setting(d.fixed)} / {_setting(d.matched)}", _seeds_text(groups),
                     " / ".join(_steps_text(g) for g in groups), _cell(d, regimes.reference, metric),
                     _cell(d, d.fixed, metric), _cell(d, d.matched, metric), fmt_points(split.gap),
                     fmt_points(split.steps), fmt_points(split.generalization), share])
    return table(header, body)


def step_gap_section(analysis: Analysis) -> list[str]:
    """The section, one part per fixed-epochs / matched-steps pair found (:func:`find_regimes`);
    empty when the runs hold none."""
    parts = [(r, rows) for r in find_regimes(analysis) if (rows := decompositions(r))]
    if not parts:
        return []
    out = ["## Step count against generalization", "",
           "At the same epochs a larger batch takes fewer optimizer steps. Where the large batch was also run "
           f"for as many epochs as give it the reference's steps (to within {STEPS_TOLERANCE:.0%}), its gap to the "
           "reference splits in two: "
           "**gap** = reference - large batch at the reference's epochs; **step part** = large batch at matched "
           "steps - at the reference's epochs (what the missing steps cost); **generalization part** = reference "
           "- large batch at matched steps (what more steps do not buy); **gap closed by steps** = step part / "
           "gap (the gap's mean taken as exact). Each method variant is at its own learning rate selected on "
           "validation in each regime; test accuracy is reported, never chosen on. In points: the mean of "
           "per-seed differences with a Student-t 95% interval where the other side ran every seed, else "
           "(\"unpaired\") against the other side's mean; the two parts add up to the gap where all three "
           "ran the same seeds. A variant run only at the reference's epochs has no row; a diverged run counts "
           "on validation with the best it reached and has no test accuracy. Steps: summary.json's "
           "`global_steps` (a run without one: its last logged step).", ""]
    several = len(parts) > 1
    for regimes, rows in parts:
        short, long = regimes.epochs(regimes.fixed), regimes.epochs(regimes.matched)
        rest = [(k, v) for k, v in regimes.fixed.key if k not in BUDGET_KEYS]
        where = f" ({regimes.fixed.pairs_label(tuple(rest))})" if rest and several else ""
        warm = f", {regimes.warmups()}" if regimes.warmups() else ""
        out += [f"### Batch {regimes.batch_text}: {short} and {long} epochs{warm}{where}", ""]
        for title, metric in METRICS:
            out += [f"{title}:", "", _table(regimes, rows, metric), ""]
    return out


__all__ = ["Decomposition", "Metric", "Regimes", "Split", "by_seed", "decompositions", "find_regimes", "group_steps", "step_gap_section"]
