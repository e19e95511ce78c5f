"""Grid files: a base config, fixed overrides and axes, expanded into run cells.

A grid is a YAML file::

    name: cifar10_small                      # folder under the runs root (default: file stem)
    description: one line for sweep.json and the report   # optional
    config: configs/cifar10_cnn_small.yaml   # base config (relative to the cwd, the grid file or the repo)
    overrides: [train.epochs=20]             # fixed overrides (a list of k=v or a mapping)
    axes:                                    # dotted config keys -> list of values
      method: [vanilla, dreg]
      train.global_batch_size: [512, 4096]
      train.seed: [0, 1]
      dreg.lam: [0.1, 0.01]
    lr_grid:                                 # optional: optim.lr per method (a list = all methods)
      vanilla: [0.05, 0.1, 0.2]
      dreg: [0.025, 0.05, 0.1]
    exclude:                                 # optional: partial cells to leave out
      - {method: vanilla, train.global_batch_size: 4096}
    only:                                    # optional: keep only cells matching one entry
      - {method: dreg, dreg.lam: 0.1, optim.lr: 0.05}
    tune: [dreg.lam]                         # optional: method axes (or optimizer knobs) the report selects with the lr

The cells are the cartesian product of the axes in the order written (first axis
slowest), times each cell's method's learning rates. Each cell's config is resolved as
``launch/train.py`` would resolve it: a key of another method's section (``dreg.*`` in a
vanilla cell) is dropped from that cell, and cells that become identical are merged, so
``method: [vanilla, dreg]`` x ``dreg.lam: [0.1, 0.01]`` gives 3 cells, not 4. A key no
component owns, or an axis that applies to no cell at all, is an error. Each cell gets a
stable, filesystem-safe name built from its values (``dreg_bs512_seed0_lam0.1``); a
method's keys are named by the labels its description gives them.

This module imports neither torch nor method code: the cells' configs are resolved, all at
once, by one ``python -m dreg_dist.config.resolve`` subprocess
(:func:`dreg_dist.sweep.resolve.resolve_cells`), which also describes every registered method.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import yaml

from dreg_dist.dotted import parse_overrides
from dreg_dist.records import Catalog
from dreg_dist.records.compat import upgrade_legacy
from dreg_dist.sweep.resolve import GridError, registered, resolve_cells

REPO = Path(__file__).resolve().parents[2]

GRID_KEYS = ("name", "description", "config", "overrides", "axes", "lr_grid", "exclude", "only", "tune")
LR_KEY = "optim.lr"

# Short names used in cell names; "" means the value alone ("vanilla", "vgg16").
ALIASES: dict[str, str] = {
    "method": "", "model.arch": "", "data.name": "", "optim.name": "",
    "train.global_batch_size": "bs", "train.seed": "seed", "train.epochs": "ep", "optim.lr": "lr",
    "optim.momentum": "mom", "train.accumulation_steps": "acc", "train.eval_every_steps": "eval",
    "model.num_classes": "nc",
}
"""Keys of the run; a method's own keys are named by its description's ``labels``."""


def key_alias(key: str, catalog: Catalog) -> Optional[str]:
    """The short name of ``key`` in cell names, or None when it has none."""
    if key in ALIASES:
        return ALIASES[key]
    return catalog.label(key)

MAX_NAME_LEN = 150


def override_value(value: Any) -> str:
    """A Python value as the text of a ``key=value`` override (parsed back as YAML)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")].strip()
    elif text.endswith("..."):
        text = text[:-3].strip()
    return text


