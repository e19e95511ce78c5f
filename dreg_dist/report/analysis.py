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
* a method's keys that the sweep's grid lists under ``tune`` (``methods.sam.rho``), or an
  optimizer knob it lists there (``optim.warmup_epochs`` for LARS): chosen jointly with the
  learning rate, on validation, as the method's own tuned knob;
* ``method``: the compared methods;
* keys of a method's own config section (its hyperparameters), and the optimizer
  (``optim.name``, shown only where it is not SGD): variants of that method
  (``sam (rho=0.1)``, ``vanilla (optimizer=lars)``);
* anything else (``model.arch``, ``data.name``, ``optim.momentum``, ...): separate setups,
  each with its own section in the report (two that differ only in ``train.epochs``, where the
  longer gives a large batch the reference's optimizer steps, are also set side by side:
  :mod:`dreg_dist.report.step_gap`).

Keys that never change results (as each run's record says) are ignored. What a method adds
to the report (study axes, extra columns and curves, notes) comes from its description in the
run records (:class:`dreg_dist.records.Catalog`), never from method code.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Optional, Sequence

from dreg_dist.records import Catalog
from dreg_dist.report.aggregate import Group, Setup
from dreg_dist.report.keys import (BATCH_KEY, LAYOUT_KEYS, LR_KEY, METHOD_KEY, SEED_KEY, VARIANT_DEFAULTS, WORKERS_KEY,
                                   Pairs, label_of, pairs_label)
from dreg_dist.report.compare import group_order
from dreg_dist.report.runs import Run, catalog_of
from dreg_dist.report.select import LrResult, select_lr
from dreg_dist.report.stats import freeze, hashable, same_lr, sort_key
from dreg_dist.sweep.grid import TUNABLE_RUN_KEYS


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
        per_batch.setdefault(run.batch_size, set()).add(hashable(run.flat.get(key)))
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
            values.setdefault(k, set()).add(hashable(v))
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
        elif key in tuned and (catalog.owner_of(key) is not None or key in TUNABLE_RUN_KEYS):
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
    parts = []
    for run in runs:
        rel = _relevant(run, keys)
        variant = tuple((k, rel[k]) for k in roles["variant"]
                        if k in rel and not (k in VARIANT_DEFAULTS and rel[k] == VARIANT_DEFAULTS[k]))
        parts.append((run, rel, variant))
    # An optimizer knob every run has (the warmup) is named only for the variants that tried more than
    # one value of it or another value than most runs: plain SGD at the usual warmup is not "SGD (warmup=2)".
    tried: dict[tuple, set[Hashable]] = {}
    counts: dict[str, Counter] = {}
    for run, rel, variant in parts:
        for k in roles["tuned"]:
            if k in TUNABLE_RUN_KEYS and k in rel:
                tried.setdefault((run.method, hashable(variant), k), set()).add(hashable(rel[k]))
                counts.setdefault(k, Counter())[hashable(rel[k])] += 1

    def named(run: Run, rel: dict[str, Any], variant: Pairs, k: str) -> bool:
        if k not in TUNABLE_RUN_KEYS:
            return True
        values = tried[(run.method, hashable(variant), k)]
        return len(values) > 1 or values != {counts[k].most_common(1)[0][0]}

    for run, rel, variant in parts:
        setup = tuple((k, rel.get(k)) for k in roles["setup"])
        layout = tuple((k, rel.get(k)) for k in roles["batch"] if k != BATCH_KEY)
        knobs = tuple((k, rel[k]) for k in roles["tuned"] if k in rel and named(run, rel, variant, k))
        key = (tuple((k, hashable(v)) for k, v in setup), run.method,
               tuple((k, hashable(v)) for k, v in variant), run.batch_size,
               tuple((k, hashable(v)) for k, v in layout), run.lr, tuple((k, hashable(v)) for k, v in knobs))
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
                                                    tuple(sort_key(v) for _, v in g.layout), group_order(g),
                                                    g.lr or 0.0)):
        skey = tuple((k, hashable(v)) for k, v in g.setup)
        setup = setups.setdefault(skey, Setup(key=g.setup, groups=[], selected=[], catalog=catalog))
        setup.groups.append(g)
        chosen = selected.get(freeze(g.compare_key))
        if chosen is not None and same_lr(chosen.lr, g.lr) and chosen.setting == g.setting[1]:
            setup.selected.append(g)
    return Analysis(runs=list(runs), setups=list(setups.values()), roles=roles, lr_results=lr_results,
                    selected_lr=selected, catalog=catalog)
