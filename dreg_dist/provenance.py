"""Which code a launch ran: the package's version and, from a git checkout, its commit.

A study that spans sessions has its code change under it; each launch's start record in
``metrics.jsonl`` names the commit it trained with and whether the checkout had uncommitted
changes to tracked files, so that a reader of the records can tell which runs share code.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Optional

from dreg_dist import __version__

CHECKOUT = Path(__file__).resolve().parent.parent
"""Where a source checkout of this package has its root (site-packages, when installed)."""


def _git(root: Path, *args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version(root: Path = CHECKOUT) -> dict[str, Any]:
    """``{"version", "commit", "dirty"}``; ``commit`` and ``dirty`` are None unless ``root`` is
    itself the top of a git checkout (an installed package inside some other repository's
    folder, a virtual environment's for one, must not take that repository's commit)."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():
        return {"version": __version__, "commit": None, "dirty": None}
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"version": __version__, "commit": _git(root, "rev-parse", "HEAD"),
            "dirty": None if status is None else bool(status)}


__all__ = ["code_version"]
