#!/usr/bin/env python
"""The paper's comparison sized for one GPU: four training variants, equal time each.

    python bench/device_study.py --device cuda --out bench/results/device_study     # <= 9 min, one GPU
    python bench/device_study.py --device cpu --quick --out /tmp/ds                 # CI form, < 1 min

What it measures: ResNet18 (the CIFAR form, ``model.arch=resnet18``) on the CIFAR-10 copy
(``--cifar-root``, default ``../shared/data``: 45,000 train / 5,000 val / 10,000 test), global
batch 4096, bf16 autocast, channels_last, the dataset resident on the GPU
(``data.on_device=true``), momentum SGD with linear LR scaling, a warm-up then cosine decay
over the epochs actually run. Four variants, the same number of epochs each:

* ``vanilla``: ``method=vanilla``, ``optim.lr=--lr`` per 256 images;
* ``lamb``: ``method=vanilla optim.name=lamb``, ``optim.lr=--lamb-lr`` per 256 images (0.008:
  the rate the CIFAR-10 head-to-head study selected for LAMB at 4096,
  ``configs/grids/cifar10_h2h_lamb_seeds.yaml``);
* ``dreg``: ``method=dreg`` at its defaults (``dreg_dist/dreg/defaults.py``), lr as vanilla;
* ``dreg_paper``: the paper's form, ``method=dreg dreg.form=literal dreg.norm=shared
  dreg.ce_reduction=sum`` (Eq. 3 unbounded, one norm after the DReg layer, the sum of the two
  cross-entropies), lr as vanilla.

For each: best validation accuracy, test accuracy of the exported model (``summary.json``),
seconds per epoch (median of the epochs after the first) and the trainer's images/s.

How time is shared: ``--budget-s`` (default 540) is the whole script, start-up included. A
timing run first (``method=dreg`` at the study's settings, 2 epochs, under
``OUT/runs/device_study_timing``) gives the launch cost and the seconds per epoch; what is
left is split into four equal shares and ``train.epochs`` is set, the same for every variant,
to as many epochs as fit in one share (10% margin on the epoch time, at most
``--max-epochs``). ``--epochs N`` skips the timing run. A variant still running at the end of
its share is killed (its finished epochs are kept, status "cut off"); time a variant leaves
unused moves on to the next ones.

Every variant runs through the trainer's command line (``launch/train.py`` as a subprocess,
under ``torchrun --standalone`` on CUDA: ``bench/device_check_runner.py``) with
``--run-dir OUT/runs/device_study/<variant>``, so ``python launch/report.py
OUT/runs/device_study --out DIR`` reads them. The checkpoints are removed after each run
(``--keep-checkpoints`` keeps them); the records and the export stay. ``OUT/device_study.json``
and ``OUT/device_study.md`` are rewritten after every variant, so a run cut off leaves the
finished ones. ``--quick``: cnn_tiny on tiny synthetic data, batch 64, 1 epoch, no timing run
(bf16 / channels_last / on-device data only on CUDA).

Exit status: 0 when no variant failed (one that diverged is a result: status "diverged"), 1 when
one did (or the timing run did), 2 for a bad command
line, ``--device cuda`` without a visible GPU, or a missing CIFAR copy outside ``--quick``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)
import torch

from _common import machine
from device_check_plan import DEFAULT_CIFAR_ROOT
from device_check_runner import Job, TrainerRunner
from device_check_tta import judge_tta

from dreg_dist.io import atomic_write_text
from dreg_dist.report.mdtable import table
from dreg_dist.run_layout import RunLayout

VARIANTS: dict[str, list[str]] = {
    "vanilla": ["method=vanilla"],
    "lamb": ["method=vanilla", "optim.name=lamb"],
    "dreg": ["method=dreg"],
    "dreg_paper": ["method=dreg", "dreg.form=literal", "dreg.norm=shared", "dreg.ce_reduction=sum"],
}
"""Variant -> its own trainer overrides (the learning rate is added per variant)."""
STUDY = "device_study"
MARGIN = 1.10
"""Safety factor on the timing run's seconds per epoch (LAMB and vanilla are faster than DReg)."""
SLACK_S = 5.0
"""Seconds per variant kept back for the end of the run (test, export, the last write)."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="folder for device_study.json, device_study.md and runs/")
    p.add_argument("--quick", action="store_true", help="CI form: cnn_tiny, tiny synthetic data, 1 epoch")
    p.add_argument("--budget-s", type=float, default=540.0, help="wall-clock seconds for the whole script")
    p.add_argument("--cifar-root", default=str(DEFAULT_CIFAR_ROOT), help="folder containing cifar-10-batches-py/")
    p.add_argument("--epochs", type=int, default=None, help="train.epochs for every variant (skips the timing run)")
    p.add_argument("--max-epochs", type=int, default=60, help="at most this many epochs per variant")
    p.add_argument("--lr", type=float, default=0.1, help="optim.lr (per 256 images) of the SGD variants")
    p.add_argument("--lamb-lr", type=float, default=0.008, help="optim.lr (per 256 images) of the LAMB variant")
    p.add_argument("--launcher", choices=("auto", "torchrun", "python"), default="auto",
                   help="auto: torchrun --standalone on CUDA, plain python on CPU")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoints/ folder")
    args = p.parse_args(argv)
    args.nproc = 1
    if args.budget_s <= 0 or args.max_epochs < 1 or (args.epochs is not None and args.epochs < 1):
        p.error("--budget-s, --max-epochs and --epochs must be positive")
    if not (args.lr > 0 and args.lamb_lr > 0):
        p.error("--lr and --lamb-lr must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible (use --device cpu)")
    if not args.quick and not (Path(args.cifar_root) / "cifar-10-batches-py").is_dir():
        p.error(f"no CIFAR-10 at {args.cifar_root} (cifar-10-batches-py/ missing): pass --cifar-root, or --quick")
    return args


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The sizes of the study: data overrides, batch, arch, images per epoch."""
    cuda = args.device == "cuda"
    gpu = [f"train.amp={'bf16' if cuda else 'none'}", f"train.channels_last={'true' if cuda else 'false'}",
           f"data.on_device={'true' if cuda else 'false'}"]
    if args.quick:
        gb = 64
        data = ["data.name=synthetic", f"data.synthetic_train_size={4 * gb + 64}", "data.val_size=64",
                "data.synthetic_test_size=64", "data.synthetic_noise=4.0"]
        return {"arch": "cnn_tiny", "batch": gb, "data": data + gpu, "train_images": 4 * gb,
                "what": "synthetic data (256 train / 64 val / 64 test)"}
    data = ["data.name=cifar10", f"data.root={args.cifar_root}", "data.val_size=5000"]
    return {"arch": "resnet18", "batch": 4096, "data": data + gpu, "train_images": 45000,
            "what": f"CIFAR-10 at {args.cifar_root} (45,000 train / 5,000 val / 10,000 test)"}


