"""Every committed report whose run records are committed (``docs/results/NAME/report.md`` with
``docs/results/NAME/runs/``, or reading another study folder's ``runs/``) regenerates byte for byte from the command its own
"Reproduce" block prints: the report is a function of the committed records and that line, not
of the clock, the machine or where it ran. Committing new records without regenerating the
report fails here. Figures are not drawn (the same file names are computed), so this stays fast
and needs no matplotlib; the PNGs it names must be committed."""

from __future__ import annotations

import difflib
import re
import shlex
from pathlib import Path
from types import ModuleType

import pytest

from ..conftest import REPO, launch_script
RESULTS = REPO / "docs" / "results"


def _report_cli() -> ModuleType:
    return launch_script("report.py")


def _reproduce_line(text: str, where: Path) -> str:
    block = text.split("\nReproduce:\n", 1)
    assert len(block) == 2, f"{where} has no Reproduce block"
    lines = [x for x in block[1].split("```")[1].splitlines() if x.startswith("python launch/report.py ")]
    assert len(lines) == 1, f"{where}: expected one 'python launch/report.py' line in its Reproduce block"
    return lines[0]


def test_committed_reports_regenerate_from_their_reproduce_line(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cli = _report_cli()
    monkeypatch.chdir(REPO)  # the line's paths are relative to the repository root
    subjects = []
    for committed in sorted(RESULTS.glob("*/report.md")):
        name = committed.parent.relative_to(REPO)
        text = committed.read_text()
        args = cli.build_parser().parse_args(shlex.split(_reproduce_line(text, name))[2:])
        # its records committed (next to it, or in the study folder another report shares)
        if all(Path(r).parts[:2] == ("docs", "results") and Path(r).is_dir() for r in args.runs):
            subjects.append((committed, name, text, args))
        else:
            assert not (committed.parent / "runs").is_dir(), f"{name} has records but reads others"
    assert subjects, ("no docs/results/*/report.md whose run records are committed: "
                      "this check would check nothing")
    for committed, name, text, args in subjects:
        line = _reproduce_line(text, name)
        assert Path(args.out) == name, f"{name}: its Reproduce line writes to {args.out}"
        fresh = cli.report(args, out_dir=tmp_path / name, figures=False).read_text()
        if fresh != text:
            diff = "".join(list(difflib.unified_diff(text.splitlines(True), fresh.splitlines(True),
                                                     "committed", "regenerated"))[:60])
            pytest.fail(f"{name}/report.md differs from what its records give; regenerate it with\n  {line}\n{diff}")
        figures = re.findall(r"\]\((figures/[^)]+\.png)\)", text)
        missing = [f for f in figures if not (committed.parent / f).is_file()]
        assert not missing, f"{name}/report.md names figures that are not committed: {missing}"
