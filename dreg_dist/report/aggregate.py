"""Runs grouped into compared settings: :class:`Group` (runs that differ only by seed) and
:class:`Setup` (the groups of one setting of the other keys), and how keys are labelled.

Keys and their labels are in :mod:`.keys`; which config key plays which role (seed, batch, learning rate, method variant, setup) is
decided in :mod:`dreg_dist.report.analysis`; numbers over seeds are in :mod:`.stats`, the
comparison of each group with the baseline in :mod:`.compare`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from dreg_dist.records import BASELINE, Catalog
from dreg_dist.report.keys import Pairs, label_of, pairs_label
from dreg_dist.report.runs import Run, iter_finite
from dreg_dist.report.stats import hashable, sort_key

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

    def key_label(self, key: str) -> str:
        """A key's short name (a run key's from the report's table, a method key's from its description)."""
        return label_of(key, self.catalog)

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
        return (self.lr, tuple((k, hashable(v)) for k, v in self.tuned))

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

    def at(self, batch_size: int, layout: Optional[Pairs] = None) -> tuple[Optional[Group], list[Group]]:
        """The baseline and the selected groups of one batch setup (``layout`` None: the first)."""
        layout = self._layout(batch_size, layout)
        return (self.baseline(batch_size, layout),
                [g for g in self.selected if g.batch_size == batch_size and g.layout == layout])

    def unvalidated(self, batch_size: int, layout: Pairs) -> list[Group]:
        """Groups of this batch setup whose method variant has no selected learning rate: every
        run it has stopped before its first validation (diverged), so no row shows it."""
        shown = {g.compare_key for g in self.selected}
        return [g for g in self.groups
                if g.batch_size == batch_size and g.layout == layout and g.compare_key not in shown]


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
