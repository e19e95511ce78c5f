#!/usr/bin/env python
"""One command, at most 8 minutes on one GPU: the figures the CPU benchmarks cannot give.

    python bench/device_check.py --device cuda --out bench/results/device_check
    python bench/device_check.py --device cpu --quick --out /tmp/device_check    # CI: ~1 min, idle cores
    python bench/device_check.py --device cuda --only time_to_accuracy --out ...  # redo one section

Sections, most important first, so that a run cut off early still leaves the first ones.
OUT/device_check.json and OUT/device_check.md (one Markdown table per section) are
rewritten after every section and after every smoke run:

1. ``smoke``: every method through the real trainer (``launch/train.py`` as a subprocess,
   under ``torchrun --standalone`` on CUDA), one short epoch on synthetic data, bf16 +
   channels_last (+ ``train.sync_bn`` on CUDA); vanilla and DReg also with fp16 + grad
   scaler and with ``train.compile``. Checked from the run folder: exit status 0, finite
   losses in ``metrics.jsonl``, images/s > 0, ``summary.json`` written.
2. ``dreg_overhead``: DReg step time over vanilla for resnet18 / vgg16 / mobilenet_v2 at
   batch 512, eager then compiled, next to the FLOP floor (``bench/dreg_overhead.py``).
3. ``trainer_vs_bare``: trainer images/s over a bare loop, same model, batch and precision
   (``bench/trainer_overhead.py`` with one worker).
4. ``input_pipeline``: the (GPU-resident) CIFAR data path alone over what the model
   consumes (``bench/input_pipeline.py``).
5. ``memory``: peak memory of a DReg step over a vanilla one (``bench/memory.py``).
6. ``time_to_accuracy``: ResNet18 on the CIFAR-10 copy, vanilla vs DReg at its defaults,
   global batch 4096, as many epochs as the time left allows (the same for both):
   accuracy reached, seconds per epoch, time to the accuracy both reached.

Time: ``--budget-s`` (default 480) is the whole run. Each section but the last gets a
share of it and is interrupted at its deadline (an alarm; child processes are killed
with everything they started); the last one gets what is left. Whatever did not fit is
recorded as "skipped: out of time". An exception in a section is recorded (one line, plus
a traceback tail) and the script goes on. Exit status: 0 when every section that ran
finished without error, 1 otherwise, 2 for a bad command line.

The trainer is used only through its command line (config keys, run-folder files): its
Python modules, the methods and the config are being refactored. Method hyperparameters
are left at their defaults (only ``method=NAME`` and ``train.* model.* data.* optim.*
log.*`` keys are passed). The benchmark modules of sections 2 - 5 are imported inside
their section: they use ``dreg_dist.config.schema`` / ``dreg_dist.data`` /
``dreg_dist.optim`` themselves, and a break there fails that section only.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)
import torch

from _common import REPO, kill_tree, machine, subprocess_env

METHODS = ["vanilla", "dreg", "gradnorm", "fisher", "sam", "extragradient", "gradientmix"]
SECTIONS = ["smoke", "dreg_overhead", "trainer_vs_bare", "input_pipeline", "memory", "time_to_accuracy"]
TITLES = {
    "smoke": "1. Smoke run of every method through the trainer",
    "dreg_overhead": "2. DReg step overhead over vanilla, next to the FLOP floor",
    "trainer_vs_bare": "3. Trainer vs bare loop",
    "input_pipeline": "4. Data path alone vs what the model consumes",
    "memory": "5. Peak memory, DReg over vanilla",
    "time_to_accuracy": "6. Time to accuracy, vanilla vs DReg (ResNet18, CIFAR-10, global batch 4096)",
}
SHARES = {"smoke": 0.45, "dreg_overhead": 0.17, "trainer_vs_bare": 0.06, "input_pipeline": 0.03, "memory": 0.06,
          "time_to_accuracy": 0.23}
"""Each section's part of the time: of the time left when it starts, it may take its share
over the sum of its own and the later sections' shares, so that time an early section did
not use goes to the later ones in proportion. The last section takes all that is left.
Guesses for an H200 (no GPU was at hand when they were set): the smoke section holds 11
trainer launches, two of them compiling; resnet18 at 4096 should get ~10 epochs in ~110 s."""
DEFAULT_CIFAR_ROOT = REPO.parent / "shared" / "data"
METHOD_NOTES = {
    "gradientmix": "1 worker: a plain averaging step (no other worker to mix with)",
    "extragradient": "1 worker: the local extrapolation gradient is the global one",
    "sam": "1 worker: m-sharpness with m = the whole batch",
}
OUT_OF_TIME = "skipped: out of time"


class SectionTimeout(BaseException):
    """Raised by the alarm at a section's deadline (BaseException: no ``except Exception``
    in benchmark code may swallow it)."""


# --------------------------------------------------------------------------- sizes
@dataclass
class Plan:
    """Sizes of one profile: ``gpu`` (CUDA, the real check), ``quick`` (CI), ``cpu``."""

    profile: str
    amp: str
    """Autocast of the benchmark sections (the smoke runs set their own)."""
    channels_last: bool
    smoke_arch: str
    smoke_batch: int
    smoke_steps: int
    smoke_log_every: int
    smoke_eval_size: int
    smoke_timeout_s: float
    smoke_compile: bool
    smoke_min_s: float
    """Least time a smoke run is started with (else: out of time)."""
    compile_min_s: float
    archs: list[str]
    batch: int
    overhead_round_budget_s: float
    overhead_steps_per_round: int
    overhead_rounds: int
    overhead_max_rounds: int
    overhead_compile: bool
    overhead_min_s: float
    trainer_arch: str
    trainer_batch: int
    trainer_steps: int
    trainer_pairs: int
    input_models: str
    input_batch: int
    input_rounds: int
    input_data_batches: int
    input_model_steps: int
    input_synthetic_size: int
    """Training images of the synthetic stand-in when there is no CIFAR-10 copy."""
    memory_repeats: int
    memory_min_s: float
    tta_arch: str
    tta_batch: int
    tta_synthetic: bool
    tta_fixed_epochs: Optional[int]
    """Quick profile: this many epochs instead of what fits."""
    tta_max_epochs: int
    tta_startup_s: float
    """Fallback estimate of a trainer launch's fixed cost (start, data load, test, export)."""
    notes: list[str] = field(default_factory=list)


