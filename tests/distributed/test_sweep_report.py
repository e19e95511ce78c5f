"""launch/sweep.py and launch/report.py end to end on a tiny synthetic grid.

2 methods x 2 batch sizes x 1 seed, 2 epochs of a few steps each, one worker per cell.
A second sweep skips every finished cell without touching it, and the report's numbers
equal the ones recomputed here from each run's own metrics.jsonl and summary.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..conftest import REPO, TINY

pytestmark = pytest.mark.distributed

PNG = b"\x89PNG\r\n\x1a\n"
BATCHES = (16, 32)
# TINY, smaller still: 64 training images -> 4 / 2 steps per epoch at batch 16 / 32.
OVERRIDES = [o for o in TINY if not o.startswith(("data.synthetic_train_size", "data.val_size",
                                                   "data.synthetic_test_size", "train.global_batch_size"))]
OVERRIDES += ["data.synthetic_train_size=96", "data.val_size=32", "data.synthetic_test_size=32",
              "log.progress=lines"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(), cwd=REPO)


def _best_val_from_metrics(run_dir: Path) -> float:
    best = -1.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "val":
            accs = [v for k, v in rec.items() if k == "acc" or k.startswith("acc_")]
            best = max(best, *accs)
    return best


def _table_rows(markdown: str, heading: str) -> dict[str, list[str]]:
    """Rows (first cell -> cells) of the first table after ``heading``."""
    section = markdown[markdown.index(heading):]
    rows = {}
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("method", "run", "---"):
            continue
        rows[cells[0]] = cells
    return rows


def test_sweep_skips_finished_cells_and_report_matches_runs(tmp_path: Path) -> None:
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "tiny",
        "config": "configs/quickstart.yaml",
        "overrides": OVERRIDES,
        "axes": {"method": ["vanilla", "dreg"], "train.global_batch_size": list(BATCHES), "train.seed": [0],
                 "dreg.lam": [0.1]},
    }, sort_keys=False))
    runs_root = tmp_path / "runs"
    sweep_dir = runs_root / "tiny"
    names = [f"{m}_bs{b}_seed0" + ("_lam0.1" if m == "dreg" else "") for m in ("vanilla", "dreg") for b in BATCHES]

    listed = _run("launch/sweep.py", "--grid", str(grid), "--runs-root", str(runs_root), "--dry-run")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip().splitlines()[-1] == "4 cells"
    assert all(name in listed.stdout for name in names)

    first = _run("launch/sweep.py", "--grid", str(grid), "--runs-root", str(runs_root))
    assert first.returncode == 0, (first.stdout[-3000:], first.stderr[-3000:])
    assert "4/4 done" in first.stdout and "ETA" in first.stdout
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    assert [c["name"] for c in sweep["cells"]] == names
    assert all(c["status"] == "finished" for c in sweep["cells"])
    assert sweep["cells"][2]["overrides"][-4:] == ["method=dreg", "train.global_batch_size=16", "train.seed=0",
                                                   "dreg.lam=0.1"]
    stamps = {n: ((sweep_dir / n / "summary.json").stat().st_mtime_ns,
                  (sweep_dir / n / "metrics.jsonl").stat().st_size) for n in names}

    second = _run("launch/sweep.py", "--grid", str(grid), "--runs-root", str(runs_root))
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("finished already, skipped") == 4
    assert "nothing to run" in second.stdout and "starting" not in second.stdout
    assert "img/s" not in second.stdout  # no training output: nothing was launched
    assert stamps == {n: ((sweep_dir / n / "summary.json").stat().st_mtime_ns,
                          (sweep_dir / n / "metrics.jsonl").stat().st_size) for n in names}

    out = tmp_path / "report"
    report = _run("launch/report.py", str(sweep_dir), "--out", str(out), timeout=60)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (out / "report.md").read_text()
    for b in BATCHES:
        for kind in ("val_acc", "train_loss"):
            png = out / "figures" / f"{kind}_bs{b}.png"
            assert png.read_bytes()[:8] == PNG, png
            assert f"](figures/{kind}_bs{b}.png)" in text  # relative link
    runs_table = _table_rows(text, "## Runs")
    for b in BATCHES:
        rows = _table_rows(text, f"## Batch size {b}")
        assert set(rows) == {"vanilla", "dreg"}
        vanilla_best = _best_val_from_metrics(sweep_dir / f"vanilla_bs{b}_seed0")
        for method, row in rows.items():
            run_dir = sweep_dir / names[(method == "dreg") * 2 + BATCHES.index(b)]
            summary = json.loads((run_dir / "summary.json").read_text())
            best = _best_val_from_metrics(run_dir)
            assert best == pytest.approx(max(summary["best"]["val_acc"].values()))
            assert row[3] == f"{100 * best:.2f}", (method, b, row)
            assert row[8] == f"{100 * summary['test']['acc']:.2f}", (method, b, row)
            assert row[9] == f"{summary['images_per_sec']:.0f}"
            curve = [(r["epoch"], max(v for k, v in r.items() if k == "acc" or k.startswith("acc_")))
                     for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                     if r["kind"] == "val"]
            for col, frac in ((4, 0.95), (5, 0.99), (6, 1.0)):
                reached = [e for e, a in sorted(curve) if a >= frac * vanilla_best - 1e-12]
                assert row[col] == (f"{reached[0]}" if reached else "not reached"), (method, b, col, row)
            if method == "dreg":
                final = summary["final_values"]
                assert summary["final_values_of"].startswith("the final weights")
                assert (row[10], row[11]) == (f"{final['branch_distance']:.4g}", f"{final['branch_distance_rel']:.4g}")
            else:
                assert row[10] == row[11] == "—"
            assert runs_table[f"`{run_dir.name}`"][6] == f"{100 * best:.2f}"
