"""``python -m dreg_dist.config.resolve``: resolve many cells' configs in one process, as JSON.

The sweep never imports torch or method code; to validate and name a grid's cells it asks
this module once for all of them. Reads ``{"config": PATH, "cells": [[override, ...], ...]}``
on stdin and writes ``{"methods": {name: description}, "cells": [...]}`` on stdout, one entry
per cell: ``{"method": NAME, "config": {...}}`` (the config ``launch/train.py`` would resolve,
every key spelled out) or ``{"error": "one line"}``. ``methods`` describes every registered
method (:meth:`dreg_dist.methods.Method.describe`), so the sweep knows who owns which key.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional, Sequence

from dreg_dist import methods
from dreg_dist.config.load import config_to_dict, load_config
from dreg_dist.errors import ConfigError


def resolve(config: Optional[str], cells: Sequence[Sequence[str]]) -> dict[str, Any]:
    out_cells: list[dict[str, Any]] = []
    for overrides in cells:
        try:
            cfg = load_config(config, overrides, warn=None)
        except ConfigError as err:
            out_cells.append({"error": str(err)})
            continue
        out_cells.append({"method": cfg.method, "config": config_to_dict(cfg)})
    described = {name: methods.describe(methods.method_class(name)).to_dict() for name in methods.registry()}
    return {"methods": described, "cells": out_cells}


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        request = json.load(sys.stdin)
        reply = resolve(request.get("config"), [list(c) for c in request.get("cells", [])])
    except (ConfigError, ValueError, TypeError, AttributeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    json.dump(reply, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
