"""Follow-up grids that move each tuned selection to another batch size or budget.

* :func:`transfer_grid`: each selection at another global batch (micro-batch kept, accumulation
  scaled), under one rule:

  - ``linear`` (the default): ``optim.lr`` as selected, which the config's rule scales;
  - ``sqrt``: ``optim.lr_scaling=sqrt`` from the tuned batch (``optim.base_batch_size`` = the
    tuned batch, ``optim.lr`` = the peak rate the tuned run trained at);
  - ``none``: ``optim.lr_scaling=none`` and ``optim.lr`` = the tuned peak rate times each of
    ``factors``: the larger batch's rate re-tuned around it;

  with ``match_steps``, at the epochs and warmup epochs that give the tuned run's optimizer steps
  and warmup steps at the new batch (the budget the linear rule at equal epochs halves).
* :func:`knob_grid`: each selection at its selected rate with one of its method's keys set to
  another value (a second knob value where the rate was chosen);
* :func:`steps_grid`: each selection at its own batch for the reference's optimizer steps (the
  baseline at the smallest batch size), its warmup the same share of them as in its own schedule:
  the matched-steps regime of :mod:`.step_gap`; ``best`` keeps only the ``best`` variants on
  validation at each batch and the baseline beside them.

Each writes the selections with runs in the folders ``own`` (the sweep's own stages), so that
others may be read for the reference, the baseline and the ranking. Steps per epoch come from the runs' start records
(``train_size``, or bounds from ``steps_per_epoch`` for older records).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from dreg_dist.records import BASELINE
from dreg_dist.report.aggregate import Group
from dreg_dist.report.analysis import Analysis
from dreg_dist.report.followup_grid import Grid, base_setup, check, chosen_group, compared, followup, under
from dreg_dist.report.keys import BATCH_KEY, EPOCHS_KEY, LR_KEY, RULE_KEYS, WARMUP_KEY
from dreg_dist.report.panels import panel_name
from dreg_dist.report.errors import NothingToRun, ReportError
from dreg_dist.report.runs import Run
from dreg_dist.report.stats import freeze
from dreg_dist.sweep.grid import TUNABLE_RUN_KEYS, name_value

RULES = ("linear", "sqrt", "none")


def steps_per_epoch(run: Run, batch: int) -> int:
    """Full batches of ``batch`` per epoch on ``run``'s training set."""
    size = run.start.get("train_size")
    if isinstance(size, int) and size > 0:
        return size // batch
    spe = run.steps_per_epoch
    if spe is None or not run.batch_size:
        raise ReportError(f"run '{run.name}' has no start record with its steps per epoch: rerun it")
    low, high = spe * run.batch_size, (spe + 1) * run.batch_size - 1  # what its train size may be
    if low // batch != high // batch:
        raise ReportError(f"run '{run.name}' ({spe} steps per epoch at {run.batch_size}) does not tell the steps per "
                          f"epoch at batch {batch}: its record predates train_size; rerun it with this release")
    return low // batch


def _budget(source: Run, steps: int, warmup_steps: float, target: int) -> tuple[dict[str, Any], str]:
    """The epochs and warmup epochs at batch ``target`` for ``steps`` and ``warmup_steps``; the
    epochs round to whole ones, so the steps land within an epoch's."""
    spe = steps_per_epoch(source, target)
    if spe < 1:
        raise ReportError(f"batch {target} is larger than the training set of run '{source.name}'")
    epochs = max(1, round(steps / spe))
    warmup = float(f"{warmup_steps / spe:.6g}")
    return ({EPOCHS_KEY: epochs, WARMUP_KEY: warmup},
            f"{epochs} epochs x {spe} steps = {epochs * spe:,} steps (for {steps:,}), warmup {name_value(warmup)} "
            f"epochs = {warmup * spe:g} steps")


def _run_budget(run: Run) -> tuple[int, float]:
    """(optimizer steps, warmup steps) of ``run``'s configured schedule."""
    spe = run.steps_per_epoch
    if spe is None:
        raise ReportError(f"run '{run.name}' has no start record with its steps per epoch: rerun it")
    return spe * int(run.flat.get(EPOCHS_KEY, 0)), float(run.flat.get(WARMUP_KEY, 0.0)) * spe


