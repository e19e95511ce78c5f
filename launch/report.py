#!/usr/bin/env python
"""Report a sweep: ``python launch/report.py RUNS_ROOT/NAME [--out docs/results/NAME]``.

Reads every run folder under RUNS_ROOT/NAME (config.yaml, metrics.jsonl, summary.json) and
writes OUT/report.md with PNG figures under OUT/figures/ (matplotlib; ``pip install -e
".[report]"``). Unfinished runs are included with the numbers they have so far.
"""

import argparse
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreg_dist.report.markdown import write_report  # noqa: E402
from dreg_dist.report.plots import ReportError  # noqa: E402
from dreg_dist.report.runs import read_sweep  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write report.md and figures for a sweep's runs.")
    parser.add_argument("runs", help="the sweep's folder, RUNS_ROOT/NAME (or a single run folder)")
    parser.add_argument("--out", default=None, help="output folder (default: docs/results/NAME)")
    parser.add_argument("--bs-groups", default=None,
                        help="batch sizes drawn in one figure, e.g. '2048,4096;6144,8192,10240;20480,30720' "
                             "(default: one figure per batch size)")
    args = parser.parse_args(argv)
    root = Path(args.runs)
    out = Path(args.out) if args.out else Path("docs") / "results" / root.name
    commands = []
    sweep = read_sweep(root)
    if sweep and sweep.get("command"):
        argv = [str(a) for a in sweep["command"]]
        if "--cell-index" in argv:  # written by one task of an array: show the whole sweep
            i = argv.index("--cell-index")
            del argv[i:i + 2]
        argv = [a for a in argv if not a.startswith("--cell-index=")]
        commands.append("python " + " ".join(shlex.quote(a) for a in argv))
    report_args = [str(root), "--out", str(out)] + (["--bs-groups", args.bs_groups] if args.bs_groups else [])
    commands.append("python launch/report.py " + " ".join(shlex.quote(a) for a in report_args))
    try:
        write_report(root, out, bs_spec=args.bs_groups, commands=commands)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