def name_value(value: Any) -> str:
    """A value as it appears in a cell name (exact for floats: 0.1 -> '0.1', 1e-05 -> '1e-05')."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "-".join(name_value(v) for v in value)
    return str(value)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_name(text: str) -> str:
    """Filesystem-safe on Linux, macOS and Windows: [A-Za-z0-9._+-], no leading dot or dash."""
    out = _UNSAFE.sub("-", text).strip("-")
    out = re.sub(r"-{2,}", "-", out).lstrip(".-")
    return out or "cell"


def _short_hash(values: Mapping[str, Any]) -> str:
    blob = json.dumps({k: values[k] for k in values}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def _aliases(keys: Sequence[str], catalog: Catalog) -> dict[str, str]:
    out: dict[str, str] = {}
    last = [k.rsplit(".", 1)[-1] for k in keys]
    for key, tail in zip(keys, last):
        alias = key_alias(key, catalog)
        if alias is not None:
            out[key] = alias
        elif last.count(tail) == 1 and tail not in ALIASES.values():
            out[key] = tail
        else:
            out[key] = key.replace(".", "-") + "-"
    return out


def cell_names(cells_values: Sequence[Mapping[str, Any]], keys: Sequence[str],
               catalog: Catalog = Catalog()) -> list[str]:
    """Stable, unique, filesystem-safe names, ``dreg_bs512_seed0_lam0.1`` style, in axis order
    (a method's keys by the labels in its description, from ``catalog``)."""
    aliases = _aliases(keys, catalog)
    names = []
    for values in cells_values:
        parts = [safe_name(aliases[k] + name_value(values[k])) for k in keys if k in values]
        name = safe_name("_".join(parts)) if parts else "default"
        if len(name) > MAX_NAME_LEN:
            name = name[: MAX_NAME_LEN - 9].rstrip("._-") + "-" + _short_hash(values)
        names.append(name)
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    return [f"{n}-{_short_hash(v)}" if seen[n] > 1 else n for n, v in zip(names, cells_values)]


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    index: int
    name: str
    method: str
    values: dict[str, Any]
    """The axis values of this cell (keys that do not apply to its method dropped), axis order."""
    overrides: list[str]
    """Everything passed to launch/train.py after the config: fixed overrides, then the values."""
    epochs: Optional[int] = field(default=None, compare=False)
    """``train.epochs`` of its resolved config (what a finished run of it has)."""

    def run_dir(self, sweep_dir: Union[str, Path]) -> Path:
        return Path(sweep_dir) / self.name

    def describe(self) -> str:
        return describe(self.values)


@dataclass
class Grid:
    name: str
    config: str
    """Base config path as given to launch/train.py."""
    overrides: list[str] = field(default_factory=list)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    lr_grid: Union[None, list[Any], dict[str, list[Any]]] = None
    exclude: list[dict[str, Any]] = field(default_factory=list)
    only: list[dict[str, Any]] = field(default_factory=list)
    """When given, a cell is kept only if it matches one entry (follow-up grids list their cells so)."""
    description: str = ""
    source: Optional[str] = None
    """The grid file, when read from one."""
    tune: list[str] = field(default_factory=list)
    """Method keys (axes) the report selects jointly with the learning rate, on validation: the
    methods' own knobs, tuned rather than compared as variants."""

    # -------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Optional[Union[str, Path]] = None) -> "Grid":
        if not isinstance(data, Mapping):
            raise GridError("a grid file must hold a mapping (name, config, overrides, axes, ...)")
        unknown = [k for k in data if k not in GRID_KEYS]
        if unknown:
            raise GridError(f"unknown grid key '{unknown[0]}' (allowed: {', '.join(GRID_KEYS)})")
        default_name = Path(source).stem if source else None
        name = str(data.get("name") or default_name or "")
        if not name or safe_name(name) != name:
            raise GridError(f"grid 'name' must be non-empty and use only [A-Za-z0-9._+-], got {name!r}")
        if not data.get("config"):
            raise GridError("grid key 'config' (the base config file) is required")
        config = _find_config(str(data["config"]), source)
        overrides = _overrides(data.get("overrides"))
        axes = _axes(data.get("axes"))
        lr_grid = _lr_grid(data.get("lr_grid"))
        if lr_grid is not None and LR_KEY in axes:
            raise GridError(f"'{LR_KEY}' is both an axis and set by lr_grid: use one of them")
        known = set(axes) | ({LR_KEY} if lr_grid is not None else set())
        exclude = _exclude(data.get("exclude"), known)
        only = _exclude(data.get("only"), known, "only")
        combos = [[*overrides, *(f"{k}={override_value(v)}" for k, v in zip(axes, combo))]
                  for combo in itertools.product(*axes.values())]
        base, *_ = resolve_cells(config, [overrides, *combos])  # all at once: expand_grid finds them resolved
        if isinstance(base, str):
            raise GridError(f"base config with the grid's overrides: {base}")
        tune = _tune(data.get("tune"), axes, registered(config))
        return cls(name=name, config=config, overrides=overrides, axes=axes, lr_grid=lr_grid, exclude=exclude, only=only,
                   description=str(data.get("description") or ""), source=str(source) if source else None, tune=tune)

    # -------------------------------------------------------------- queries
    def cell_overrides(self, values: Mapping[str, Any]) -> list[str]:
        return [*self.overrides, *(f"{k}={override_value(v)}" for k, v in values.items())]

    def learning_rates(self, method: str) -> list[Any]:
        """The optim.lr values a method is swept over; [None] = the config's."""
        if self.lr_grid is None:
            return [None]
        if isinstance(self.lr_grid, list):
            return list(self.lr_grid)
        return list(self.lr_grid.get(method, [None]))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "config": self.config,
                "overrides": list(self.overrides), "axes": self.axes, "lr_grid": self.lr_grid,
                "exclude": self.exclude, "only": self.only, "tune": list(self.tune), "source": self.source}


