"""One sweep at a time in a run folder: an advisory lock a sweep holds while it runs a cell.

Two sweeps of one grid (a second launch by mistake, shards that overlap, a job filling a free core
with cells of a grid another sweep will reach) must never train one run folder at once: both would
write its checkpoints and its log. A sweep takes ``RUN/.sweep.lock`` (``flock``: the kernel drops
it when the process dies, so a killed sweep leaves nothing to clean up) before it launches a cell;
a cell another sweep holds is left for the end, then waited for and judged by what that sweep left
in the folder. ``flock`` holds on one machine (and on file systems that honour it); a Slurm array
gives each task its own cell already.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

from dreg_dist.run_layout import RunLayout


class CellLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = RunLayout(run_dir).sweep_lock
        self._fd: Optional[int] = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False while another process holds it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """Who holds it, as the holder wrote it down ('pid N')."""
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        return f"pid {pid}" if pid.isdigit() else "another process"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
