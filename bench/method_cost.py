#!/usr/bin/env python
"""Cost of one optimizer step of each method, over vanilla's, for the runs of a study.

A study's sweep measures wall-clock per epoch too, but its runs share the machine with
other runs and jobs whose load changes by the minute, so its time/epoch ratios are rough
(runs of the head-to-head came out *faster* than vanilla under a lighter load). This
benchmark takes the study's own run folders, builds each distinct training configuration
the way the trainer does (the method, its model surgery, ghost batch norm, the optimizer at the
run's peak learning rate, the micro-batch split) and times one optimizer step of each
(``Method.compute_gradients`` over the step's micro-batches + the optimizer step) in
interleaved rounds on one process with one thread. The ratio is the median over rounds of
the step's CPU time over vanilla SGD's at the same batch setup (same architecture, global
batch and accumulation); CPU time with one thread is the work done, nearly immune to other
jobs on the cores.

What it leaves out: data loading and evaluation (the same for every method), and any
communication: runs that trained on more than one process (GradientMix mixes over workers)
are listed and skipped, their cost is the sweep's wall-clock against the vanilla run on the
same workers. Learning rate and seed do not change the work of a step, so runs that differ
only in those share one measurement.

    PYTHONPATH=. python bench/method_cost.py docs/results/cifar10_h2h/runs/cifar10_h2h_lr ... \\
        --out docs/results/cifar10_h2h/step_cost.json
    PYTHONPATH=. python bench/method_cost.py RUN_OR_SWEEP_FOLDER... --rounds 3 --quick

A study that grows adds its new sweeps with ``--update``: only the given folders' runs are
measured (with their own vanilla), and the file's other entries stay as measured before. Each
ratio is over the vanilla timed in its own bench run, so entries of different runs compare;
the file's ``machine`` must be this one (same cores, CPU, torch, python, threads) and
``rounds``/``steps`` the same, or the update is refused.

The JSON maps each run ("<sweep>/<run>") to its ratio; ``launch/report.py --step-cost FILE``
uses it for the compute axis.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)
import torch
import yaml

from _common import interleave, machine, median, paired_ratio, print_load, print_machine
from dreg_dist.config import Config, build_method
from dreg_dist.config.load import config_from_record
from dreg_dist.methods import BASELINE, StepContext
from dreg_dist.models import ForwardKeys, build_model, with_positions
from dreg_dist.optim import build_optimizer, peak_lr
from dreg_dist.train import any_k


@dataclasses.dataclass
class Variant:
    """One distinct training configuration and the runs that share it."""

    key: str
    setup: str
    """The batch setup vanilla must match: architecture, global batch, accumulation."""
    label: str
    cfg: Config
    runs: list[str] = dataclasses.field(default_factory=list)

    @property
    def is_reference(self) -> bool:
        return self.cfg.method == BASELINE and self.cfg.optim.name == "sgd" and self.cfg.train.bn_group_size is None


def run_folders(paths: Sequence[Path]) -> list[Path]:
    """Run folders (holding config.yaml) among ``paths`` and their direct subfolders."""
    out: list[Path] = []
    for path in paths:
        if (path / "config.yaml").is_file():
            out.append(path)
        elif path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if (p / "config.yaml").is_file()))
        else:
            raise SystemExit(f"error: {path} is neither a run folder (with config.yaml) nor a sweep folder")
    return out


def _world_size(run: Path) -> int:
    """From the summary, or for a run still training from its log's first (start) record."""
    try:
        return int(json.loads((run / "summary.json").read_text()).get("world_size") or 1)
    except (OSError, ValueError):
        pass
    try:
        with open(run / "metrics.jsonl") as f:
            return int(json.loads(f.readline()).get("world_size") or 1)
    except (OSError, ValueError):
        return 1


