"""Preemption signals only set a flag; the trainer acts on it at a step boundary.

Slurm sends SIGTERM to every process of a job at preemption or time limit (SIGKILL
follows after the grace period) and, when asked with ``--signal=USR1@120``, SIGUSR1 as
an early warning. Checkpointing *inside* a signal handler fails intermittently (the
handler can interrupt a collective or a half-written tensor), so the handler records
the signal and returns; at the next step boundary all ranks agree through an
all-reduce of the flag, rank 0 writes a checkpoint, and the job exits with
:data:`REQUEUE_EXIT_CODE` so the launcher can requeue it.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Optional

REQUEUE_EXIT_CODE = 75
"""EX_TEMPFAIL: 'try again later'. The sbatch script requeues the job on it."""

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    def __init__(self) -> None:
        self._signum: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self._signum = signum

    def is_set(self) -> bool:
        return self._signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self._signum).name if self._signum is not None else ""
