"""Where a run folder keeps each file: the one place trainer, sweep and report look it up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union


@dataclass(frozen=True)
class RunLayout:
    root: Path

    LAST_CHECKPOINT = "last.pt"
    BEST_CHECKPOINT = "best.pt"

    def __init__(self, root: Union[str, Path]) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        """The resolved config the run used (YAML)."""
        return self.root / "config.yaml"

    @property
    def record(self) -> Path:
        """What the run is (schema, the method's description, outputs): ``dreg_dist.records``."""
        return self.root / "record.json"

    @property
    def metrics(self) -> Path:
        """One JSON record per line: train/val/test scalars and events."""
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        """Written once at the end of a finished (or stopped) run."""
        return self.root / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / self.LAST_CHECKPOINT

    @property
    def best(self) -> Path:
        return self.checkpoints / self.BEST_CHECKPOINT

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def sweep_lock(self) -> Path:
        """Held by the sweep running this cell (:mod:`dreg_dist.sweep.cell_lock`)."""
        return self.root / ".sweep.lock"

    @property
    def requeue_marker(self) -> Path:
        """Tells train.sbatch that the job stopped for preemption and wants a requeue."""
        return self.root / "preempted.json"


__all__ = ["RunLayout"]
