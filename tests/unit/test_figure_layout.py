"""Every kind of report figure, drawn from planted run folders (many method variants with long
names, several batch sizes and seeds, a learning-rate transfer, a method's signals, the
batch-size trade-off and noise scale), is readable as saved: measured on matplotlib's drawn
bounding boxes, no legend lies over a panel's plotting area, no text leaves the saved canvas,
the titles, axis labels and tick labels of different panels never print over each other (nor
neighbouring tick labels of one axis), and no legend lists more lines than a reader can follow.

The figures are saved as laid out (no ``bbox_inches="tight"``), so the canvas measured here is
the saved image."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

from .test_critical_batch import _run as plant_noise_run
from .test_report_select import plant_run
from ..conftest import REPO

plt = pytest.importorskip("matplotlib.pyplot")

from matplotlib.transforms import Bbox  # noqa: E402

from dreg_dist.report.critical import parse_targets  # noqa: E402
from dreg_dist.report.markdown import write_report  # noqa: E402

SLACK = 1.0
"""Pixels two boxes may share (antialiased edges) before they count as overlapping."""
MAX_ENTRIES = 10
"""More lines than that in one legend is a table: the markdown has it."""
KINDS = ("val_acc_bs", "train_loss_bs", "val_acc_compute_bs", "study_", "lr_sensitivity", "lr_transfer_bs",
         "dreg_branch_distance_rel_bs", "tradeoff_", "noise_scale_over_training")


def _curve(peak: float, epochs: int = 6) -> list[float]:
    return [peak * (0.4 + 0.6 * e / epochs) for e in range(1, epochs + 1)]


def plant(root: Path, name: str, *, extra: Sequence[str] = (), workers: int = 1, **kw: Any) -> None:
    """A run on one process accumulating 8 micro-batches (unless told otherwise)."""
    plant_run(root, name, extra=["train.accumulation_steps=8" if workers == 1 else "train.accumulation_steps=1",
                                 *extra], workers=workers, **kw)


def _plant_sweep(root: Path) -> None:
    """Vanilla at 4096 (two learning rates) and 8192 (moved there unchanged); at 4096 fourteen
    DReg variants (lam x layer, and a reduction and a form that make the names long), three of
    them over three learning rates with seeds 1-2 at the selected one, SAM over five close
    learning rates, and GradientMix with vanilla on 8 workers (a second batch setup at 4096)."""
    for lr, peak in ((0.025, 0.6), (0.05, 0.7)):
        plant(root, f"gm_{lr}", method="gradientmix", batch=4096, lr=lr, curve=_curve(peak), test_acc=peak,
              workers=8)
    plant(root, "v4096_w8", method="vanilla", batch=4096, lr=0.05, curve=_curve(0.66), test_acc=0.66, workers=8)
    for lr, peak in ((0.05, 0.66), (0.1, 0.68)):
        plant(root, f"v4096_{lr}", method="vanilla", batch=4096, lr=lr, curve=_curve(peak), test_acc=peak)
    for seed in (1, 2):
        plant(root, f"v4096_s{seed}", method="vanilla", batch=4096, lr=0.1, seed=seed,
              curve=_curve(0.67 + 0.01 * seed), test_acc=0.67)
    plant(root, "v8192", method="vanilla", batch=8192, lr=0.1, curve=_curve(0.55), test_acc=0.55)
    variants = [([f"dreg.layer={layer}"], lam) for lam in (0.001, 0.01, 0.1, 1.0) for layer in ("R1", "R2", "R3")]
    variants += [(["dreg.layer=R1", "dreg.ce_reduction=per_path"], 0.1), (["dreg.layer=R1", "dreg.form=literal"], 0.1)]
    for i, (extra, lam) in enumerate(variants):
        swept = i in (6, 12, 13)
        for lr in (0.025, 0.05, 0.1) if swept else (0.05,):
            peak = 0.60 + 0.005 * i - (0.04 if lr != 0.05 else 0.0)
            plant(root, f"d{i}_{lr}", method="dreg", batch=4096, lr=lr, lam=lam, extra=extra, curve=_curve(peak),
                  test_acc=peak - 0.01, wall=150.0)
        for seed in (1, 2) if swept else ():
            plant(root, f"d{i}_s{seed}", method="dreg", batch=4096, lr=0.05, lam=lam, extra=extra, seed=seed,
                  curve=_curve(0.6 + 0.005 * i), test_acc=0.6, wall=150.0)
    for lr, peak in ((0.0005, 0.5), (0.00625, 0.6), (0.008, 0.62), (0.032, 0.66), (0.125, 0.65), (2.0, 0.3)):
        plant(root, f"sam_{lr}", method="sam", batch=4096, lr=lr, curve=_curve(peak), test_acc=peak, wall=200.0)
    lost = root / "sam_4.0"
    plant(root, lost.name, method="sam", batch=4096, lr=4.0, curve=[0.2, 0.25], test_acc=0.1, finished=False,
          extra=["train.epochs=6"])  # stopped at epoch 2 of 6
    with (lost / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "diverged", "step": 25, "epoch": 2, "reason": "loss is not finite"}\n')


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, Any]]]:
    """(figure file, figure) of every figure the reports draw, as they were saved."""
    tmp = tmp_path_factory.mktemp("figures")
    _plant_sweep(tmp / "runs" / "sweep")
    for batch in (256, 512, 1024, 2048):
        plant_noise_run(tmp / "runs" / "noise", batch, 0.1, round(100 + 80_000 / batch), noise=700)
        plant_noise_run(tmp / "runs" / "noise", batch, 0.2, round(2 * (100 + 80_000 / batch)), noise=100)
    saved: list[tuple[str, Any]] = []
    real_savefig, real_close = plt.Figure.savefig, plt.close
    patch = pytest.MonkeyPatch()
    patch.setattr(plt.Figure, "savefig", lambda fig, path, **kw: (saved.append((Path(path).name, fig)),
                                                                   real_savefig(fig, path, **kw))[1])
    patch.setattr(plt, "close", lambda fig=None: None)  # kept open to be measured below
    try:
        write_report(tmp / "runs" / "sweep", tmp / "report", say=lambda _: None)
        # All four batch sizes in one figure of curves: the panels of a batch-size group.
        write_report(tmp / "runs" / "noise", tmp / "noise", say=lambda _: None, targets=parse_targets("val=0.6"),
                     bs_spec="256,512,1024,2048")
    finally:
        patch.undo()
    yield saved
    for _, fig in saved:
        real_close(fig)


def _overlap(a: Bbox, b: Bbox) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > SLACK and min(a.y1, b.y1) - max(a.y0, b.y0) > SLACK


def _shown(text: Any) -> bool:
    return text is not None and text.get_visible() and bool(text.get_text().strip())


def _tick_labels(axis: Any) -> list[Any]:
    """The tick labels drawn: inside the view interval, visible, not empty."""
    scale = axis.get_transform()  # log axes: compare in log space
    lo, hi = sorted(scale.transform(list(axis.get_view_interval())))
    span = (hi - lo) * 1e-9
    out = []
    for tick in axis.get_major_ticks():
        if lo - span <= scale.transform([tick.get_loc()])[0] <= hi + span:
            out += [t for t in (tick.label1, tick.label2) if _shown(t)]
    return out


def _axes_texts(ax: Any) -> Iterator[tuple[str, Any]]:
    for t in (ax.title, ax._left_title, ax._right_title):
        yield "title", t
    yield "x label", ax.xaxis.label
    yield "y label", ax.yaxis.label
    for which, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        for t in _tick_labels(axis):
            yield f"{which} tick label", t
    for t in ax.texts:
        yield "annotation", t


def _problems(name: str, fig: Any) -> list[str]:
    renderer = fig.canvas.get_renderer()  # laid out and drawn by savefig
    canvas = fig.bbox
    axes = [ax for ax in fig.axes if ax.get_visible()]
    areas = [ax.get_window_extent(renderer) for ax in axes]
    legends = [(i, ax.get_legend()) for i, ax in enumerate(axes) if ax.get_legend() is not None]
    legends += [(None, leg) for leg in fig.legends]
    texts: list[tuple[Any, str, Any]] = [(i, what, t) for i, ax in enumerate(axes) for what, t in _axes_texts(ax)
                                         if _shown(t)]
    if _shown(getattr(fig, "_suptitle", None)):
        texts.append((None, "suptitle", fig._suptitle))
    for owner, leg in legends:
        texts += [(owner, "legend", t) for t in (*leg.get_texts(), leg.get_title()) if _shown(t)]
    boxes = [(owner, what, t.get_text(), t.get_window_extent(renderer)) for owner, what, t in texts]
    out = []
    for owner, what, text, box in boxes:
        if not (box.x0 >= canvas.x0 - SLACK and box.y0 >= canvas.y0 - SLACK and box.x1 <= canvas.x1 + SLACK
                and box.y1 <= canvas.y1 + SLACK):
            out.append(f"{name}: {what} {text!r} leaves the saved canvas ({box.bounds} vs {canvas.bounds})")
    for owner, leg in legends:
        box = leg.get_window_extent(renderer)
        out += [f"{name}: a legend lies over panel {j}'s plotting area" for j, area in enumerate(areas)
                if _overlap(box, area)]
        out += [f"{name}: a legend covers panel {o}'s {what} {text!r}" for o, what, text, tbox in boxes
                if (o != owner or owner is None) and what != "legend" and _overlap(box, tbox)]
        if len(leg.get_texts()) > MAX_ENTRIES:
            out.append(f"{name}: a legend of {len(leg.get_texts())} entries")
    labels = [b for b in boxes if b[1] != "legend"]
    for n, (o1, w1, t1, b1) in enumerate(labels):
        for o2, w2, t2, b2 in labels[n + 1:]:
            same_axis = o1 == o2 and w1 == w2 and w1.endswith("tick label")
            if (o1 != o2 or same_axis) and _overlap(b1, b2):
                out.append(f"{name}: {w1} {t1!r} (panel {o1}) prints over {w2} {t2!r} (panel {o2})")
    return out


def test_every_figure_kind_is_drawn(drawn: list[tuple[str, Any]]) -> None:
    names = [name for name, _ in drawn]
    missing = [kind for kind in KINDS if not any(name.startswith(kind) for name in names)]
    assert not missing, f"no figure of kind(s) {missing} among {names}: the layout test would not see them"


def test_no_text_overlaps_and_nothing_leaves_the_saved_figure(drawn: list[tuple[str, Any]]) -> None:
    problems = [p for name, fig in drawn for p in _problems(name, fig)]
    assert not problems, f"{len(problems)} layout problem(s):\n" + "\n".join(problems[:40])


def test_a_diverged_rate_is_marked_not_drawn_as_a_result(drawn: list[tuple[str, Any]]) -> None:
    ((fig, ax),) = [(fig, ax) for name, fig in drawn if name.endswith("lr_sensitivity.png")
                    for ax in fig.axes if ax.get_title().startswith("sam")]
    marks = [line for line in ax.get_lines() if line.get_marker() == "x" and len(line.get_xdata())]
    assert [list(m.get_xdata()) for m in marks] == [[4.0]] and list(marks[0].get_ydata()) == [25.0]
    assert "diverged (best before)" in [t.get_text() for t in ax.get_legend().get_texts()]
    others = [a for a in fig.axes if a is not ax and a.get_legend() is not None]
    assert not any("diverged" in t.get_text() for a in others for t in a.get_legend().get_texts())


def test_a_line_whose_seeds_end_at_different_epochs_says_so_in_its_label() -> None:
    from types import SimpleNamespace

    from dreg_dist.report.plots import _seeds_note

    def run(epochs: int) -> SimpleNamespace:
        return SimpleNamespace(curve=[(e, 0.5) for e in range(1, epochs + 1)],
                               train=[{"epoch": e - 0.5, "loss": 1.0} for e in range(1, epochs + 1)])

    same = SimpleNamespace(runs=[run(20), run(20), run(20)])
    diverged = SimpleNamespace(runs=[run(20), run(7), run(20)])
    assert _seeds_note(same, "val") == " (3 seeds)" and _seeds_note(SimpleNamespace(runs=[run(5)]), "val") == ""
    assert _seeds_note(diverged, "val") == " (3 seeds; fewer after epoch 7)"
    assert _seeds_note(diverged, "loss") == " (3 seeds; fewer after epoch 6.5)"
    # a seed with no curve at all is not behind any point of the line
    blind = SimpleNamespace(runs=[run(20), SimpleNamespace(curve=[], train=[]), run(20)])
    assert _seeds_note(blind, "val") == " (2 seeds)"


def test_the_baselines_own_variants_get_a_panel_per_kind() -> None:
    # LARS (two warmups), LAMB and ghost BN (two groups) at one batch: four panels, not one of five lines
    from types import SimpleNamespace

    from dreg_dist.report.keys import LABELS
    from dreg_dist.report.panels import family_panels

    def group(method: str, *variant: tuple[str, object]) -> SimpleNamespace:
        return SimpleNamespace(method=method, variant=variant, batch_size=4096, layout=(),
                               pairs_label=lambda pairs: ", ".join(f"{LABELS.get(k, k)}={v}" for k, v in pairs),
                               key_label=lambda k: LABELS.get(k, k))

    groups = [group("vanilla"), group("vanilla", ("optim.name", "lars"), ("optim.warmup_epochs", 2)),
              group("vanilla", ("optim.name", "lars"), ("optim.warmup_epochs", 5)),
              group("vanilla", ("optim.name", "lamb"), ("optim.warmup_epochs", 2)),
              group("vanilla", ("train.bn_group_size", 32)), group("vanilla", ("train.bn_group_size", 128)),
              group("sam")]
    panels = {name: len(members) for name, _, _, members in family_panels(groups)}
    assert panels == {"vanilla, BN group": 2, "lamb": 1, "lars": 2, "sam": 1}


def test_a_legend_names_a_variant_by_the_key_that_decides_it_not_by_every_key_that_changes_with_it() -> None:
    import yaml

    from dreg_dist.records import Catalog, Description
    from dreg_dist.report.panels import distinct

    # DReg's own description: `form` decides whether `radius` applies, so it names the variant.
    text = yaml.safe_load((REPO / "dreg_dist/methods/dreg/description.yaml").read_text())
    catalog = Catalog([Description.from_dict({**text, "section": "dreg"}, name="dreg")])
    default = (("dreg.ce_reduction", "per_path"), ("dreg.form", "projected"), ("dreg.norm", "per_path"))
    paper = (("dreg.ce_reduction", "sum"), ("dreg.form", "literal"), ("dreg.norm", "shared"))
    lines = [(*default, ("dreg.lam", 0.1), ("dreg.radius", 0.25)), (*default, ("dreg.lam", 0.1), ("dreg.radius", 0.5)),
             (*paper, ("dreg.lam", 0.01)), (*paper, ("dreg.lam", 0.1))]
    assert distinct(lines, catalog) == [
        (("dreg.form", "projected"), ("dreg.lam", 0.1), ("dreg.radius", 0.25)),
        (("dreg.form", "projected"), ("dreg.lam", 0.1), ("dreg.radius", 0.5)),
        (("dreg.form", "literal"), ("dreg.lam", 0.01)), (("dreg.form", "literal"), ("dreg.lam", 0.1))]
    # Without a description the first varying key names it; a key that varies on its own stays.
    assert distinct([default, paper]) == [(("dreg.ce_reduction", "per_path"),), (("dreg.ce_reduction", "sum"),)]
    two = [(("a", 1), ("b", 1)), (("a", 1), ("b", 2)), (("a", 2), ("b", 1))]
    assert distinct(two) == two
