"""Stage two of a learning-rate sweep: a grid that reruns each selected learning rate with new seeds.

The usual protocol for comparing methods at tuned learning rates is to sweep each method's
learning rates with one seed, select on validation, then spend the remaining budget on
more seeds *at the selected values only*. :func:`seed_grid` writes that second grid from
the first one's runs: the same base config, overrides and axes, ``train.seed`` set to the
new seeds, and one ``exclude`` entry per (method variant, batch size, learning rate) that
was not selected. Its runs are reported together with the first stage's
(``launch/report.py STAGE1 STAGE2``); the selection stays the same because it is made
on the seeds every learning rate has (:mod:`dreg_dist.report.select`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from dreg_dist.report.aggregate import BATCH_KEY, LR_KEY, Analysis, freeze
from dreg_dist.report.plots import ReportError


def seed_grid(analysis: Analysis, grid: Mapping[str, Any], seeds: Sequence[int],
              name: str) -> tuple[dict[str, Any], list[str]]:
    """The stage-two grid (a YAML-ready mapping) for the stage-one ``grid`` (``sweep.json``'s
    ``grid``) whose runs ``analysis`` holds, and one line per selection for its header."""
    if not grid.get("lr_grid"):
        raise ReportError("the sweep has no lr_grid: there is no learning-rate selection to add seeds to")
    if not seeds:
        raise ReportError("--seeds needs at least one seed")
    axes = dict(grid.get("axes") or {})
    used = {r.seed for r in analysis.runs}
    if used & set(seeds):
        raise ReportError(f"seed(s) {sorted(used & set(seeds))} already ran in this sweep; pick new ones")
    axes["train.seed"] = list(seeds)
    exclude: list[dict[str, Any]] = [dict(e) for e in grid.get("exclude") or []]
    selected_lrs: list[str] = []
    for setup in analysis.setups:
        by_key: dict[tuple, list] = {}
        for g in setup.groups:
            by_key.setdefault(g.compare_key, []).append(g)
        for key, groups in by_key.items():
            chosen = analysis.selected_lr.get(freeze(key))
            g0 = groups[0]
            entry: dict[str, Any] = {}
            if "method" in axes:
                entry["method"] = g0.method
            for k, v in (*g0.setup, *g0.variant):
                if k in axes:
                    entry[k] = v
            if BATCH_KEY in axes:
                entry[BATCH_KEY] = g0.batch_size
            for g in groups:
                if g.lr is not None and (chosen is None or g.lr != chosen.lr):
                    exclude.append({**entry, LR_KEY: g.lr})
            selected_lrs.append(f"{g0.label} batch {g0.batch_size}: "
                                + (f"lr {chosen.lr:g}" if chosen is not None else "none (no validation result)"))
    return {
        "name": name,
        "description": (f"Stage two of '{grid.get('name')}': seeds {', '.join(map(str, seeds))} at each method "
                        f"variant's learning rate selected on validation there. " + str(grid.get("description") or "")),
        "config": grid.get("config"),
        "overrides": list(grid.get("overrides") or []),
        "axes": axes,
        "lr_grid": grid.get("lr_grid"),
        "exclude": exclude,
    }, selected_lrs