def warmup_epochs(epochs: int) -> int:
    """Linear warm-up epochs before the cosine decay: a fifth of the run, 1 - 5, none under 3 epochs."""
    return 0 if epochs < 3 else min(5, max(1, epochs // 5))


def overrides(args: argparse.Namespace, s: dict[str, Any], variant: str, epochs: int,
              warmup: Optional[int] = None) -> list[str]:
    steps = max(1, s["train_images"] // s["batch"])
    if warmup is None:
        warmup = warmup_epochs(epochs)
    lr = args.lamb_lr if variant == "lamb" else args.lr
    return [*VARIANTS[variant], f"model.arch={s['arch']}", "model.num_classes=10", *s["data"],
            f"train.global_batch_size={s['batch']}", f"train.epochs={epochs}", f"train.device={args.device}",
            "train.seed=0", f"optim.lr={lr}", f"optim.warmup_epochs={warmup}",
            f"log.every_steps={max(1, steps // 2)}", "log.tensorboard=false", "log.progress=off"]


class Study:
    """The JSON document and its Markdown table, rewritten after every variant."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {"meta": meta, "plan": {}, "timing": None,
                                     "variants": [{"name": v, "status": "pending"} for v in VARIANTS]}
        out.mkdir(parents=True, exist_ok=True)

    def item(self, name: str) -> dict[str, Any]:
        return next(i for i in self.data["variants"] if i["name"] == name)

    def write(self) -> None:
        atomic_write_text(self.out / f"{STUDY}.json", json.dumps(self.data, indent=2, default=str) + "\n")
        atomic_write_text(self.out / f"{STUDY}.md", self.markdown())

    def markdown(self) -> str:
        m, plan = self.data["meta"], self.data["plan"]
        lines = [f"# Device study: {m['device_name']} ({m['device']})", "",
                 f"`{m['command']}`; torch {m['torch']}" + (f", CUDA {m['cuda']}" if m.get("cuda") else "")
                 + f"; started {m['started']}" + (f"; {m['elapsed_s']:.0f} s" if "elapsed_s" in m else ""), ""]
        if plan.get("notes"):
            lines += [plan["notes"], ""]
        rows = []
        for i in self.data["variants"]:
            rows.append([i["name"], " ".join(VARIANTS[i["name"]]), _num(i.get("epochs_done"), "d"),
                         _pct(i.get("best_val_acc")), _pct(i.get("test_acc")), _num(i.get("s_per_epoch"), ".2f"),
                         _num(i.get("images_per_sec"), ".0f"), i["status"] + (f": {i['error']}" if "error" in i
                                                                             else (f": {i['reason']}" if "reason" in i
                                                                                   else ""))])
        lines.append(table(["variant", "trainer options", "epochs", "best val acc", "test acc (export)", "s / epoch",
                            "images/s", "status"], rows))
        return "\n".join(lines) + "\n"


def _pct(x: Any) -> str:
    return f"{100 * x:.2f}%" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def _num(x: Any, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else "-"


def meta_info(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    m = machine()
    info: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                            "command": " ".join(["python", "bench/device_study.py", *argv]),
                            "device": args.device, "quick": args.quick, "budget_s": args.budget_s,
                            "device_name": m["gpu"] if args.device == "cuda" else m["cpu"],
                            "cpu": m["cpu"], "nproc": m["nproc"], "torch": m["torch"], "python": m["python"],
                            "loadavg_1m": m.get("loadavg_1m")}
    if args.device == "cuda":
        info["cuda"] = torch.version.cuda
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def finish_variant(study: Study, name: str, keep_checkpoints: bool, rec: dict[str, Any]) -> None:
    item = study.item(name)
    try:
        judge_tta(item, rec)
        summary = rec.get("summary") or {}
        val = (summary.get("best") or {}).get("val_acc")
        if isinstance(val, dict) and val:
            item["best_val_acc"] = max(val.values())
            item["best_output"] = (summary.get("best") or {}).get("path")
        diverged = next((r for r in rec.get("records", []) if r.get("kind") == "diverged"), None)
        if diverged is not None:  # a finding (e.g. the literal form at a high rate), not a failure of the study
            item.pop("error", None)
            item.pop("output_tail", None)
            item.update(status="diverged", reason=f"non-finite at step {diverged.get('step')}, epoch "
                                                  f"{diverged.get('epoch')}")
    except Exception as err:  # noqa: BLE001  (a run folder that cannot be read is that variant's error)
        item.update(status="error", error=f"reading the run folder: {err}")
    if not keep_checkpoints:
        shutil.rmtree(RunLayout(Path(rec["run_dir"])).checkpoints, ignore_errors=True)
    print(f"--- {name}: {item['status']}, {item.get('epochs_done')} epochs, best val {_pct(item.get('best_val_acc'))}, "
          f"test {_pct(item.get('test_acc'))}, {_num(item.get('s_per_epoch'), '.2f')} s/epoch", flush=True)
    study.write()


def time_one_run(args: argparse.Namespace, s: dict[str, Any], runner: TrainerRunner, study: Study,
                 end: float) -> Optional[dict[str, Any]]:
    """The timing run: launch cost, first and later epochs' seconds, or None (recorded) when it failed."""
    timing: dict[str, Any] = {"name": "timing", "status": "running"}
    study.data["timing"] = timing
    study.write()
    ov = overrides(args, s, "dreg", epochs=2, warmup=0)
    t0 = time.monotonic()
    (runner.runs_root / f"{STUDY}_timing").mkdir(parents=True, exist_ok=True)
    got: dict[str, Any] = {}
    job = Job(name=f"{STUDY}_timing/dreg", overrides=ov, deadline=min(end, t0 + 0.3 * args.budget_s),
              cap_s=float("inf"), min_s=0.0, on_start=lambda: None, on_done=got.update,
              on_skip=lambda: None)
    runner.run([job])
    judge_tta(timing, got)
    timing["overrides"] = ov
    ok = timing["status"] in ("ok", "cut off") and timing.get("first_epoch_s")
    if ok:
        epochs_s = sum(c["epoch_s"] for c in timing["curve"] if c["epoch_s"] is not None)
        timing["launch_s"] = round(max(0.0, timing["wall_s"] - epochs_s), 1)
    elif timing["status"] == "ok":
        timing.update(status="error", error="the timing run recorded no epoch")
    if not args.keep_checkpoints:  # not a result: its weights go
        layout = RunLayout(Path(got["run_dir"]))
        for folder in (layout.checkpoints, layout.export):
            shutil.rmtree(folder, ignore_errors=True)
    study.write()
    print(f"--- timing run: {timing['status']}, launch ~{timing.get('launch_s')} s, first epoch "
          f"{timing.get('first_epoch_s')} s, then {timing.get('s_per_epoch')} s/epoch", flush=True)
    return timing if ok else None


def plan_epochs(args: argparse.Namespace, timing: dict[str, Any], share: float) -> tuple[int, str]:
    launch, first, per = timing["launch_s"], timing["first_epoch_s"], MARGIN * timing["s_per_epoch"]
    fit = share - SLACK_S - launch - first
    epochs = 0 if fit < 0 else min(args.max_epochs, 1 + int(fit / per))
    return epochs, (f"as many as fit in a share of {share:.0f} s: launch ~{launch:.0f} s, first epoch "
                    f"{first:.1f} s, then {timing['s_per_epoch']:.2f} s/epoch x {MARGIN} (timing run, method=dreg); "
                    f"at most {args.max_epochs}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    t0 = time.monotonic()
    end = t0 + args.budget_s - 3.0  # the last write and the exit
    out = Path(args.out)
    study = Study(out, meta_info(args, argv))
    s = settings(args)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    runner = TrainerRunner(args, runs)
    runner.config.unlink(missing_ok=True)  # the device check's name: this study's own config instead
    runner.config = runs / f"{STUDY}.yaml"
    atomic_write_text(runner.config, "# written by bench/device_study.py; everything else is set on the command "
                                     "line\nmodel:\n  num_classes: 10\n")
    print(f"device_study: {study.data['meta']['device_name']} ({args.device}), {s['arch']}, batch {s['batch']}, "
          f"budget {args.budget_s:.0f} s -> {out}", flush=True)
    study.write()

    if args.quick or args.epochs is not None:
        epochs, how = (args.epochs or 1), ("--epochs" if args.epochs is not None else "fixed by --quick")
    else:
        timing = time_one_run(args, s, runner, study, end)
        if timing is None:
            for item in study.data["variants"]:
                item.update(status="skipped", reason="the timing run failed")
            return done(study, t0, 1)
        epochs, how = plan_epochs(args, timing, (end - time.monotonic()) / len(VARIANTS))
    share = (end - time.monotonic()) / len(VARIANTS)
    warmup = warmup_epochs(epochs)
    study.data["plan"] = {"epochs": epochs, "how": how, "share_s": round(share, 1), "arch": s["arch"],
                          "global_batch": s["batch"], "data": s["what"], "lr": args.lr, "lamb_lr": args.lamb_lr,
                          "notes": f"{s['arch']}, {s['what']}, global batch {s['batch']}, {epochs} epochs each "
                                   f"({how}), {warmup} warm-up epoch(s) then cosine; optim.lr {args.lr} per 256 "
                                   f"images (LAMB {args.lamb_lr}), scaled linearly; "
                                   f"{'bf16, channels_last, data on the GPU' if args.device == 'cuda' else 'fp32'}; "
                                   f"equal time shares of ~{share:.0f} s"}
    if epochs < 1:
        for item in study.data["variants"]:
            item.update(status="skipped", reason=f"out of time: not one epoch fits ({how})")
        return done(study, t0, 0)
    jobs = []
    for i, name in enumerate(VARIANTS):
        ov = overrides(args, s, name, epochs)
        study.item(name).update(overrides=ov, epochs_planned=epochs, run_dir=str(runs / STUDY / name))
        # Each variant ends at the end of its share; the later ones keep theirs.
        deadline = end - (len(VARIANTS) - 1 - i) * share
        jobs.append(Job(name=f"{STUDY}/{name}", overrides=ov, deadline=deadline, cap_s=float("inf"), min_s=1.0,
                        on_start=functools.partial(_started, study, name),
                        on_done=functools.partial(finish_variant, study, name, args.keep_checkpoints),
                        on_skip=functools.partial(study.item(name).update, status="skipped",
                                                  reason="out of time")))
    (runs / STUDY).mkdir(parents=True, exist_ok=True)
    study.write()
    runner.run(jobs)
    return done(study, t0, 1 if any(i["status"] == "error" for i in study.data["variants"]) else 0)


def _started(study: Study, name: str) -> None:
    study.item(name)["status"] = "running"
    print(f"--- {name}: started", flush=True)
    study.write()


def done(study: Study, t0: float, code: int) -> int:
    study.data["meta"].update(elapsed_s=round(time.monotonic() - t0, 1), exit_code=code)
    study.write()
    states = "; ".join(f"{i['name']} {i['status']}" for i in study.data["variants"])
    print(f"device_study: {states} in "
          f"{time.monotonic() - t0:.0f} s -> {study.out / (STUDY + '.md')}; exit {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
