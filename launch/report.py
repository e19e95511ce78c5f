#!/usr/bin/env python
"""Report a sweep: ``python launch/report.py RUNS_ROOT/NAME [MORE_SWEEPS...] [--out docs/results/NAME]``.

Reads every run folder under each given sweep folder (config.yaml, metrics.jsonl,
summary.json) and writes OUT/report.md with PNG figures under OUT/figures/ (matplotlib;
``pip install -e ".[report]"``). Unfinished runs are included with the numbers they have
so far. Several sweep folders are reported as one (a learning-rate sweep and the seeds run
at its selected values). ``--seed-grid FILE --seeds 1,2`` writes that second grid instead,
``--edge-grid FILE`` a grid that extends learning rates selected at the edge of the grid,
``--transfer-grid FILE --batch B`` and ``--steps-grid FILE`` grids that move each selection to
another batch (under a rule, for the same steps) or budget (the reference's steps).
``--title``, ``--preface FILE`` (the study's verdict, under the title) and ``--step-cost FILE``
(a benchmark's per-step cost ratios) shape the report; the report's "Reproduce" block repeats
every option given, paths relative to the repository root, so that line alone regenerates it.
A follow-up the records do not need (every selected rate bracketed, no interval too wide, no
selection to move) writes no grid and exits with 3, apart from errors (2), so that a study script
can keep that answer.
"""

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

REPO = Path(os.path.abspath(__file__)).parents[1]
NOTHING_TO_RUN = 3
sys.path.insert(0, str(REPO))

from dreg_dist.errors import ConfigError  # noqa: E402
from dreg_dist.report.critical import TargetError, parse_targets  # noqa: E402
from dreg_dist.report.followup_moves import RULES  # noqa: E402
from dreg_dist.report.markdown import write_report  # noqa: E402
from dreg_dist.report.errors import NothingToRun, ReportError  # noqa: E402
from dreg_dist.report.runs import read_sweep  # noqa: E402


def sweep_command(root: Path) -> list[str]:
    """The command that ran the sweep in ``root`` (from its sweep.json), as one shell line."""
    sweep = read_sweep(root)
    if not sweep or not sweep.get("command"):
        return []
    argv = [str(a) for a in sweep["command"]]
    for flag in ("--cell-index", "--shard"):  # one task of an array / one of N side-by-side sweeps
        if flag in argv:
            i = argv.index(flag)
            del argv[i:i + 2]
        argv = [a for a in argv if not a.startswith(flag + "=")]
    return ["python " + " ".join(shlex.quote(a) for a in argv)]


FOLLOWUPS = ("seed_grid", "edge_grid", "transfer_grid", "steps_grid", "knob_grid")


def _flags() -> str:
    return ", ".join("--" + k.replace("_", "-") for k in FOLLOWUPS)


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ReportError(f"--seeds must be a comma-separated list of integers, got '{text}'") from None


def _settings(pairs: list[str]) -> dict[str, object]:
    import yaml

    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ReportError(f"--set takes KEY=VALUE, got '{pair}'")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ReportError(f"--set {pair}: the value is not valid YAML (quote a string, e.g. key='a b')") from None
    if not out:
        raise ReportError("--knob-grid needs --set KEY=VALUE (a method's key and its other value)")
    return out


def _factors(text: Optional[str]) -> list[float]:
    try:
        factors = [float(f) for f in (text or "1").split(",") if f.strip()]
    except ValueError:
        factors = []
    if not factors or not all(f > 0 for f in factors):
        raise ReportError(f"--rate-factors must be comma-separated positive numbers, got '{text}'")
    return factors


