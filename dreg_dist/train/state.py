"""The trainer's own state: where the run is, its best result so far, and every rank's RNG.

:class:`TrainState` is what a checkpoint holds besides the model, optimizer, schedule and
grad scaler (each of which has its own ``state_dict``). Its keys are the checkpoint format's
(``dreg-dist-checkpoint/1``), so checkpoints written before it existed load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Best:
    """The best (epoch, output) so far by validation accuracy."""

    acc: float = -1.0
    epoch: int = -1
    path: Optional[str] = None
    """Which output of the method was best (``model``, or a DReg path ``R``/``L``)."""
    val: dict[str, dict[str, float]] = field(default_factory=dict)
    """The validation results of every output at that epoch."""

    def as_dict(self) -> dict[str, Any]:
        return {"acc": self.acc, "epoch": self.epoch, "path": self.path, "val": self.val}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Best":
        return cls(data.get("acc", -1.0), data.get("epoch", -1), data.get("path"), data.get("val", {}))


@dataclass
class TrainState:
    """Position in the data, the best result, the last validation, and RNG states per rank."""

    epoch: int = 0
    """Epochs completed."""
    step_in_epoch: int = 0
    """Optimizer steps done in the current epoch (the data resumes after them)."""
    global_step: int = 0
    best: Best = field(default_factory=Best)
    last_val: dict[str, dict[str, float]] = field(default_factory=dict)
    rng: list[Any] = field(default_factory=list)
    """One RNG state per rank, gathered when checkpointing; empty until then."""
    world_size: int = 1
    skipped_steps: int = 0
    """Steps skipped for a non-finite loss (``train.on_nonfinite=skip``)."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best": self.best.as_dict(),
            "last_val": self.last_val,
            "rng": self.rng,
            "world_size": self.world_size,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.best = Best.from_dict(state.get("best") or {})
        self.last_val = state.get("last_val") or {}
        self.rng = list(state.get("rng") or [])
        self.world_size = int(state.get("world_size") or len(self.rng) or 1)
        self.skipped_steps = int(state.get("skipped_steps") or 0)

    def improve(self, results: dict[str, dict[str, float]]) -> bool:
        """Record a validation; True when its best output beats the best so far. Ties between
        outputs go to the first one the method lists (DReg: R)."""
        self.last_val = results
        path, acc = max(((p, r["acc"]) for p, r in results.items()),
                        key=lambda pa: (pa[1], -list(results).index(pa[0])))
        if acc > self.best.acc:
            self.best = Best(acc, self.epoch, path, results)
            return True
        return False


__all__ = ["Best", "TrainState"]
