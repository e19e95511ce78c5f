"""Numbers of a report: means and spreads over seeds, 95% intervals, orderings of values.

Pure functions of plain numbers and config values (no runs, no groups), shared by the grouping
(:mod:`.aggregate`), the comparisons against the baseline (:mod:`.compare`) and the tables.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Optional, Sequence

from dreg_dist.report.runs import iter_finite
from dreg_dist.sweep.grid import name_value


def hashable(value: Any) -> Hashable:
    return tuple(value) if isinstance(value, list) else value


def sort_key(value: Any) -> tuple:
    """Order values: numbers numerically, R1 < R2 < R10, then everything else as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    text = name_value(value)
    if len(text) > 1 and text[0] in "Rr" and text[1:].isdigit():
        return (1, float(text[1:]), text)
    return (2, 0.0, text)


def mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (0 for one value); (None, None) when empty."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values)


def mean_of(values: Iterable[Optional[float]]) -> Optional[float]:
    vals = iter_finite(values)
    return sum(vals) / len(vals) if vals else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
"""Two-sided 95% Student-t quantiles by degrees of freedom (1.96 beyond 10 would understate)."""


def mean_ci(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and the half-width of its 95% t-interval over seeds (None with fewer than 2)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    if len(values) < 2:
        return values[0], None
    df = len(values) - 1
    return statistics.fmean(values), T95.get(df, 2.0) * statistics.stdev(values) / math.sqrt(len(values))


@dataclass
class Difference:
    """A mean difference of a per-seed quantity and the half-width of its 95% t-interval."""

    mean: float
    half_width: Optional[float]
    """None with one seed, or for a difference of means (nothing to pair)."""
    seeds: int
    """Seeds the interval is over (0: a difference of means)."""
    paired: bool
    """Per-seed differences (runs with the same seed share initialisation and data order, so
    pairing removes that part of the seed noise); else the method's seeds against the other
    side's mean, taken as exact."""

    @property
    def inside_noise(self) -> bool:
        """Whether the interval includes 0: the difference cannot be told from seed noise."""
        return self.half_width is not None and abs(self.mean) <= self.half_width

    def scaled(self, factor: float) -> "Difference":
        return Difference(self.mean * factor, None if self.half_width is None else self.half_width * abs(factor),
                          self.seeds, self.paired)


def same_lr(a: Optional[float], b: Optional[float]) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return (a is None or (isinstance(a, float) and math.isnan(a))) and b is None
    return a == b


def freeze(key: Any) -> Hashable:
    if isinstance(key, (list, tuple)):
        return tuple(freeze(k) for k in key)
    return key
