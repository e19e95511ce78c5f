"""Whether the run goes on: stop signals, agreed preemption, non-finite steps, step limits.

All of the run's stop state lives in one :class:`RunControl`: this process's signal flag
(:class:`~dreg_dist.train.preemption.PreemptionFlag`), whether *any* rank got a signal (as
the ranks agreed through the step guard's flags), the ``train.on_nonfinite`` policy and
``train.stop_after_steps``. The step guard (:mod:`dreg_dist.train.step_guard`) says what
the ranks agreed for each step; this object decides what the run does about it. The count
of skipped steps is part of the checkpointed :class:`~dreg_dist.train.state.TrainState`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

from dreg_dist.train.preemption import PreemptionFlag
from dreg_dist.train.state import TrainState
from dreg_dist.train.step_guard import StepFlags


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN/Inf (``train.on_nonfinite=stop``), or the state to
    checkpoint is not finite (either mode)."""


class RunControl:
    def __init__(self, state: TrainState, steps_per_epoch: int, on_nonfinite: str,
                 stop_after_steps: Optional[int], say: Callable[[str], None],
                 preempt: Optional[PreemptionFlag] = None) -> None:
        """``preempt``: a flag the caller installed (and removes); without one, this object
        owns one, installed by :meth:`install` and removed by :meth:`uninstall`."""
        self.state = state
        self.steps_per_epoch = steps_per_epoch
        self.on_nonfinite = on_nonfinite
        self.stop_after_steps = stop_after_steps
        self.say = say
        self.own_flag = preempt is None
        self.preempt = preempt if preempt is not None else PreemptionFlag()
        self.preempted = False
        """Some rank got a signal, as the ranks agreed (the same on every rank)."""

    def install(self) -> None:
        if self.own_flag:
            self.preempt.install()

    def uninstall(self) -> None:
        if self.own_flag:
            self.preempt.uninstall()

    def signalled(self) -> bool:
        """This process got a signal (what it tells the other ranks in the next exchange)."""
        return self.preempt.is_set()

    def observe(self, flags: Iterable[StepFlags]) -> None:
        """Act on agreed step flags: raise for a non-finite step under ``stop``, else count
        it as skipped (its update was not applied); note a signal on any rank."""
        for f in flags:
            if f.nonfinite:
                self._nonfinite(f.step)
            self.preempted = self.preempted or f.preempted

    def _nonfinite(self, step: int) -> None:
        where = f"step {step + 1} (epoch {step // self.steps_per_epoch + 1})"
        if self.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"loss or gradient is not finite at {where}: lower optim.lr, set train.grad_clip_norm, or "
                "set train.on_nonfinite=skip to skip such steps"
            )
        self.state.skipped_steps += 1
        self.say(f"warning: non-finite loss or gradient at {where}; step skipped")

    def stop_reason(self) -> Optional[str]:
        """Why to stop now, before the run's end (``stop_after_steps`` or a signal), or None."""
        limit = self.stop_after_steps
        if limit is not None and self.state.global_step >= limit:
            return "stop_after_steps"
        if self.preempted:
            return f"signal {self.preempt.signal_name or 'on another rank'}"
        return None


__all__ = ["NonFiniteLossError", "RunControl"]