def write_followup(args: argparse.Namespace, argv: list[str]) -> None:
    """The follow-up grid ``args`` ask for (one of :data:`FOLLOWUPS`) of the sweeps named
    positionally (the first one's grid), read with those of ``--against`` for the reference,
    the baseline and the ranking."""
    import yaml

    from dreg_dist.report.analysis import analyse
    from dreg_dist.report.followup import edge_grid, seed_grid
    from dreg_dist.report.followup_moves import knob_grid, steps_grid, transfer_grid
    from dreg_dist.report.runs import drop_copies, load_runs, tuned_keys

    own = [Path(r) for r in args.runs]
    roots = own + [Path(r) for r in args.against or []]
    runs = {root: load_runs(root) for root in roots}
    empty = [str(root) for root, found in runs.items() if not found]
    if empty:
        raise ReportError(f"no run folders in {', '.join(empty)}: check the path")
    sweep = read_sweep(own[0])
    if not sweep or not isinstance(sweep.get("grid"), dict):
        raise ReportError(f"'{own[0]}' has no sweep.json with its grid: run it with launch/sweep.py")
    found = drop_copies((run for rs in runs.values() for run in rs), say=lambda line: print(line, file=sys.stderr))
    analysis = analyse(found, tuned=tuned_keys(roots))
    first = sweep["grid"]
    kind = next(k for k in FOLLOWUPS if getattr(args, k))
    out = Path(getattr(args, kind))
    mine = own if args.against else None
    methods = [m for m in (args.methods or "").split(",") if m] or None
    if kind == "edge_grid":
        grid, lines = edge_grid(analysis, first, out.stem)
        what = "Selections at the edge of the learning rates tried:"
    elif kind == "seed_grid":
        grid, lines = seed_grid(analysis, first, _seeds(args.seeds), out.stem, wide_only=args.wide_only, own=mine)
        what = ("Selections whose 95% interval against the baseline is too wide:" if args.wide_only else
                "Learning rates selected on validation (seeds common to all learning rates):")
    elif kind == "transfer_grid":
        grid, lines = transfer_grid(analysis, first, _seeds(args.seeds), args.batch, out.stem, rule=args.rule,
                                    factors=_factors(args.rate_factors), match_steps=args.match_steps, own=mine,
                                    methods=methods,
                                    best=args.best)
        what = "Learning rates selected on validation, run at another batch size:"
    elif kind == "steps_grid":
        grid, lines = steps_grid(analysis, first, _seeds(args.seeds), out.stem, best=args.best, own=mine)
        what = "Selections run for the reference's optimizer steps:"
    else:
        grid, lines = knob_grid(analysis, first, _seeds(args.seeds), out.stem, _settings(args.set or []), own=mine,
                                factors=_factors(args.rate_factors), best=args.best)
        what = "Selections run with another value of their method's knob (or of a key of the run):"
    header = [f"# Generated by: python launch/report.py {shlex.join(argv)}", f"# {what}", *(f"#   {x}" for x in lines)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header) + "\n" + yaml.safe_dump(grid, sort_keys=False, width=110))
    print(f"{kind.replace('_', '-')}: {len(lines)} method variant(s) -> {out}")


def repo_path(path: Path) -> str:
    """``path`` as the Reproduce line names it: relative to the repository root (where that line
    runs) when inside it, else absolute."""
    full = Path(os.path.abspath(path))
    try:
        return full.relative_to(REPO).as_posix()
    except ValueError:
        return str(full)


def reproduce_line(args: argparse.Namespace, out: Path) -> str:
    """The report.py command that regenerates this report: every report option given."""
    argv = [repo_path(Path(r)) for r in args.runs] + ["--out", repo_path(out)]
    if args.bs_groups:
        argv += ["--bs-groups", args.bs_groups]
    if args.title is not None:
        argv += ["--title", args.title]
    for flag, path in (("--preface", args.preface), ("--step-cost", args.step_cost)):
        if path:
            argv += [flag, repo_path(Path(path))]
    if args.targets:
        argv += ["--targets", args.targets]
    return "python launch/report.py " + " ".join(shlex.quote(a) for a in argv)