def _peak(group: Group) -> float:
    peaks = [p for p in (r.peak_lr for r in group.runs) if p is not None]
    if not peaks:
        raise ReportError(f"{group.label} at {group.batch_size}: no start record names its peak rate: rerun it")
    return float(f"{statistics.fmean(peaks):.6g}")


def _picked(analysis: Analysis, own: Optional[Sequence[Path]],
            methods: Optional[Sequence[str]]) -> list[tuple[tuple, Group]]:
    out = []
    for key, groups in compared(analysis):
        chosen = analysis.selected_lr.get(freeze(key))
        group = chosen_group(groups, chosen)
        if chosen is None or not under(group, own):
            continue
        if methods and group.method not in methods:
            continue
        out.append((key, group))
    return out


def transfer_grid(analysis: Analysis, grid: Mapping[str, Any], seeds: Sequence[int], batch: int, name: str, *,
                  rule: str = "linear", factors: Sequence[float] = (1.0,), match_steps: bool = False,
                  own: Optional[Sequence[Path]] = None, methods: Optional[Sequence[str]] = None,
                  best: Optional[int] = None) -> tuple[Grid, list[str]]:
    """Each selection (with runs in ``own``, of ``methods`` when given, of the ``best`` methods
    and the baseline beside them when given: see :func:`steps_grid`) at global batch ``batch``
    for ``seeds``, under ``rule`` (see the module doc)."""
    check(grid, analysis)
    if BATCH_KEY in (grid.get("axes") or {}):
        raise ReportError(f"'{BATCH_KEY}' is an axis of '{grid.get('name')}': transfer from a grid of one batch size")
    if not seeds:
        raise ReportError("--seeds needs at least one seed")
    if rule not in RULES:
        raise ReportError(f"--rule must be one of {', '.join(RULES)}, got '{rule}'")
    if rule != "none" and tuple(factors) != (1.0,):
        raise ReportError("--rate-factors goes with --rule none (rates set directly around the tuned peak)")
    missing = sorted(set(methods or ()) - {r.method for r in analysis.runs})
    if missing:
        raise ReportError(f"--methods {', '.join(missing)}: no run of it in these folders: check its spelling")
    picked = _picked(analysis, own, methods)
    if best is not None:
        keep = _among_best(analysis, best)
        picked = [(key, g) for key, g in picked if keep(g)]
    if not picked:
        raise NothingToRun("nothing to transfer: no selection" + (f" of {', '.join(methods)}" if methods else "")
                           + (f" among the {best} best methods" if best is not None else ""))
    tuned = {g.batch_size for _, g in picked}
    if len(tuned) > 1:
        raise ReportError(f"the selections are at batch sizes {sorted(tuned)}: transfer from one (name its folder first)")
    (old,) = tuned
    if batch % old and old % batch:
        raise ReportError(f"--batch {batch} must be a multiple or a divisor of the tuned batch {old}")
    accumulation = int(picked[0][1].runs[0].flat.get("train.accumulation_steps", 1)) * batch // old
    if accumulation < 1:
        raise ReportError(f"--batch {batch}: fewer than one micro-batch of the tuned size per step")
    picks: dict[tuple, tuple[Group, Optional[float]]] = {}
    cells: dict[tuple, list[dict[str, Any]]] = {}
    lines = []
    for key, group in picked:
        budget, told = {}, ""
        if match_steps:
            budget, told = _budget(group.runs[0], *_run_budget(group.runs[0]), batch)
        if rule == "linear":
            rates = [group.lr]
        else:
            rates = [float(f"{_peak(group) * f:.6g}") for f in factors]
        picks[key] = (group, rates[0])
        cells[key] = [{**budget, **({"optim.lr": r} if len(rates) > 1 else {})} for r in rates]
        lines.append(f"{group.label}: lr {name_value(group.lr)} selected at batch {old}, run at {batch} with "
                     + (f"optim.lr {', '.join(map(name_value, rates))}" if rule != "linear" else "the same optim.lr")
                     + (f"; {told}" if told else ""))
    out = followup(grid, name, "", seeds, picks, cells)
    rule_overrides = {"linear": [], "sqrt": ["optim.lr_scaling=sqrt", f"optim.base_batch_size={old}"],
                      "none": ["optim.lr_scaling=none"]}[rule]
    moved = (f"{BATCH_KEY}=", "train.accumulation_steps=") + tuple(f"{k}=" for k in RULE_KEYS if rule != "linear")
    out["overrides"] = [o for o in out["overrides"] if not o.startswith(moved)] + [
        f"{BATCH_KEY}={batch}", f"train.accumulation_steps={accumulation}", *rule_overrides]
    how = {"linear": "scaled by optim.lr_scaling",
           "sqrt": f"scaled by the square root of the batch from {old} (the tuned run's peak rate there)",
           "none": "set directly to the tuned run's peak rate times " + ", ".join(f"{f:g}" for f in factors)}[rule]
    out["description"] = (f"Learning-rate transfer: each method variant at global batch {batch} (micro-batch as "
                          f"tuned, {accumulation} accumulation steps) with the learning rate selected on validation "
                          f"at {old} in '{grid.get('name')}', {how}"
                          + ("; for the tuned run's optimizer steps and warmup steps" if match_steps else "")
                          + ". " + base_setup(grid))
    return out, lines


