"""report.md: GitHub-readable Markdown (tables, relative image links) for an analysed sweep."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from dreg_dist.records import BASELINE
from dreg_dist.report.analysis import Analysis
from dreg_dist.report.aggregate import Setup, batch_groups
from dreg_dist.report.cells import definitions, fmt_ci, fmt_lr, fmt_points, pct, row_cells, row_header
from dreg_dist.report.compare import Transfer, gap_closed, report_columns, transfers
from dreg_dist.report.compare import rows as rows_of
from dreg_dist.report.critical import Target, noise_section, trade_off_section
from dreg_dist.report.mdtable import table
from dreg_dist.report.panels import MAX_SHOWN
from dreg_dist.report.step_costs import StepCosts
from dreg_dist.report.select import common_seeds, edge_of
from dreg_dist.report.signals import methods_with_signals, signal_id, signals_of, signals_section
from dreg_dist.report.step_gap import step_gap_section
from dreg_dist.report.time_spent import time_spent_section
from dreg_dist.report.transfer_budget import transfer_budget_section
from dreg_dist.report.stats import freeze
from dreg_dist.sweep.grid import name_value, safe_name


def _runs_table(analysis: Analysis) -> str:
    rows = []
    # Sweeps name cells by their varied keys only, so two sweeps (LARS's and LAMB's warmup grids)
    # can hold the same run name: across several sweeps the folder says which run it is.
    several = len({run.path.parent for run in analysis.runs}) > 1
    for run in sorted(analysis.runs, key=lambda r: (r.path.parent.name if several else "", r.name)):
        best = (run.summary or {}).get("best") or {}
        rows.append([
            f"`{run.path.parent.name}/{run.name}`" if several else f"`{run.name}`", run.method, run.batch_size, run.seed, fmt_lr(run.lr),
            run.status,
            pct(run.best_val_acc), best.get("epoch", "—") if run.finished else "—",
            (best.get("path") or "—") if run.finished else "—", pct(run.test_acc),
        ])
    return table(["run", "method", "batch", "seed", "lr", "status", "best val acc (%)", "best epoch", "path",
                  "test acc (%)"], rows)


def _lr_section(analysis: Analysis, figures: dict[tuple, str]) -> list[str]:
    out = ["## Learning-rate selection", "",
           "Each method (and batch size) is compared at its own best learning rate, chosen on the **mean best "
           "validation accuracy over the seeds that every learning rate was run with** (column 'chosen on "
           "seeds'); the test accuracy is never used for the choice. Seeds run later at the selected learning "
           "rate only sharpen its numbers. Best validation accuracy (%) per learning rate tried, mean over "
           "that learning rate's seeds (selected in bold):", ""]
    common = common_seeds(analysis.lr_results)
    rows = []
    for setup in analysis.setups:
        for key, gs in setup.compared().items():
            chosen = next((g for g in setup.selected if g.compare_key == key), None)
            tried = []
            for g in gs:
                mean = sum(g.best_vals) / len(g.best_vals) if g.best_vals else None
                shown = pct(mean) if mean is not None or not g.diverged else "diverged before validating"
                knobs = f" ({g.pairs_label(g.tuned)})" if g.tuned else ""
                text = f"{fmt_lr(g.lr)}{knobs}: {shown}" + (f" ({len(g.best_vals)} seeds)" if len(g.best_vals) > 1 else "")
                tried.append(f"**{text}**" if g is chosen else text)
            on = common.get(freeze(key))
            selected = fmt_lr(chosen.lr) + (f" ({chosen.pairs_label(chosen.tuned)})" if chosen and chosen.tuned else "") \
                if chosen else "—"
            lrs = [g.lr for g in gs if g.lr is not None]
            edge = edge_of(chosen.lr, lrs) if chosen and len(set(lrs)) > 2 else None
            if edge:  # the optimum may lie outside the grid: say so instead of implying it was bracketed
                selected += f" ({edge} tried)"
            row = ([setup.label] if len(analysis.setups) > 1 else []) + [
                gs[0].base_label, setup.batch_text(gs[0].batch_size, gs[0].layout), "; ".join(tried), selected,
                ", ".join(str(x) for x in sorted(on)) if on else "all"]
            rows.append(row)
    header = (["setup"] if len(analysis.setups) > 1 else []) + [
        "method", "batch", "lr: best val acc (%)", "selected lr", "chosen on seeds"]
    out += [table(header, rows), ""]
    for setup in analysis.setups:
        fig = figures.get(("lr", setup.key))
        if fig:
            out += [f"![Learning-rate sensitivity{' - ' + setup.label if setup.label else ''}]({fig})", "",
                    LR_CAPTION, ""]
    return out


LR_CAPTION = ("_One panel per method and batch size, one line per setting of its other knobs; every point of a "
              "line is the mean over the seeds the selection is made on (legend), the star the selected setting's "
              "mean over all its seeds with their 95% interval._")
CURVES_CAPTION = (f"_One panel per method (at most its best {MAX_SHOWN} variants by mean best validation accuracy; every "
                  f"variant is in the tables above), {BASELINE} at the same batch size dashed grey; shaded: min-max "
                  f"over seeds._")


def _newest_record(runs: Sequence[Any]) -> str:
    """When the newest of the runs' records was written (UTC): from the records, not the clock,
    so a report regenerated from committed records is byte-identical."""
    times = [rec["time"] for r in runs for rec in (*r.train, *r.val) if isinstance(rec.get("time"), (int, float))]
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(max(times))) if times else "unknown"


def render(analysis: Analysis, *, title: str, source: str, figures: dict[tuple, str],
           bs_spec: Optional[str] = None, sweep: Optional[dict[str, Any]] = None,
           commands: Sequence[str] = (), preface: Optional[str] = None,
           step_costs: Optional[StepCosts] = None, targets: Sequence[Target] = ()) -> str:
    """The whole report.md. ``figures`` maps (kind, setup key[, batch group / study key]) -> path;
    ``preface`` (Markdown) goes verbatim under the title; ``step_costs``: the benchmark's, when given;
    ``targets``: the steps-to-target trade-off section (:mod:`dreg_dist.report.critical`)."""
    runs = analysis.runs
    finished = sum(r.finished for r in runs)
    out = [f"# {title}", ""]
    if preface and preface.strip():
        out += [preface.strip("\n"), ""]
    if sweep and sweep.get("description"):
        out += [str(sweep["description"]), ""]
    diverged = sum(r.diverged_at is not None for r in runs)
    blind = sum(not r.val for r in runs)
    unfinished = len(runs) - finished - diverged
    out += [f"Runs: `{source}`: {len(runs) - blind} run(s) with validation results, {finished} finished"
            + (f", {diverged} diverged (stopped on a non-finite value; counted with what they reached"
               + (f"; {blind} before their first validation" if blind else "") + ")" if diverged else "")
            + (f", {unfinished} unfinished (numbers so far)" if unfinished else "")
            + f". Newest record: {_newest_record(runs)}.", ""]
    if commands:
        out += ["Reproduce:", "", "```bash", *commands, "```", ""]
    varying = {role: keys for role, keys in analysis.roles.items() if keys}
    if varying:
        out += ["Varied: " + "; ".join(f"{role}: " + ", ".join(f"`{k}`" for k in keys)
                                       for role, keys in varying.items()) + ".", ""]
    out += [definitions(step_costs)]
    notes = [note for name in sorted({r.method for r in analysis.runs})
             for note in getattr(analysis.catalog.get(name), "report_notes", ())]
    out += [f"- {note}" for note in notes] + ([""] if notes else [])
    out += signals_section(analysis, figures)
    # One row per method variant (its knobs are what its runs tried) in each setup (architecture, epochs)
    out += noise_section(analysis.runs, figures, {r.path: (f"{setup.label}: " if setup.label else "") + g.base_label
                                                  for setup in analysis.setups for g in setup.groups for r in g.runs})
    if targets:
        out += trade_off_section(analysis.runs, targets, figures)
    out += step_gap_section(analysis)
    out += transfer_budget_section(analysis)
    if analysis.lr_varies:
        out += _lr_section(analysis, figures)
    for setup in analysis.setups:
        out += _setup_section(analysis, setup, figures, bs_spec, heading="##" if len(analysis.setups) > 1 else "",
                              step_costs=step_costs is not None)
    out += time_spent_section(analysis.runs)
    out += ["## Runs", "", _runs_table(analysis), ""]
    return "\n".join(out).rstrip() + "\n"


def _setup_section(analysis: Analysis, setup: Setup, figures: dict[tuple, str], bs_spec: Optional[str],
                   heading: str, step_costs: bool = False) -> list[str]:
    h2 = heading or "##"
    h3 = "###" if heading else "##"
    out: list[str] = []
    if heading:
        out += [f"{h2} {setup.label or 'all runs'}", ""]
    for batch, layout in setup.batch_keys:
        rows = rows_of(setup, batch, layout)
        missing = setup.unvalidated(batch, layout)
        if not rows and not missing:
            continue
        out += [f"{h3} Batch size {setup.batch_text(batch, layout, always=True)}", ""]
        if rows:
            extras = report_columns(setup.catalog, (r.group.method for r in rows))
            gaps = {id(r): gap_closed(setup, r.group) for r in rows}
            gap = next((gap for gap in gaps.values() if gap is not None), None)
            gap_batch = setup.batch_text(gap.reference_batch, gap.reference_layout) if gap is not None else None
            with_base = setup.baseline(batch, layout) is not None
            out += [table(row_header(extras, gap_batch, step_cost=step_costs, vs_baseline=with_base),
                          [row_cells(r, extras, gaps[id(r)], gap_batch is not None, step_cost=step_costs,
                                     vs_baseline=with_base) for r in rows]), ""]
        if missing:  # no validation, so no row: say so rather than leave the variant out
            out += ["Diverged before their first validation (no row): " + "; ".join(
                f"{g.label} at lr {fmt_lr(g.lr)} (seeds {', '.join(map(str, g.seeds))})" for g in missing) + ".", ""]
    moves = transfers(setup)
    for batch, layout in dict.fromkeys((t.moved.batch_size, t.moved.layout) for t in moves):
        out += _transfer_section(setup, [t for t in moves if (t.moved.batch_size, t.moved.layout) == (batch, layout)],
                                 figures, h3)
    sub = h3
    where = f" - {setup.label}" if setup.label else ""  # the figures' titles leave it out: it is long
    val_figs = [(sizes, figures.get(("val", setup.key, tuple(sizes)))) for sizes in batch_groups(setup.batch_sizes, bs_spec)]
    if any(f for _, f in val_figs):
        out += [f"{sub} Validation accuracy vs epoch", ""]
        for sizes, f in val_figs:
            if f:
                out += [f"![Validation accuracy, batch size {', '.join(map(str, sizes))}{where}]({f})", ""]
        out += [CURVES_CAPTION, ""]
    compute_figs = [(sizes, figures.get(("compute", setup.key, tuple(sizes))))
                    for sizes in batch_groups(setup.batch_sizes, bs_spec)]
    if any(f for _, f in compute_figs):
        scale = (f"the benchmarked step cost over {BASELINE}'s where the method has one, else its time/epoch "
                 f"(x = {BASELINE}-epoch equivalents of compute)" if step_costs else
                 f"the method's time/epoch over {BASELINE}'s (x = {BASELINE}-epoch equivalents of wall-clock)")
        out += [f"{sub} Validation accuracy vs compute", "",
                f"The curves above with each epoch scaled by {scale}: a method that costs 2x per step must "
                "reach an accuracy in half the epochs to be as fast to it.", ""]
        for sizes, f in compute_figs:
            if f:
                out += [f"![Validation accuracy vs compute, batch size {', '.join(map(str, sizes))}{where}]({f})", ""]
    loss_figs = [(sizes, figures.get(("loss", setup.key, tuple(sizes)))) for sizes in batch_groups(setup.batch_sizes, bs_spec)]
    if any(f for _, f in loss_figs):
        out += [f"{sub} Training loss vs epoch", "",
                "Cross-entropy on the training batches (for a method whose loss holds more than a "
                "cross-entropy, the mean of its cross-entropy terms; see the notes above).", ""]
        for sizes, f in loss_figs:
            if f:
                out += [f"![Training loss, batch size {', '.join(map(str, sizes))}{where}]({f})", ""]
    for key in analysis.study_keys:
        fig = figures.get(("study", setup.key, key))
        if not fig:
            continue
        out += [f"{sub} {analysis.study_titles()[key]} study", ""]
        rows = []
        for (batch, rest), points in analysis.study(setup, key).items():
            for p in points:
                g = p.group
                mean = sum(g.best_vals) / len(g.best_vals) if g.best_vals else None
                rows.append([batch, analysis.pairs_label(rest) or "—", name_value(p.value), pct(mean), len(g.runs)])
            base = setup.baseline(batch, points[0].group.layout)
            if base is not None and base.best_vals:
                rows.append([batch, BASELINE, "—", pct(sum(base.best_vals) / len(base.best_vals)), len(base.runs)])
        out += [table(["batch", "other", analysis.label_of(key), "best val acc (%)", "seeds"], rows), "",
                f"![Best validation accuracy vs {analysis.label_of(key)}]({fig})", ""]
    return out


def _transfer_section(setup: Setup, moves: Sequence[Transfer], figures: dict[tuple, str], h: str) -> list[str]:
    """Learning-rate transfer to one larger batch setup: a row per method variant, and a figure."""
    moved = moves[0].moved
    to = setup.batch_text(moved.batch_size, moved.layout)
    tuned_at = list(dict.fromkeys(setup.batch_text(t.tuned.batch_size, t.tuned.layout) for t in moves))
    one = tuned_at[0] if len(tuned_at) == 1 else None
    at1 = f"at {one}" if one else "at the tuning batch"
    out = [f"{h} Learning-rate transfer to batch {to}", "",
           f"Each method variant at batch {to} with the learning rate selected on validation {at1}, not re-tuned "
           "(`optim.lr` is per `optim.base_batch_size` and scaled by the configured rule, so the configured value "
           "is the same at both). Test accuracy (%), mean ± 95% interval over seeds; **change** = test accuracy at "
           f"{to} - {at1}, in points; **loss against {BASELINE} under transfer** = mean over seeds "
           f"of (method - {BASELINE} at {to}) - (method - {BASELINE} {at1}), in points, paired by seed over the seeds "
           "all four runs have (negative: the method loses more than "
           f"{BASELINE} when the batch grows; inside seed noise when its interval includes 0). The selection stays on "
           f"validation: the best validation accuracy at {to} is shown alongside.", ""]
    header = (["method"] + ([] if one else ["tuned at"]) + [f"lr (selected {at1})", f"seeds {at1}", f"seeds at {to}",
              f"test acc {at1} (%)", f"test acc at {to} (%)", "change (points)",
              f"loss against {BASELINE} under transfer (points, 95% CI)", f"best val acc at {to} (%)"])
    rows = []
    for t in moves:
        change = t.change
        rows.append([t.tuned.label] + ([] if one else [setup.batch_text(t.tuned.batch_size, t.tuned.layout)]) + [
            fmt_lr(t.tuned.lr), ", ".join(map(str, t.tuned.seeds)), ", ".join(map(str, t.moved.seeds)),
            fmt_ci(t.tuned.test_accs, t.tuned), fmt_ci(t.moved.test_accs, t.moved),
            "—" if change is None else f"{100 * change:+.2f}",
            "— (the reference)" if t.is_baseline else fmt_points(t.loss_vs_baseline()),
            fmt_ci(t.moved.best_vals)])
    out += [table(header, rows), ""]
    fig = figures.get(("transfer", setup.key, (moved.batch_size, moved.layout)))
    if fig:
        out += [f"![Test accuracy before and after learning-rate transfer to batch {to}]({fig})", ""]
    return out


def _shown_path(root: Path) -> str:
    try:
        source = os.path.relpath(root)
    except ValueError:  # another drive (Windows)
        source = str(root)
    return str(root.resolve()) if source.startswith("..") else source


def setup_prefix(setup: Setup) -> str:
    return f"{safe_name(setup.label)}_" if setup.label else ""


def write_report(roots: Union[Path, Sequence[Path]], out_dir: Path, *, bs_spec: Optional[str] = None,
                 commands: Sequence[str] = (), say: Callable[[str], None] = print, title: Optional[str] = None,
                 preface: Optional[Path] = None, step_cost: Optional[Path] = None, figures: bool = True,
                 targets: Sequence[Target] = ()) -> Path:
    """Read the runs under ``roots`` (one sweep folder, or several reported as one: a
    learning-rate sweep and its seed rerun), draw the figures and write ``out_dir/report.md``.

    ``title`` replaces "Results: <sweeps>"; ``preface``: a Markdown file put verbatim under the
    title; ``step_cost``: a benchmark's step-cost file (:func:`dreg_dist.report.step_costs.read_step_costs`).
    ``figures=False`` writes the same report.md (same figure names) without drawing anything."""
    from dreg_dist.report.analysis import analyse
    from dreg_dist.report.critical_plots import batch_size_figures
    from dreg_dist.report.errors import ReportError
    from dreg_dist.report.plots import Plotter
    from dreg_dist.report.runs import drop_copies, load_runs, read_sweep, tuned_keys
    from dreg_dist.report.step_costs import read_step_costs

    roots = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    runs = []
    for root in roots:
        if not root.is_dir():
            raise ReportError(f"'{root}' is not a folder of runs")
        runs += load_runs(root)
    runs = drop_copies(runs, say)
    costs = None
    if step_cost is not None:
        try:
            costs = read_step_costs(step_cost)
        except ValueError as err:
            raise ReportError(str(err)) from None
        unmatched = costs.apply(runs)
        if unmatched:
            say(f"step cost: {unmatched} run id(s) of {step_cost} match no reported run (sweep folder/run folder)")
    preface_text = None
    if preface is not None:
        try:
            preface_text = Path(preface).read_text()
        except OSError as err:
            raise ReportError(f"--preface '{preface}' cannot be read: {err.strerror}") from None
    analysis = analyse(runs, tuned=tuned_keys(roots))
    if not analysis.runs:
        raise ReportError(f"no run under {', '.join(repr(str(r)) for r in roots)} has validation results yet "
                          "(config.yaml + metrics.jsonl)")
    plotter = Plotter(out_dir, draw=figures)
    figures_at: dict[tuple, str] = {}
    for setup in analysis.setups:
        prefix = setup_prefix(setup)
        for sizes in batch_groups(setup.batch_sizes, bs_spec):
            f = plotter.val_accuracy(setup, sizes, prefix)
            if f:
                figures_at[("val", setup.key, tuple(sizes))] = f
            f = plotter.train_loss(setup, sizes, prefix)
            if f:
                figures_at[("loss", setup.key, tuple(sizes))] = f
            f = plotter.val_vs_compute(setup, sizes, prefix)
            if f:
                figures_at[("compute", setup.key, tuple(sizes))] = f
        for key in analysis.study_keys:
            f = plotter.study(analysis, setup, key, prefix)
            if f:
                figures_at[("study", setup.key, key)] = f
        f = plotter.lr_sensitivity(analysis, setup, prefix)
        if f:
            figures_at[("lr", setup.key)] = f
        moves = transfers(setup)
        for batch, layout in dict.fromkeys((t.moved.batch_size, t.moved.layout) for t in moves):
            f = plotter.transfer(setup, [t for t in moves if (t.moved.batch_size, t.moved.layout) == (batch, layout)],
                                 prefix)
            if f:
                figures_at[("transfer", setup.key, (batch, layout))] = f
        for batch in setup.batch_sizes:
            for name in methods_with_signals(setup.groups, setup.catalog):
                for signal in signals_of(setup.catalog, name):
                    f = plotter.signal_curve(setup, batch, name, signal, prefix)
                    if f:
                        figures_at[("signal", setup.key, (name, signal_id(signal)), batch)] = f
    figures_at.update(batch_size_figures(plotter, analysis.runs, targets))
    sweeps = [read_sweep(root) for root in roots]
    sweep = sweeps[0]
    if title is None:
        title = "Results: " + " + ".join((sw or {}).get("name") or root.name for sw, root in zip(sweeps, roots))
    source = "`, `".join(_shown_path(root) for root in roots)
    text = render(analysis, title=title, source=source, figures=figures_at, bs_spec=bs_spec, sweep=sweep,
                  commands=commands, preface=preface_text, step_costs=costs, targets=targets)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.md"
    path.write_text(text)
    say(f"report: {len(analysis.runs)} runs, {len(figures_at)} figures -> {path}")
    return path