def make_plan(device: str, quick: bool) -> Plan:
    if quick:
        return Plan(
            profile="quick", amp="bf16" if device == "cuda" else "none", channels_last=device == "cuda",
            smoke_arch="cnn_tiny", smoke_batch=32, smoke_steps=6, smoke_log_every=2, smoke_eval_size=32,
            smoke_timeout_s=120.0, smoke_compile=False, smoke_min_s=5.0, compile_min_s=60.0,
            archs=["cnn_tiny"], batch=8, overhead_round_budget_s=0.5, overhead_steps_per_round=1, overhead_rounds=2,
            overhead_max_rounds=3, overhead_compile=False, overhead_min_s=3.0,
            trainer_arch="cnn_tiny", trainer_batch=8, trainer_steps=40, trainer_pairs=1,
            input_models="cnn_tiny", input_batch=32, input_rounds=2, input_data_batches=10, input_model_steps=1,
            input_synthetic_size=2048, memory_repeats=1, memory_min_s=5.0,
            tta_arch="cnn_tiny", tta_batch=64, tta_synthetic=True, tta_fixed_epochs=2, tta_max_epochs=2,
            tta_startup_s=6.0,
            notes=["--quick: tiny sizes that only exercise the code paths; the figures mean nothing",
                   "--quick: train.compile is not run (compilation alone takes longer than the whole check)"],
        )
    if device == "cuda":
        return Plan(
            profile="gpu", amp="bf16", channels_last=True,
            smoke_arch="resnet18", smoke_batch=512, smoke_steps=30, smoke_log_every=10, smoke_eval_size=512,
            smoke_timeout_s=150.0, smoke_compile=True, smoke_min_s=15.0, compile_min_s=45.0,
            archs=["resnet18", "vgg16", "mobilenet_v2"], batch=512, overhead_round_budget_s=4.0,
            overhead_steps_per_round=10, overhead_rounds=5, overhead_max_rounds=30, overhead_compile=True,
            overhead_min_s=8.0,
            trainer_arch="resnet18", trainer_batch=512, trainer_steps=80, trainer_pairs=2,
            input_models="resnet18", input_batch=512, input_rounds=5, input_data_batches=50, input_model_steps=5,
            input_synthetic_size=20000, memory_repeats=1, memory_min_s=10.0,
            tta_arch="resnet18", tta_batch=4096, tta_synthetic=False, tta_fixed_epochs=None, tta_max_epochs=40,
            tta_startup_s=25.0,
        )
    # A full run on CPU: the sizes of the CPU benchmarks (bench/README.md); most sections
    # will not fit in 8 minutes on 2 cores and say so.
    return Plan(
        profile="cpu", amp="none", channels_last=False,
        smoke_arch="cnn_small", smoke_batch=64, smoke_steps=30, smoke_log_every=10, smoke_eval_size=64,
        smoke_timeout_s=240.0, smoke_compile=True, smoke_min_s=10.0, compile_min_s=90.0,
        archs=["resnet18", "vgg16", "mobilenet_v2"], batch=32, overhead_round_budget_s=10.0,
        overhead_steps_per_round=1, overhead_rounds=3, overhead_max_rounds=10, overhead_compile=True,
        overhead_min_s=20.0,
        trainer_arch="cnn_small", trainer_batch=32, trainer_steps=40, trainer_pairs=1,
        input_models="cnn_small", input_batch=32, input_rounds=3, input_data_batches=50, input_model_steps=1,
        input_synthetic_size=20000, memory_repeats=1, memory_min_s=20.0,
        tta_arch="cnn_tiny", tta_batch=4096, tta_synthetic=False, tta_fixed_epochs=None, tta_max_epochs=10,
        tta_startup_s=15.0,
    )


# --------------------------------------------------------------------------- report
class Report:
    """The JSON document and its Markdown rendering, rewritten after every section."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {"meta": meta, "sections": {s: {"status": "pending"} for s in SECTIONS}}

    def section(self, name: str) -> dict[str, Any]:
        return self.data["sections"][name]

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.data["meta"]["written_at_s"] = round(time.monotonic() - self.data["meta"]["_t0"], 1)
        doc = {**self.data, "meta": {k: v for k, v in self.data["meta"].items() if not k.startswith("_")}}
        _atomic_write(self.out / "device_check.json", json.dumps(doc, indent=2, default=str) + "\n")
        _atomic_write(self.out / "device_check.md", render_markdown(doc))


def _atomic_write(path: Path, text: str) -> None:
    # A run killed while writing must not leave a truncated file behind.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def one_line(err: BaseException) -> str:
    """The error in one line: a trainer's ``error: ...`` line if there is one, else the first
    line of the message and, for a message with output in it, its last line (the exception)."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    line = next((ln for ln in reversed(lines) if ln.startswith("error:")), None)
    if line is None:
        line = lines[0] if lines else ""
        if len(lines) > 1:
            line += " ... " + lines[-1]
    return f"{type(err).__name__}: {line}"[:500]


def stderr_error(stdout: str, stderr: str) -> str:
    """The line that says what went wrong in a failed trainer's output."""
    lines = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
    for prefix in ("error:", "Error", "RuntimeError", "ValueError", "AssertionError", "torch."):
        hits = [ln for ln in lines if ln.startswith(prefix) or (prefix != "error:" and f"{prefix}:" in ln)]
        if hits:
            return hits[-1][:500]
    return lines[-1][:500] if lines else "(no output)"