def knob_grid(analysis: Analysis, grid: Mapping[str, Any], seeds: Sequence[int], name: str,
              values: Mapping[str, Any], own: Optional[Sequence[Path]] = None,
              factors: Sequence[float] = (1.0,), best: Optional[int] = None) -> tuple[Grid, list[str]]:
    """Each selection whose method owns one of ``values``' keys at its selected rate (times each of
    ``factors``) with that key set: a method's second knob value tried where its rate was chosen,
    not over the whole grid. A key of the run that no method owns (``optim.warmup_epochs``) applies
    to every selection that ran another value of it: a control, such as a longer warmup at twice
    the rate, for the methods of a folder tuned without it. With ``best``, only the selections of
    the ``best`` methods (see :func:`steps_grid`), without the baseline beside them: moving the best
    method to another network (``--set model.arch=...``), whose baseline has its own grid."""
    check(grid, analysis)
    if not seeds:
        raise ReportError("--seeds needs at least one seed")
    picks: dict[tuple, tuple[Group, Optional[float]]] = {}
    cells: dict[tuple, list[dict[str, Any]]] = {}
    lines = []

    def applies(key: str, group: Group) -> bool:
        owner = analysis.catalog.owner_of(key)
        return owner.name == group.method if owner is not None else key in group.runs[0].flat

    picked = _picked(analysis, own, None)
    unknown = [k for k in values if analysis.catalog.owner_of(k) is None
               and not any(k in g.runs[0].flat for _, g in picked)]
    if unknown:
        raise ReportError(f"--set {', '.join(unknown)}: no method of these records owns it and no run has it: check its spelling")
    if best is not None:
        keep = _among_best(analysis, best)
        picked = [(key, g) for key, g in picked if keep(g) and not (g.method == BASELINE and not g.variant)]
    for key, group in picked:
        # A value the selection already has would rerun its own cell: a second seed 0 in the report.
        mine = {k: v for k, v in values.items() if applies(k, group) and group.runs[0].flat.get(k) != v}
        if not mine:
            continue
        rates = [float(f"{group.lr * f:.6g}") for f in factors]
        picks[key], cells[key] = (group, group.lr), [{**mine, LR_KEY: lr} for lr in rates]
        lines.append(f"{group.label} batch {group.batch_size}: lr {', '.join(name_value(x) for x in rates)} with "
                     + ", ".join(f"{k}={name_value(v)}" for k, v in mine.items()))
    if not picks:
        among = f" among the {best} best methods" if best is not None else ""
        raise NothingToRun(f"no selection{among} to run with another value of {', '.join(values)} (a method's key "
                           "applies to its own selections, a key of the run to every one)")
    at = "its selected learning rate" if list(factors) == [1.0] else (
        "its selected learning rate times " + ", ".join(name_value(f) for f in factors))
    description = (f"Each selected method variant of '{grid.get('name')}' at {at} with "
                   + ", ".join(f"{k}={name_value(v)}" for k, v in values.items())
                   + " (a method's key for its own selections only). " + base_setup(grid))
    out = followup(grid, name, description, seeds, picks, cells)
    # An optimizer knob of the run set here (a warmup) is chosen with the rate, as the method's own
    # knobs are: the report then selects across its values instead of reading each as a variant.
    # Other keys of the run (the network) are what the cells compare across, never tuned.
    run_keys = [k for k in values if k in TUNABLE_RUN_KEYS and k not in (out.get("tune") or [])]
    if run_keys:
        out["tune"] = [*(out.get("tune") or []), *run_keys]
    return out, lines


