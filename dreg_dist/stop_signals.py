"""The stop signals a job gets and the exit status that asks for a requeue (no torch).

Shared by the trainer (:mod:`dreg_dist.train.preemption`, which acts on the flag at a step
boundary) and the sweep runner, which forwards a stop to its running cell and must not import
the trainer.
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
    def __init__(self, signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
        self._signals = signals
        self._signum: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in self._signals:
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
    def signum(self) -> Optional[int]:
        return self._signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self._signum).name if self._signum is not None else ""


__all__ = ["REQUEUE_EXIT_CODE", "SIGNALS", "PreemptionFlag"]
