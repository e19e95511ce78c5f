"""The batch-size question from run records: the live noise scale, and the measured trade-off.

Every run records its gradient noise scale B_simple (``dreg_dist/noise_scale.py``); this module
reads it back, and with ``--targets`` measures what the noise scale predicts: for each global
batch size, the optimizer steps S and examples E the best learning rate (chosen on the
validation target: fewest steps to reach it) needs to first reach a validation accuracy (or a
smoothed training loss), then fits the empirical model of large-batch training,
S = S_min + E_min / B (equivalently (S / S_min - 1)(E / E_min - 1) = 1), whose
B_crit = E_min / S_min is set against the live B_simple of the same runs at the same point.
Pure Python over the records: no torch.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from dreg_dist.noise_scale import ASSUMPTIONS, STEADY_RULE, advice, steady_noise_scale
from dreg_dist.records import BASELINE
from dreg_dist.report.runs import Run, val_accuracy

LOSS_WINDOW = 5
"""Logged steps in the trailing mean of the training loss that a loss target is read from."""


class TargetError(ValueError):
    """A bad ``--targets`` value (one line)."""


@dataclass(frozen=True)
class Target:
    metric: str
    """``val`` (validation accuracy, reached from below) or ``loss`` (training loss, from above)."""
    value: float

    @property
    def label(self) -> str:
        return (f"validation accuracy {self.value * 100:g}%" if self.metric == "val"
                else f"training loss {self.value:g}")

    @property
    def short(self) -> str:
        return f"val{self.value * 100:g}" if self.metric == "val" else f"loss{self.value:g}"


def parse_targets(text: str) -> list[Target]:
    """``val=0.6,loss=1.2`` -> targets (a validation accuracy as a fraction, a training loss)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        metric, _, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if metric not in ("val", "loss") or not math.isfinite(number) or number <= 0 \
                or (metric == "val" and number >= 1):
            raise TargetError(f"--targets takes val=FRACTION and/or loss=VALUE, e.g. 'val=0.6,loss=1.2'; got '{part}'")
        out.append(Target(metric, number))
    if not out:
        raise TargetError("--targets is empty; e.g. 'val=0.6,loss=1.2'")
    return out


def crossing(points: Sequence[tuple[float, float]], target: float, rising: bool) -> Optional[float]:
    """The first x at which the curve reaches ``target`` (linear between the two points around it)."""
    prev: Optional[tuple[float, float]] = None
    for x, y in points:
        if (y >= target) if rising else (y <= target):
            if prev is None or prev[1] == y:
                return x
            return prev[0] + (x - prev[0]) * (target - prev[1]) / (y - prev[1])
        prev = (x, y)
    return None


def curve(run: Run, metric: str) -> list[tuple[float, float]]:
    """(step, value): validation accuracy, or the training loss's trailing mean."""
    if metric == "val":
        pts = [(float(r["step"]), val_accuracy(r)) for r in run.val if "step" in r]
        return [(x, y) for x, y in pts if y is not None]
    raw = [(float(r["step"]), r["loss"]) for r in run.train if r.get("loss") is not None and "step" in r]
    out = []
    for i in range(len(raw)):
        window = [y for _, y in raw[max(0, i - LOSS_WINDOW + 1):i + 1]]
        out.append((raw[i][0], sum(window) / len(window)))
    return out


def noise_scale_at(run: Run, step: float) -> Optional[float]:
    """The live B_simple logged at the last training step <= ``step``."""
    found = None
    for r in run.train:
        if "step" in r and r["step"] <= step and r.get("noise_scale") is not None:
            found = float(r["noise_scale"])
    return found


@dataclass(frozen=True)
class Reach:
    run: Run
    steps: float
    """Optimizer steps to the target (interpolated between logged points)."""

    @property
    def batch(self) -> int:
        return self.run.batch_size

    @property
    def examples(self) -> float:
        return self.steps * self.batch

    @property
    def noise_scale(self) -> Optional[float]:
        return noise_scale_at(self.run, self.steps)


def reach(run: Run, target: Target) -> Optional[Reach]:
    steps = crossing(curve(run, target.metric), target.value, rising=target.metric == "val")
    return Reach(run, steps) if steps is not None else None


def tuned(runs: Sequence[Run], target: Target, by: Optional[Target] = None) -> dict[int, Optional[Reach]]:
    """Per batch size, ``target`` reached by the run that reaches ``by`` (default ``target``) in
    the fewest steps: the learning rate is chosen once, on the validation target (None: no
    learning rate reached ``by``, or that run never reached ``target``)."""
    by = by or target
    out: dict[int, Optional[Reach]] = {}
    for batch in sorted({r.batch_size for r in runs}):
        got = [x for x in (reach(r, by) for r in runs if r.batch_size == batch) if x is not None]
        best = min(got, key=lambda x: (x.steps, x.run.lr or 0.0)).run if got else None
        out[batch] = reach(best, target) if best is not None else None
    return out


