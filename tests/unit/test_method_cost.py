"""bench/method_cost.py on tiny run folders: what it measures for which runs (not how fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from dreg_dist.config import config_to_dict
from dreg_dist.config.load import config_from_dict

REPO = Path(__file__).resolve().parents[2]


def _run(root: Path, sweep: str, name: str, overrides: dict, world_size: int = 1, running: bool = False) -> None:
    data = {"model": {"arch": "cnn_tiny", "num_classes": 10},
            "train": {"global_batch_size": 32, "accumulation_steps": 2, "seed": 0},
            **overrides}
    folder = root / sweep / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config_from_dict(data, warn=None))))
    if running:  # no summary yet: the log's start record says how many processes train it
        (folder / "metrics.jsonl").write_text(json.dumps({"kind": "start", "world_size": world_size}) + "\n")
    else:
        (folder / "summary.json").write_text(json.dumps({"status": "finished", "world_size": world_size}))


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "bench" / "method_cost.py"), *args],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def test_method_cost_groups_runs_and_ratios_over_vanilla(tmp_path: Path) -> None:
    _run(tmp_path, "lr", "vanilla_lr0.1", {"method": "vanilla", "optim": {"lr": 0.1}})
    _run(tmp_path, "lr", "vanilla_lr0.2", {"method": "vanilla", "optim": {"lr": 0.2}})
    _run(tmp_path, "lr", "sam_lr0.1", {"method": "sam", "optim": {"lr": 0.1}})
    _run(tmp_path, "lr", "sam_lr0.2", {"method": "sam", "optim": {"lr": 0.2}})
    _run(tmp_path, "lr", "lars", {"method": "vanilla", "optim": {"name": "lars", "lr": 1.0}})
    _run(tmp_path, "lr", "ghost", {"method": "vanilla",
                                   "train": {"global_batch_size": 32, "accumulation_steps": 2, "bn_group_size": 8}})
    _run(tmp_path, "mix", "gradientmix", {"method": "gradientmix"}, world_size=2)
    _run(tmp_path, "mix", "gradientmix_seed1", {"method": "gradientmix"}, world_size=2, running=True)
    out = tmp_path / "cost.json"
    done = _bench(str(tmp_path / "lr"), str(tmp_path / "mix"), "--quick", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    by_label = {c["label"]: c for c in doc["costs"]}
    # learning rate does not change a step's work: runs differing only in it share one measurement
    # ghost batch norm is a configuration of its own (its statistics are its step's extra work), not vanilla
    assert sorted(by_label) == ["sam", "vanilla", "vanilla (BN group 8)", "vanilla (lars)"]
    assert by_label["vanilla (BN group 8)"]["runs"] == ["lr/ghost"]
    assert by_label["vanilla"]["runs"] == ["lr/vanilla_lr0.1", "lr/vanilla_lr0.2"]
    assert by_label["sam"]["runs"] == ["lr/sam_lr0.1", "lr/sam_lr0.2"]
    assert by_label["vanilla"]["ratio"] == 1.0  # the reference, over itself in every round
    assert all(c["reference"] == "vanilla" and c["ratio"] > 0 for c in doc["costs"])
    # communication is not on one process: a multi-process run is named, not measured
    assert doc["skipped"] == ["mix/gradientmix", "mix/gradientmix_seed1"]
    assert "SUMMARY:" in done.stdout


def test_method_cost_needs_vanilla_of_the_same_batch_setup(tmp_path: Path) -> None:
    _run(tmp_path, "lr", "vanilla", {"method": "vanilla"})
    _run(tmp_path, "lr", "sam_big", {"method": "sam", "train": {"global_batch_size": 64, "accumulation_steps": 2}})
    done = _bench(str(tmp_path / "lr"), "--quick")
    assert done.returncode != 0
    assert "no vanilla SGD run for cnn_tiny bs64 acc2" in done.stderr


def test_method_cost_update_adds_a_sweep_and_keeps_the_earlier_entries(tmp_path: Path) -> None:
    _run(tmp_path, "lr", "vanilla", {"method": "vanilla"})
    _run(tmp_path, "lr", "sam", {"method": "sam"})
    out = tmp_path / "cost.json"
    assert _bench(str(tmp_path / "lr"), "--quick", "--out", str(out)).returncode == 0
    sam_before = next(c for c in json.loads(out.read_text())["costs"] if c["label"] == "sam")
    big = {"train": {"global_batch_size": 64, "accumulation_steps": 4}}
    _run(tmp_path, "big", "vanilla", {"method": "vanilla", **big})
    _run(tmp_path, "big", "fisher", {"method": "fisher", **big})
    done = _bench(str(tmp_path / "big"), str(tmp_path / "lr" / "vanilla"), "--quick", "--out", str(out), "--update")
    assert done.returncode == 0, done.stderr[-3000:]
    costs = json.loads(out.read_text())["costs"]
    runs = [run for c in costs for run in c["runs"]]
    # one entry per run: lr/vanilla, measured again, left its earlier entry
    assert sorted(runs) == ["big/fisher", "big/vanilla", "lr/sam", "lr/vanilla"]
    by_run = {run: c for c in costs for run in c["runs"]}
    assert by_run["lr/sam"] == sam_before  # not given: kept as measured before, not re-timed
    assert by_run["big/fisher"]["setup"] == "cnn_tiny bs64 acc4" and by_run["big/vanilla"]["ratio"] == 1.0


def test_method_cost_update_refuses_other_conditions(tmp_path: Path) -> None:
    _run(tmp_path, "lr", "vanilla", {"method": "vanilla"})
    out = tmp_path / "cost.json"
    missing = _bench(str(tmp_path / "lr"), "--quick", "--out", str(out), "--update")
    assert missing.returncode != 0 and "run without --update first" in missing.stderr
    earlier = {"rounds": 2, "steps": 1, "machine": {"cpu": "another CPU"}, "costs": []}
    out.write_text(json.dumps(earlier))
    rounds = _bench(str(tmp_path / "lr"), "--rounds", "3", "--out", str(out), "--update")
    assert rounds.returncode != 0 and "measured with rounds=2, this run uses 3" in rounds.stderr
    other = _bench(str(tmp_path / "lr"), "--quick", "--out", str(out), "--update")
    assert other.returncode != 0 and "measured on another machine (" in other.stderr and "cpu" in other.stderr
    assert json.loads(out.read_text()) == earlier  # a refused update leaves the file alone
