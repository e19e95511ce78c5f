"""The sweep's one door to the config loader: a subprocess, so the sweep imports no torch.

``python -m dreg_dist.config.resolve`` resolves every cell's config as ``launch/train.py``
would (every key spelled out) and describes every registered method, as JSON; this module
asks it once for all the cells it has not asked about before in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import dreg_dist
from dreg_dist.dotted import flatten
from dreg_dist.errors import ConfigError
from dreg_dist.records import Catalog, Description


class GridError(ValueError):
    """A problem with a grid file, described in one line."""


@dataclass(frozen=True)
class Resolved:
    """A cell's config as ``launch/train.py`` resolves it (nested, every key spelled out)."""

    method: str
    config: dict[str, Any]

    @property
    def keys(self) -> set[str]:
        """The dotted keys a run of it has: the run's own and its method's, no other method's."""
        return set(flatten(self.config))


_resolved: dict[tuple[str, str, tuple[str, ...]], Union[Resolved, str]] = {}
"""(config path, its text, overrides) -> resolved config or error: each is asked once per process."""
_registered: list[Catalog] = []
"""The registered methods' descriptions, once known (the same for every config)."""
RESOLVER = ("-m", "dreg_dist.config.resolve")


def _config_text(config: str) -> str:
    try:
        return Path(config).read_text()
    except OSError:
        return ""


def resolve_cells(config: str, cells: Sequence[Sequence[str]]) -> list[Union[Resolved, str]]:
    """Each cell's :class:`Resolved` config, or its one-line error, from one resolver process
    for all cells not resolved before in this process (same file content, same overrides)."""
    (got,) = resolve_many([(config, cells)])
    return got


def resolve_many(requests: Sequence[tuple[str, Sequence[Sequence[str]]]]) -> list[list[Union[Resolved, str]]]:
    """:func:`resolve_cells` for several (config, cells) at once: one resolver process (one
    torch import) for all their cells not resolved before, e.g. every grid of a set."""
    if not requests:
        return []
    keyed = [[(config, _config_text(config), tuple(c)) for c in cells] for config, cells in requests]
    todo = list(dict.fromkeys(k for keys in keyed for k in keys if k not in _resolved))
    if todo or not _registered:
        by_config: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {}
        for key in todo:
            by_config.setdefault(key[0], []).append(key)
        if not by_config:  # nothing to resolve, but the methods are not known yet
            by_config = {config: [] for config, _ in requests[:1]}
        asked = [{"config": config, "cells": [list(k[2]) for k in keys]} for config, keys in by_config.items()]
        # one config: the original request form, which every resolver version reads
        request = asked[0] if len(asked) == 1 else {"requests": asked}
        reply = _ask(request)
        _registered[:] = [Catalog(Description.from_dict(d, name=n) for n, d in reply["methods"].items())]
        replies = [reply] if len(asked) == 1 else reply["replies"]
        for keys, got in zip(by_config.values(), replies):
            for key, cell in zip(keys, got["cells"]):
                _resolved[key] = cell["error"] if "error" in cell else Resolved(cell["method"], cell["config"])
    return [[_resolved[k] for k in keys] for keys in keyed]


def _ask(request: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ)
    root = str(Path(dreg_dist.__file__).resolve().parents[1])  # the resolver is this same package
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, *RESOLVER], input=json.dumps(request), capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise GridError(f"resolving the cells' configs failed: {tail}")
    return json.loads(done.stdout)


def cell_config(config: str, overrides: Sequence[str]) -> Resolved:
    """A cell's config as ``launch/train.py`` resolves it (ConfigError when it does not load)."""
    (got,) = resolve_cells(config, [overrides])
    if isinstance(got, str):
        raise ConfigError(got)
    return got


def registered(config: str) -> Catalog:
    """Every registered method's description (asking the resolver, with ``config``, if not yet)."""
    if not _registered:
        resolve_cells(config, [])
    return _registered[0]


__all__ = ["GridError", "RESOLVER", "Resolved", "cell_config", "registered", "resolve_cells", "resolve_many"]