@dataclass(frozen=True)
class Measured:
    """One target's tuned runs per batch size, their fitted trade-off and the live estimates."""

    target: Target
    best: dict[int, Optional[Reach]]
    fit: Optional["Fit"]
    live: list[float]
    """The live B_simple of each tuned run when it reached the target."""

    @property
    def reached(self) -> list[Reach]:
        return [x for x in self.best.values() if x is not None]

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.live) if self.live else None


def measure(runs: Sequence[Run], target: Target, by: Optional[Target] = None) -> Measured:
    best = tuned(runs, target, by)
    reached = [x for x in best.values() if x is not None]
    live = [x.noise_scale for x in reached if x.noise_scale is not None]
    return Measured(target, best, fit([(x.batch, x.steps) for x in reached]), live)  # type: ignore[arg-type]


def chooser(targets: Sequence[Target]) -> Optional[Target]:
    """The target the learning rate is chosen on: the first validation target (None: each its own)."""
    return next((t for t in targets if t.metric == "val"), None)


@dataclass(frozen=True)
class Fit:
    s_min: float
    e_min: float
    loo: tuple[float, float]
    """The smallest and largest B_crit when one batch size is left out."""

    @property
    def b_crit(self) -> float:
        return self.e_min / self.s_min

    def steps(self, batch: float) -> float:
        return self.s_min + self.e_min / batch


def fit(points: Sequence[tuple[int, float]], _loo: bool = True) -> Optional[Fit]:
    """S = S_min + E_min / B by least squares on relative errors (weights 1 / S^2)."""
    if len(points) < 3:
        return None
    w = [1.0 / s ** 2 for _, s in points]
    x = [1.0 / b for b, _ in points]
    y = [s for _, s in points]
    sw, sx, sy = sum(w), sum(wi * xi for wi, xi in zip(w, x)), sum(wi * yi for wi, yi in zip(w, y))
    sxx = sum(wi * xi * xi for wi, xi in zip(w, x))
    sxy = sum(wi * xi * yi for wi, xi, yi in zip(w, x, y))
    det = sw * sxx - sx * sx
    if det == 0:
        return None
    s_min, e_min = (sxx * sy - sx * sxy) / det, (sw * sxy - sx * sy) / det
    if s_min <= 0 or e_min <= 0:
        return None
    loo = (e_min / s_min,) * 2
    if _loo:
        others = [f.b_crit for i in range(len(points))
                  if (f := fit([p for j, p in enumerate(points) if j != i], _loo=False)) is not None]
        if others:
            loo = (min(others), max(others))
    return Fit(s_min, e_min, loo)


def has_noise_scale(runs: Sequence[Run]) -> bool:
    return any(((r.summary or {}).get("noise_scale") or {}).get("measured") for r in runs)


def final_noise_scale(run: Run) -> Optional[float]:
    value = (((run.summary or {}).get("noise_scale") or {}).get("final") or {}).get("noise_scale")
    return float(value) if value is not None else None