def variant_key(cfg: Config) -> tuple[str, str, str]:
    """(what changes the work of a step, its batch setup, a label)."""
    t, o = cfg.train, cfg.optim
    setup = f"{cfg.model.arch} bs{t.global_batch_size} acc{t.accumulation_steps}"
    hp_cfg = cfg.method_config
    hp = dataclasses.asdict(hp_cfg) if dataclasses.is_dataclass(hp_cfg) else {}
    default = dataclasses.asdict(type(hp_cfg)()) if dataclasses.is_dataclass(hp_cfg) else {}
    work = {"method": cfg.method, "hp": hp, "optim": o.name, "amp": t.amp, "channels_last": t.channels_last,
            "bn_group_size": t.bn_group_size}
    label = cfg.method + (f" ({o.name})" if o.name != "sgd" else "") + (
        f" (BN group {t.bn_group_size})" if t.bn_group_size is not None else "")
    changed = {k: v for k, v in hp.items() if default.get(k) != v}  # the label names what differs from the defaults
    if changed:
        label += " " + " ".join(f"{k}={v}" for k, v in sorted(changed.items()))
    return setup + " " + json.dumps(work, sort_keys=True, default=str), setup, label


def collect(paths: Sequence[Path]) -> tuple[list[Variant], list[str]]:
    variants: dict[str, Variant] = {}
    skipped: list[str] = []
    for run in run_folders(paths):
        run_id = f"{run.parent.name}/{run.name}"
        if _world_size(run) > 1:
            skipped.append(run_id)
            continue
        cfg = config_from_record(yaml.safe_load((run / "config.yaml").read_text()))
        key, setup, label = variant_key(cfg)
        variants.setdefault(key, Variant(key, setup, label, cfg)).runs.append(run_id)
    return list(variants.values()), skipped


