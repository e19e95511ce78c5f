"""Learning-rate selection: each method at its own best learning rate, chosen on validation.

A fair comparison of methods that were each swept over a few learning rates takes each
method (and batch size, and setting) at the learning rate with the best *mean best
validation accuracy over seeds*. The test accuracy is carried along for display only: it
never takes part in the choice (choosing on test accuracy would report an optimistically
biased test number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Iterable, Optional, Sequence


@dataclass(frozen=True)
class LrResult:
    """One learning rate of one compared setting, aggregated over seeds."""

    key: Hashable
    """What is compared across learning rates (e.g. setting, method variant, batch size)."""
    lr: float
    val_accs: tuple[float, ...]
    """Best validation accuracy of each seed."""
    test_accs: tuple[float, ...] = ()
    """Test accuracy of each seed's exported model: shown, never used for the choice."""

    @property
    def val_acc(self) -> float:
        return sum(self.val_accs) / len(self.val_accs) if self.val_accs else float("nan")

    @property
    def test_acc(self) -> Optional[float]:
        return sum(self.test_accs) / len(self.test_accs) if self.test_accs else None


def select_lr(results: Iterable[LrResult]) -> dict[Hashable, LrResult]:
    """The best learning rate per key, by mean best validation accuracy over seeds.

    Ties go to the smaller learning rate; results without any validation accuracy are never
    chosen (a key with only such results is absent from the answer).
    """
    best: dict[Hashable, LrResult] = {}
    for res in results:
        if not res.val_accs or not math.isfinite(res.val_acc):
            continue
        cur = best.get(res.key)
        if cur is None or res.val_acc > cur.val_acc or (res.val_acc == cur.val_acc and res.lr < cur.lr):
            best[res.key] = res
    return best


def epochs_to_reach(curve: Sequence[tuple[float, float]], target: float) -> Optional[float]:
    """The first epoch at which the validation accuracy is >= target, or None if never.

    ``curve`` holds (epochs done, accuracy) pairs; it is sorted by epoch first.
    """
    for epoch, acc in sorted(curve):
        if acc >= target - 1e-12:
            return epoch
    return None
