"""Figures of the batch-size question: the live noise scale over training, and the measured
steps-against-examples trade-off with its fit (data from :mod:`dreg_dist.report.critical`)."""

from __future__ import annotations

from typing import Optional, Sequence

from dreg_dist.report.critical import (Fit, Reach, Target, baseline_runs, chooser, has_noise_scale, measure,
                                       over_training)
from dreg_dist.report.panels import grid, legend_right
from dreg_dist.report.plots import Plotter
from dreg_dist.report.runs import Run


def noise_over_training(plotter: Plotter, series: dict[int, list[tuple[float, float]]],
                        b_crit: Optional[float] = None) -> Optional[str]:
    """B_simple against the training loss (falling to the right), one line per global batch;
    the fitted B_crit as a dashed line."""
    if not series:
        return None
    name = "noise_scale_over_training.png"
    if not plotter.draw:
        return plotter._name(name)
    fig, (ax,) = grid(plotter.plt, 1, panel=(4.6, 3.4))
    for batch, pts in sorted(series.items()):
        ax.plot([x for x, _ in pts], [y for _, y in pts], lw=1.2, label=f"B = {batch}")
    if b_crit is not None:
        ax.axhline(b_crit, color="k", ls="--", lw=1, label=f"fitted B_crit {b_crit:.0f}")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("training loss (trailing mean; training goes right)")
    ax.set_ylabel("live B_simple")
    ax.set_title("Gradient noise scale as the loss falls", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    legend_right(ax, fontsize=8)
    return plotter._save(fig, name)


def trade_off(plotter: Plotter, target: Target, reached: Sequence[Reach], fit: Optional[Fit]) -> Optional[str]:
    """Steps against examples to ``target`` per batch size, and the fitted hyperbola."""
    if not reached:
        return None
    name = f"tradeoff_{target.short}.png"
    if not plotter.draw:
        return plotter._name(name)
    fig, (ax,) = grid(plotter.plt, 1, panel=(4.6, 3.6))
    ax.scatter([x.examples for x in reached], [x.steps for x in reached], color="C0", zorder=3,
               label="measured (tuned lr)")
    for x in reached:
        ax.annotate(str(x.batch), (x.examples, x.steps), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if fit is not None:
        lo, hi = min(x.batch for x in reached) / 2, max(x.batch for x in reached) * 2
        batches = [lo * (hi / lo) ** (i / 99) for i in range(100)]
        ax.plot([fit.steps(b) * b for b in batches], [fit.steps(b) for b in batches], color="C1",
                label=f"fit, B_crit {fit.b_crit:.0f}")
        ax.axhline(fit.s_min, color="C1", ls=":", lw=1, label="S_min")
        ax.axvline(fit.e_min, color="C1", ls="--", lw=1, label="E_min")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("examples E")
    ax.set_ylabel("optimizer steps S")
    ax.set_title(f"Steps against examples to {target.label}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    legend_right(ax, fontsize=8)
    return plotter._save(fig, name)




def batch_size_figures(plotter: Plotter, runs: Sequence[Run], targets: Sequence[Target]) -> dict[tuple, str]:
    """Every figure of the batch-size sections, keyed as :mod:`dreg_dist.report.critical` reads them."""
    out: dict[tuple, str] = {}
    fits = []
    by = chooser(targets)
    runs = baseline_runs(runs)
    fits = []
    for m in (measure(runs, target, by) for target in targets):
        fits.append(m.fit)
        if (path := trade_off(plotter, m.target, m.reached, m.fit)) is not None:
            out[("tradeoff", m.target.short)] = path
    if has_noise_scale(runs):
        first = next((f for f in fits if f is not None), None)
        path = noise_over_training(plotter, over_training(runs), first.b_crit if first else None)
        if path is not None:
            out[("noise", "over_training")] = path
    return out


__all__ = ["batch_size_figures", "noise_over_training", "trade_off"]
