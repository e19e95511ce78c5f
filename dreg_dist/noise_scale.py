"""The gradient noise scale and what it says about the batch size (McCandlish et al. 2018).

McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch Training"
(arXiv 1812.06162): with G the true gradient and Sigma the per-example gradient covariance,
the *simple noise scale* B_simple = tr(Sigma) / |G|^2 estimates the critical batch size
B_crit. Steps S and examples E to a given loss then trade off as
(S / S_min - 1)(E / E_min - 1) = 1 with B_crit = E_min / S_min, so a batch B needs
S / S_min = 1 + B_crit / B steps and E / E_min = 1 + B / B_crit examples.

A data-parallel step holds the gradient at two batch sizes, a small one (a worker's, or one
accumulation micro-batch's) and the global one; their squared norms give unbiased estimates
of |G|^2 and tr(Sigma) (their Appendix A.1), which :func:`estimates` computes. It is plain
arithmetic, so the trainer applies it to 0-d tensors on the device and the report to the
floats in a run's records; this module imports no torch.
"""

from __future__ import annotations

import math
import statistics
from typing import Iterable, Optional, TypeVar

T = TypeVar("T")

ASSUMPTIONS = ("The model assumes a well-tuned learning rate at every batch size and a noise scale that is "
               "steady over the stretch of training it describes (it usually grows as the loss falls), and "
               "B_simple ignores the curvature's conditioning (B_noise = tr(H Sigma) / G'HG), so read it as "
               "an order of magnitude.")
"""The caveat every piece of advice carries."""


def estimates(small_sq: T, big_sq: T, b_small: float, b_big: float) -> tuple[T, T]:
    """Unbiased (|G|^2, tr(Sigma)) from the squared norms of mean gradients over ``b_small``
    and ``b_big`` examples of the same step (``b_small < b_big``):

    |G|^2 = (b_big |G_big|^2 - b_small |G_small|^2) / (b_big - b_small),
    tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1 / b_small - 1 / b_big).

    Both are linear in the squared norms, so averages of them over steps or workers stay
    unbiased; their ratio does not, which is why callers average each and divide last.
    """
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small} and {b_big}")
    g_sq = (big_sq * b_big - small_sq * b_small) / (b_big - b_small)  # type: ignore[operator]
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)  # type: ignore[operator]
    return g_sq, trace


def simple_noise_scale(g_sq: float, trace: float) -> Optional[float]:
    """B_simple = tr(Sigma) / |G|^2, or None while either unbiased estimate is not positive (early, or
    when the two batch sizes give nearly the same gradient norm)."""
    if not (math.isfinite(g_sq) and math.isfinite(trace)) or g_sq <= 0 or trace <= 0:
        return None
    return trace / g_sq


def steps_over_min(batch: float, b_crit: float) -> float:
    """S / S_min = 1 + B_crit / B."""
    return 1.0 + b_crit / batch


def examples_over_min(batch: float, b_crit: float) -> float:
    """E / E_min = 1 + B / B_crit."""
    return 1.0 + batch / b_crit


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.3g}"


def _pow2_near(x: float) -> int:
    return int(2 ** round(math.log2(max(x, 1.0))))


STEADY_LR_FRACTION = 0.5
"""The noise scale a run's advice is given for is the median over its logged values while the
learning rate is at least this fraction of its peak."""
STEADY_RULE = f"the median while the learning rate was at least {STEADY_LR_FRACTION:.0%} of its peak"


def steady_noise_scale(points: Iterable[tuple[Optional[float], Optional[float]]]) -> Optional[float]:
    """The median B_simple of ``(learning rate, B_simple)`` points logged while the rate was at
    least :data:`STEADY_LR_FRACTION` of the highest logged rate; None if no such point has a value.

    Not the final value: as a decaying schedule anneals, |G|^2 falls towards zero and B_simple
    climbs without bound (a 40-epoch cosine run of cnn_tiny at batch 4096 ended at 372,807, after
    50-2,700 while its rate was above half the peak), which says what batch the annealed end
    could use, not what batch suits the run. Under a constant rate it is the whole run's median.
    """
    points = [(float(lr), b) for lr, b in points if lr is not None]
    if not points:
        return None
    # The peak over every logged rate: a value undefined at the peak must not lower the cut-off.
    peak = max(lr for lr, _ in points)
    near = [float(b) for lr, b in points if b is not None and math.isfinite(b) and lr >= STEADY_LR_FRACTION * peak]
    return statistics.median(near) if near else None


def advice(noise_scale: Optional[float], batch: int, *, assumptions: bool = True, of: str = "") -> str:
    """One paragraph: the measured noise scale (``of``: which value of it, e.g. :data:`STEADY_RULE`),
    the batch used, and what the empirical model predicts for it and for the power of two nearest
    the noise scale."""
    if noise_scale is None or not noise_scale > 0:
        return ("The gradient noise scale was not measured in this run (it needs a second batch size: "
                "two or more workers, or two or more accumulation micro-batches), so there is no batch-size advice.")
    b = noise_scale
    ratio = batch / b
    s, e = steps_over_min(batch, b), examples_over_min(batch, b)
    if abs(math.log2(ratio)) < 0.07:
        where = "is about the measured noise scale"
    elif ratio > 1:
        where = f"is {ratio:.1f}x the measured noise scale"
    else:
        where = f"is {1 / ratio:.1f}x below the measured noise scale"
    text = (f"Batch {batch} {where} (B_simple ~ {_num(b)}{', ' + of if of else ''}): the empirical model of "
            f"large-batch training "
            f"predicts ~{s:.2f}x the minimum number of steps and ~{e:.2f}x the minimum number of examples "
            f"to reach a given loss.")
    other = _pow2_near(b)
    if other != batch and abs(math.log2(ratio)) > 1:
        s2, e2 = steps_over_min(other, b), examples_over_min(other, b)
        if other < batch:
            text += (f" Batch {other} would need ~{s2:.2f}x the minimum steps ({s2 / s:.1f}x more than now) "
                     f"for ~{e2:.2f}x the minimum examples ({e / e2:.1f}x fewer than now).")
        else:
            text += (f" Batch {other} would need ~{s2:.2f}x the minimum steps ({s / s2:.1f}x fewer than now) "
                     f"for ~{e2:.2f}x the minimum examples ({e2 / e:.1f}x more than now).")
    elif abs(math.log2(ratio)) <= 1:
        text += " The batch is within a factor of two of the critical batch size: a fair trade of steps for examples."
    if assumptions:
        text += " " + ASSUMPTIONS
    return text


__all__ = ["ASSUMPTIONS", "STEADY_LR_FRACTION", "STEADY_RULE", "advice", "estimates", "examples_over_min", "simple_noise_scale",
           "steady_noise_scale", "steps_over_min"]