# --------------------------------------------------------------------------- sections
class Section:
    """What a section function gets: its deadline, its items and a way to save progress."""

    def __init__(self, name: str, record: dict[str, Any], deadline: float, report: Report) -> None:
        self.name = name
        self.record = record
        self.deadline = deadline
        self.report = report
        self.record.setdefault("items", [])
        self.record.setdefault("notes", [])

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def plan(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Register the items up front (status pending) so that a cut-off leaves them named."""
        for item in items:
            item.setdefault("status", "pending")
            self.record["items"].append(item)
        self.save()
        return list(self.record["items"])

    def save(self) -> None:
        self.report.write()


def _alarm(signum: int, frame: Any) -> None:
    raise SectionTimeout()


def run_section(name: str, fn: Callable[[Section], None], report: Report, end: float,
                fraction: float, min_s: float) -> None:
    """Run one section under its deadline (``fraction`` of the time left before ``end``);
    record ok / error / partial / cut off / skipped."""
    record = report.section(name)
    now = time.monotonic()
    deadline = now + fraction * max(0.0, end - now)
    record.clear()
    record.update(status="running", budget_s=round(deadline - now, 1))
    if deadline - now < min_s:
        record.update(status="skipped", reason=f"{OUT_OF_TIME} (its part of the {max(0.0, end - now):.0f} s left is "
                                             f"{max(0.0, deadline - now):.0f} s; it needs at least {min_s:.0f} s)")
        report.write()
        print(f"=== {name}: {record['reason']}", flush=True)
        return
    print(f"=== {name}: up to {deadline - now:.0f} s", flush=True)
    sec = Section(name, record, deadline, report)
    report.write()
    # The alarm fires a little after the deadline: items check the time themselves first
    # and skip cleanly; the alarm is for an item that overruns (a slow compile, a hang).
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, deadline - now + 1.0))
    interrupted: Optional[str] = None
    try:
        try:
            fn(sec)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except SectionTimeout:
        interrupted = "out of time: interrupted at the section's deadline"
        record["status"] = "cut off"
        record["reason"] = interrupted
    except Exception as err:  # noqa: BLE001  (any failure is a result; the next section still runs)
        interrupted = one_line(err)
        record["status"] = "error"
        record["error"] = interrupted
        record["traceback"] = traceback.format_exc()[-3000:]
    else:
        errors = [i for i in record["items"] if i.get("status") == "error"]
        if errors:
            record["status"] = "error"
            record["error"] = f"{len(errors)} of {len(record['items'])} item(s) failed; first: " \
                              f"{errors[0].get('name')}: {errors[0].get('error')}"
        elif record["items"] and all(str(i.get("status", "")).startswith("skipped") for i in record["items"]):
            record["status"] = "skipped"
            record.setdefault("reason", record["items"][0]["status"])
        elif any(i.get("status") in ("cut off", OUT_OF_TIME) for i in record["items"]):
            record["status"] = "partial"
            record.setdefault("reason", "some items did not fit in the section's time (see their status)")
        else:
            record["status"] = "ok"
    finally:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    for item in record["items"]:
        if item.get("status") == "running":
            if record["status"] == "error":
                item.update(status="error", error=interrupted)
            else:
                item.update(status="cut off", reason=interrupted)
        elif item.get("status") == "pending":
            item.update(status=OUT_OF_TIME if record["status"] == "cut off" else "skipped: an earlier item failed")
    record["elapsed_s"] = round(time.monotonic() - now, 1)
    _release_memory()
    report.write()
    print(f"=== {name}: {record['status']} in {record['elapsed_s']:.0f} s"
          + (f" ({record.get('error') or record.get('reason')})" if record["status"] != "ok" else ""), flush=True)


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# ------------------------------------------------------------- trainer runs (CLI only)
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


def smoke_overrides(args: argparse.Namespace, plan: Plan, method: str, amp: str, compile_: bool) -> list[str]:
    gb = plan.smoke_batch
    ov = [f"method={method}", f"model.arch={plan.smoke_arch}", "model.num_classes=10",
          "data.name=synthetic", f"data.synthetic_train_size={plan.smoke_steps * gb + plan.smoke_eval_size}",
          f"data.val_size={plan.smoke_eval_size}", f"data.synthetic_test_size={plan.smoke_eval_size}",
          f"train.global_batch_size={gb}", "train.epochs=1", f"train.amp={amp}", "train.channels_last=true",
          f"train.compile={'true' if compile_ else 'false'}", f"train.device={args.device}", "train.seed=0",
          "optim.warmup_epochs=0", f"log.every_steps={plan.smoke_log_every}", "log.tensorboard=false",
          "log.progress=off"]
    if args.device == "cuda":
        ov.append("train.sync_bn=true")
    return ov


def section_smoke(sec: Section, args: argparse.Namespace, plan: Plan, runner: TrainerRunner) -> None:
    cuda = args.device == "cuda"
    if cuda:
        sec.record["notes"].append(
            f"launched with torchrun --standalone --nproc_per_node={args.nproc}, train.sync_bn=true"
            + ("" if args.nproc > 1 else
               "; with one process the trainer as this script was written forms no process group "
               "(dreg_dist/distributed/env.py: backend None at world size 1) and converts no BatchNorm "
               "(train.sync_bn applies at world size > 1 only), so NCCL and SyncBatchNorm are NOT exercised: "
               "--nproc 2 on a 2-GPU machine does"))
    else:
        sec.record["notes"].append("CPU: train.sync_bn not set (SyncBatchNorm is GPU-only; with one process the "
                                   "trainer ignores it); fp16 is a config error on CPU")
    sec.record["notes"].append(f"{plan.smoke_arch}, global batch {plan.smoke_batch}, {plan.smoke_steps} steps "
                               f"(one epoch of synthetic data), log every {plan.smoke_log_every} steps; "
                               "images/s over the windows after the first; method hyperparameters at their defaults; "
                               "gradnorm and fisher refuse train.compile (double backprop), so only vanilla and DReg "
                               "are compiled")
    specs: list[dict[str, Any]] = []
    for m in METHODS:
        specs.append({"name": f"{m} bf16", "method": m, "amp": "bf16", "compile": False})
    for m in ("vanilla", "dreg"):
        specs.append({"name": f"{m} fp16+scaler", "method": m, "amp": "fp16", "compile": False})
    for m in ("vanilla", "dreg"):
        specs.append({"name": f"{m} bf16 compile", "method": m, "amp": "bf16", "compile": True})
    for s in specs:
        s["channels_last"] = True
        s["sync_bn"] = cuda
        if s["method"] in METHOD_NOTES:
            s["note"] = METHOD_NOTES[s["method"]]
    items = sec.plan(specs)
    jobs = []
    for item in items:
        if item["amp"] == "fp16" and not cuda:
            item["status"] = "skipped: train.amp=fp16 needs CUDA (a config error on CPU)"
            continue
        if item["compile"] and not plan.smoke_compile:
            item["status"] = "skipped: --quick (train.compile takes minutes to compile)"
            continue
        jobs.append(Job(
            name=item["name"], overrides=smoke_overrides(args, plan, item["method"], item["amp"], item["compile"]),
            deadline=sec.deadline, cap_s=plan.smoke_timeout_s * (2 if item["compile"] else 1),
            min_s=plan.compile_min_s if item["compile"] else plan.smoke_min_s,
            on_start=functools.partial(_started, "smoke", item),
            on_done=functools.partial(_judged, judge_smoke, item, plan, sec),
            on_skip=functools.partial(item.update, status=OUT_OF_TIME)))
    sec.save()
    runner.run(jobs, parallel=args.jobs)


def _judged(judge: Callable[..., None], item: dict[str, Any], plan: Plan, sec: Section,
            rec: dict[str, Any]) -> None:
    """Judge a finished run; a failure to read it is that item's error, not the section's."""
    try:
        judge(item, rec, plan)
    except Exception as err:  # noqa: BLE001
        item.update(status="error", error=f"reading the run folder: {one_line(err)}",
                    traceback=traceback.format_exc()[-2000:])
    _done(sec.name, item)
    sec.save()


def _started(section: str, item: dict[str, Any]) -> None:
    item["status"] = "running"
    print(f"--- {section} {item['name']}: started", flush=True)


def _done(section: str, item: dict[str, Any]) -> None:
    extra = f" ({item.get('error') or item.get('reason')})" if item.get("status") != "ok" else ""
    what = (f"{item.get('epochs_done')} epochs, best val acc {item.get('best_val_acc')}, "
            f"{item.get('s_per_epoch')} s/epoch") if "epochs_done" in item else \
        f"{item.get('images_per_sec') or 0:.0f} img/s, losses finite {item.get('losses_finite')}"
    print(f"--- {section} {item['name']}: {item['status']}, {what}, {item.get('wall_s', 0):.0f} s{extra}", flush=True)


def judge_smoke(item: dict[str, Any], rec: dict[str, Any], plan: Plan) -> None:
    run_dir = Path(rec["run_dir"])
    figures = train_figures(run_dir, rec["records"], plan.smoke_batch)
    item.update(figures)
    item.update({k: rec[k] for k in ("launcher", "overrides", "exit_code", "wall_s") if k in rec})
    summary = rec.get("summary")
    if summary:
        item["test_acc"] = (summary.get("test") or {}).get("acc")
        item["summary_status"] = summary.get("status")
    if rec.get("timed_out_after_s") is not None:
        if rec.get("timeout_was_section_deadline"):
            item.update(status="cut off", reason=f"out of time: killed after {rec['timed_out_after_s']:.0f} s "
                                                 "at the section's deadline")
        else:
            item.update(status="error", error=f"timed out after {rec['timed_out_after_s']:.0f} s",
                        output_tail=rec.get("output_tail"))
        return
    problems = []
    if rec["exit_code"] != 0:
        problems.append(f"exit {rec['exit_code']}: {rec.get('error')}")
    else:
        if not figures["losses_finite"]:
            problems.append(f"losses not finite (or none logged): {figures['final_losses']}")
        ips = figures.get("images_per_sec")
        if not (isinstance(ips, (int, float)) and ips > 0):
            problems.append(f"images/s {ips!r}")
        if not summary:
            problems.append("no summary.json")
    if problems:
        item.update(status="error", error="; ".join(problems))
        if rec.get("output_tail"):
            item["output_tail"] = rec["output_tail"]
    else:
        item["status"] = "ok"


def section_overhead(sec: Section, args: argparse.Namespace, plan: Plan) -> None:
    import dreg_overhead

    sec.record["notes"].append(
        f"batch {plan.batch}, {plan.amp if plan.amp != 'none' else 'fp32'}"
        f"{', channels_last' if plan.channels_last else ''}; step = fwd + loss + bwd + SGD step; interleaved rounds "
        f"of {plan.overhead_steps_per_round} step(s), {'wall' if args.device == 'cuda' else 'CPU'} clock; "
        "compiled: torch.compile of both models, the optimizer step stays eager")
    items = sec.plan([{"name": f"{a} {mode}", "arch": a, "mode": mode}
                      for mode in ("eager", "compiled") for a in plan.archs])
    base = ["--device", args.device, "--batch", str(plan.batch), "--rounds", str(plan.overhead_rounds),
            "--max-rounds", str(plan.overhead_max_rounds), "--budget-s", str(plan.overhead_round_budget_s),
            "--steps-per-round", str(plan.overhead_steps_per_round), "--amp", plan.amp]
    if plan.channels_last:
        base.append("--channels-last")
    for item in items:
        compiled = item["mode"] == "compiled"
        if compiled and not plan.overhead_compile:
            item["status"] = "skipped: --quick (compilation takes minutes)"
            continue
        if sec.left() < (plan.compile_min_s if compiled else plan.overhead_min_s):
            item["status"] = OUT_OF_TIME
            continue
        item["status"] = "running"
        print(f"--- dreg_overhead {item['name']}", flush=True)
        try:
            a = dreg_overhead.parse_args([*base, "--archs", item["arch"], *(["--compile"] if compiled else [])])
            r = dreg_overhead.run_arch(item["arch"], a)
            r.pop("times_s", None)
            item.update(r, status="ok")
        except Exception as err:  # noqa: BLE001
            item.update(status="error", error=one_line(err), traceback=traceback.format_exc()[-2000:])
        finally:
            if compiled:
                torch._dynamo.reset()
            _release_memory()
        sec.save()


def section_trainer(sec: Section, args: argparse.Namespace, plan: Plan) -> None:
    import trainer_overhead

    (item,) = sec.plan([{"name": f"{plan.trainer_arch} x{plan.trainer_batch}", "arch": plan.trainer_arch}])
    item["status"] = "running"
    argv = ["--arch", plan.trainer_arch, "--batch", str(plan.trainer_batch), "--k", "1",
            "--steps", str(plan.trainer_steps), "--pairs", str(plan.trainer_pairs), "--device", args.device,
            "--amp", plan.amp, "--timeout", str(max(1.0, sec.left()))]
    a = trainer_overhead.parse_args(argv)
    sec.record["notes"].append(
        f"one process (no process group), DReg {plan.trainer_arch} at batch {plan.trainer_batch}, "
        f"{plan.amp if plan.amp != 'none' else 'fp32'}; trainer = configs/quickstart.yaml on synthetic data with "
        f"its data path, logging and checkpoints; {plan.trainer_steps} steps per run, the first "
        f"{trainer_overhead.LOG_EVERY} excluded; bare = bench/ddp_loop.py on tensors already in memory")
    try:
        r = trainer_overhead.measure(a)
    except subprocess.TimeoutExpired:
        item.update(status="cut off", reason="out of time: the job was killed at the section's deadline")
        return
    item.update(r, status="ok")


def section_input(sec: Section, args: argparse.Namespace, plan: Plan) -> None:
    import input_pipeline

    (item,) = sec.plan([{"name": f"data vs {plan.input_models}"}])
    item["status"] = "running"
    argv = ["--models", plan.input_models, "--batch", str(plan.input_batch), "--rounds", str(plan.input_rounds),
            "--data-batches", str(plan.input_data_batches), "--model-steps", str(plan.input_model_steps),
            "--device", args.device, "--cifar-root", str(args.cifar_root), "--amp", plan.amp,
            "--synthetic-size", str(plan.input_synthetic_size)]
    if plan.channels_last:
        argv.append("--channels-last")
    a = input_pipeline.parse_args(argv)
    r = input_pipeline.run(a)
    r.pop("summary_parts", None)
    item.update(r, status="ok", batch=plan.input_batch)
    where = "resident on the GPU, augmented there" if args.device == "cuda" else "in CPU memory"
    sec.record["notes"].append(f"data: {r['source']} ({where}), batch {plan.input_batch}; model side: dual-path "
                               f"training step at the same batch, {plan.amp if plan.amp != 'none' else 'fp32'}")


def section_memory(sec: Section, args: argparse.Namespace, plan: Plan) -> None:
    import memory

    metric = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "allocator peak of a profiled step"
    sec.record["notes"].append(f"fresh process per measurement, batch {plan.batch}, "
                               f"{plan.amp if plan.amp != 'none' else 'fp32'}; metric: {metric}")
    items = sec.plan([{"name": a, "arch": a} for a in plan.archs])
    for item in items:
        if sec.left() < plan.memory_min_s:
            item["status"] = OUT_OF_TIME
            continue
        item["status"] = "running"
        print(f"--- memory {item['arch']}", flush=True)
        argv = ["--archs", item["arch"], "--batch", str(plan.batch), "--repeats", str(plan.memory_repeats),
                "--device", args.device, "--amp", plan.amp, "--timeout", str(max(1.0, sec.left()))]
        if plan.channels_last:
            argv.append("--channels-last")
        try:
            r = memory.run_arch(item["arch"], memory.parse_args(argv))
            item.update(r, status="ok")
        except subprocess.TimeoutExpired:
            item.update(status="cut off", reason="out of time: killed at the section's deadline")
        except Exception as err:  # noqa: BLE001
            item.update(status="error", error=one_line(err))
        sec.save()


# ------------------------------------------------------------------ time to accuracy
def _smoke_ips(report: Report, arch: str, method: str) -> Optional[float]:
    for item in report.section("smoke").get("items", []):
        if item.get("method") == method and item.get("status") == "ok" and item.get("amp") == "bf16" \
                and not item.get("compile") and f"model.arch={arch}" in item.get("overrides", []):
            return item.get("images_per_sec")
    return None


def _startup_estimate(report: Report, plan: Plan) -> float:
    """Fixed cost of one trainer launch, from the smoke runs (wall time minus the training)."""
    costs = []
    for item in report.section("smoke").get("items", []):
        if item.get("status") == "ok" and not item.get("compile") and item.get("images_per_sec"):
            costs.append(item["wall_s"] - plan.smoke_steps * plan.smoke_batch / item["images_per_sec"])
    return max(plan.tta_startup_s, statistics.median(costs) + 10.0) if costs else plan.tta_startup_s


def tta_curve(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Validation accuracy per epoch, seconds since the run's start, seconds per epoch."""
    start = next((r["time"] for r in records if r.get("kind") == "start"), None)
    vals = [r for r in records if r.get("kind") == "val"]
    curve = []
    prev = start
    for r in vals:
        accs = [v for k, v in r.items() if (k == "acc" or k.startswith("acc_")) and isinstance(v, (int, float))]
        curve.append({"epoch": r.get("epoch"), "elapsed_s": round(r["time"] - start, 2) if start else None,
                      "epoch_s": round(r["time"] - prev, 2) if prev else None,
                      "acc": max(accs) if accs else None, "best_acc": r.get("best_acc")})
        prev = r["time"]
    epoch_s = [c["epoch_s"] for c in curve if c["epoch_s"] is not None]
    return {
        "curve": curve,
        "epochs_done": len(curve),
        "best_val_acc": max((c["best_acc"] for c in curve if c["best_acc"] is not None), default=None),
        "first_epoch_s": epoch_s[0] if epoch_s else None,
        # The first epoch holds the warm-up (allocator, cuDNN autotuning): left out when there are others.
        "s_per_epoch": statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else (epoch_s[0] if epoch_s else None),
    }


def judge_tta(item: dict[str, Any], rec: dict[str, Any], plan: Optional[Plan] = None) -> None:
    item.update(tta_curve(rec["records"]), exit_code=rec.get("exit_code"), wall_s=rec["wall_s"])
    summary = rec.get("summary")
    if summary:
        item["test_acc"] = (summary.get("test") or {}).get("acc")
        item["images_per_sec"] = summary.get("images_per_sec")
    if rec.get("timed_out_after_s") is not None:
        # Killed at the deadline: the epochs done so far are still results.
        item.update(status="cut off", reason=f"out of time: killed after {rec['timed_out_after_s']:.0f} s, "
                                             f"{item['epochs_done']} of {item.get('epochs_planned')} epochs done")
    elif rec.get("exit_code") != 0:
        item.update(status="error", error=f"exit {rec.get('exit_code')}: {rec.get('error')}",
                    output_tail=rec.get("output_tail"))
    else:
        item["status"] = "ok"


def section_tta(sec: Section, args: argparse.Namespace, plan: Plan, runner: TrainerRunner, report: Report) -> None:
    cifar = Path(args.cifar_root)
    synthetic = plan.tta_synthetic
    if not synthetic and not (cifar / "cifar-10-batches-py").is_dir():
        raise FileNotFoundError(f"no CIFAR-10 at {cifar} (cifar-10-batches-py/ missing): pass --cifar-root")
    gb = plan.tta_batch
    if synthetic:
        data = ["data.name=synthetic", f"data.synthetic_train_size={10 * gb + 64}", "data.val_size=64",
                "data.synthetic_test_size=64", "data.synthetic_noise=4.0"]
        train_images = 10 * gb
    else:
        data = ["data.name=cifar10", f"data.root={cifar}", "data.val_size=5000"]
        train_images = 45000
    steps_per_epoch = train_images // gb
    items = sec.plan([{"name": m, "method": m} for m in ("vanilla", "dreg")])
    # How many epochs fit: the same number for both (a fair comparison), from the images/s
    # the smoke runs measured (same arch at batch 512: an under-estimate at 4096, i.e. safe).
    startup = _startup_estimate(report, plan)
    smoke_ips = {m: _smoke_ips(report, plan.tta_arch, m) for m in ("vanilla", "dreg")}
    guess = 3.0 if args.device == "cuda" else 60.0
    # Seconds per epoch: training at the smoke runs' rate, 15% margin, plus validation.
    est = {m: (1.15 * steps_per_epoch * gb / ips + 0.5) if ips else guess for m, ips in smoke_ips.items()}
    if plan.tta_fixed_epochs is not None:
        epochs = plan.tta_fixed_epochs
        how = f"fixed by the {plan.profile} profile"
    else:
        if not all(smoke_ips.values()):
            how_ips = f"no smoke figure for {plan.tta_arch}: guessed {guess:.0f} s/epoch"
        else:
            how_ips = f"from the smoke runs' images/s of {plan.tta_arch}"
        avail = sec.left() - 10.0 - 2 * startup
        epochs = min(plan.tta_max_epochs, int(avail / (est["vanilla"] + est["dreg"])))
        how = (f"as many as fit in {sec.left():.0f} s: ~{est['vanilla']:.1f} / {est['dreg']:.1f} s per epoch "
               f"(vanilla / dreg; {how_ips}) + ~{startup:.0f} s per launch; at most {plan.tta_max_epochs}")
    sec.record["plan"] = {"epochs": epochs, "how": how, "global_batch": gb, "steps_per_epoch": steps_per_epoch,
                          "data": "synthetic" if synthetic else f"cifar10 at {cifar}"}
    if epochs < 1:
        for item in items:
            item["status"] = OUT_OF_TIME
        sec.record["reason"] = f"{OUT_OF_TIME}: not one epoch of each fits ({how})"
        return
    warmup = 0 if epochs < 3 else min(5, max(1, epochs // 5))
    sec.record["notes"].append(
        f"{plan.tta_arch}, {'synthetic data' if synthetic else 'CIFAR-10 (45,000 train / 5,000 val)'}, global batch "
        f"{gb}, {epochs} epochs ({how}), optim.lr {args.tta_lr} per 256 images scaled linearly, "
        f"{warmup} warm-up epoch(s) then cosine, {plan.amp if plan.amp != 'none' else 'fp32'}"
        f"{', channels_last' if plan.channels_last else ''}, eager; DReg at its defaults")
    jobs = []
    for item in items:
        m = item["method"]
        ov = [f"method={m}", f"model.arch={plan.tta_arch}", "model.num_classes=10", *data,
              f"train.global_batch_size={gb}", f"train.epochs={epochs}", f"train.amp={plan.amp}",
              f"train.channels_last={'true' if plan.channels_last else 'false'}", f"train.device={args.device}",
              "train.seed=0", f"optim.lr={args.tta_lr}", f"optim.warmup_epochs={warmup}",
              f"log.every_steps={max(1, steps_per_epoch // 2)}", "log.tensorboard=false", "log.progress=off"]
        item.update(overrides=ov, epochs_planned=epochs)
        # Run one after the other, vanilla leaving DReg its estimated share of the time.
        reserve = startup + epochs * est["dreg"] if (m == "vanilla" and args.jobs == 1) else 0.0
        jobs.append(Job(name=f"tta_{m}", overrides=ov, deadline=sec.deadline - reserve,
                        cap_s=float("inf"), min_s=0.5 * startup,
                        on_start=functools.partial(_started, "time_to_accuracy", item),
                        on_done=functools.partial(_judged, judge_tta, item, plan, sec),
                        on_skip=functools.partial(item.update, status=OUT_OF_TIME)))
    sec.save()
    runner.run(jobs, parallel=args.jobs)
    done = [i for i in items if i.get("best_val_acc") is not None]
    if len(done) == 2:
        target = min(i["best_val_acc"] for i in done)
        sec.record["target_acc"] = target
        for i in done:
            hit = next((c for c in i["curve"] if c["best_acc"] is not None and c["best_acc"] >= target), None)
            i["time_to_target_s"] = hit["elapsed_s"] if hit else None
            i["epochs_to_target"] = hit["epoch"] if hit else None


# --------------------------------------------------------------------------- markdown
def _fmt(v: Any, digits: int = 1, pct: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            return str(v)
        return f"{100 * v:.{digits}f}%" if pct else f"{v:,.{digits}f}"
    return str(v)


def _status(item: dict[str, Any]) -> str:
    s = str(item.get("status", "pending"))
    if s == "error":
        return f"**error**: {str(item.get('error', ''))[:160]}".replace("|", "/")
    if s == "cut off":
        return f"cut off ({item.get('reason', '')})".replace("|", "/")
    return s.replace("|", "/")


def _table(header: Sequence[str], rows: Iterator[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _md_smoke(items: list[dict[str, Any]]) -> list[str]:
    def row(i: dict[str, Any]) -> list[str]:
        losses = ", ".join(f"{k} {v:.3g}" for k, v in (i.get("final_losses") or {}).items())
        return [i["name"], i["method"], i["amp"] + (" + scaler" if i["amp"] == "fp16" else ""),
                "yes" if i.get("compile") else "no", "yes" if i.get("sync_bn") else "no", _status(i),
                _fmt(i.get("images_per_sec"), 0), _fmt(i.get("losses_finite")) if i.get("train_records") else "-",
                losses or "-", _fmt(i.get("wall_s"), 0), i.get("note", "")]
    return _table(["run", "method", "amp", "compile", "sync_bn", "status", "images/s", "losses finite",
                   "final losses", "wall s", "note"], (row(i) for i in items))


def _md_overhead(items: list[dict[str, Any]]) -> list[str]:
    def row(i: dict[str, Any]) -> list[str]:
        ms = i.get("ms_per_step") or {}
        clock = i.get("clock", "wall")
        return [i["arch"], i["mode"], i.get("layer", "-"), _fmt(i.get("batch"), 0),
                _fmt((ms.get("vanilla") or {}).get(clock), 2), _fmt((ms.get("dreg") or {}).get(clock), 2),
                (f"{i['measured_pct']:+.1f}%" if "measured_pct" in i else "-"),
                (f"+{i['floor_pct']:.1f}%" if "floor_pct" in i else "-"),
                (f"{i['gap_pp']:+.1f}" if "gap_pp" in i else "-"), _fmt(i.get("rounds"), 0), _status(i)]
    return _table(["arch", "mode", "DReg layer", "batch", "vanilla ms/step", "dreg ms/step", "overhead",
                   "FLOP floor", "gap pp (target <= 3)", "rounds", "status"], (row(i) for i in items))


def _md_trainer(items: list[dict[str, Any]]) -> list[str]:
    def row(i: dict[str, Any]) -> list[str]:
        pairs = ", ".join(f"{p['ratio']:.3f}" for p in i.get("pairs", []))
        return [i["name"], _fmt(i.get("trainer_images_per_sec"), 0), _fmt(i.get("bare_images_per_sec"), 0),
                _fmt(i.get("ratio"), 3), pairs or "-", ">= 0.95", _status(i)]
    return _table(["model x batch", "trainer images/s", "bare loop images/s", "trainer / bare", "pairs",
                   "target", "status"], (row(i) for i in items))


def _md_input(items: list[dict[str, Any]]) -> list[str]:
    rows = []
    for i in items:
        data_ips = statistics.median(i["data_images_per_sec"]) if i.get("data_images_per_sec") else None
        models = i.get("models") or {}
        if not models:
            rows.append([i["name"], i.get("source", "-"), _fmt(data_ips, 0), "-", "-", "-", _status(i)])
        for arch, m in models.items():
            rows.append([i["name"], i.get("source", "-"), _fmt(data_ips, 0), arch,
                         _fmt(statistics.median(m["images_per_sec"]), 0), f"{m['ratio']['median']:,.1f}x",
                         _status(i)])
    return _table(["check", "data", "data path images/s", "model", "model consumes images/s",
                   "data / model (target >= 5x)", "status"], iter(rows))


def _md_memory(items: list[dict[str, Any]]) -> list[str]:
    def row(i: dict[str, Any]) -> list[str]:
        peak = i.get("peak_mb") or {}
        extra = (peak["dreg"] - peak["vanilla"]) if "dreg" in peak and "vanilla" in peak else None
        return [i["arch"], _fmt(peak.get("vanilla")), _fmt(peak.get("dreg")),
                f"x{i['ratio']:.3f}" if "ratio" in i else "-", f"{extra:+.1f}" if extra is not None else "-",
                i.get("metric", "-"), _status(i)]
    return _table(["arch", "vanilla MB", "dreg MB", "dreg / vanilla", "extra MB", "metric", "status"],
                  (row(i) for i in items))


def _md_tta(items: list[dict[str, Any]], record: dict[str, Any]) -> list[str]:
    target = record.get("target_acc")

    def row(i: dict[str, Any]) -> list[str]:
        return [i["name"], f"{i.get('epochs_done', 0)} / {i.get('epochs_planned', '-')}",
                _fmt(i.get("best_val_acc"), 2, pct=True), _fmt(i.get("test_acc"), 2, pct=True),
                _fmt(i.get("s_per_epoch"), 2), _fmt(i.get("first_epoch_s"), 2),
                _fmt(i.get("time_to_target_s"), 1), _fmt(i.get("wall_s"), 0), _status(i)]
    head = ["method", "epochs done / planned", "best val acc", "test acc", "s / epoch", "first epoch s",
            f"s to {_fmt(target, 2, pct=True)} val" if target is not None else "s to common acc", "wall s", "status"]
    return _table(head, (row(i) for i in items))


RENDER = {"smoke": _md_smoke, "dreg_overhead": _md_overhead, "trainer_vs_bare": _md_trainer,
          "input_pipeline": _md_input, "memory": _md_memory}


def render_markdown(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    lines = ["# Device check", "",
             f"Machine: **{meta.get('device_name')}** ({meta.get('device')}); torch {meta.get('torch')}"
             + (f", CUDA {meta['cuda']}" if meta.get("cuda") else "")
             + (f", NCCL {meta['nccl']}" if meta.get("nccl") else "")
             + f", Python {meta.get('python')}; CPU {meta.get('cpu')} x {meta.get('nproc')}.",
             f"Profile `{meta.get('profile')}`, budget {meta.get('budget_s')} s, written at "
             f"{meta.get('written_at_s')} s; command: `{meta.get('command')}`.", ""]
    lines += [f"* {n}" for n in meta.get("notes", [])]
    for name in SECTIONS:
        rec = doc["sections"][name]
        lines += ["", f"## {TITLES[name]}", "",
                  f"Status: **{rec.get('status')}**" + (f" in {rec['elapsed_s']} s" if "elapsed_s" in rec else "")
                  + (f" (budget {rec['budget_s']} s)" if "budget_s" in rec else "")
                  + (f"; {rec['reason']}" if rec.get("reason") else "")
                  + (f"; error: {rec['error']}" if rec.get("error") else ""), ""]
        lines += [f"* {n}" for n in rec.get("notes", [])]
        if rec.get("notes"):
            lines.append("")
        items = rec.get("items") or []
        if items:
            lines += _md_tta(items, rec) if name == "time_to_accuracy" else RENDER[name](items)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="folder for device_check.json and device_check.md")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes: exercises every path (CI: --device cpu, ~1 min on idle cores)")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock seconds for the whole check")
    p.add_argument("--cifar-root", default=str(DEFAULT_CIFAR_ROOT), help="folder containing cifar-10-batches-py/")
    p.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(SECTIONS))
    p.add_argument("--launcher", choices=("auto", "torchrun", "python"), default="auto",
                   help="how the trainer is started (auto: torchrun on CUDA, plain python on CPU)")
    p.add_argument("--nproc", type=int, default=1,
                   help="trainer processes of the smoke runs (2 on a 2-GPU machine exercises NCCL and SyncBN)")
    p.add_argument("--jobs", type=int, default=None,
                   help="trainer runs at a time (default: 2 with --quick on CPU, where the figures mean nothing "
                        "and start-up dominates; else 1, so that images/s are not shared)")
    p.add_argument("--tta-lr", type=float, default=0.1, help="optim.lr (per 256 images) of the time-to-accuracy runs")
    p.add_argument("--keep-runs", action="store_true", help="keep the run folders under OUT/runs")
    args = p.parse_args(argv)
    if args.jobs is None:
        args.jobs = 2 if args.quick and args.device == "cpu" else 1
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible (use --device cpu)")
    if args.only:
        unknown = [s for s in args.only.split(",") if s.strip() and s.strip() not in SECTIONS]
        if unknown:
            p.error(f"--only: unknown section(s) {unknown}; choose from {SECTIONS}")
    return args


def meta_info(args: argparse.Namespace, plan: Plan, argv: Sequence[str]) -> dict[str, Any]:
    m = machine()
    info: dict[str, Any] = {
        "_t0": time.monotonic(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["python", "bench/device_check.py", *argv]),
        "device": args.device, "profile": plan.profile, "budget_s": args.budget_s,
        "device_name": m["gpu"] if args.device == "cuda" else m["cpu"],
        "cpu": m["cpu"], "nproc": m["nproc"], "torch": m["torch"], "python": m["python"],
        "loadavg_1m": m.get("loadavg_1m"), "plan": {k: v for k, v in asdict(plan).items() if k != "notes"},
        "notes": list(plan.notes),
    }
    if args.device == "cuda":
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        try:
            version = torch.cuda.nccl.version()
            info["nccl"] = ".".join(str(x) for x in version) if isinstance(version, tuple) else str(version)
        except Exception:  # noqa: BLE001  (a build without NCCL: the smoke runs will say more)
            info["nccl"] = None
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    t0 = time.monotonic()
    end = t0 + args.budget_s - 4.0  # the alarm's grace, the last write and the exit
    plan = make_plan(args.device, args.quick)
    if args.device == "cpu":
        torch.set_num_threads(1)  # as every CPU benchmark here: the per-worker figure
    out = Path(args.out)
    report = Report(out, meta_info(args, plan, argv))
    only = {s.strip() for s in args.only.split(",")} if args.only else set(SECTIONS)
    for name in SECTIONS:
        if name not in only:
            report.section(name).update(status="skipped", reason="skipped: not selected (--only)")
    report.write()
    print(f"device_check: {report.data['meta']['device_name']} ({args.device}), profile {plan.profile}, "
          f"budget {args.budget_s:.0f} s -> {out}", flush=True)

    keep = out / "runs" if args.keep_runs else None
    tmp = None if keep else tempfile.TemporaryDirectory(prefix="device-check-")
    runs_root = keep if keep else Path(tmp.name)  # type: ignore[union-attr]
    runs_root.mkdir(parents=True, exist_ok=True)
    try:
        runner = TrainerRunner(args, runs_root)
        steps: list[tuple[str, Callable[[Section], None], float]] = [
            ("smoke", lambda s: section_smoke(s, args, plan, runner), plan.smoke_min_s),
            ("dreg_overhead", lambda s: section_overhead(s, args, plan), plan.overhead_min_s),
            ("trainer_vs_bare", lambda s: section_trainer(s, args, plan), plan.smoke_min_s),
            ("input_pipeline", lambda s: section_input(s, args, plan), 2.0),
            ("memory", lambda s: section_memory(s, args, plan), plan.memory_min_s),
            ("time_to_accuracy", lambda s: section_tta(s, args, plan, runner, report), 2 * plan.smoke_min_s),
        ]
        selected = [(name, fn, min_s) for name, fn, min_s in steps if name in only]
        for i, (name, fn, min_s) in enumerate(selected):
            later = sum(SHARES[n] for n, _, _ in selected[i:])
            run_section(name, fn, report, end, SHARES[name] / later, min_s)
    finally:
        if tmp is not None:
            tmp.cleanup()
    statuses = {n: report.section(n)["status"] for n in SECTIONS}
    code = 1 if any(s == "error" for s in statuses.values()) else 0
    report.data["meta"]["elapsed_s"] = round(time.monotonic() - t0, 1)
    report.data["meta"]["exit_code"] = code
    report.write()
    print(f"device_check: {'; '.join(f'{n} {s}' for n, s in statuses.items())} in "
          f"{time.monotonic() - t0:.0f} s -> {out / 'device_check.md'}; exit {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
