"""Rank 0 writes the run's checkpoints and requeue marker; every rank learns whether it could.

Each write is followed by one collective in which every rank learns whether rank 0's write
failed (in place of a barrier), so that all of them stop with one message instead of the
others failing in the next collective with a lost peer.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from dreg_dist.distributed import any_rank
from dreg_dist.io import DiskFullError
from dreg_dist.run_layout import RunLayout
from dreg_dist.train import checkpoint as ckpt
from dreg_dist.train.preemption import write_requeue_marker
from dreg_dist.train.records import RunRecorder


class CheckpointWriteError(RuntimeError):
    """Rank 0 could not write a checkpoint (a full disk); raised on every rank, the previous
    checkpoint intact."""


class CheckpointWriter:
    def __init__(self, layout: RunLayout, device: torch.device, is_main: bool, recorder: RunRecorder,
                 keep_last: int) -> None:
        self.layout = layout
        self.device = device
        self.is_main = is_main
        self.recorder = recorder
        self.keep_last = keep_last

    def last(self, state: dict[str, Any], reason: str, step: int, epoch: int) -> None:
        """``last.pt`` (and for ``reason='step'`` a kept ``step-N.pt``); collective."""
        failed: Optional[DiskFullError] = None
        if self.is_main:
            last = self.layout.last
            try:
                ckpt.save_checkpoint(state, last)
                if reason == "step":
                    ckpt.link_or_copy(last, self.layout.checkpoints / f"step-{step}.pt")
                    ckpt.prune_step_checkpoints(self.layout.checkpoints, self.keep_last)
            except DiskFullError as err:
                failed = err
            else:
                self.recorder.event("checkpoint", reason=reason, step=step, epoch=epoch)
        self._all_written(failed)

    def best(self, state: dict[str, Any]) -> None:
        """``best.pt``; collective."""
        failed: Optional[DiskFullError] = None
        if self.is_main:
            try:
                ckpt.save_checkpoint(state, self.layout.best)
            except DiskFullError as err:
                failed = err
        self._all_written(failed)

    def requeue_marker(self, reason: str, step: int) -> None:
        """Record in the run folder that this attempt checkpointed for preemption, before any
        rank may exit: under Slurm the end of one node's workers ends that node's task, and
        the step's other processes, rank 0 included, may then be killed. Collective."""
        failed: Optional[DiskFullError] = None
        if self.is_main:
            try:
                write_requeue_marker(self.layout.root, {"reason": reason, "global_step": step})
            except DiskFullError as err:
                failed = err
        self._all_written(failed)

    def _all_written(self, failed: Optional[DiskFullError]) -> None:
        if any_rank(failed is not None, self.device):
            where = str(failed) if failed is not None else "rank 0 could not write a checkpoint"
            raise CheckpointWriteError(
                f"{where}; make room there (or move the run folder and pass --run-dir), then launch the same "
                "command: it resumes from the newest checkpoint"
            )


__all__ = ["CheckpointWriteError", "CheckpointWriter"]
