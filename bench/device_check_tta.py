"""Section 6, time to accuracy (vanilla vs DReg, the same number of epochs each): part of
``bench/device_check.py``."""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path
from typing import Any, Optional

from device_check_plan import OUT_OF_TIME, Plan
from device_check_report import Report, Section
from device_check_runner import Job, TrainerRunner, announce_start, judged


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
                        on_start=functools.partial(announce_start, "time_to_accuracy", item),
                        on_done=functools.partial(judged, judge_tta, item, plan, sec),
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
