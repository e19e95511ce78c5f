"""Small multiples for the report's figures: which groups share a panel, what their legend
entries say, and a grid of panels laid out to fit the saved canvas.

A figure that puts every method variant on one axes hides its data under the lines and the
legend; the figures instead give each method its own panel, with its best few variants and the
baseline at the same batch size drawn neutral, and name a variant by the few knobs that set it
apart from the others shown (the full names are in the tables). The layout is matplotlib's
constrained layout on a canvas of fixed size, saved as laid out: what fits on the canvas is
what is saved (tests/unit/test_figure_layout.py checks it from the drawn bounding boxes).
"""

from __future__ import annotations

import math
import textwrap
from typing import Any, Optional, Sequence

from dreg_dist.records import BASELINE, Catalog
from dreg_dist.report.aggregate import Group
from dreg_dist.report.keys import Pairs
from dreg_dist.report.stats import sort_key

DPI = 110
MAX_SHOWN = 4
"""Variants of one method in a panel, besides the baseline: more lines than that hide each other."""
PANEL = (3.5, 2.6)
"""Inches of one panel's plotting area and labels, without its legend."""
LEGEND_W = 1.9
"""Inches a panel's legend takes at its right."""
BASE_STYLE = {"color": "0.45", "linestyle": "--", "linewidth": 1.2}
"""The baseline in a method's panel: neutral, so the method's own lines stand out."""
MIN_WIDTH = 6.4
"""Inches: the narrowest figure."""
TITLE_CHARS = 34
"""A panel title wraps at about this many characters so that neighbouring titles never meet."""


def grid(plt: Any, n: int, *, ncols: int = 2, legend: bool = True, sharey: bool = False,
         sharex: bool = False, panel: tuple[float, float] = PANEL) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels in rows of ``ncols``, each with room for its legend at its right;
    unused cells of the last row are hidden."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    # A lone panel still gets the width of a title that names the method and signal.
    width = max(MIN_WIDTH, ncols * (panel[0] + (LEGEND_W if legend else 0.0)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, nrows * panel[1] + 0.5), squeeze=False,
                             sharey=sharey, sharex=sharex, layout="constrained", dpi=DPI)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def legend_right(ax: Any, fontsize: float = 7.5, title: str = "") -> None:
    """A panel's legend outside its right edge, never over its data."""
    ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              title=title or None, title_fontsize=fontsize, frameon=False)


def wrap(text: str, width: int = TITLE_CHARS) -> str:
    """``text`` in lines of at most ``width`` characters, a batch setup's "(...)" on a line of its own."""
    lines = text.replace(" (", "\n(", 1).split("\n")
    return "\n".join(part for line in lines for part in textwrap.wrap(line, width, break_on_hyphens=False) or [""])


def best_few(groups: Sequence[Group], n: int = MAX_SHOWN) -> list[Group]:
    """The ``n`` groups with the best mean best validation accuracy (the tables' measure), in
    the tables' order otherwise."""
    ranked = sorted(groups, key=lambda g: -(sum(g.best_vals) / len(g.best_vals)) if g.best_vals else math.inf)
    keep = {id(g) for g in ranked[:n]}
    return [g for g in groups if id(g) in keep]


def knobs(g: Group) -> Pairs:
    return (*g.variant, *g.tuned)


def distinct(pairs: Sequence[Pairs], catalog: Optional[Catalog] = None) -> list[Pairs]:
    """Each of ``pairs`` cut to the keys that tell it from the others: a key whose values differ
    among them, unless the keys already kept tell the same pairs apart (DReg's paper form changes
    ``form``, ``ce_reduction`` and ``norm`` together: one of them names it). Keys that decide
    whether another applies (``catalog.decides``) are kept first, then the rest in order."""
    rows = [{k: str(v) for k, v in p} for p in pairs]
    keys = list(dict.fromkeys(k for p in pairs for k, _ in p))
    varying = [k for k in keys if len({r.get(k) for r in rows}) > 1]
    if catalog is not None:
        varying.sort(key=lambda k: not catalog.decides(k))
    kept: list[str] = []
    told_apart = 1  # how many classes the kept keys split the pairs into
    for k in varying:
        classes = len({tuple(r.get(x) for x in (*kept, k)) for r in rows})
        if classes > told_apart:
            kept.append(k)
            told_apart = classes
    return [tuple((k, v) for k, v in p if k in kept) for p in pairs]


def short_labels(groups: Sequence[Group], with_method: bool = True) -> list[str]:
    """A legend entry per group: its method and the knob values that tell it from the other
    groups of its method in ``groups`` (a method's only group: the method alone)."""
    out = []
    for g in groups:
        mine = [x for x in groups if x.method == g.method]
        cut = distinct([knobs(x) for x in mine], g.catalog)[next(i for i, x in enumerate(mine) if x is g)]
        # The baseline's variant alone in its panel is named by what makes it one (its optimizer),
        # not as "vanilla", which reads as the dashed baseline beside it.
        text = g.pairs_label(cut) or (g.pairs_label(g.variant) if g.method == BASELINE and g.variant else "")
        out.append(f"{g.method} {text}" if with_method and text else (text or g.method))
    return out


def _family(g: Group) -> str:
    """The panel a group belongs in: its method, and for the baseline's own variants what kind of
    variant it is (each optimizer; ghost batch norm), so that LARS, LAMB and ghost BN get a panel
    each instead of crowding one."""
    if g.method != BASELINE or not g.variant:
        return g.method
    pairs = dict(g.variant)
    if "optim.name" in pairs:
        return g.pairs_label((("optim.name", pairs["optim.name"]),))
    return ", ".join(g.key_label(k) for k in sorted(pairs))


def panel_name(g: Group) -> str:
    """The title of the panel ``g`` is drawn in: its method, with the kind of a baseline variant;
    the baseline with another optimizer is named by it ('lamb', not 'vanilla (optimizer=lamb)')."""
    fam = _family(g)
    if fam == g.method:
        return g.method
    optimizer = dict(g.variant).get("optim.name") if g.method == BASELINE else None
    return str(optimizer) if optimizer is not None else f"{g.method}, {fam}"


def family_panels(groups: Sequence[Group]) -> list[tuple[str, int, Pairs, list[Group]]]:
    """(panel name, batch size, batch setup, its groups) per panel: every method other than the
    baseline by itself, the baseline's own variants by kind (:func:`_family`); the bare
    baseline, drawn in every panel, gets one of its own only where nothing else ran."""
    panels: dict[tuple, list[Group]] = {}
    for g in groups:
        if not (g.method == BASELINE and not g.variant):
            panels.setdefault((g.batch_size, g.layout, g.method, _family(g)), []).append(g)
    if not panels:
        for g in groups:
            panels.setdefault((g.batch_size, g.layout, g.method, g.method), []).append(g)
    order = sorted(panels, key=lambda k: (k[0], tuple(sort_key(v) for _, v in k[1]), k[2] != BASELINE, k[3]))
    return [(panel_name(panels[k][0]), k[0], k[1], panels[k]) for k in order]


__all__ = ["BASE_STYLE", "DPI", "MAX_SHOWN", "best_few", "distinct", "family_panels", "grid", "knobs", "legend_right",
           "panel_name",
           "short_labels", "wrap"]
