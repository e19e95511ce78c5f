"""PNG figures of a sweep (matplotlib, Agg backend, imported only when drawing), as small
multiples (:mod:`dreg_dist.report.panels`): one panel per method, its best few variants with
short labels, the baseline dashed grey, legends outside the panels.

* validation accuracy vs epoch: per method (at each batch size of the group) its best variants
  at their selected learning rates, mean over seeds with the min-max band shaded, one figure per
  batch-size group (the paper's Figures 2-5);
* training loss vs epoch, the same layout;
* validation accuracy vs compute: the same curves with epochs scaled by each method's
  benchmarked step cost over the baseline's where it has one, else its time/epoch over the
  baseline's (baseline-epoch equivalents of compute);
* best validation accuracy vs a method's study keys (its description's ``study_keys``; the paper's
  Figures 6-7 are DReg's layer and lambda), one panel per batch size, the baseline dashed;
* learning-rate sensitivity: one panel per method and batch size, best validation accuracy vs
  learning rate, one line per setting of its other knobs, every point on the seeds every
  learning rate was run with (those the selection uses); the selected setting a star with the
  mean and 95% interval of all its seeds;
* a method's own signals (its description's ``report_signals``) vs epoch: one panel per variant,
  one line per learning rate, every run of the method at the batch size;
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
from dreg_dist.report.panels import (BASE_STYLE, DPI, MAX_SHOWN, best_few, distinct, family_panels, grid, knobs,
                                     legend_right, panel_name, short_labels, wrap)
from dreg_dist.report.errors import ReportError
from dreg_dist.report.runs import iter_finite
from dreg_dist.report.select import common_seeds
from dreg_dist.report.stats import freeze, mean_ci, sort_key
from dreg_dist.report.signals import series, signal_id
from dreg_dist.sweep.grid import name_value, safe_name

FIG_DIR = "figures"


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


_COLORS = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9"]
"""The default cycle without its grey (C7), which is the baseline's."""


def _seeds_note(g: Group, what: str) -> str:
    """A line's seed count for its legend (the seeds with a curve at all), and the epoch after
    which fewer of them make its mean (a seed that diverged ends early)."""
    ends = sorted(rows[-1]["epoch"] if what == "loss" else rows[-1][0]
                  for rows in ((r.train if what == "loss" else r.curve) for r in g.runs) if rows)
    if len(ends) < 2:
        return ""
    if ends[0] < ends[-1]:
        return f" ({len(ends)} seeds; fewer after epoch {round(ends[0], 1):g})"
    return f" ({len(ends)} seeds)"


def _first_col(ax: Any) -> bool:
    return ax.get_subplotspec().is_first_col()