def _n(x: Optional[float], spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def _best_by_val(runs: Sequence[Run]) -> Run:
    return max(runs, key=lambda r: r.best_val_acc or 0.0)


def steady_of(run: Run) -> Optional[float]:
    """The run's B_simple near its peak rate (:func:`dreg_dist.noise_scale.steady_noise_scale` of
    its logged steps); a run that logged no learning rate: its final value."""
    steady = steady_noise_scale((r.get("lr"), r.get("noise_scale")) for r in run.train)
    return steady if steady is not None else final_noise_scale(run)


def noise_section(runs: Sequence[Run], figures: dict[tuple, str],
                  labels: Optional[Mapping[Path, str]] = None) -> list[str]:
    """Per method variant (``labels``: its table label by run folder; else the method) and batch
    size, the live noise scale near the peak rate of its best-validation run and at its end (and
    the range over its other runs), and the advice for it."""
    if not has_noise_scale(runs):
        return []
    groups: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        if steady_of(r) is not None and r.best_val_acc is not None:
            groups.setdefault(((labels or {}).get(r.path, r.method), r.batch_size), []).append(r)
    out = ["## Batch size and the gradient noise scale", "",
           "B_simple = tr(Sigma) / |G|^2 measured live in every run (moving averages of both, "
           f"McCandlish et al. 2018), here {STEADY_RULE} (the steps logged at such a rate), which "
           "estimates the critical batch size of the bulk of training; the final value is that of "
           "the end of the schedule, which under a decaying rate climbs as the rate anneals. Per "
           "method and batch size: its run with the best validation accuracy, and the range over all "
           "its runs (other learning rates, seeds).", ""]
    out += ["| method | global batch | runs | B_simple near the peak rate (best-validation run) | range | "
            "final B_simple (same run) |", "|---|---:|---:|---:|---:|---:|"]
    chosen: dict[tuple[str, int], float] = {}
    for (method, batch), group in sorted(groups.items()):
        values = [steady_of(r) or 0.0 for r in group]
        best = _best_by_val(group)
        chosen[(method, batch)] = steady_of(best) or 0.0
        out.append(f"| {method} | {batch} | {len(group)} | {chosen[(method, batch)]:.0f} | "
                   f"{min(values):.0f}-{max(values):.0f} | {_n(final_noise_scale(best))} |")
    out.append("")
    if ("noise", "over_training") in figures:
        out += [f"![noise scale over training]({figures[('noise', 'over_training')]})", ""]
    several = len({m for m, _ in chosen}) > 1
    for (method, batch), b in chosen.items():
        out += [f"- {f'{method}: ' if several else ''}{advice(b, batch, assumptions=False)}"]
    out += ["", ASSUMPTIONS, ""]
    return out


def baseline_runs(runs: Sequence[Run]) -> list[Run]:
    """The runs the trade-off is measured on: one method's (vanilla where there are several)."""
    methods = sorted({r.method for r in runs})
    if len(methods) <= 1:
        return list(runs)
    keep = BASELINE if BASELINE in methods else methods[0]
    return [r for r in runs if r.method == keep]


def trade_off_section(runs: Sequence[Run], targets: Sequence[Target], figures: dict[tuple, str]) -> list[str]:
    """Steps and examples to each target per batch size, the fitted trade-off, and B_crit
    against the live B_simple (one method's runs: :func:`baseline_runs`)."""
    runs = baseline_runs(runs)
    out = ["## Steps against examples: the measured critical batch size", ""]
    by = chooser(targets)
    if by is not None:
        out += [f"Each batch size's learning rate is the one that reaches {by.label} in the fewest steps "
                "(validation only); the other targets are read from the same runs.", ""]
    summary = ["| target | fitted B_crit (leave one batch size out) | live B_simple then: median (range) | "
               "B_crit / live |", "|---|---:|---:|---:|"]
    measured = [measure(runs, target, by) for target in targets]
    for m in measured:
        target, f, live, med = m.target, m.fit, m.live, m.median
        summary.append(f"| {target.label} | " + (f"{f.b_crit:.0f} ({f.loo[0]:.0f}-{f.loo[1]:.0f})" if f else "-")
                       + " | " + (f"{med:.0f} ({min(live):.0f}-{max(live):.0f})" if med else "-") + " | "
                       + (f"{f.b_crit / med:.1f}x" if f and med else "-") + " |")
    out += summary + [""]
    for m in measured:
        target, best, f, live, med = m.target, m.best, m.fit, m.live, m.median
        out += [f"### To {target.label}", ""]
        out += ["| global batch | learning rate (tuned) | steps S | examples E (epochs) | S / S_min (fit) | "
                "live B_simple then |", "|---:|---:|---:|---:|---:|---:|"]
        for batch, x in best.items():
            if x is None:
                out.append(f"| {batch} | - | not reached | - | - | - |")
                continue
            epochs = x.examples / max(1, _train_size(x.run))
            ratio = x.steps / f.s_min if f else None
            out.append(f"| {batch} | {_n(x.run.lr, 'g')} | {x.steps:.0f} | {x.examples:,.0f} ({epochs:.1f}) | "
                       f"{_n(ratio, '.2f')} | {_n(x.noise_scale)} |")
        out.append("")
        if f is None:
            out += ["Too few batch sizes reached the target (or the points do not fit S = S_min + E_min / B "
                    "with positive S_min and E_min) to fit the trade-off.", ""]
            continue
        out += [f"Fit S = S_min + E_min / B: S_min = {f.s_min:.0f} steps, E_min = {f.e_min:,.0f} examples, "
                f"**B_crit = E_min / S_min = {f.b_crit:.0f}** (leaving one batch size out: "
                f"{f.loo[0]:.0f}-{f.loo[1]:.0f})."
                + (f" The live B_simple at the step each tuned run reached the target: median {med:.0f} "
                   f"(range {min(live):.0f}-{max(live):.0f}); the fitted B_crit is **{f.b_crit / med:.1f}x** "
                   "that median." if med else ""), ""]
        if ("tradeoff", target.short) in figures:
            out += [f"![steps against examples, {target.label}]({figures[('tradeoff', target.short)]})", ""]
    return out


def _train_size(run: Run) -> int:
    """Training examples per epoch, from the run's steps per epoch."""
    spe = next((r["step"] / r["epoch"] for r in run.train if r.get("epoch")), 1)
    return int(round(float(spe))) * run.batch_size


def over_training(runs: Sequence[Run]) -> dict[int, list[tuple[float, float]]]:
    """Per batch size, (training loss, live B_simple) along its run with the best validation
    accuracy: the noise scale against training progress, which batch sizes share."""
    out: dict[int, list[tuple[float, float]]] = {}
    for batch in sorted({r.batch_size for r in runs}):
        group = [r for r in baseline_runs(runs) if r.batch_size == batch and r.best_val_acc is not None]
        if not group:
            continue
        best = _best_by_val(group)
        loss = dict(curve(best, "loss"))
        pts = [(loss[float(r["step"])], float(r["noise_scale"])) for r in best.train
               if r.get("noise_scale") is not None and float(r.get("step", -1)) in loss]
        if pts:
            out[batch] = pts
    return out


__all__ = ["Fit", "Measured", "Reach", "Target", "TargetError", "baseline_runs", "chooser", "crossing", "fit",
           "has_noise_scale", "measure", "noise_section", "over_training", "parse_targets", "trade_off_section",
           "tuned"]

