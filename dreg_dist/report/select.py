"""Learning-rate selection: each method at its own best learning rate, chosen on validation.

A fair comparison of methods that were each swept over a few learning rates takes each
method (and batch size, and setting) at the learning rate with the best *mean best
validation accuracy over seeds*. The test accuracy is carried along for display only: it
never takes part in the choice (choosing on test accuracy would report an optimistically
biased test number).

Only the seeds that every learning rate of a key was run with take part in its choice.
That makes the usual two-stage protocol stable: sweep the learning rates with one seed,
then run more seeds at the selected one (``launch/report.py --seed-grid``); the extra
seeds sharpen the reported numbers but cannot move the choice they were run for.
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
    seeds: tuple[int, ...] = ()
    """The seed of each entry of ``val_accs`` (empty: unknown, all entries count)."""
    knobs: tuple = ()
    """Sort keys of the method knobs tuned with the learning rate (ties go to the smaller ones)."""
    setting: Hashable = ()
    """The tuned knobs' (key, value) pairs: with ``lr``, what is selected."""

    @property
    def val_acc(self) -> float:
        return sum(self.val_accs) / len(self.val_accs) if self.val_accs else float("nan")

    def val_acc_on(self, seeds: Optional[frozenset[int]]) -> float:
        """Mean best validation accuracy over ``seeds`` (None: over all of them)."""
        if seeds is None or len(self.seeds) != len(self.val_accs):
            return self.val_acc
        vals = [v for s, v in zip(self.seeds, self.val_accs) if s in seeds]
        return sum(vals) / len(vals) if vals else float("nan")


def common_seeds(results: Iterable[LrResult]) -> dict[Hashable, Optional[frozenset[int]]]:
    """Per key, the seeds every learning rate with results was run with (None: no common seed
    or seeds unknown, in which case all seeds count)."""
    out: dict[Hashable, Optional[frozenset[int]]] = {}
    seen: set[Hashable] = set()
    for res in results:
        if not res.val_accs:
            continue
        mine = frozenset(res.seeds) if len(res.seeds) == len(res.val_accs) else None
        if res.key not in seen:
            seen.add(res.key)
            out[res.key] = mine
        elif out[res.key] is not None:
            out[res.key] = out[res.key] & mine if mine is not None else None
    return {k: (v if v else None) for k, v in out.items()}

    @property
    def test_acc(self) -> Optional[float]:
        return sum(self.test_accs) / len(self.test_accs) if self.test_accs else None


def select_lr(results: Iterable[LrResult]) -> dict[Hashable, LrResult]:
    """The best learning rate (with its tuned knobs, when a result has some) per key, by mean best
    validation accuracy over the seeds common to all of the key's settings (see the module doc).

    Ties go to the smaller learning rate, then the smaller knobs; results without any validation
    accuracy are never chosen (a key with only such results is absent from the answer).
    """
    results = list(results)
    common = common_seeds(results)
    best: dict[Hashable, LrResult] = {}
    for res in results:
        score = res.val_acc_on(common.get(res.key))
        if not res.val_accs or not math.isfinite(score):
            continue
        cur = best.get(res.key)
        cur_score = cur.val_acc_on(common.get(res.key)) if cur is not None else None
        if cur is None or score > cur_score or (score == cur_score and (res.lr, res.knobs) < (cur.lr, cur.knobs)):
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


def edge_of(chosen: float, tried: Sequence[float]) -> Optional[str]:
    """'lowest' or 'highest' when ``chosen`` is at that end of at least two learning rates
    ``tried`` (the optimum may lie outside them), else None."""
    if len(set(tried)) < 2:
        return None
    if chosen == min(tried):
        return "lowest"
    if chosen == max(tried):
        return "highest"
    return None
