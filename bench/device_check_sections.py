"""Sections 1 - 5 (smoke runs through the trainer, then the benchmark modules): part of
``bench/device_check.py``. The benchmark modules are imported inside their section, so that
a break in one fails that section only."""

from __future__ import annotations

import argparse
import functools
import subprocess
import traceback
from pathlib import Path
from typing import Any

import torch

from device_check_plan import METHOD_NOTES, METHODS, OUT_OF_TIME, Plan
from device_check_report import Section, one_line, release_memory
from device_check_runner import Job, TrainerRunner, announce_start, judged, train_figures


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
            on_start=functools.partial(announce_start, "smoke", item),
            on_done=functools.partial(judged, judge_smoke, item, plan, sec),
            on_skip=functools.partial(item.update, status=OUT_OF_TIME)))
    sec.save()
    runner.run(jobs, parallel=args.jobs)



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
            release_memory()
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

