"""The sweep runner's bookkeeping (skip, resume, failure, preemption, sweep.json) with a fake
training script in place of launch/train.py: fast, no torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dreg_dist.sweep.grid import Grid, expand_grid
from dreg_dist.sweep.runner import SweepRunner

pytestmark = pytest.mark.usefixtures("resolver_in_process")  # the cells' configs, without a resolver subprocess

FAKE_TRAIN = r'''
import json, os, sys
args = sys.argv[1:]
run_dir = args[args.index("--run-dir") + 1]
seed = int(next(a for a in args if a.startswith("train.seed=")).split("=")[1])
os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
with open(os.path.join(run_dir, "launches.txt"), "a") as f:
    f.write("x\n")
last = os.path.join(run_dir, "checkpoints", "last.pt")
if seed == 2:
    sys.exit(1)                                   # a crash, every time
if seed == 1 and not os.path.exists(last):        # preempted on its first attempt
    open(last, "w").close()
    open(os.path.join(run_dir, "preempted.json"), "w").write("{}")
    sys.exit(1)                                   # as torchrun does: 1, with the marker left behind
with open(os.path.join(run_dir, "summary.json"), "w") as f:
    json.dump({"status": "finished", "epochs": 2}, f)
'''


def _launches(run_dir: Path) -> int:
    path = run_dir / "launches.txt"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_runner_skips_resumes_and_records(tmp_path: Path) -> None:
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    grid = Grid.from_dict({"name": "fake", "config": "configs/quickstart.yaml", "overrides": ["train.epochs=2"],
                           "axes": {"train.seed": [0, 2, 1, 3]}})
    cells = expand_grid(grid)
    root = tmp_path / "runs"
    lines: list[str] = []
    runner = SweepRunner(grid, cells, root, script=script, say=lines.append, argv=["launch/sweep.py", "--grid", "g"])
    assert runner.run() == 75  # stopped at the preempted cell; seed 3 never started
    sweep = json.loads((root / "fake" / "sweep.json").read_text())
    status = {c["name"]: (c["status"], c.get("returncode")) for c in sweep["cells"]}
    assert status == {"seed0": ("finished", 0), "seed2": ("failed", 1), "seed1": ("preempted", 1),
                      "seed3": ("pending", None)}
    assert sweep["command"] == ["launch/sweep.py", "--grid", "g"]
    assert sweep["cells"][0]["command"][:2] == [sys.executable, str(script)]
    assert any("finished in" in line and "1/4 done" in line and "ETA" in line for line in lines)

    # A fresh invocation still reports the earlier failure and preemption before running anything.
    again = SweepRunner(grid, cells, root, script=script, say=lines.append)
    assert {s.cell.name: s.status for s in again.states} == {
        "seed0": "finished", "seed2": "failed", "seed1": "preempted", "seed3": "pending"}
    lines.clear()
    assert again.run() == 1  # seed 2 fails again; the others finish
    assert any("seed0: finished already, skipped" in line for line in lines)
    assert [_launches(root / "fake" / f"seed{s}") for s in (0, 1, 2, 3)] == [1, 2, 2, 1]
    sweep = json.loads((root / "fake" / "sweep.json").read_text())
    assert [c["status"] for c in sweep["cells"]] == ["finished", "failed", "finished", "finished"]
    assert sweep["counts"] == {"total": 4, "finished": 3, "failed": 1}
    # The skipped cell keeps how the first invocation ran it (a resumed study's recipe needs it).
    assert sweep["cells"][0]["returncode"] == 0
    assert sweep["cells"][0]["command"][:2] == [sys.executable, str(script)]
    assert "wall_s" in sweep["cells"][0]

    # --cell-index: only that cell; a finished one is skipped without a launch.
    only = SweepRunner(grid, cells, root, script=script, say=lines.append)
    assert only.run(only=0) == 0
    assert _launches(root / "fake" / "seed0") == 1


FAKE_DIVERGING_TRAIN = r'''
import json, os, sys
args = sys.argv[1:]
run_dir = args[args.index("--run-dir") + 1]
os.makedirs(run_dir, exist_ok=True)
with open(os.path.join(run_dir, "launches.txt"), "a") as f:
    f.write("x\n")
with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"kind": "val", "step": 10, "acc": 0.5}) + "\n")
    f.write(json.dumps({"kind": "diverged", "step": 12, "reason": "loss is not finite"}) + "\n")
sys.exit(1)                                       # as launch/train.py exits after a divergence
'''


def test_diverged_cell_is_a_result_and_not_relaunched(tmp_path: Path) -> None:
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_DIVERGING_TRAIN)
    grid = Grid.from_dict({"name": "div", "config": "configs/quickstart.yaml", "axes": {"train.seed": [0]}})
    cells = expand_grid(grid)
    root = tmp_path / "runs"
    lines: list[str] = []
    runner = SweepRunner(grid, cells, root, script=script, say=lines.append)
    assert runner.run() == 0  # a learning rate too high for the method is an outcome, not a failure
    sweep = json.loads((root / "div" / "sweep.json").read_text())
    assert sweep["cells"][0]["status"] == "diverged"

    again = SweepRunner(grid, cells, root, script=script, say=lines.append)
    assert again.states[0].status == "diverged"
    lines.clear()
    assert again.run() == 0
    assert _launches(root / "div" / "seed0") == 1  # a resume would replay the same steps
    assert any("diverged already, skipped (--retry-diverged" in line for line in lines)

    assert again.run(retry_diverged=True) == 0
    assert _launches(root / "div" / "seed0") == 2

    # A torn last line (killed mid-write) does not hide the record before it.
    with open(root / "div" / "seed0" / "metrics.jsonl", "a") as f:
        f.write('{"kind": "tra')
    assert SweepRunner(grid, cells, root, script=script, say=lines.append).states[0].status == "diverged"


HOLDER = r'''
import fcntl, json, os, sys, time
run_dir, after, finish = sys.argv[1], sys.argv[2], sys.argv[3] == "finish"
os.makedirs(run_dir, exist_ok=True)
fd = os.open(os.path.join(run_dir, ".sweep.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\n".encode())
open(os.path.join(run_dir, "held"), "w").close()
while not os.path.exists(os.path.join(after, "summary.json")):  # held until the sweep ran its other cell
    time.sleep(0.05)
time.sleep(2)
if finish:  # the other sweep's trainer finished the cell
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump({"status": "finished", "epochs": 2}, f)
'''


@pytest.mark.parametrize("finish", [True, False])
def test_a_cell_another_sweep_is_running_is_never_launched_beside_it(tmp_path: Path, finish: bool) -> None:
    # Another process (a second sweep of the grid) holds seed 0's folder: this sweep runs seed 3
    # first, then waits, and launches seed 0 only where the other one stopped without finishing it.
    import subprocess
    import time

    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    holder = tmp_path / "holder.py"
    holder.write_text(HOLDER)
    grid = Grid.from_dict({"name": "fake", "config": "configs/quickstart.yaml", "overrides": ["train.epochs=2"],
                           "axes": {"train.seed": [0, 3]}})
    root = tmp_path / "runs"
    seed0 = root / "fake" / "seed0"
    other = subprocess.Popen([sys.executable, str(holder), str(seed0), str(root / "fake" / "seed3"),
                              "finish" if finish else "stop"])
    try:
        while not (seed0 / "held").exists():
            assert other.poll() is None, "the holder died before taking the lock"
            time.sleep(0.05)
        lines: list[str] = []
        runner = SweepRunner(grid, expand_grid(grid), root, script=script, say=lines.append)
        assert runner.run() == 0
    finally:
        other.wait(timeout=30)
    assert _launches(root / "fake" / "seed3") == 1
    assert _launches(seed0) == (0 if finish else 1)  # never while the other sweep had it
    text = "\n".join(lines)
    assert f"seed0: another sweep is running it (pid {other.pid}); back to it at the end" in text
    assert text.index("seed3 (") < text.index("seed0: waiting for the other sweep")
    assert ("seed0: finished by the other sweep" in text) == finish
    sweep = json.loads((root / "fake" / "sweep.json").read_text())
    assert [c["status"] for c in sweep["cells"]] == ["finished", "finished"]
