"""PNG figures of a sweep (matplotlib, Agg backend, imported only when drawing).

* validation accuracy vs epoch: one line per method variant x batch size, mean over seeds
  with the min-max band shaded, one figure per batch-size group (the paper's Figures 2-5);
* training loss vs epoch, the same layout;
* validation accuracy vs compute: the same curves with epochs scaled by each method's
  benchmarked step cost over the baseline's where it has one, else its time/epoch over the
  baseline's (baseline-epoch equivalents of compute);
* best validation accuracy vs a method's study keys (its description's ``study_keys``; the paper's
  Figures 6-7 are DReg's layer and lambda), the baseline dashed;
* learning-rate sensitivity: best validation accuracy vs learning rate per method, the
  selected learning rate circled, one panel per batch size;
* a method's own signals (its description's ``report_signals``) vs epoch, every run of the method, the
  legend outside the axes;
* learning-rate transfer: test accuracy at the tuning batch and at the larger one, per method
  variant, with 95% intervals over seeds.

Each figure's data and file name are worked out before anything is drawn, so that a Plotter
with ``draw=False`` names exactly the figures a drawing one writes (a report regenerated
for a check needs no matplotlib time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from dreg_dist.records import Signal
from dreg_dist.records import BASELINE
from dreg_dist.report.aggregate import Group, Setup
from dreg_dist.report.analysis import Analysis
from dreg_dist.report.compare import Transfer, compute_cost
from dreg_dist.report.stats import freeze, mean_ci, sort_key
from dreg_dist.report.signals import series, signal_id
from dreg_dist.sweep.grid import name_value, safe_name

FIG_DIR = "figures"
DPI = 110


class ReportError(RuntimeError):
    """A report cannot be written (missing dependency, no runs); one line."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ReportError(
            "matplotlib is needed to draw the report's figures: pip install -e '.[report]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _bs_text(sizes: Sequence[int]) -> str:
    return "-".join(str(b) for b in sizes)


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    plt = _pyplot()
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    return {lab: cycle[i % len(cycle)] for i, lab in enumerate(labels)}


_STYLES = ["-", "--", ":", "-."]
OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0}
"""Legend placement: right of the axes, never over the data."""


def _line_label(setup: Setup, g: Group) -> str:
    """A group's name in a legend: its batch setup named where its batch size has several."""
    return g.label + (f" ({g.pairs_label(g.layout)})" if len(setup.layouts(g.batch_size)) > 1 else "")