def report(args: argparse.Namespace, out_dir: Optional[Path] = None, figures: bool = True) -> Path:
    """Write the report ``args`` ask for; into ``out_dir`` instead of ``--out`` when given (a
    check that regenerates a committed report elsewhere: its Reproduce line still names
    ``--out``), without drawing when not ``figures``."""
    roots = [Path(r) for r in args.runs]
    out = Path(args.out) if args.out else Path("docs") / "results" / roots[0].name
    commands = [line for root in roots for line in sweep_command(root)] + [reproduce_line(args, out)]
    return write_report(roots, out_dir if out_dir is not None else out, bs_spec=args.bs_groups, commands=commands,
                        title=args.title, preface=Path(args.preface) if args.preface else None,
                        step_cost=Path(args.step_cost) if args.step_cost else None, figures=figures,
                        targets=parse_targets(args.targets) if args.targets else ())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write report.md and figures for a sweep's runs.")
    parser.add_argument("runs", nargs="+",
                        help="the sweep's folder, RUNS_ROOT/NAME (or a single run folder); several are reported as one")
    parser.add_argument("--out", default=None, help="output folder (default: docs/results/NAME of the first folder)")
    parser.add_argument("--bs-groups", default=None,
                        help="batch sizes drawn in one figure, e.g. '2048,4096;6144,8192,10240;20480,30720' "
                             "(default: one figure per batch size)")
    parser.add_argument("--seed-grid", default=None, metavar="FILE",
                        help="write a grid that reruns each selected learning rate with --seeds, instead of a report")
    parser.add_argument("--seeds", default="1", help="with --seed-grid: the new seeds, e.g. '1' or '1,2' (default 1)")
    parser.add_argument("--wide-only", action="store_true",
                        help="with --seed-grid: only the selections whose seed-paired 95%% interval of "
                             "validation accuracy against the baseline is wider than a third of the gap to the "
                             "smallest batch (and that baseline); name the folders holding the baseline and the "
                             "reference with --against")
    parser.add_argument("--edge-grid", default=None, metavar="FILE",
                        help="write a grid with one more learning rate beyond each selection at the edge of the "
                             "learning rates its method variant tried, instead of a report")
    parser.add_argument("--transfer-grid", default=None, metavar="FILE",
                        help="write a grid that runs each selected learning rate at --batch with --seeds (learning-rate "
                             "transfer, no re-tuning), instead of a report")
    parser.add_argument("--batch", type=int, default=None, help="with --transfer-grid: the new global batch size")
    parser.add_argument("--rule", default="linear", choices=RULES,
                        help="with --transfer-grid: linear (optim.lr as selected, the config's rule scales it), "
                             "sqrt (the square root of the batch from the tuned batch's peak rate) or none (the "
                             "tuned peak rate times each --rate-factors, set directly: a re-tuning grid)")
    parser.add_argument("--rate-factors", default=None, metavar="F,F",
                        help="with --transfer-grid --rule none: multiples of the tuned peak rate, e.g. 0.25,0.5,1; "
                             "with --knob-grid: multiples of the selected rate the cells run at")
    parser.add_argument("--match-steps", action="store_true",
                        help="with --transfer-grid: the epochs and warmup epochs that give the tuned run's optimizer "
                             "steps and warmup steps at --batch")
    parser.add_argument("--methods", default=None, metavar="NAMES",
                        help="with --transfer-grid: only these methods (comma-separated names)")
    parser.add_argument("--steps-grid", default=None, metavar="FILE",
                        help="write a grid that runs each selection above the smallest batch at its own batch for "
                             "the optimizer steps and warmup steps of the baseline at the smallest batch (matched "
                             "steps), instead of a report")
    parser.add_argument("--best", type=int, default=None, metavar="N",
                        help="with --steps-grid or --transfer-grid: only the N methods with the best mean best "
                             "validation accuracy at each batch (any batch setup), each at its best variant (LARS, "
                             "LAMB and ghost BN count as methods), and the baseline beside them; with --knob-grid: "
                             "those methods alone (e.g. the best one moved to another network with --set "
                             "model.arch=NAME)")
    parser.add_argument("--knob-grid", default=None, metavar="FILE",
                        help="write a grid that runs each selection whose method owns a --set key at its selected "
                             "learning rate with that key set, instead of a report")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="with --knob-grid: a method's key and its other value, e.g. methods.NAME.KEY=0.02 "
                             "(repeatable; each applies to the selections of the method that owns it; a key of the "
                             "run, e.g. optim.warmup_epochs=5, to every selection)")
    parser.add_argument("--against", nargs="+", default=None, metavar="DIR",
                        help="with a follow-up grid: sweep folders read for the reference, the baseline and the "
                             "ranking, whose own selections get no cells")
    parser.add_argument("--copy-records", default=None, metavar="DEST",
                        help="copy the finished runs' config.yaml, metrics.jsonl and summary.json (and sweep.json) "
                             "to DEST/<sweep name>/<run>/, to commit them, instead of a report")
    parser.add_argument("--title", default=None, help="the report's title (default: 'Results: ' and the sweep names)")
    parser.add_argument("--preface", default=None, metavar="FILE",
                        help="a Markdown file put verbatim under the title (the study's verdict)")
    parser.add_argument("--step-cost", default=None, metavar="FILE",
                        help="a benchmark's JSON of per-step cost ratios against the baseline, by '<sweep>/<run>' "
                             "(bench/method_cost.py): a 'step cost' column, and the compute columns and figure use it")
    parser.add_argument("--targets", default=None, metavar="SPEC",
                        help="the steps-against-examples study: steps each batch size's best learning rate needs to "
                             "reach each target, the fitted critical batch size against the live noise scale; "
                             "e.g. 'val=0.6,loss=1.2' (validation accuracy as a fraction, training loss)")
    return parser


