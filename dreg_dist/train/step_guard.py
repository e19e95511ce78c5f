"""One collective per step, and (on CUDA) no host sync: the non-finite and preemption checks.

Every step the ranks must agree on two things: was any rank's loss or gradient non-finite
(then no rank may apply the update), and did any rank get a stop signal. Both travel in one
all-reduce (MAX) of a two-element tensor. What happens next depends on ``train.step_guard``,
and is all a :class:`StepGuard` is about; both modes have the same interface, so the step
loop never asks which one it has:

* ``host`` (:class:`HostGuard`, default on CPU, where reading a tensor costs nothing): the
  host reads the two flags right away and decides, as a plain loop would: a bad update is
  never applied (the BatchNorm statistics the forward moved are put back).
* ``device`` (:class:`DeviceGuard`, default on CUDA): the decision stays on the GPU. The
  update is applied and then undone where the all-reduced flag says so (``torch.where`` over
  parameters, optimizer state and buffers: the state is exactly as before the step, the way
  the AMP grad scaler skips a step), and the flags are copied to pinned host memory without
  waiting. The host reads them :data:`STEP_FLAG_LAG` steps later (the same step on every
  rank, so all ranks decide alike), and only then reports a skipped step, raises for
  ``train.on_nonfinite=stop``, or stops for a signal. Before a checkpoint all pending flags
  are read (a checkpoint is a sync point anyway), so a non-finite update is never applied
  and never checkpointed, and the CPU never waits for the GPU in between.

What the run then does about the flags (stop, skip, requeue) is
:class:`dreg_dist.train.control.RunControl`'s business.

With ``train.amp=fp16`` PyTorch's GradScaler reads its own inf flag on the host in
``scaler.step`` (unless the optimizer is fused), so that mode keeps one sync per step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

STEP_FLAG_LAG = 2
"""Device mode: a step's flags are acted on this many steps later."""


@dataclass
class StepFlags:
    """What the ranks agreed on for one step (read on the host)."""

    step: int
    """0-based global step the flags belong to."""
    nonfinite: bool
    preempted: bool


def _all_reduce_max(t: Tensor) -> None:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)


def nonfinite_flag(loss: Tensor, grads: list[Tensor], check_grads: bool) -> Tensor:
    """1.0 where the loss (or, with ``check_grads``, a gradient) is not finite; a 0-d device tensor."""
    finite = torch.isfinite(loss.detach()).all()
    if grads and check_grads:
        finite = finite & torch.isfinite(torch.stack(torch._foreach_norm(grads, float("inf")))).all()
    return (~finite).float()


def skipped(flags: Tensor) -> Tensor:
    """The agreed 'this step's update is not applied' of :meth:`StepGuard.exchange`'s flags
    (a 0-d bool tensor on the device; reading it is a host sync)."""
    return flags[0] > 0


class StepGuard(ABC):
    """Per step: ``begin_step()`` before the forward, ``exchange()`` once the gradient is in
    ``.grad``, ``apply(flags, update)`` in place of calling ``update`` directly; between
    steps, ``settled()`` hands the host every step's flags it may act on now."""

    mode: str

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @abstractmethod
    def begin_step(self) -> None:
        """Keep what a skipped step must give back (the forward moves BN statistics)."""

    def exchange(self, step: int, nonfinite: Tensor, preempted: bool) -> Tensor:
        """All-reduce [nonfinite, preempted] (MAX) in one collective; returns the device tensor."""
        flags = torch.stack([nonfinite.reshape(()).float(),
                             torch.tensor(1.0 if preempted else 0.0, device=nonfinite.device)])
        _all_reduce_max(flags)
        self._record(step, flags)
        return flags

    @abstractmethod
    def _record(self, step: int, flags: Tensor) -> None:
        """Make the agreed flags of ``step`` reach the host (now, or without waiting)."""

    @abstractmethod
    def apply(self, flags: Tensor, update: Callable[[], None]) -> None:
        """Run ``update`` (the optimizer step) so that the state changes only where ``flags``
        say the step is finite."""

    @abstractmethod
    def settled(self, now: int, wait: bool = False) -> list[StepFlags]:
        """Flags the host acts on when ``now`` steps are done, oldest first, each returned
        once; ``wait``: all of them."""