def _find_config(path: str, source: Optional[Union[str, Path]]) -> str:
    candidates = [Path(path)]
    if not Path(path).is_absolute():
        if source is not None:
            candidates.append(Path(source).resolve().parent / path)
        candidates.append(REPO / path)
    for cand in candidates:
        if cand.is_file():
            return str(cand)
    raise GridError(f"base config '{path}' not found (looked in the cwd, next to the grid file and in {REPO})")


def _overrides(raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        return [f"{k}={override_value(v)}" for k, v in raw.items()]
    if isinstance(raw, list) and all(isinstance(x, str) and "=" in x for x in raw):
        return list(raw)
    raise GridError("grid 'overrides' must be a list of 'section.key=value' strings or a mapping")


def _axes(raw: Any) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise GridError("grid 'axes' must map dotted config keys to lists of values")
    axes: dict[str, list[Any]] = {}
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"axis '{key}' must be a non-empty list of values, got {values!r}")
        axes[str(key)] = list(values)
    return axes


def _lr_grid(raw: Any) -> Union[None, list[Any], dict[str, list[Any]]]:
    if raw is None:
        return None

    def check(values: Any, where: str) -> list[Any]:
        if not isinstance(values, list) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
            raise GridError(f"lr_grid{where} must be a non-empty list of positive numbers, got {values!r}")
        return list(values)

    if isinstance(raw, list):
        return check(raw, "")
    if isinstance(raw, Mapping):
        return {str(m): check(v, f".{m}") for m, v in raw.items()}
    raise GridError("grid 'lr_grid' must be a list of learning rates or map methods to lists")


TUNABLE_RUN_KEYS = ("optim.warmup_epochs", "optim.trust_coefficient", "optim.betas", "optim.weight_decay",
                    "optim.momentum")
"""Optimizer knobs a grid may tune with the rate (LARS's and LAMB's papers tune the warmup)."""


def _tune(raw: Any, axes: Mapping[str, list[Any]], catalog: Catalog) -> list[str]:
    """The grid's ``tune`` list: axes of a method's own section, or of :data:`TUNABLE_RUN_KEYS`."""
    if raw is None:
        return []
    allowed = "a method's own keys (methods.NAME.KEY) and " + ", ".join(TUNABLE_RUN_KEYS)
    if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
        raise GridError(f"grid 'tune' must be a list of axis keys: {allowed}")
    for key in raw:
        if key not in axes:
            raise GridError(f"tune names '{key}', which is not an axis: add it under 'axes' with the values to try")
        if catalog.owner_of(key) is None and key not in TUNABLE_RUN_KEYS:
            raise GridError(f"tune names '{key}', which no method owns and is not an optimizer knob: only {allowed} "
                            "are tuned with the rate (the optimizer itself is compared as a variant)")
    return list(raw)


