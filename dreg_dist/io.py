"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Every file the service writes that a later step reads back (checkpoints, ``summary.json``,
``sweep.json``, exports, requeue markers) goes through :func:`atomic_write`: the bytes go
to a temporary file in the same folder, are flushed and fsynced, the file is renamed over
the target, and the folder itself is fsynced so that after a power loss the rename is not
undone (which would bring back the previous file).

A write that fails (a full disk, a crash) never touches the target: the temporary file is
removed and, for a full disk, :class:`DiskFullError` says how much room the file needed. A
writer killed with SIGKILL cannot remove its temporary file (``.NAME.tmp-PID``);
:func:`remove_stale_temp_files` clears those at the next start.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Optional, Union

PathLike = Union[str, os.PathLike[str]]

_TEMP_FILE = re.compile(r"^\..+\.tmp-(\d+)$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write ran out of room; the message names the file and the space it needed."""


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _no_space(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from is a full disk or quota.

    torch.save reports a full disk as a RuntimeError ('unexpected pos') raised while the
    OSError of the failed write is being handled, so the context chain is searched too.
    """
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in _NO_SPACE:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _disk_full(path: Path, written: int) -> DiskFullError:
    try:
        st = os.statvfs(path.parent)
        free = _mb(st.f_bavail * st.f_frsize)
    except OSError:
        free = "an unknown amount"
    if path.is_file():
        size = path.stat().st_size
        need = f"about {_mb(max(size, written))} (the size of the file it replaces)"
        kept = f"the previous '{path}' is intact"
    else:
        need = f"more than {_mb(written)}"
        kept = "nothing was written there"
    err = DiskFullError(f"no space left on the device of '{path.parent}' while writing '{path}': it needs {need} "
                        f"and {free} are free; {kept}")
    err.errno = errno.ENOSPC  # set apart from the message, which str() would otherwise prefix with [Errno 28]
    return err


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
    except Exception as exc:
        if not _no_space(exc):
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)  # before measuring what is free: its room is given back
        raise _disk_full(path, written) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temp_files(folders: Iterable[PathLike], started: float) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` calls that can no longer finish.

    A file ``.NAME.tmp-PID`` is stale when no process PID is alive, or when it is older than
    ``started`` (the caller's start, as a ``time.time()`` value): a live PID may be a reused
    one, or one on another host that shares the folder. Younger files of live processes are
    writes in progress and are kept. Returns the files removed.
    """
    removed: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = _TEMP_FILE.match(path.name)
            if match is None or not path.is_file():
                continue
            try:
                stale = not _alive(int(match.group(1))) or path.stat().st_mtime < started
                if stale:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:  # finished (renamed) or removed meanwhile
                continue
    return removed


__all__ = ["DiskFullError", "atomic_write", "atomic_write_text", "fsync_dir", "remove_stale_temp_files"]