def _best_methods(groups: Sequence[Group]) -> list[Group]:
    """Each method's best variant, best first: "the two best methods" are two methods, not two
    forms of one (DReg's two forms, ghost BN's two groups; LARS, LAMB and ghost BN count as
    methods of their own, as in the figures' panels)."""
    top: dict[str, Group] = {}
    for g in sorted(groups, key=lambda g: -statistics.fmean(g.best_vals)):
        top.setdefault(panel_name(g), g)
    return list(top.values())


def _among_best(analysis: Analysis, best: Optional[int]) -> Callable[[Group], bool]:
    """Whether a selection above the smallest batch is one of the ``best`` methods at its batch,
    each at its best variant (None: every one), or the baseline beside them. Ranked per batch over
    its batch setups (workers, accumulation), so that a method on 8 worker processes competes with
    the one-process ones; a baseline runs where a kept variant does, and in the batch setup with the
    most selections (the study's main one)."""
    ranked: dict[tuple, list[Group]] = {}
    for setup in analysis.setups:
        for g in setup.selected:
            if g.batch_size != min(setup.batch_sizes) and g.best_vals and not (g.method == BASELINE and not g.variant):
                ranked.setdefault((setup.key, g.batch_size), []).append(g)
    kept = [g for gs in ranked.values() for g in (gs if best is None else _best_methods(gs)[:best])]
    kept_layouts = {(s.key, g.batch_size, g.layout) for s in analysis.setups for g in kept if g in s.groups}

    def keep(group: Group) -> bool:
        if not (group.method == BASELINE and not group.variant):
            return any(g is group for g in kept)
        setup = next(s for s in analysis.setups if group in s.groups)
        main = max(setup.layouts(group.batch_size),
                   key=lambda lay: sum(g.batch_size == group.batch_size and g.layout == lay for g in setup.selected))
        return (setup.key, group.batch_size, group.layout) in kept_layouts or group.layout == main
    return keep


def steps_grid(analysis: Analysis, grid: Mapping[str, Any], seeds: Sequence[int], name: str, *,
               best: Optional[int] = None, own: Optional[Sequence[Path]] = None) -> tuple[Grid, list[str]]:
    """Each selection above the smallest batch (with runs in ``own``) at its own batch, for the
    optimizer steps of the baseline at the smallest batch size (see the module doc); ``best``: only
    the ``best`` methods with the highest mean best validation accuracy at each batch (each at its
    best variant)."""
    check(grid, analysis)
    if not seeds:
        raise ReportError("--seeds needs at least one seed")
    keep = _among_best(analysis, best)
    picks: dict[tuple, tuple[Group, Optional[float]]] = {}
    cells: dict[tuple, list[dict[str, Any]]] = {}
    lines = []
    for key, group in _picked(analysis, own, None):
        setup = next(s for s in analysis.setups if group in s.groups)
        ref = setup.reference(group)
        if ref is None or group.batch_size == ref.batch_size or not keep(group):
            continue
        is_base = group.method == BASELINE and not group.variant
        ref_steps, _ = _run_budget(ref.runs[0])
        steps, warmup_steps = _run_budget(group.runs[0])
        # The selection's own warmup, as the same share of its schedule (the reference's own where
        # it warms up as the reference does: 2 of 40 epochs at both batches).
        budget, told = _budget(group.runs[0], ref_steps, warmup_steps * ref_steps / steps, group.batch_size)
        picks[key], cells[key] = (group, group.lr), [budget]
        rank = "" if is_base else f", {statistics.fmean(group.best_vals):.2%} best validation"
        lines.append(f"{group.label} batch {group.batch_size}: lr {name_value(group.lr)}{rank}; {told}")
    if not picks:
        raise NothingToRun("nothing to run at matched steps: no selection above the reference's batch in this folder")
    description = (f"Matched steps: each selected method variant of '{grid.get('name')}'"
                   + (f" among the {best} best methods on validation (and the baseline)" if best is not None else "")
                   + " at its batch and learning rate for the optimizer steps of the baseline at the smallest "
                     "batch, its warmup the same share of them. " + base_setup(grid))
    return followup(grid, name, description, seeds, picks, cells), lines


__all__ = ["RULES", "knob_grid", "steps_grid", "steps_per_epoch", "transfer_grid"]