def _exclude(raw: Any, known: set[str], what: str = "exclude") -> list[dict[str, Any]]:
    """A list of partial cells ({axis key: value}) for ``exclude`` or ``only``."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, Mapping) and x for x in raw):
        raise GridError(f"grid '{what}' must be a list of mappings {{axis key: value, ...}}")
    for entry in raw:
        for key in entry:
            if key not in known:
                raise GridError(f"{what} entry {dict(entry)} names '{key}', which is not an axis")
    return [dict(x) for x in raw]


def _same(a: Any, b: Any) -> bool:
    return a == b or name_value(a) == name_value(b)


def _excluded(values: Mapping[str, Any], exclude: Iterable[Mapping[str, Any]]) -> bool:
    return any(all(k in values and _same(values[k], v) for k, v in entry.items()) for entry in exclude)


def expand_grid(grid: Grid) -> list[Cell]:
    """All cells of ``grid`` in a stable order, keys of other methods dropped, duplicates merged."""
    keys = list(grid.axes)
    for key in keys:  # a deprecated key would be upgraded per cell and then match no cell's keys
        _, notes = upgrade_legacy(parse_overrides([f"{key}={override_value(grid.axes[key][0])}"]))
        if notes:
            raise GridError(f"axis '{key}': {notes[0]}")
    kept: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    used: set[str] = set()
    combos = [dict(zip(keys, combo)) for combo in itertools.product(*grid.axes.values())]
    resolved = resolve_cells(grid.config, [grid.cell_overrides(values) for values in combos])
    epochs: dict[str, Optional[int]] = {}
    for values, cfg in zip(combos, resolved):
        if isinstance(cfg, str):
            raise GridError(f"cell {describe(values)}: {cfg}")
        method = cfg.method
        applies = cfg.keys | {"method"}
        for lr in grid.learning_rates(method):
            full = dict(values)
            if lr is not None:
                full[LR_KEY] = lr
            if _excluded(full, grid.exclude) or (grid.only and not _excluded(full, grid.only)):
                continue
            cell = {k: v for k, v in full.items() if k in applies}
            used.update(cell)
            ident = json.dumps([[k, name_value(v)] for k, v in cell.items()])
            if ident in seen:
                continue
            seen.add(ident)
            kept.append((method, cell))
            epochs[ident] = cfg.config.get("train", {}).get("epochs")
    unused = [k for k in keys if k not in used]
    if kept and unused:
        raise GridError(f"axis '{unused[0]}' applies to no cell: no cell's method has that key "
                        "(add the method that owns it to the 'method' axis, or drop the axis)")
    name_keys = keys + ([LR_KEY] if grid.lr_grid is not None else [])
    names = cell_names([c for _, c in kept], name_keys, registered(grid.config))
    return [
        Cell(index=i, name=name, method=method, values=cell, overrides=grid.cell_overrides(cell),
             epochs=epochs[json.dumps([[k, name_value(v)] for k, v in cell.items()])])
        for i, (name, (method, cell)) in enumerate(zip(names, kept))
    ]


def describe(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={override_value(v)}" for k, v in values.items()) or "(base config)"


def check_cells(grid: Grid, cells: Iterable[Cell]) -> None:
    """Load every cell's config (no data, no model): unknown keys and wrong types fail here."""
    cells = list(cells)
    for cell, got in zip(cells, resolve_cells(grid.config, [c.overrides for c in cells])):
        if isinstance(got, str):
            raise GridError(f"cell {cell.index} ({cell.name}): {got}")


def load_grid(path: Union[str, Path]) -> Grid:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise GridError(f"grid file '{path}' cannot be read: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise GridError(f"grid file '{path}' is not valid YAML{where}") from None
    return Grid.from_dict(data or {}, source=path)
