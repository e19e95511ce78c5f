"""bench/device_check.py --device cpu --quick: the GPU check's every code path, on CPU.

The script is meant to run once on a GPU machine; running its quick CPU form here keeps it
from rotting while the trainer, the methods and the benchmarks change under it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ["smoke", "dreg_overhead", "trainer_vs_bare", "input_pipeline", "memory", "time_to_accuracy"]
METHODS = {"vanilla", "dreg", "gradnorm", "fisher", "sam", "extragradient", "gradientmix"}


def test_device_check_quick_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    # --budget-s well above the ~1 minute it needs on two idle cores, so that a loaded
    # machine skips nothing, but a hang still ends inside the subprocess timeout.
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "device_check.py"), "--device", "cpu", "--quick",
         "--out", str(out), "--budget-s", "400"],
        capture_output=True, text=True, timeout=480, env=env, cwd=REPO,
    )
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-4000:])

    doc = json.loads((out / "device_check.json").read_text())
    assert doc["meta"]["device"] == "cpu" and doc["meta"]["torch"]
    assert doc["meta"]["exit_code"] == 0
    sections = doc["sections"]
    assert set(sections) == set(SECTIONS)
    for name in SECTIONS:
        sec = sections[name]
        has_results = bool(sec.get("items")) and sec["status"] in ("ok", "partial")
        has_skip_reason = sec["status"] == "skipped" and str(sec.get("reason", "")).startswith("skipped")
        assert has_results or has_skip_reason, (name, sec)

    smoke = sections["smoke"]
    assert smoke["status"] == "ok", smoke
    ran = [i for i in smoke["items"] if i["status"] == "ok"]
    assert {i["method"] for i in ran} == METHODS
    for item in smoke["items"]:
        if item["status"] != "ok":
            # Only the CUDA-only runs (fp16) and, with --quick, the compiled ones are skipped.
            assert item["status"].startswith("skipped"), item
            assert item["amp"] == "fp16" or item["compile"], item
            continue
        assert item["exit_code"] == 0
        assert item["losses_finite"] is True and item["loss_keys"], item
        assert all(math.isfinite(v) for v in item["final_losses"].values())
        assert item["images_per_sec"] > 0

    tta = sections["time_to_accuracy"]
    assert [i["method"] for i in tta["items"]] == ["vanilla", "dreg"]
    for item in tta["items"]:
        assert item["status"] == "ok" and item["epochs_done"] >= 1 and 0 <= item["best_val_acc"] <= 1, item

    md = (out / "device_check.md").read_text()
    assert "| run | method |" in md and "| --- |" in md
    assert md.count("\n## ") == len(SECTIONS)