class Plotter:
    """Writes figures under ``out_dir/figures`` and returns their paths relative to ``out_dir``;
    with ``draw=False`` returns the same paths and writes nothing."""

    def __init__(self, out_dir: Path, draw: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.fig_dir = self.out_dir / FIG_DIR
        self.draw = draw
        if draw:
            self.plt = _pyplot()
            self.fig_dir.mkdir(parents=True, exist_ok=True)

    def _name(self, name: str) -> str:
        return f"{FIG_DIR}/{name}"

    def _finish(self, fig: Any, ax: Any, name: str, title: str, setup: Setup, legend_size: int) -> str:
        """Title (with the setup's label), grid and legend of a one-panel figure, then save it."""
        where = f" - {setup.label}" if setup.label else ""
        ax.set_title(f"{title}{where}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size, **OUTSIDE)
        return self._save(fig, name)

    def _save(self, fig: Any, name: str) -> str:
        path = self.fig_dir / name
        # A legend outside the axes must not shrink them: the layout leaves it out, the saved
        # canvas grows to take it in.
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        for legend in legends:
            legend.set_in_layout(False)
        fig.tight_layout(rect=(0, 0, 1, 0.93) if fig.get_suptitle() else None)
        fig.savefig(path, dpi=DPI, format="png", bbox_inches="tight", bbox_extra_artists=legends)
        self.plt.close(fig)
        return self._name(name)

    # ---------------------------------------------------------------- curves
    def _curves(self, setup: Setup, sizes: Sequence[int], what: str, prefix: str) -> Optional[str]:
        lines = []
        for g in sorted((g for g in setup.selected if g.batch_size in sizes),
                        key=lambda g: (g.batch_size, tuple(sort_key(v) for _, v in g.layout), g.method != BASELINE,
                                       g.label)):
            points = g.loss_curve() if what == "loss" else g.curve()
            cost = compute_cost(setup, g) if what == "compute" else 1.0
            if points and cost is not None:
                lines.append((g, points, cost))
        if not lines:
            return None
        stem = {"val": "val_acc", "loss": "train_loss", "compute": "val_acc_compute"}[what]
        name = f"{prefix}{stem}_bs{_bs_text(sizes)}.png"
        if not self.draw:
            return self._name(name)
        labels = list(dict.fromkeys(_line_label(setup, g) for g, _, _ in sorted(
            lines, key=lambda line: (line[0].method != BASELINE, _line_label(setup, line[0])))))
        colors = _colors(labels)
        batch_keys = [k for k in setup.batch_keys if k[0] in sizes]
        fig, ax = self.plt.subplots(figsize=(6.4, 4.2))
        for g, points, cost in lines:
            scale = 1.0 if what == "loss" else 100.0
            x = [p[0] * cost for p in points]
            mean = [p[1] * scale for p in points]
            lo = [p[2] * scale for p in points]
            hi = [p[3] * scale for p in points]
            style = _STYLES[batch_keys.index((g.batch_size, g.layout)) % len(_STYLES)]
            seeds = len(g.runs)
            label = _line_label(setup, g)
            lab = f"{g.label}, BS {setup.batch_text(g.batch_size, g.layout)}" + (
                f" ({seeds} seeds)" if seeds > 1 else "")
            ax.plot(x, mean, style, color=colors[label], label=lab,
                    marker="o" if what == "val" and len(x) < 30 else None, markersize=3)
            if seeds > 1:
                ax.fill_between(x, lo, hi, color=colors[label], alpha=0.18, linewidth=0)
        benched = any(r.step_cost is not None for g, _, _ in lines for r in g.runs)
        ax.set_xlabel((f"{BASELINE}-epoch equivalents of compute (epoch x step cost vs {BASELINE}; "
                       "time/epoch where not benchmarked)" if benched else
                       f"{BASELINE}-epoch equivalents of wall-clock (epoch x time/epoch vs {BASELINE})")
                      if what == "compute" else "epoch")
        if what in ("val", "compute"):
            ax.set_ylabel("validation accuracy (%)")
            title = "Validation accuracy vs compute" if what == "compute" else "Validation accuracy"
        else:
            ax.set_ylabel("training loss (cross-entropy)")
            title = "Training loss"
        where = f" - {setup.label}" if setup.label else ""
        ax.set_title(f"{title}, BS {', '.join(str(b) for b in sizes)}{where}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, **OUTSIDE)
        return self._save(fig, name)

    def val_vs_compute(self, setup: Setup, sizes: Sequence[int], prefix: str = "") -> Optional[str]:
        """Validation accuracy against wall-clock in units of the baseline's epochs (needs time/epoch)."""
        return self._curves(setup, sizes, "compute", prefix)

    def val_accuracy(self, setup: Setup, sizes: Sequence[int], prefix: str = "") -> Optional[str]:
        return self._curves(setup, sizes, "val", prefix)

    def train_loss(self, setup: Setup, sizes: Sequence[int], prefix: str = "") -> Optional[str]:
        return self._curves(setup, sizes, "loss", prefix)

    # ---------------------------------------------------------------- studies
    def study(self, analysis: Analysis, setup: Setup, key: str, prefix: str = "") -> Optional[str]:
        lines = analysis.study(setup, key)
        if not lines or all(len(points) < 2 for points in lines.values()):
            return None
        name = f"{prefix}study_{analysis.label_of(key)}.png"
        if not self.draw:
            return self._name(name)
        raw = {name_value(p.value): p.value for pts in lines.values() for p in pts}
        values = sorted(raw, key=lambda text: sort_key(raw[text]))
        xpos = {v: i for i, v in enumerate(values)}
        batches = sorted({b for b, _ in lines})
        colors = _colors([str(b) for b in batches])
        fig, ax = self.plt.subplots(figsize=(6.4, 4.2))
        for (batch, rest), points in lines.items():
            x = [xpos[name_value(p.value)] for p in points]
            mean = [(_m(p.group.best_vals) or 0.0) * 100 for p in points]
            err_lo = [m - min(p.group.best_vals) * 100 for m, p in zip(mean, points)]
            err_hi = [max(p.group.best_vals) * 100 - m for m, p in zip(mean, points)]
            lab = f"{points[0].group.method}, BS {batch}" + (f" ({analysis.pairs_label(rest)})" if rest else "")
            ax.errorbar(x, mean, yerr=[err_lo, err_hi], marker="o", capsize=3, color=colors[str(batch)], label=lab)
        for batch, layout in dict.fromkeys((b, pts[0].group.layout) for (b, _), pts in lines.items()):
            base = setup.baseline(batch, layout)
            if base is not None and base.best_vals:
                ax.axhline((_m(base.best_vals) or 0.0) * 100, linestyle="--", color=colors[str(batch)],
                           label=f"{BASELINE}, BS {setup.batch_text(batch, layout)}")
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(values)
        ax.set_xlabel(analysis.study_titles().get(key, analysis.label_of(key)))
        ax.set_ylabel("best validation accuracy (%)")
        return self._finish(fig, ax, name, f"Best validation accuracy vs {analysis.label_of(key)}", setup, legend_size=8)

    # ---------------------------------------------------------------- learning rate
    def lr_sensitivity(self, analysis: Analysis, setup: Setup, prefix: str = "") -> Optional[str]:
        """Best validation accuracy vs learning rate, one line per variant (and per value of its
        tuned knobs), the selected setting circled; one panel per batch setup."""
        by_key = {k: [g for g in gs if g.lr is not None and g.best_vals] for k, gs in setup.compared().items()}
        by_key = {k: v for k, v in by_key.items() if len({g.setting for g in v}) > 1}
        if not by_key:
            return None
        name = f"{prefix}lr_sensitivity.png"
        if not self.draw:
            return self._name(name)
        lines: dict[tuple, list[Group]] = {}
        for key, gs in by_key.items():
            for g in gs:
                lines.setdefault((key, g.tuned), []).append(g)
        panels = [k for k in setup.batch_keys if any((gs[0].batch_size, gs[0].layout) == k for gs in by_key.values())]
        colors = _colors(list(dict.fromkeys(gs[0].label for gs in sorted(
            lines.values(), key=lambda gs: (gs[0].method != BASELINE, gs[0].label)))))
        fig, axes = self.plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False)
        for ax, (batch, layout) in zip(axes[0], panels):
            lrs = set()
            for (key, _), gs in lines.items():
                if (gs[0].batch_size, gs[0].layout) != (batch, layout):
                    continue
                x = [g.lr for g in gs]
                lrs.update(x)
                y = [(_m(g.best_vals) or 0.0) * 100 for g in gs]
                ax.plot(x, y, "o-", color=colors[gs[0].label], label=gs[0].label)
                chosen = analysis.selected_lr.get(freeze(key))
                mine = next((g for g in gs if chosen is not None and g.lr == chosen.lr
                             and g.setting[1] == chosen.setting), None)
                if mine is not None:
                    ax.plot([chosen.lr], [chosen.val_acc * 100], "o", markersize=12, markerfacecolor="none",
                            markeredgecolor=colors[gs[0].label])
            self._log_lr_axis(ax, sorted(lrs))
            ax.set_ylabel("best validation accuracy (%), mean over seeds")
            ax.set_title(f"BS {setup.batch_text(batch, layout)}", fontsize=10)
        axes[0][-1].legend(*_merged_handles(axes[0]), fontsize=7, **OUTSIDE)
        fig.suptitle("Learning-rate sensitivity (circled: selected)" + (f" - {setup.label}" if setup.label else ""),
                     fontsize=10)
        return self._save(fig, name)

    def _log_lr_axis(self, ax: Any, lrs: Sequence[float]) -> None:
        ax.set_xscale("log")
        ax.set_xticks(lrs)
        # Many rates on one axis: slanted, so that neighbours do not print over each other.
        ax.set_xticklabels([name_value(lr) for lr in lrs], rotation=45 if len(lrs) > 5 else 0,
                           ha="right" if len(lrs) > 5 else "center", fontsize=7 if len(lrs) > 5 else None)
        ax.minorticks_off()
        ax.xaxis.set_minor_formatter(self.plt.NullFormatter())
        ax.set_xlabel("optim.lr (for a batch of optim.base_batch_size; log scale)")
        ax.grid(alpha=0.3, which="both")

    # ---------------------------------------------------------------- a method's own signals
    def signal_curve(self, setup: Setup, batch: int, method: str, signal: Signal, prefix: str = "") -> Optional[str]:
        """One of the method's signals (its description's ``report_signals``) vs epoch: one line per variant
        and learning rate (mean over its seeds), every run of the method at ``batch``; the legend
        outside the axes."""
        lines = []
        for g in sorted((g for g in setup.groups if g.method == method and g.batch_size == batch),
                        key=lambda g: (g.label, g.lr or 0.0)):
            points = _mean_series([series(r, signal) for r in g.runs])
            if points:
                variant = g.pairs_label(g.variant) if g.variant else method
                seeds = f", {len(g.runs)} seeds" if len(g.runs) > 1 else ""
                lines.append((f"{variant}, lr {name_value(g.lr)}{seeds}", points))
        if not lines:
            return None
        name = f"{prefix}{safe_name(method)}_{safe_name(signal_id(signal))}_bs{batch}.png"
        if not self.draw:
            return self._name(name)
        colors = _colors([label for label, _ in lines])
        fig, ax = self.plt.subplots(figsize=(8.4, 3.8))
        for i, (label, points) in enumerate(lines):
            ax.plot([p[0] for p in points], [p[1] for p in points], color=colors[label],
                    linestyle=_STYLES[(i // 10) % len(_STYLES)], label=label)
        if signal.log_scale:
            ax.set_yscale("log")
        for threshold in (signal.flag_below, signal.flag_above):
            if threshold is not None:
                ax.axhline(threshold[0], color="0.4", linewidth=0.8, linestyle=":")
        ax.set_xlabel("epoch")
        ax.set_ylabel(signal.title + (" (log)" if signal.log_scale else ""))
        where = f", {setup.label}" if setup.label else ""
        ax.set_title(f"{method}: {signal.title}, batch {batch}{where}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, **OUTSIDE)
        return self._save(fig, name)

    # ---------------------------------------------------------------- learning-rate transfer
    def transfer(self, setup: Setup, moves: Sequence[Transfer], prefix: str = "") -> Optional[str]:
        """Test accuracy at the tuning batch and at the larger one, per method variant (mean with
        its 95% interval over seeds, joined by a line); a variant with no test accuracy at the
        larger batch (every run diverged) keeps its first point and says so in the legend."""
        lines = []
        for t in moves:
            points = [(g, mean_ci(g.test_accs)) for g in (t.tuned, t.moved)]
            points = [(g, m, h) for g, (m, h) in points if m is not None]
            if points:
                lines.append((t, points))
        if not lines:
            return None
        moved = moves[0].moved
        to = setup.batch_text(moved.batch_size, moved.layout)
        name = f"{prefix}lr_transfer_bs{safe_name(to)}.png"
        if not self.draw:
            return self._name(name)
        used = {(g.batch_size, g.layout) for t in moves for g in (t.tuned, t.moved)}
        ticks = [k for k in setup.batch_keys if k in used]
        colors = _colors([t.tuned.label for t, _ in lines])
        fig, ax = self.plt.subplots(figsize=(6.4, 4.2))
        for i, (t, points) in enumerate(lines):
            shift = 0.04 * (i - (len(lines) - 1) / 2)  # side by side, so that equal means do not hide each other
            x = [ticks.index((g.batch_size, g.layout)) + shift for g, _, _ in points]
            y = [m * 100 for _, m, _ in points]
            err = [(h or 0.0) * 100 for _, _, h in points]
            note = "" if any(g is t.moved for g, _, _ in points) else f" (diverged at {to})"
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colors[t.tuned.label],
                        linestyle="--" if t.is_baseline else "-",
                        label=f"{t.tuned.label}, lr {name_value(t.tuned.lr)}{note}")
        ax.set_xticks(range(len(ticks)))
        ax.set_xticklabels([f"BS {setup.batch_text(b, layout)}".replace(" (", "\n(", 1) for b, layout in ticks])
        ax.set_xlim(-0.5, len(ticks) - 0.5)
        ax.set_ylabel("test accuracy (%), mean ± 95% CI")
        return self._finish(fig, ax, name, f"LR transfer to BS {to}", setup, legend_size=7)


def _merged_handles(axes: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """Every panel's legend entries, each label once: one legend for all panels."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    return list(handles.values()), list(handles)


def _mean_series(curves: Sequence[Sequence[tuple[float, float]]]) -> list[tuple[float, float]]:
    """(epoch, mean over the curves that have a value there) by epoch."""
    by_epoch: dict[float, list[float]] = {}
    for curve in curves:
        for epoch, value in curve:
            by_epoch.setdefault(epoch, []).append(value)
    return [(e, sum(v) / len(v)) for e, v in sorted(by_epoch.items())]


def _m(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None
