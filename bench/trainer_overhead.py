#!/usr/bin/env python
"""Images/s of the full trainer over a bare hand-written DDP loop, both with K=2 gloo workers.

Trainer: the service's entry point (``dreg_dist.train.run.main``, which is all that
``launch/train.py`` calls) with ``--config configs/quickstart.yaml`` (dual-path cnn_small,
DReg R1, lambda 0.1), on synthetic data, with the data pipeline (sampling, crop/flip
augmentation, normalization), logging (``log.every_steps`` 20, TensorBoard on) and the
checkpoint cadence (``checkpoint.every_steps`` null: epoch ends only) at their defaults.
A run stops with ``train.stop_after_steps`` inside its first epoch, so the measured windows
hold training steps only (epoch-end validation and the final checkpoint come after).
Its images/s is read from the run's ``metrics.jsonl``: the ``train`` records'
``images_per_sec``, excluding the first window (start-up, warm-up), aggregated as total
images / total time over the remaining windows.

Bare loop: ``bench/ddp_loop.py`` (same dual-path model, same loss, same per-worker batch,
random tensors already in memory, momentum SGD, nothing else), a few warm-up steps, then
as many timed steps as the trainer's measured windows hold.

Both run in the same ``torchrun --nproc_per_node=K`` job, alternately:
bare, trainer, bare, trainer, bare (``--pairs`` trainer runs). Each trainer run is compared
with the mean of the bare runs just before and after it, so a pair sees the same load
(other jobs on the cores move the absolute figures by 2x within minutes); the ratio is
the median over pairs. The job's one process group is created by the first bare loop and
reused by the trainer (``init_distributed`` joins an existing group; the bench stubs the
trainer's final ``shutdown`` so the group outlives it) and by the next bare loops.

    PYTHONPATH=. python bench/trainer_overhead.py           # 3 pairs, 32 images per worker
    PYTHONPATH=. python bench/trainer_overhead.py --quick   # 1 pair, 8 images per worker, < 30 s
    PYTHONPATH=. python bench/trainer_overhead.py --device cuda --k 1 --arch resnet18 --batch 512 --amp bf16

With ``--k 1`` the job is one process and there is no process group (the trainer wraps
nothing in DDP at world size 1, and neither does the bare loop). ``--amp`` sets
``train.amp`` for the trainer and the same autocast for the bare loop.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)

from _common import REPO, median, print_machine, run_command, subprocess_env, write_json

TARGET = 0.95
LOG_EVERY = 20  # the schema default of log.every_steps


def trainer_argv(args: argparse.Namespace, run_dir: Path) -> list[str]:
    global_batch = args.k * args.batch
    train_size = (args.steps + 2) * global_batch + 256
    return ["--config", str(REPO / "configs" / "quickstart.yaml"), "--run-dir", str(run_dir),
            f"model.arch={args.arch}", "data.name=synthetic", f"data.synthetic_train_size={train_size}",
            "data.val_size=256", "data.synthetic_test_size=64", f"train.global_batch_size={global_batch}",
            "train.epochs=1", f"train.stop_after_steps={args.steps}", f"log.every_steps={LOG_EVERY}",
            f"train.device={args.device}", f"train.amp={args.amp}", f"train.step_guard={args.step_guard}"]


def trainer_ips(run_dir: Path, global_batch: int) -> dict[str, Any]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train" and "images_per_sec" in r]
    if len(train) < 2:
        raise ValueError(f"need >= 2 train records in metrics.jsonl (got {len(train)}): raise --steps")
    images = seconds = 0.0
    prev = train[0]["step"]
    for r in train[1:]:
        n = (r["step"] - prev) * global_batch
        images += n
        seconds += n / r["images_per_sec"]
        prev = r["step"]
    return {"images_per_sec": images / seconds, "windows": [r["images_per_sec"] for r in train]}


def worker(args: argparse.Namespace) -> None:
    """Runs under torchrun: bare, trainer, bare, ... ; rank 0 writes the figures to args.out."""
    import ddp_loop  # bench/ is this script's directory, hence on sys.path

    import torch.distributed as dist

    import dreg_dist.train.run as run_module

    # Keep the one process group for the whole job: re-creating it after the trainer's exit
    # can race with stale rendezvous keys. Shutdown happens after the run, outside any window.
    run_module.shutdown = lambda together=False: None
    train_main = run_module.main

    measured = args.steps - LOG_EVERY
    bare_argv = ["--arch", args.arch, "--batch", str(args.batch), "--device", args.device, "--amp", args.amp,
                 "--warmup-rounds", "0", "--warmup-steps", "3",
                 "--rounds", "1", "--steps-per-round", str(measured)]
    rank = int(os.environ.get("RANK", "0"))
    out: dict[str, Any] = {"bare": [], "trainer": []}
    for i in range(args.pairs + 1):
        bare = ddp_loop.run(bare_argv)["variants"]["default"]
        out["bare"].append(bare["images_per_sec"][0])
        if i == args.pairs:
            break
        run_dir = Path(args.tmp) / f"run{i}"
        code = train_main(trainer_argv(args, run_dir))
        if code != 0:
            raise SystemExit(f"trainer exited with {code}")
        if rank == 0:
            out["trainer"].append(trainer_ips(run_dir, args.k * args.batch))
    if rank == 0:
        Path(args.out).write_text(json.dumps(out))
    if dist.is_initialized():
        dist.destroy_process_group()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="cnn_small")
    p.add_argument("--batch", type=int, default=32, help="per-worker batch")
    p.add_argument("--k", type=int, default=2, help="workers")
    p.add_argument("--steps", type=int, default=2 * LOG_EVERY,
                   help=f"optimizer steps per trainer run (the first {LOG_EVERY} are excluded)")
    p.add_argument("--pairs", type=int, default=3, help="trainer runs (each between two bare runs)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: NCCL, one GPU per worker")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="train.amp and the bare loop's autocast")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before the torchrun job is killed")
    p.add_argument("--quick", action="store_true", help="1 pair at 8 images per worker")
    p.add_argument("--step-guard", choices=("auto", "host", "device"), default="auto",
                   help="train.step_guard: where the per-step non-finite/preemption decision is made")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.pairs = 8, 1
    if args.steps < 2 * LOG_EVERY:
        raise SystemExit(f"--steps must be >= {2 * LOG_EVERY}")
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the torchrun job; the pairs (trainer vs the bare runs around it) and their median ratio."""
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        out_file = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.k}",
               __file__, "--worker", "--tmp", tmp, "--out", str(out_file), "--arch", args.arch,
               "--batch", str(args.batch), "--k", str(args.k), "--steps", str(args.steps), "--pairs", str(args.pairs),
               "--device", args.device, "--amp", args.amp]
        done = run_command(cmd, env=subprocess_env(threads=1), cwd=REPO, timeout=args.timeout)
        if done.returncode != 0 or not out_file.exists():
            raise RuntimeError(f"job failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        out = json.loads(out_file.read_text())
    pairs = []
    for i, t in enumerate(out["trainer"]):
        before, after = out["bare"][i], out["bare"][i + 1]
        ratio = t["images_per_sec"] / ((before + after) / 2)
        pairs.append({"trainer": t, "bare_before": before, "bare_after": after, "ratio": ratio})
        print(f"pair {i + 1}: bare {before:7.1f} img/s | trainer {t['images_per_sec']:7.1f} img/s (windows "
              f"{', '.join(f'{w:.1f}' for w in t['windows'])}; first excluded) | bare {after:7.1f} img/s "
              f"-> trainer/bare {ratio:.3f}")
    return {"pairs": pairs, "bare": out["bare"], "ratio": median([q["ratio"] for q in pairs]),
            "trainer_images_per_sec": median([q["trainer"]["images_per_sec"] for q in pairs]),
            "bare_images_per_sec": median(out["bare"]), "target": TARGET}


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    print_machine()
    print(f"trainer_overhead: {args.arch} dual path, K={args.k} {'gloo' if args.device == 'cpu' else 'NCCL'} workers "
          f"x {args.batch} images, 1 thread each; "
          f"trainer runs of {args.steps} steps (first {LOG_EVERY} excluded) between bare-loop runs of "
          f"{args.steps - LOG_EVERY} timed steps, in one torchrun job: " + " ".join(["bare", "trainer"] * args.pairs)
          + " bare")
    try:
        result = measure(args)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        raise SystemExit(str(err)) from None
    ratio, t_ips, b_ips = result["ratio"], result["trainer_images_per_sec"], result["bare_images_per_sec"]
    verdict = "met" if ratio >= TARGET else "NOT met"
    _common.print_load()
    print(f"SUMMARY: trainer_overhead {args.arch} K={args.k} x{args.batch}: trainer {t_ips:.1f} img/s, bare DDP loop "
          f"{b_ips:.1f} img/s, trainer/bare {ratio:.3f} (median of {len(result['pairs'])} pairs; target >= {TARGET} "
          f"{verdict})")
    write_json(args.json, {"bench": "trainer_overhead", "args": vars(args), "pairs": result["pairs"],
                           "bare": result["bare"], "ratio": ratio})


if __name__ == "__main__":
    main()
