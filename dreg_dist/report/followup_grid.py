"""What every follow-up grid is built from: the selections of a sweep's runs, and the grid that
runs only the picked cells of each, with the first grid's base config, overrides and axes.

:mod:`.followup` (seeds, edges) and :mod:`.followup_moves` (other batch sizes, budgets, knobs)
decide *which* cells; this module writes them as a grid the sweep runner expands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from dreg_dist.report.aggregate import Group
from dreg_dist.report.analysis import Analysis
from dreg_dist.report.keys import BATCH_KEY, LR_KEY
from dreg_dist.report.errors import NothingToRun, ReportError
from dreg_dist.report.select import LrResult
from dreg_dist.report.stats import hashable
from dreg_dist.sweep.resolve import registered

Grid = dict[str, Any]


def compared(analysis: Analysis) -> Iterator[tuple[tuple, list[Group]]]:
    """(compare key, its groups with a learning rate, in order) for every variant x batch size."""
    for setup in analysis.setups:
        for key, groups in setup.compared().items():
            groups = [g for g in groups if g.lr is not None]
            if groups:
                yield key, groups


def chosen_group(groups: Sequence[Group], chosen: Optional[LrResult]) -> Group:
    """The group of the selected setting (its tuned knobs single out the follow-up's cells)."""
    if chosen is not None:
        for g in groups:
            if g.lr == chosen.lr and g.setting[1] == chosen.setting:
                return g
    return groups[0]


def _cell_filter(group: Group, axes: Mapping[str, Any]) -> dict[str, Any]:
    """The axis values that single out ``group``'s cells (learning rate and seed aside)."""
    entry: dict[str, Any] = {}
    if "method" in axes:
        entry["method"] = group.method
    # From the runs' configs, not only the keys that vary among the runs so far: an axis whose
    # other values have not run yet (dreg.form before its second form ran) still singles out.
    flat = group.runs[0].flat if group.runs else {}
    for k in axes:
        if k not in ("method", "train.seed", LR_KEY) and k in flat:
            entry[k] = flat[k]
    for k, v in (*group.setup, *group.variant, *group.tuned):
        if k in axes:
            entry[k] = v
    if BATCH_KEY in axes:
        entry[BATCH_KEY] = group.batch_size
    return entry


def base_setup(grid: Mapping[str, Any]) -> str:
    """The first grid's description, marked as the setup the cells start from: a follow-up's cells
    set their own seeds, rates and tuned knobs (a 5-epoch warmup under a grid written with 2), so
    copied bare it would state settings they do not run."""
    text = str(grid.get("description") or "").strip()
    return f"The cells set their own seeds, rates and tuned knobs over the setup of '{grid.get('name')}': {text}" \
        if text else ""


def followup(grid: Mapping[str, Any], name: str, description: str, seeds: Sequence[int],
              picks: Mapping[tuple, tuple[Group, Optional[float]]],
              cell_values: Optional[Mapping[tuple, Sequence[Mapping[str, Any]]]] = None) -> Grid:
    """A grid that runs, for each compare key, only its picked learning rate (None: nothing);
    ``cell_values``: per compare key, the cells' own values of other keys (one cell each: a budget,
    several rates), made axes of the follow-up so that each cell carries its own."""
    axes = dict(grid.get("axes") or {})
    axes["train.seed"] = list(seeds)
    cell_values = cell_values or {}
    cells: list[tuple[Group, dict[str, Any]]] = []
    for key, (group, lr) in picks.items():
        if lr is None:
            continue
        # A knob tuned in another folder of the family (vanilla's warmup in its _warmup grid) is
        # not an axis of the first grid: the cells carry the selection's value, or they would run
        # the first grid's.
        tuned = {k: v for k, v in group.tuned if k not in axes}
        base = {**_cell_filter(group, axes), **tuned, LR_KEY: lr}
        cells += [(group, {**base, **values}) for values in cell_values.get(key) or [{}]]
    if not cells:
        raise NothingToRun("nothing to run: no method variant needs a follow-up")
    own = sorted({k for _, entry in cells for k in entry if k not in axes and k != LR_KEY}
                 | {k for values in cell_values.values() for entry in values for k in entry if k != LR_KEY})
    # A key made an axis here is set on every cell: the others keep the value they ran with.
    only = [{**{k: g.runs[0].flat[k] for k in own if k not in entry and g.runs and k in g.runs[0].flat}, **entry}
            for g, entry in cells]
    for k in own:  # an axis of the first grid too (a tuned warmup) takes the cells' values
        axes[k] = sorted({entry[k] for entry in only if k in entry})
    for k, values in axes.items():  # a value that ran only in a later folder of the family
        if k not in own and k != "method" and isinstance(values, list):
            axes[k] = values + [v for v in dict.fromkeys(e[k] for e in only if k in e) if v not in values]
    gone = _unused_axes(axes, only, str(grid.get("config")))
    axes = {k: v for k, v in axes.items() if k not in gone}
    if "method" in axes:
        axes["method"] = [m for m in axes["method"] if any(e.get("method") == m for e in only)]
    only = [{k: v for k, v in entry.items() if k not in gone} for entry in only]
    # The first grid's learning-rate excludes described its own lr_grid, and those of the keys the
    # cells set described its own axes; ``only`` replaces them. An exclude that would drop a cell
    # goes too: a knob value the first grid left to a later folder (extragradient's second step
    # scale) can be what that folder selected.
    exclude = [dict(e) for e in grid.get("exclude") or [] if LR_KEY not in e and not set(e) & (set(own) | gone)
               and not any(_drops(e, entry) for entry in only)]
    overrides = [o for o in grid.get("overrides") or [] if o.split("=", 1)[0] not in own]
    out = {"name": name, "description": description, "config": grid.get("config"),
           "overrides": overrides, "axes": axes,
           "lr_grid": sorted({e[LR_KEY] for e in only}), "exclude": exclude, "only": only}
    tune = [k for k in grid.get("tune") or [] if k not in gone]
    tune += sorted({k for _, (g, lr) in picks.items() if lr is not None for k, _ in g.tuned} - set(tune) - gone)
    if tune:
        out["tune"] = tune
    return out


def _drops(exclude: Mapping[str, Any], cell: Mapping[str, Any]) -> bool:
    return all(k in cell and hashable(cell[k]) == hashable(v) for k, v in exclude.items())


def _unused_axes(axes: Mapping[str, Any], only: Sequence[Mapping[str, Any]], config: str) -> set[str]:
    """The axes of methods the follow-up runs no cell of: an axis that applies to no cell is an
    error in a grid (asked of the registered methods, which the grid's resolver knows)."""
    if "method" not in axes:
        return set()
    running = {e["method"] for e in only if "method" in e}
    catalog = registered(config)
    return {k for k in axes if (d := catalog.owner_of(k)) is not None and d.name not in running}


def check(grid: Mapping[str, Any], analysis: Analysis) -> None:
    if not grid.get("lr_grid"):
        raise ReportError("the sweep has no lr_grid: there is no learning-rate selection to follow up")
    if not analysis.runs:
        raise ReportError("no run has validation results yet")


def under(group: Group, roots: Optional[Sequence[Path]]) -> bool:
    """Whether ``group`` has a run in one of ``roots`` (None: any folder): a follow-up writes
    cells for the selections of its own sweep folders, not of those named for comparison."""
    if roots is None:
        return True
    full = [Path(root).resolve() for root in roots]
    return any(root == p or root in p.parents for r in group.runs for p in [r.path.resolve()] for root in full)
