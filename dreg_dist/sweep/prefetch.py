"""Resolve the cells of a whole set of grids with two resolver processes, not two per grid.

:func:`dreg_dist.sweep.grid.load_grid`, :func:`~dreg_dist.sweep.grid.expand_grid` and
:func:`~dreg_dist.sweep.grid.check_cells` each ask the resolver (one torch import) for the
cells it has not resolved before in this process. :func:`prefetch_grids` asks for every
grid's cells up front: first each grid's axis combinations (what loading and expanding it
resolve), then every expanded cell's own overrides (what checking its cells resolves, known
only once the combinations are resolved). Loading, expanding and checking those grids
afterwards finds everything resolved. A grid that does not load is skipped here; loading it
reports its error as before.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterable, Union

import yaml

from dreg_dist.sweep.grid import Grid, GridError, _axes, _find_config, _overrides, expand_grid, load_grid
from dreg_dist.sweep.resolve import resolve_many


def _combos(path: Path) -> Union[tuple[str, list[list[str]]], None]:
    """(config, [fixed overrides, each axis combination's overrides]) as loading ``path`` asks, or None."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
        config = _find_config(str(data["config"]), path)
        grid = Grid(name="", config=config, overrides=_overrides(data.get("overrides")), axes=_axes(data.get("axes")))
    except (OSError, yaml.YAMLError, GridError, KeyError, TypeError, AttributeError):
        return None
    combos = [grid.cell_overrides(dict(zip(grid.axes, c))) for c in itertools.product(*grid.axes.values())]
    return config, [grid.overrides, *combos]


def prefetch_grids(paths: Iterable[Union[str, Path]]) -> None:
    """Resolve every cell the grid files in ``paths`` will ask for, in two resolver processes."""
    paths = [Path(p) for p in paths]
    resolve_many([r for r in map(_combos, paths) if r is not None])
    cells = []
    for path in paths:
        try:
            grid = load_grid(path)
            cells.append((grid.config, [c.overrides for c in expand_grid(grid)]))
        except GridError:
            continue
    resolve_many(cells)


__all__ = ["prefetch_grids"]
