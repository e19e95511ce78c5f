"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Every file the service writes that a later step reads back (checkpoints, ``summary.json``,
``sweep.json``, exports, requeue markers) goes through :func:`atomic_write`: the bytes go
to a temporary file in the same folder, are flushed and fsynced, the file is renamed over
the target, and the folder itself is fsynced so that after a power loss the rename is not
undone (which would bring back the previous file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable, Union

PathLike = Union[str, os.PathLike[str]]


def fsync_dir(folder: PathLike) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary file and move it over ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


__all__ = ["atomic_write", "atomic_write_text", "fsync_dir"]