def make_step(cfg: Config, steps: int) -> Callable[[], None]:
    """``steps`` optimizer steps of ``cfg``'s method on random CIFAR-shaped micro-batches."""
    t = cfg.train
    torch.manual_seed(t.seed)
    method = build_method(cfg)
    model = method.prepare_model(build_model(cfg.model.arch, cfg.model.num_classes,
                                             zero_init_residual=cfg.model.zero_init_residual))
    # What the trainer adds after the method's surgery (keyed random ops, ghost batch norm and its
    # per-step running statistics) is part of a step's work: ghost BN's is nearly all of its cost.
    keys = ForwardKeys(t.seed)
    any_k.prepare_model(model, t, keys)
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    lr = peak_lr(cfg.optim, t.global_batch_size)
    optimizer = build_optimizer(model, cfg.optim, lr)
    any_k.install_step_hooks(optimizer, model, keys)
    micro = t.global_batch_size // t.accumulation_steps
    batches = with_positions([(torch.randn(micro, 3, 32, 32).contiguous(memory_format=fmt),
                               torch.randint(0, cfg.model.num_classes, (micro,))) for _ in range(t.accumulation_steps)], 0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    count = [0]

    def step() -> None:
        for _ in range(steps):
            keys.begin_step(count[0])
            ctx = StepContext(model, model, contextlib.nullcontext, scaler, lr=lr, step=count[0])
            method.compute_gradients(ctx, batches)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            count[0] += 1

    return step


def measure(variants: list[Variant], rounds: int, steps: int) -> list[dict[str, Any]]:
    references = {v.setup: v for v in variants if v.is_reference}
    missing = sorted({v.setup for v in variants} - set(references))
    if missing:
        raise SystemExit(f"error: no vanilla SGD run for {', '.join(missing)}: add the vanilla run of that batch "
                         "setup to the folders given (the ratios are over it)")
    steps_fns = {v.key: make_step(v.cfg, steps) for v in variants}
    times = interleave(steps_fns, rounds=rounds)
    out = []
    for v in variants:
        ref = references[v.setup]
        ratio = paired_ratio(times[v.key]["cpu"], times[ref.key]["cpu"])
        wall = paired_ratio(times[v.key]["wall"], times[ref.key]["wall"])
        out.append({"label": v.label, "setup": v.setup, "runs": sorted(v.runs), "reference": ref.label,
                    "ms_per_step": round(1000 * median(times[v.key]["cpu"]) / steps, 1),
                    "ratio": round(ratio["median"], 3), "ratio_min": round(ratio["min"], 3),
                    "ratio_max": round(ratio["max"], 3), "wall_ratio": round(wall["median"], 3)})
    return sorted(out, key=_table_order)


def _table_order(entry: dict[str, Any]) -> tuple:
    """By batch setup, its vanilla first, then cheapest first."""
    return entry["setup"], entry["label"] != entry["reference"], entry["ratio"]


_SAME_MACHINE = ("nproc", "cpu", "torch", "python", "threads", "gpu")


def check_update(earlier: dict[str, Any], rounds: int, steps: int, path: str) -> None:
    """SystemExit, one line, when ``earlier`` was measured under other conditions than this run."""
    for key, value in (("rounds", rounds), ("steps", steps)):
        if earlier.get(key) != value:
            raise SystemExit(f"error: --update: '{path}' was measured with {key}={earlier.get(key)}, this run "
                             f"uses {value}: pass the same --{key} (or --quick) or rerun over every folder")
    before, now = earlier.get("machine") or {}, machine()
    differ = [k for k in _SAME_MACHINE if before.get(k) != now.get(k)]
    if differ:
        raise SystemExit(f"error: --update: '{path}' was measured on another machine ({', '.join(differ)} differ): "
                         "rerun the bench over every folder of the study")


def merge(earlier: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with ``earlier``'s entries for the runs it did not measure."""
    measured = {run for c in payload["costs"] for run in c["runs"]}
    kept = []
    for entry in earlier.get("costs", []):
        runs = [r for r in entry["runs"] if r not in measured]
        if runs:
            kept.append({**entry, "runs": runs})
    skipped = sorted((set(earlier.get("skipped", [])) - measured) | set(payload["skipped"]))
    costs = sorted(kept + payload["costs"], key=_table_order)
    return {**payload, "skipped": skipped, "costs": costs}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders or sweep folders (their runs)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round (default 5)")
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps per timing (default 1)")
    parser.add_argument("--quick", action="store_true", help="2 rounds (a smoke run)")
    parser.add_argument("--out", default=None, help="write the JSON here")
    parser.add_argument("--update", action="store_true",
                        help="merge into an existing --out: the given folders' runs are re-measured, the file's "
                             "other entries are kept")
    args = parser.parse_args(argv)
    earlier = None
    if args.update:
        if not args.out:
            raise SystemExit("error: --update needs --out FILE (the step-cost file to add to)")
        try:
            earlier = json.loads(Path(args.out).read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"error: --update: cannot read '{args.out}' ({err}): run without --update first")
    rounds = 2 if args.quick else args.rounds
    torch.set_num_threads(1)
    if earlier is not None:
        check_update(earlier, rounds, args.steps, args.out)
    print_machine()
    variants, skipped = collect(args.folders)
    for run in skipped:
        print(f"skipped {run}: trained on several processes (its cost includes communication: use the sweep's "
              "wall-clock against vanilla on the same workers)")
    print(f"{len(variants)} distinct configurations, {rounds} rounds of {args.steps} step(s) each")
    costs = measure(variants, rounds, args.steps)
    for c in costs:
        print(f"{c['setup']:24s} {c['label']:60s} {c['ms_per_step']:9.1f} ms/step  {c['ratio']:.3f}x "
              f"(rounds {c['ratio_min']:.3f}-{c['ratio_max']:.3f}; wall {c['wall_ratio']:.3f}x)  {len(c['runs'])} run(s)")
    print_load()
    if args.out:
        payload = {"what": "CPU time of one optimizer step over vanilla SGD's at the same batch setup, "
                           "median of interleaved rounds, one thread", "rounds": rounds, "steps": args.steps,
                   "machine": machine(), "skipped": skipped, "costs": costs}
        if earlier is not None:
            payload = merge(earlier, payload)
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")
    worst = max(costs, key=lambda c: c["ratio"])
    print(f"SUMMARY: {len(costs)} configurations; step cost over vanilla from "
          f"{min(c['ratio'] for c in costs):.2f}x to {worst['ratio']:.2f}x ({worst['label']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