def check(args: argparse.Namespace) -> list[str]:
    """The follow-up grid asked for (none: a report); ReportError for flags that do not go together."""
    asked = [k for k in FOLLOWUPS if getattr(args, k)]
    if len(asked) > 1:
        raise ReportError(f"write one follow-up grid at a time: {_flags()}")
    if args.wide_only and not args.seed_grid:
        raise ReportError("--wide-only goes with --seed-grid")
    if args.transfer_grid and not args.batch:
        raise ReportError("--transfer-grid needs --batch (the global batch size to transfer to)")
    if not args.transfer_grid and (args.rule != "linear" or args.match_steps or args.methods):
        raise ReportError("--rule, --match-steps and --methods go with --transfer-grid")
    if args.rate_factors and not (args.transfer_grid or args.knob_grid):
        raise ReportError("--rate-factors goes with --transfer-grid or --knob-grid")
    if args.best is not None and not (args.steps_grid or args.transfer_grid or args.knob_grid):
        raise ReportError("--best goes with --steps-grid, --transfer-grid or --knob-grid")
    if args.best is not None and args.best < 1:
        raise ReportError(f"--best must be 1 or more, got {args.best}")
    if args.set and not args.knob_grid:
        raise ReportError("--set goes with --knob-grid")
    if args.against and not asked:
        raise ReportError(f"--against goes with a follow-up grid ({_flags()})")
    return asked


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    roots = [Path(r) for r in args.runs]
    if args.copy_records:
        from dreg_dist.report.runs import copy_records

        for root in roots:
            copied = copy_records(root, Path(args.copy_records) / root.name)
            print(f"{root}: records of {len(copied)} finished run(s) -> {Path(args.copy_records) / root.name}")
        return 0
    try:
        asked = check(args)
        if asked:
            write_followup(args, list(argv) if argv is not None else sys.argv[1:])
            return 0
        report(args)
    except NothingToRun as err:
        print(f"no follow-up grid: {err}", file=sys.stderr)
        return NOTHING_TO_RUN
    except (ReportError, ConfigError, TargetError) as err:  # ConfigError: a run record this release cannot read
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