class HostGuard(StepGuard):
    """Reads each step's flags right after the exchange; a bad update is never applied."""

    mode = "host"

    def __init__(self, device: torch.device, module: nn.Module, restore_buffers: bool) -> None:
        """``restore_buffers``: a skipped step puts the buffers back (``on_nonfinite=skip``;
        with ``stop`` the run ends before anything reads them)."""
        super().__init__(device)
        self.module = module
        self.restore_buffers = restore_buffers
        self._buffers: list[Tensor] = []
        self._read: list[StepFlags] = []
        self._skip = False

    def begin_step(self) -> None:
        self._buffers = [b.detach().clone() for b in self.module.buffers()] if self.restore_buffers else []

    def _record(self, step: int, flags: Tensor) -> None:
        nonfinite, preempted = flags.tolist()  # the one host read of the step
        self._read.append(StepFlags(step, nonfinite > 0, preempted > 0))
        self._skip = nonfinite > 0

    def apply(self, flags: Tensor, update: Callable[[], None]) -> None:
        if self._skip:  # read in exchange(): no second host read
            for buf, saved in zip(self.module.buffers(), self._buffers):
                buf.copy_(saved)
        else:
            update()
        self._buffers = []

    def settled(self, now: int, wait: bool = False) -> list[StepFlags]:
        out, self._read = self._read, []
        return out


class DeviceGuard(StepGuard):
    """Applies every update and undoes a bad one on the device; the host learns of it
    :data:`STEP_FLAG_LAG` steps later."""

    mode = "device"

    def __init__(self, device: torch.device, optimizer: Optimizer, module: nn.Module) -> None:
        super().__init__(device)
        self._undo = UndoOnFlag(optimizer, module)
        self._pending: deque[tuple[int, Tensor, Optional[torch.cuda.Event]]] = deque()

    def begin_step(self) -> None:
        self._undo.take()

    def _record(self, step: int, flags: Tensor) -> None:
        if flags.device.type == "cuda":
            host = torch.empty(2, dtype=flags.dtype, pin_memory=True)
            host.copy_(flags, non_blocking=True)
            event: Optional[torch.cuda.Event] = torch.cuda.Event()
            event.record()
        else:  # device mode on CPU (tests): the copy is immediate
            host, event = flags.clone(), None
        self._pending.append((step, host, event))

    def apply(self, flags: Tensor, update: Callable[[], None]) -> None:
        update()
        self._undo.restore_if(flags[0])

    def settled(self, now: int, wait: bool = False) -> list[StepFlags]:
        """The lag is a step count, not a time, so every rank acts on the same step's flags at
        the same point; waiting on a copy that old does not stall the GPU queue."""
        upto = None if wait else now - 1 - STEP_FLAG_LAG
        out: list[StepFlags] = []
        while self._pending and (upto is None or self._pending[0][0] <= upto):
            step, host, event = self._pending.popleft()
            if event is not None:
                event.synchronize()
            nonfinite, preempted = host.tolist()
            out.append(StepFlags(step, nonfinite > 0, preempted > 0))
        return out


def make_guard(mode: str, device: torch.device, optimizer: Optimizer, module: nn.Module,
               restore_buffers: bool) -> StepGuard:
    """The guard for ``train.step_guard`` (``auto``: device on CUDA, host elsewhere)."""
    if mode == "auto":
        mode = "device" if device.type == "cuda" else "host"
    if mode == "device":
        return DeviceGuard(device, optimizer, module)
    if mode == "host":
        return HostGuard(device, module, restore_buffers)
    raise ValueError(f"train.step_guard must be auto, host or device, not {mode!r}")


class UndoOnFlag:
    """Snapshot of parameters, optimizer state and buffers, restored where a device flag is set.

    ``take()`` before the optimizer step, ``restore_if(flag)`` after it: every tensor becomes
    ``where(flag, before, after)``, with no host sync. State the step created (momentum
    buffers on the first step) is zeroed where the flag is set, which for momentum SGD, LARS
    and LAMB is the state of a step that never happened.
    """

    def __init__(self, optimizer: Optimizer, module: nn.Module) -> None:
        self.optimizer = optimizer
        self.module = module
        self._before: list[tuple[Tensor, Tensor]] = []
        self._had_state: set[int] = set()

    def _tensors(self) -> Iterable[Tensor]:
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                yield p
                for value in self.optimizer.state.get(p, {}).values():
                    if isinstance(value, Tensor):
                        yield value
        for buf in self.module.buffers():
            yield buf

    def take(self) -> None:
        tensors = list(self._tensors())
        self._had_state = {id(t) for t in tensors}
        self._before = [(t, t.detach().clone()) for t in tensors]

    @torch.no_grad()
    def restore_if(self, flag: Tensor) -> None:
        bad = flag.reshape(()) > 0
        for t, before in self._before:
            t.copy_(torch.where(bad, before, t))
        for t in self._tensors():
            if id(t) not in self._had_state and t.is_floating_point():
                t.copy_(torch.where(bad, torch.zeros_like(t), t))
        self._before = []


__all__ = ["STEP_FLAG_LAG", "DeviceGuard", "HostGuard", "StepFlags", "StepGuard", "UndoOnFlag", "make_guard",
           "nonfinite_flag", "skipped"]
