"""One collective per step, and (on CUDA) no host sync: the non-finite and preemption checks.

Every step the ranks must agree on two things: was any rank's loss or gradient non-finite
(then no rank may apply the update), and did any rank get a stop signal. Both travel in one
all-reduce (MAX) of a two-element tensor. What happens next depends on ``train.step_guard``:

* ``host`` (default on CPU, where reading a tensor costs nothing): the host reads the two
  flags right away and decides, as a plain loop would.
* ``device`` (default on CUDA): the decision stays on the GPU. The update is applied and
  then undone where the all-reduced flag says so (``torch.where`` over parameters, optimizer
  state and buffers: the state is exactly as before the step, the way the AMP grad scaler
  skips a step), and the flags are copied to pinned host memory without waiting. The host
  reads them a fixed number of steps later (the same step on every rank, so all ranks decide
  alike), and only then reports a skipped step, raises for ``train.on_nonfinite=stop``, or
  stops for a signal. Before a checkpoint
  all pending flags are read (a checkpoint is a sync point anyway), so a non-finite update
  is never applied and never checkpointed, and the CPU never waits for the GPU in between.

With ``train.amp=fp16`` PyTorch's GradScaler reads its own inf flag on the host in
``scaler.step`` (unless the optimizer is fused), so that mode keeps one sync per step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer


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


class StepGuard:
    """Exchanges the per-step flags (one collective) and, in device mode, undoes a bad update."""

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode == "auto":
            mode = "device" if device.type == "cuda" else "host"
        self.mode = mode
        self.device = device
        self._pending: deque[tuple[int, Tensor, Optional[torch.cuda.Event]]] = deque()

    @property
    def on_device(self) -> bool:
        return self.mode == "device"

    def exchange(self, step: int, nonfinite: Tensor, preempted: bool) -> Tensor:
        """All-reduce [nonfinite, preempted] (MAX) in one collective; returns the device tensor."""
        flags = torch.stack([nonfinite.reshape(()).float(),
                             torch.tensor(1.0 if preempted else 0.0, device=nonfinite.device)])
        _all_reduce_max(flags)
        if self.on_device:
            if flags.device.type == "cuda":
                host = torch.empty(2, dtype=flags.dtype, pin_memory=True)
                host.copy_(flags, non_blocking=True)
                event: Optional[torch.cuda.Event] = torch.cuda.Event()
                event.record()
            else:  # device mode on CPU (tests): the copy is immediate
                host, event = flags.clone(), None
            self._pending.append((step, host, event))
        return flags

    def read_now(self, step: int, flags: Tensor) -> StepFlags:
        """Host mode: the flags of this step, read right away (one host read)."""
        nonfinite, preempted = flags.tolist()
        return StepFlags(step, nonfinite > 0, preempted > 0)

    def landed(self, upto: Optional[int] = None) -> list[StepFlags]:
        """Device mode: the flags of steps up to ``upto`` (all pending ones for None), waiting for
        their copies to land. Callers pass a step some steps back, so the wait is for work the
        GPU finished long ago and the CPU keeps running ahead."""
        out: list[StepFlags] = []
        while self._pending and (upto is None or self._pending[0][0] <= upto):
            step, host, event = self._pending.popleft()
            if event is not None:
                event.synchronize()
            nonfinite, preempted = host.tolist()
            out.append(StepFlags(step, nonfinite > 0, preempted > 0))
        return out


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


__all__ = ["StepFlags", "StepGuard", "UndoOnFlag", "nonfinite_flag"]
