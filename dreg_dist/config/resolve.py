"""``python -m dreg_dist.config.resolve``: resolve many cells' configs in one process, as JSON.

The sweep never imports torch or method code; to validate and name a grid's cells it asks
this module once for all of them. Reads ``{"config": PATH, "cells": [[override, ...], ...]}``
on stdin and writes ``{"methods": {name: description}, "cells": [...]}`` on stdout, one entry
per cell: ``{"method": NAME, "config": {...}}`` (the config ``launch/train.py`` would resolve,
every key spelled out) or ``{"error": "one line"}``. ``methods`` describes every registered
method (:meth:`dreg_dist.methods.Method.describe`), so the sweep knows who owns which key.

Several configs in one process (one torch import for a whole set of grids): send
``{"requests": [{"config": PATH, "cells": [...]}, ...]}`` and get ``{"methods": {...},
"replies": [{"cells": [...]}, ...]}``, one reply per request, in order.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional, Sequence

from dreg_dist import methods
from dreg_dist.config.load import config_to_dict, load_config
from dreg_dist.errors import ConfigError


def _described() -> dict[str, Any]:
    return {name: methods.describe(methods.method_class(name)).to_dict() for name in methods.registry()}


def _cells(config: Optional[str], cells: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    out_cells: list[dict[str, Any]] = []
    for overrides in cells:
        try:
            cfg = load_config(config, overrides, warn=None)
        except ConfigError as err:
            out_cells.append({"error": str(err)})
            continue
        out_cells.append({"method": cfg.method, "config": config_to_dict(cfg)})
    return out_cells


def resolve(config: Optional[str], cells: Sequence[Sequence[str]]) -> dict[str, Any]:
    """One config's cells: ``{"methods": ..., "cells": [...]}``."""
    return {"methods": _described(), "cells": _cells(config, cells)}


def resolve_many(requests: Sequence[tuple[Optional[str], Sequence[Sequence[str]]]]) -> dict[str, Any]:
    """Several configs' cells: ``{"methods": ..., "replies": [{"cells": [...]}, ...]}``."""
    return {"methods": _described(), "replies": [{"cells": _cells(config, cells)} for config, cells in requests]}


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """The reply to one request, either form (ConfigError, ValueError, ... when it is malformed)."""
    if "requests" in request:
        return resolve_many([(r.get("config"), [list(c) for c in r.get("cells", [])]) for r in request["requests"]])
    return resolve(request.get("config"), [list(c) for c in request.get("cells", [])])


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        reply = answer(json.load(sys.stdin))
    except (ConfigError, ValueError, TypeError, AttributeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    json.dump(reply, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
