"""Each method's own signals (its description's ``report_signals``), per run, before any accuracy.

A method is shown doing what its source says it does by values it logs itself: DReg by how
far apart its branches are and how often its paths disagree, extragradient by the loss at w
against the loss at the extrapolated point, SAM by how much the perturbation raises the loss.
For every run of such a method this module reduces each signal to one number (the last, the
largest, or its rise after warmup) and applies the signal's flags ("branches not distinct",
"collapsed"), so the report can say plainly which runs did not do what the method claims.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from dreg_dist.records import Catalog, Signal
from dreg_dist.report.aggregate import Group, Setup
from dreg_dist.report.analysis import Analysis
from dreg_dist.report.mdtable import table
from dreg_dist.report.runs import Run
from dreg_dist.sweep.grid import name_value


def signal_id(signal: Signal) -> str:
    """A name for the signal's figure, unique among a method's signals."""
    return signal.tag + (f"_minus_{signal.minus}" if signal.minus else "") + (f"_over_{signal.over}" if signal.over else "")


def signals_of(catalog: Catalog, method: str) -> tuple[Signal, ...]:
    d = catalog.get(method)
    return d.report_signals if d is not None else ()


def series(run: Run, signal: Signal) -> list[tuple[float, float]]:
    """(epoch, value) of ``signal`` over the run, finite values only (train: by logged step)."""
    records = run.train if signal.source == "train" else run.val
    out = []
    for rec in records:
        value = _value(rec, signal.tag, signal.source)
        if signal.minus is not None:
            other = _value(rec, signal.minus, signal.source)
            value = value - other if value is not None and other is not None else None
        if signal.over is not None:
            other = _value(rec, signal.over, signal.source)
            value = value / other if value is not None and other else None
        if value is not None and math.isfinite(value):
            out.append((float(rec["epoch"]), value))
    return out


def _value(rec: dict[str, Any], tag: str, source: str) -> Optional[float]:
    value = rec.get("raw_loss" if source == "train" and tag == "loss" else tag)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _warmup_epochs(run: Run) -> float:
    value = run.flat.get("optim.warmup_epochs")
    return float(value) if isinstance(value, (int, float)) else 0.0


def reduce(run: Run, signal: Signal) -> Optional[float]:
    """The signal's one number for ``run`` (None when it never logged a finite value)."""
    points = series(run, signal)
    if not points:
        return None
    values = [v for _, v in points]
    if signal.reduce == "last":
        return values[-1]
    if signal.reduce == "max":
        return max(values)
    if signal.reduce == "min":
        return min(values)
    after = [v for e, v in points if e > _warmup_epochs(run)]
    return max(after) / values[0] if after and values[0] else None


def flags(signal: Signal, value: Optional[float]) -> list[str]:
    out = []
    if value is not None and signal.flag_below is not None and value < signal.flag_below[0]:
        out.append(signal.flag_below[1])
    if value is not None and signal.flag_above is not None and value > signal.flag_above[0]:
        out.append(signal.flag_above[1])
    return out


@dataclass
class SignalRow:
    run: Run
    group: Group
    values: list[Optional[float]]
    flags: list[str]


def signal_rows(setup: Setup, method: str, batch: int) -> list[SignalRow]:
    """One row per run of ``method`` at ``batch`` in ``setup``, in table order."""
    sigs = signals_of(setup.catalog, method)
    rows = []
    for g in sorted((g for g in setup.groups if g.method == method and g.batch_size == batch),
                    key=lambda g: (g.label, tuple(sorted(g.layout)), g.lr or 0.0)):
        for run in g.runs:
            values = [reduce(run, s) for s in sigs]
            rows.append(SignalRow(run, g, values, [f for s, v in zip(sigs, values) for f in flags(s, v)]))
    return rows


def reduce_text(signal: Signal) -> str:
    return {"last": "at the end", "max": "largest", "min": "smallest",
            "rise": "largest after warmup / first logged"}[signal.reduce]


def column_title(signal: Signal) -> str:
    short = {"last": "", "max": "largest", "min": "smallest", "rise": "rise after warmup"}[signal.reduce]
    return f"{signal.title} ({short})" if short else signal.title


def methods_with_signals(groups: Sequence[Group], catalog: Catalog) -> list[str]:
    return sorted({g.method for g in groups if signals_of(catalog, g.method)})


def fmt(value: Optional[float]) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


def flag_text(row: SignalRow) -> str:
    return "; ".join(dict.fromkeys(row.flags)) if row.flags else "—"


def describe(signal: Signal) -> Any:
    """A definition line for the report."""
    what = f"`{signal.source}/{signal.tag}`"
    if signal.minus:
        what += f" - `{signal.source}/{signal.minus}`"
    if signal.over:
        what += f" / `{signal.source}/{signal.over}`"
    parts = [f"**{signal.title}** ({what}, {reduce_text(signal)})"]
    if signal.flag_below:
        parts.append(f"'{signal.flag_below[1]}' when below {signal.flag_below[0]:g}")
    if signal.flag_above:
        parts.append(f"'{signal.flag_above[1]}' when above {signal.flag_above[0]:g}")
    return ": ".join(parts[:1]) + ("; " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def signals_section(analysis: Analysis, figures: dict[tuple, str]) -> list[str]:
    """The report's "signals" section: per method with signals, a table of every run and the
    curves (``figures`` keys ``("signal", setup key, (method, tag), batch)``)."""
    out: list[str] = []
    for setup in analysis.setups:
        for method in methods_with_signals(setup.groups, setup.catalog):
            sigs = signals_of(setup.catalog, method)
            for batch in setup.batch_sizes:
                rows = signal_rows(setup, method, batch)
                if not rows:
                    continue
                if not out:
                    out += ["## Does each method do what it claims?", "",
                            "Before any accuracy: each method's own signals, for every run of it. A flag says the "
                            "run did not do what the method's source describes, whatever its accuracy.", ""]
                where = f", {setup.label}" if setup.label else ""
                out += [f"### {method}, batch {batch}{where}", ""]
                out += [f"- {describe(s)}" for s in sigs] + [""]
                layouts = len({r.group.layout for r in rows}) > 1
                header = ["run", "variant", "lr", "seed"] + (["batch setup"] if layouts else []) + \
                         [column_title(s) for s in sigs] + ["flags"]
                body = [[f"`{r.run.name}`", r.group.pairs_label((*r.group.variant, *r.group.tuned)) or "—", name_value(r.group.lr), r.run.seed]
                        + ([r.group.pairs_label(r.group.layout)] if layouts else [])
                        + [fmt(v) for v in r.values] + [flag_text(r)] for r in rows]
                out += [table(header, body), ""]
                for s in sigs:
                    f = figures.get(("signal", setup.key, (method, signal_id(s)), batch))
                    if f:
                        out += [f"![{method}: {s.title}, batch {batch}]({f})", ""]
    return out


__all__ = ["SignalRow", "describe", "flag_text", "flags", "fmt", "methods_with_signals", "reduce", "series",
           "signal_id", "signal_rows", "signals_of", "signals_section"]
