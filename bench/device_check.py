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

The code, one module per part beside this script: ``device_check_plan.py`` (sizes of each
profile, sections, time shares), ``device_check_report.py`` (the JSON document, a section
under its deadline), ``device_check_runner.py`` (trainer launches and their run folders),
``device_check_sections.py`` (sections 1 - 5), ``device_check_tta.py`` (section 6) and
``device_check_markdown.py`` (the tables). Besides the trainer's command line they use two
small, stable modules of the package: ``dreg_dist.io`` (atomic writes) and
``dreg_dist.report.mdtable`` (the Markdown table writer).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)
import torch

from _common import machine
from device_check_plan import DEFAULT_CIFAR_ROOT, SECTIONS, SHARES, Plan, make_plan
from device_check_report import Report, Section, run_section
from device_check_runner import TrainerRunner
from device_check_sections import section_input, section_memory, section_overhead, section_smoke, section_trainer
from device_check_tta import section_tta


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
