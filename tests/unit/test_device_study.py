"""bench/device_study.py --device cpu --quick: the one-GPU study's every code path, on CPU.

The study is meant to run on a GPU machine; its quick CPU form (cnn_tiny, tiny synthetic data,
one epoch, the same four variants through the real trainer) keeps it working while the
trainer, the methods and the report change under it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from ..conftest import launch_script

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ["vanilla", "lamb", "dreg", "dreg_paper"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _study(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "bench" / "device_study.py"), *args],
                          capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO)


def test_device_study_quick_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # ~40 s on two loaded cores; the budget is far above that so a loaded machine cuts nothing off.
    done = _study("--device", "cpu", "--quick", "--out", str(out), "--budget-s", "400", timeout=480)
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-4000:])

    doc = json.loads((out / "device_study.json").read_text())
    assert doc["meta"]["exit_code"] == 0 and doc["plan"]["epochs"] == 1
    assert [i["name"] for i in doc["variants"]] == VARIANTS
    for item in doc["variants"]:
        assert item["status"] == "ok" and item["epochs_done"] == 1, item
        assert math.isfinite(item["test_acc"]) and item["images_per_sec"] > 0, item
        summary = json.loads((out / "runs" / "device_study" / item["name"] / "summary.json").read_text())
        best = summary["best"]["val_acc"]
        assert best and all(math.isfinite(v) and 0 <= v <= 1 for v in best.values()), summary
        assert summary["epochs"] == 1 and summary["global_batch_size"] == 64
    methods = {i["name"]: json.loads((out / "runs" / "device_study" / i["name"] / "summary.json").read_text())
               ["method"] for i in doc["variants"]}
    assert methods == {"vanilla": "vanilla", "lamb": "vanilla", "dreg": "dreg", "dreg_paper": "dreg"}

    md = (out / "device_study.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert rows[0].startswith("| variant |")
    assert [r.split("|")[1].strip() for r in rows[1:]] == VARIANTS

    report_dir = tmp_path / "report"
    assert launch_script("report.py").main([str(out / "runs" / "device_study"), "--out", str(report_dir)]) == 0
    report = (report_dir / "report.md").read_text()
    assert all(f"`{name}`" in report for name in VARIANTS)


def test_device_study_refuses_a_missing_cifar_copy(tmp_path: Path) -> None:
    done = _study("--device", "cpu", "--out", str(tmp_path / "out"), "--cifar-root", str(tmp_path), timeout=120)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "cifar-10-batches-py" in errors[0], done.stderr
    assert not (tmp_path / "out").exists()