def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


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

    def _save(self, fig: Any, name: str) -> str:
        # Saved as laid out (no bbox_inches="tight"): the constrained layout fits every label and
        # legend on the canvas, so the file is the canvas the layout test measures.
        fig.savefig(self.fig_dir / name, dpi=DPI, format="png")
        self.plt.close(fig)
        return self._name(name)

    # ---------------------------------------------------------------- curves
    def _curves(self, setup: Setup, sizes: Sequence[int], what: str, prefix: str) -> Optional[str]:
        lines: dict[int, tuple[Group, list, float]] = {}
        for g in setup.selected:
            points = (g.loss_curve() if what == "loss" else g.curve()) if g.batch_size in sizes else []
            cost = compute_cost(setup, g) if what == "compute" else 1.0
            if points and cost is not None:
                lines[id(g)] = (g, points, cost)
        if not lines:
            return None
        stem = {"val": "val_acc", "loss": "train_loss", "compute": "val_acc_compute"}[what]
        name = f"{prefix}{stem}_bs{_bs_text(sizes)}.png"
        if not self.draw:
            return self._name(name)
        panels = family_panels([g for g, _, _ in lines.values()])
        several = len({(b, layout) for _, b, layout, _ in panels}) > 1
        benched = any(r.step_cost is not None for g, _, _ in lines.values() for r in g.runs)
        xlabel = {"compute": f"{BASELINE}-epoch equivalents of " + ("compute" if benched else "wall-clock")}.get(
            what, "epoch")
        fig, axes = grid(self.plt, len(panels), sharey=True)
        for ax, (method, batch, layout, members) in zip(axes, panels):
            base = setup.baseline(batch, layout)
            others = [g for g in members if g is not base]
            shown = best_few(others) if others else members
            if others and base is not None and id(base) in lines:
                self._curve(ax, lines[id(base)], what, label=f"{BASELINE} (baseline)", **BASE_STYLE)
            for g, label, color in zip(shown, short_labels(shown, with_method=False), _COLORS):
                self._curve(ax, lines[id(g)], what, label=label + _seeds_note(g, what), color=color)
            ax.set_title(wrap(method + (f", BS {setup.batch_text(batch, layout)}" if several else "")), fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.grid(alpha=0.3)
            legend_right(ax, title=f"best {len(shown)} of {len(others)}" if len(others) > len(shown) else "")
            if _first_col(ax):
                ax.set_ylabel("training loss" if what == "loss" else "validation accuracy (%)", fontsize=8)
        title = {"val": "Validation accuracy", "loss": "Training loss", "compute": "Validation accuracy vs compute"}
        fig.suptitle(f"{title[what]}, BS {', '.join(str(b) for b in sizes)}", fontsize=10)
        return self._save(fig, name)

    def _curve(self, ax: Any, line: tuple[Group, list, float], what: str, **style: Any) -> None:
        g, points, cost = line
        scale = 1.0 if what == "loss" else 100.0
        x = [p[0] * cost for p in points]
        style.setdefault("linewidth", 1.3)
        ax.plot(x, [p[1] * scale for p in points], marker="o" if what == "val" and len(x) < 30 else None,
                markersize=2.5, **style)
        if len(g.runs) > 1:
            ax.fill_between(x, [p[2] * scale for p in points], [p[3] * scale for p in points],
                            color=style["color"], alpha=0.15, linewidth=0)

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
        panels: dict[tuple, list] = {}
        for (batch, rest), points in lines.items():
            panels.setdefault((batch, points[0].group.layout), []).append((rest, points))
        fig, axes = grid(self.plt, len(panels), sharey=True)
        for ax, ((batch, layout), entries) in zip(axes, panels.items()):
            top = sorted(entries, key=lambda e: -max(_mean(p.group.best_vals) or 0.0 for p in e[1]))[:MAX_SHOWN]
            shown = [e for e in entries if any(e is t for t in top)]
            base = setup.baseline(batch, layout)
            if base is not None and base.best_vals:
                ax.axhline((_mean(base.best_vals) or 0.0) * 100, label=f"{BASELINE} (baseline)", **BASE_STYLE)
            for (rest, points), cut, color in zip(shown, distinct([rest for rest, _ in shown], analysis.catalog), _COLORS):
                mean = [(_mean(p.group.best_vals) or 0.0) * 100 for p in points]
                err = [[m - min(p.group.best_vals) * 100 for m, p in zip(mean, points)],
                       [max(p.group.best_vals) * 100 - m for m, p in zip(mean, points)]]
                ax.errorbar([values.index(name_value(p.value)) for p in points], mean, yerr=err, marker="o",
                            capsize=3, color=color, label=analysis.pairs_label(cut) or points[0].group.method)
            ax.set_xticks(range(len(values)))
            ax.set_xticklabels(values)
            ax.set_xlabel(analysis.study_titles().get(key, analysis.label_of(key)), fontsize=8)
            ax.set_title(wrap(f"BS {setup.batch_text(batch, layout)}"), fontsize=9)
            ax.grid(alpha=0.3)
            legend_right(ax, title=f"best {len(shown)} of {len(entries)}" if len(entries) > len(shown) else "")
            if _first_col(ax):
                ax.set_ylabel("best validation accuracy (%)", fontsize=8)
        fig.suptitle(f"Best validation accuracy vs {analysis.label_of(key)}", fontsize=10)
        return self._save(fig, name)

    # ---------------------------------------------------------------- learning rate
    def lr_sensitivity(self, analysis: Analysis, setup: Setup, prefix: str = "") -> Optional[str]:
        """Best validation accuracy vs learning rate: one panel per method and batch setup, one
        line per setting of its other knobs (variant and tuned knobs), each point the mean over
        the seeds every learning rate of its variant was run with (the selection's), so a line
        never mixes seed counts; the selected setting a star at the mean of all its seeds with
        their 95% interval."""
        by_key = {k: [g for g in gs if g.lr is not None and g.best_vals] for k, gs in setup.compared().items()}
        by_key = {k: v for k, v in by_key.items() if len({g.setting for g in v}) > 1}
        if not by_key:
            return None
        name = f"{prefix}lr_sensitivity.png"
        if not self.draw:
            return self._name(name)
        on = common_seeds(analysis.lr_results)
        panels: dict[tuple, list[tuple[tuple, list[Group]]]] = {}
        for key, gs in by_key.items():
            for g in gs:
                # the baseline's own kinds (LARS, LAMB, ghost BN) get panels of their own, as in the curves
                lines = panels.setdefault((g.batch_size, g.layout, panel_name(g)), [])
                mine = next((gs2 for k2, gs2 in lines if k2 == (key, g.tuned)), None)
                if mine is None:
                    lines.append(((key, g.tuned), [g]))
                else:
                    mine.append(g)
        order = sorted(panels, key=lambda k: (k[0], tuple(sort_key(v) for _, v in k[1]), k[2] != BASELINE, k[2]))
        fig, axes = grid(self.plt, len(order))
        for ax, (batch, layout, method) in zip(axes, order):
            entries = panels[(batch, layout, method)]
            top = sorted(entries, key=lambda e: -max(_mean(_on_seeds(g, on.get(freeze(e[0][0])))) or 0.0
                                                     for g in e[1]))[:MAX_SHOWN]
            shown = [e for e in entries if any(e is t for t in top)]
            seed_texts = [_seeds_text(on.get(freeze(key))) for (key, _), _ in shown]
            same = len(set(seed_texts)) == 1
            lrs: set[float] = set()
            counts: set[int] = set()
            lost = False
            for ((key, _), gs), cut, color, seeds in zip(shown, distinct([knobs(gs[0]) for _, gs in shown], setup.catalog), _COLORS,
                                                         seed_texts):
                seeds_on = on.get(freeze(key))
                pts = [(g, g.lr, _mean(_on_seeds(g, seeds_on))) for g in gs]
                pts = [(g, x, y * 100) for g, x, y in pts if y is not None]
                lrs.update(x for _, x, _ in pts)
                label = (setup.pairs_label(cut) or method) + ("" if same else f" ({seeds})")
                ax.plot([x for _, x, _ in pts], [y for _, _, y in pts], "o-", color=color, markersize=3.5, label=label)
                # A diverged run's point is its best before it stopped: not a result to read as one.
                if gone := [(x, y) for g, x, y in pts if g.diverged]:
                    lost = True
                    ax.plot(*zip(*gone), "x", color=color, markersize=8, mew=1.8, zorder=4)
                chosen = next((g for g in setup.selected if g.compare_key == key), None)
                if chosen is not None and any(g is chosen for g in gs):
                    mean, half = mean_ci(chosen.best_vals)
                    counts.add(len(chosen.best_vals))
                    ax.errorbar([chosen.lr], [(mean or 0.0) * 100], yerr=[(half or 0.0) * 100], fmt="*",
                                markersize=11, color=color, markeredgecolor="k", capsize=3, zorder=5)
            if counts:
                n = str(min(counts)) if len(counts) == 1 else f"{min(counts)}-{max(counts)}"
                ax.plot([], [], "*", color="0.6", markeredgecolor="k", markersize=9,
                        label="selected (1 seed)" if n == "1" else f"selected: mean of {n} seeds ± 95% CI")
            if lost:
                ax.plot([], [], "x", color="0.4", mew=1.8, label="diverged (best before)")
            self._log_lr_axis(ax, sorted(lrs))
            ax.set_title(wrap(f"{method}, BS {setup.batch_text(batch, layout)}"), fontsize=9)
            notes = ([f"lines: {seed_texts[0]}"] if same else []) + (
                [f"best {len(shown)} of {len(entries)}"] if len(entries) > len(shown) else [])
            legend_right(ax, title="; ".join(notes))
            if _first_col(ax):
                ax.set_ylabel("best validation accuracy (%)", fontsize=8)
        fig.suptitle("Learning-rate sensitivity", fontsize=10)
        return self._save(fig, name)

    def _log_lr_axis(self, ax: Any, lrs: Sequence[float]) -> None:
        ax.set_xscale("log")
        ax.minorticks_off()
        # Each rate its own tick where they are a few and spread out (a sweep by factors of 2);
        # otherwise decades, so that neighbouring labels never print over each other.
        spread = len(lrs) <= 5 and all(b / a >= 1.9 for a, b in zip(lrs, lrs[1:]))
        if spread:
            ax.set_xticks(lrs)
            ax.set_xticklabels([name_value(lr) for lr in lrs], fontsize=7)
        else:
            ax.xaxis.set_major_formatter(self.plt.FuncFormatter(lambda v, _: name_value(float(f"{v:.6g}"))))
            ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("optim.lr (log scale)", fontsize=8)
        ax.grid(alpha=0.3, which="both")

    # ---------------------------------------------------------------- a method's own signals
    def signal_curve(self, setup: Setup, batch: int, method: str, signal: Signal, prefix: str = "") -> Optional[str]:
        """One of the method's signals (its description's ``report_signals``) vs epoch, every run of
        the method at ``batch``: one panel per variant, one line per learning rate (mean over its
        seeds, drawn thicker where that is more than one), one legend for the figure."""
        panels: dict[tuple, list[tuple[Group, list]]] = {}
        for g in sorted((g for g in setup.groups if g.method == method and g.batch_size == batch),
                        key=lambda g: (g.label, tuple(sort_key(v) for _, v in g.layout), g.lr or 0.0)):
            points = _mean_series([series(r, signal) for r in g.runs])
            if points:
                panels.setdefault((g.layout, knobs(g)), []).append((g, points))
        if not panels:
            return None
        name = f"{prefix}{safe_name(method)}_{safe_name(signal_id(signal))}_bs{batch}.png"
        if not self.draw:
            return self._name(name)
        lrs = sorted({g.lr or 0.0 for lines in panels.values() for g, _ in lines})
        colors = {lr: _COLORS[i % len(_COLORS)] for i, lr in enumerate(lrs)}
        several = len({layout for layout, _ in panels}) > 1
        fig, axes = grid(self.plt, len(panels), ncols=3, legend=False, panel=(3.3, 2.3))
        for ax, key, cut in zip(axes, panels, distinct([k for _, k in panels], setup.catalog)):
            layout = key[0]
            for g, points in panels[key]:
                ax.plot([p[0] for p in points], [p[1] for p in points], color=colors[g.lr or 0.0],
                        linewidth=2.4 if len(g.runs) > 1 else 1.1)
            for threshold in (signal.flag_below, signal.flag_above):
                if threshold is not None:
                    ax.axhline(threshold[0], color="0.4", linewidth=0.8, linestyle=":")
            if signal.log_scale:
                ax.set_yscale("log")
            title = setup.pairs_label((*cut, *(layout if several else ())))
            if title:  # a lone variant's name is the suptitle's
                ax.set_title(wrap(title, 30), fontsize=8)
            ax.set_xlabel("epoch", fontsize=8)
            ax.grid(alpha=0.3, which="both")
            if _first_col(ax):
                ax.set_ylabel(signal.title + (" (log)" if signal.log_scale else ""), fontsize=8)
        handles = [self.plt.Line2D([], [], color=colors[lr], label=f"lr {name_value(lr)}") for lr in lrs]
        if any(len(g.runs) > 1 for lines in panels.values() for g, _ in lines):
            handles += [self.plt.Line2D([], [], color="0.3", linewidth=1.1, label="1 seed"),
                        self.plt.Line2D([], [], color="0.3", linewidth=2.4, label="mean of 2+ seeds")]
        fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
        fig.suptitle(f"{method}: {signal.title}, BS {batch}", fontsize=10)
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
        fig, (ax,) = grid(self.plt, 1, panel=(5.2, 3.8))
        labels = short_labels([t.tuned for t, _ in lines])
        for i, ((t, points), label) in enumerate(zip(lines, labels)):
            shift = 0.04 * (i - (len(lines) - 1) / 2)  # side by side, so that equal means do not hide each other
            x = [ticks.index((g.batch_size, g.layout)) + shift for g, _, _ in points]
            note = "" if any(g is t.moved for g, _, _ in points) else " (diverged)"
            ax.errorbar(x, [m * 100 for _, m, _ in points], yerr=[(h or 0.0) * 100 for _, _, h in points],
                        marker="o", capsize=3, color="0.45" if t.is_baseline else _COLORS[i % len(_COLORS)],
                        linestyle="--" if t.is_baseline else "-",
                        label=f"{label}, lr {name_value(t.tuned.lr)}{note}")
        ax.set_xticks(range(len(ticks)))
        ax.set_xticklabels([wrap(f"BS {setup.batch_text(b, layout)}") for b, layout in ticks], fontsize=8)
        ax.set_xlim(-0.5, len(ticks) - 0.5)
        ax.set_ylabel("test accuracy (%), mean ± 95% CI", fontsize=8)
        ax.set_title(f"LR transfer to BS {moved.batch_size}", fontsize=10)
        ax.grid(alpha=0.3)
        legend_right(ax)
        return self._save(fig, name)


def _on_seeds(g: Group, seeds: Optional[frozenset[int]]) -> list[float]:
    """The group's best validation accuracies of ``seeds`` (None: of all its seeds)."""
    return iter_finite(r.best_val_acc for r in g.runs if seeds is None or r.seed in seeds)


def _seeds_text(seeds: Optional[frozenset[int]]) -> str:
    if seeds is None:
        return "all seeds"
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(s) for s in sorted(seeds))


def _mean_series(curves: Sequence[Sequence[tuple[float, float]]]) -> list[tuple[float, float]]:
    """(epoch, mean over the curves that have a value there) by epoch."""
    by_epoch: dict[float, list[float]] = {}
    for curve in curves:
        for epoch, value in curve:
            by_epoch.setdefault(epoch, []).append(value)
    return [(e, sum(v) / len(v)) for e, v in sorted(by_epoch.items())]
