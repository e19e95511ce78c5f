"""Trainer launches through the command line only, and reading their run folders: part of
``bench/device_check.py`` (the trainer's Python modules are not imported: they are being refactored)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from _common import REPO, kill_tree, subprocess_env
from device_check_plan import Plan
from device_check_report import Section, one_line, stderr_error


def trainer_command(config: Path, run_dir: Path, overrides: Sequence[str], launcher: str, nproc: int) -> list[str]:
    train = [str(REPO / "launch" / "train.py"), "--config", str(config), "--run-dir", str(run_dir)]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                *train, *overrides]
    return [sys.executable, *train, *overrides]


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # the last line of a killed run may be half written
            pass
    return records


def train_figures(run_dir: Path, records: list[dict[str, Any]], global_batch: int) -> dict[str, Any]:
    """Loss keys, their finiteness and images/s (windows after the first) of a run."""
    from trainer_overhead import trainer_ips  # bench/ is this script's directory

    train = [r for r in records if r.get("kind") == "train"]
    loss_keys = sorted({k for r in train for k in r if "loss" in k or k in ("contrast", "penalty")})
    values = [r[k] for r in train for k in loss_keys if isinstance(r.get(k), (int, float))]
    out: dict[str, Any] = {
        "train_records": len(train),
        "loss_keys": loss_keys,
        "losses_finite": bool(values) and all(math.isfinite(v) for v in values),
        "final_losses": {k: train[-1][k] for k in loss_keys if k in train[-1]} if train else {},
    }
    if train:
        out["images_per_sec"] = train[-1].get("images_per_sec")
    if len(train) >= 2:
        try:
            out["images_per_sec"] = trainer_ips(run_dir, global_batch)["images_per_sec"]
            out["images_per_sec_note"] = "windows after the first (start-up, compilation)"
        except ValueError:  # a killed run's half-written last line
            pass
    start = next((r for r in records if r.get("kind") == "start"), None)
    if start:
        out["world_size"] = start.get("world_size")
        out["device"] = start.get("device")
    return out


@dataclass
class Job:
    """One trainer launch. Killed at ``deadline`` (the section's time is up: not an error)
    or after ``cap_s`` (a hang: an error); not started with less than ``min_s`` left."""

    name: str
    overrides: list[str]
    deadline: float
    cap_s: float
    min_s: float
    on_start: Callable[[], None]
    on_done: Callable[[dict[str, Any]], None]
    on_skip: Callable[[], None]


@dataclass
class _Running:
    job: Job
    proc: "subprocess.Popen[bytes]"
    t0: float
    run_dir: Path
    logs: tuple[Path, Path]


class TrainerRunner:
    """Launches ``launch/train.py`` as a user would and reads its run folder."""

    def __init__(self, args: argparse.Namespace, runs_root: Path) -> None:
        self.args = args
        self.runs_root = runs_root
        self.launcher = args.launcher if args.launcher != "auto" else \
            ("torchrun" if args.device == "cuda" or args.nproc > 1 else "python")
        # Only generic sections: method hyperparameter keys are being renamed.
        self.config = runs_root / "device_check.yaml"
        self.config.write_text("# written by bench/device_check.py; everything else is set on the command line\n"
                               "model:\n  num_classes: 10\n")
        # On CPU one compute thread per process, as every CPU benchmark here (bench/README.md).
        self.env = subprocess_env(threads=1 if args.device == "cpu" else None)

    def _start(self, job: Job) -> _Running:
        run_dir = self.runs_root / job.name.replace(" ", "_").replace("+", "_")
        cmd = trainer_command(self.config, run_dir, job.overrides, self.launcher, self.args.nproc)
        # Output to files, not pipes: with runs in parallel nobody drains a pipe while waiting.
        logs = (run_dir.with_name(run_dir.name + ".stdout.txt"), run_dir.with_name(run_dir.name + ".stderr.txt"))
        with open(logs[0], "wb") as out, open(logs[1], "wb") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=self.env, cwd=REPO)
        job.on_start()
        return _Running(job, proc, time.monotonic(), run_dir, logs)

    def _finish(self, r: _Running, timed_out: Optional[str]) -> dict[str, Any]:
        stdout, stderr = (p.read_text(errors="replace") if p.is_file() else "" for p in r.logs)
        rec: dict[str, Any] = {"launcher": self.launcher, "overrides": r.job.overrides, "run_dir": str(r.run_dir),
                               "exit_code": None if timed_out else r.proc.returncode,
                               "wall_s": round(time.monotonic() - r.t0, 1)}
        if timed_out:
            rec["timed_out_after_s"] = rec["wall_s"]
            rec["timeout_was_section_deadline"] = timed_out == "deadline"
        if timed_out or r.proc.returncode != 0:
            rec["error"] = stderr_error(stdout, stderr)
            rec["output_tail"] = (stdout[-1500:] + "\n" + stderr[-2500:]).strip()
        rec["records"] = read_records(r.run_dir)
        summary = r.run_dir / "summary.json"
        rec["summary"] = json.loads(summary.read_text()) if summary.is_file() else None
        return rec

    def run(self, jobs: Sequence[Job], parallel: int = 1) -> None:
        """Run ``jobs`` in order, up to ``parallel`` at a time; kills what runs if interrupted."""
        pending = list(jobs)
        running: list[_Running] = []
        try:
            while pending or running:
                while pending and len(running) < parallel:
                    job = pending.pop(0)
                    if job.deadline - time.monotonic() < job.min_s:
                        job.on_skip()
                    else:
                        running.append(self._start(job))
                time.sleep(0.1)
                for r in list(running):
                    now = time.monotonic()
                    timed_out = None
                    if r.proc.poll() is None:
                        if now >= r.job.deadline:
                            timed_out = "deadline"
                        elif now - r.t0 >= r.job.cap_s:
                            timed_out = "cap"
                        else:
                            continue
                        kill_tree(r.proc)
                    running.remove(r)
                    r.job.on_done(self._finish(r, timed_out))
        finally:
            for r in running:
                kill_tree(r.proc)



def judged(judge: Callable[..., None], item: dict[str, Any], plan: Plan, sec: Section,
            rec: dict[str, Any]) -> None:
    """Judge a finished run; a failure to read it is that item's error, not the section's."""
    try:
        judge(item, rec, plan)
    except Exception as err:  # noqa: BLE001
        item.update(status="error", error=f"reading the run folder: {one_line(err)}",
                    traceback=traceback.format_exc()[-2000:])
    announce_done(sec.name, item)
    sec.save()


def announce_start(section: str, item: dict[str, Any]) -> None:
    item["status"] = "running"
    print(f"--- {section} {item['name']}: started", flush=True)


def announce_done(section: str, item: dict[str, Any]) -> None:
    extra = f" ({item.get('error') or item.get('reason')})" if item.get("status") != "ok" else ""
    what = (f"{item.get('epochs_done')} epochs, best val acc {item.get('best_val_acc')}, "
            f"{item.get('s_per_epoch')} s/epoch") if "epochs_done" in item else \
        f"{item.get('images_per_sec') or 0:.0f} img/s, losses finite {item.get('losses_finite')}"
    print(f"--- {section} {item['name']}: {item['status']}, {what}, {item.get('wall_s', 0):.0f} s{extra}", flush=True)

