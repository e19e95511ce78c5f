#!/usr/bin/env python
"""Data-parallel scaling of the dual-path step: K=1 vs K=2 workers, bytes per step, DDP options.

All figures come from real worker processes started by torchrun (gloo, one compute
thread per worker) running ``bench/ddp_loop.py``: the dual-path model, the Eq. 3 loss,
random in-memory batches, SGD.

1. Scaling: K=1 and K=2 jobs launched alternately (K1, K2, K1, K2, ...); images/s of each
   (global: K x per-worker batch per step), efficiency = ips(K=2) / (2 ips(K=1)) per pair.
2. Bytes all-reduced per step: sum over the dual model's parameters of numel x element
   size (what DDP must average), checked against a counting DDP comm hook that records the
   buckets it is handed (and what the fp16/bf16 hooks put on the wire).
3. DDP options, in one K=2 job, variants interleaved round by round: default buckets
   (25 MB), ``bucket_cap_mb=1``, ``fp16_compress_hook``, ``bf16_compress_hook``; plus the
   all-reduce of a gradient-sized buffer timed alone.

    PYTHONPATH=. python bench/scaling.py            # resnet18 dual path, 8 images per worker
    PYTHONPATH=. python bench/scaling.py --quick    # cnn_small, 1 pair, < 30 s (mostly start-up)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import _common  # noqa: F401  (puts the repository on sys.path)

from _common import REPO, median, print_machine, subprocess_env, write_json

LOOP = str(REPO / "bench" / "ddp_loop.py")


def launch(k: int, args: argparse.Namespace, variants: str, rounds: int, comm_only: int = 0) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={k}", LOOP,
           "--arch", args.arch, "--batch", str(args.batch), "--variants", variants, "--rounds", str(rounds),
           "--steps-per-round", str(args.steps_per_round), "--comm-only", str(comm_only), "--device", args.device]
    done = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(threads=1), cwd=REPO,
                          timeout=600)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"K={k} job failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=8, help="per-worker batch")
    p.add_argument("--pairs", type=int, default=2, help="K=1/K=2 launch pairs")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds inside each job (+1 warm-up)")
    p.add_argument("--steps-per-round", type=int, default=2)
    p.add_argument("--variants", default="default,bucket1,fp16,bf16")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: NCCL, one GPU per worker (K=2 needs 2)")
    p.add_argument("--quick", action="store_true", help="cnn_small at 16 per worker, 1 pair, 1 round (< 30 s)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.quick:
        args.arch, args.batch, args.pairs, args.rounds, args.steps_per_round = "cnn_small", 16, 1, 1, 2
    print_machine()
    print(f"scaling: {args.arch} dual path (R1), {args.batch} images per worker, 1 thread per worker, gloo; "
          f"{args.pairs} K=1/K=2 launch pairs, {args.rounds} rounds x {args.steps_per_round} steps per job")

    # 1. K=1 vs K=2, alternating launches. The last K=2 job also times the DDP variants.
    pairs = []
    variants_job: dict[str, Any] = {}
    for i in range(args.pairs):
        one = launch(1, args, "default", args.rounds)
        last = i == args.pairs - 1
        two = launch(2, args, args.variants if last else "default", args.rounds, comm_only=5 if last else 0)
        ips1 = median(one["variants"]["default"]["images_per_sec"])
        ips2 = median(two["variants"]["default"]["images_per_sec"])
        pairs.append({"ips_k1": ips1, "ips_k2": ips2, "efficiency": ips2 / (2 * ips1)})
        print(f"pair {i + 1}: K=1 {ips1:7.1f} img/s, K=2 {ips2:7.1f} img/s, speed-up {ips2 / ips1:.2f}x, "
              f"efficiency {ips2 / (2 * ips1):.2f}")
        if last:
            variants_job = two
    ips1 = median([q["ips_k1"] for q in pairs])
    ips2 = median([q["ips_k2"] for q in pairs])
    eff = median([q["efficiency"] for q in pairs])
    print(f"K=1 {ips1:.1f} img/s, K=2 {ips2:.1f} img/s (medians); scaling efficiency (median of pairs) {eff:.2f}")

    # 2. Bytes per step.
    from dreg_dist.models import build_model

    plain = build_model(args.arch, 10)
    plain_bytes = sum(q.numel() * q.element_size() for q in plain.parameters())
    dual_bytes = variants_job["grad_bytes_fp32"]
    v = variants_job["variants"]
    print(f"bytes all-reduced per step per worker: dual model {dual_bytes / 1e6:.2f} MB "
          f"({variants_job['grad_numel']:,} fp32 values; vanilla {plain_bytes / 1e6:.2f} MB, "
          f"+{100 * (dual_bytes / plain_bytes - 1):.1f}%)")
    for name, entry in v.items():
        print(f"  comm hook saw [{name}]: {entry['buckets']} buckets, {entry['bucket_numel'] * 4 / 1e6:.2f} MB of fp32 "
              f"gradient, {entry['bytes_sent_per_step'] / 1e6:.2f} MB sent")
    hook_ok = all(e["bucket_numel"] * 4 == dual_bytes for e in v.values())
    print(f"  hook count == numel x element size: {hook_ok}")

    # 3. DDP options.
    base = v["default"]["images_per_sec"]
    print("DDP options at K=2 (same job, interleaved; ratio = median over rounds of variant/default images/s):")
    option_ratios = {}
    for name, entry in v.items():
        ratios = [a / b for a, b in zip(entry["images_per_sec"], base)]
        option_ratios[name] = median(ratios)
        print(f"  {name:<9} {median(entry['images_per_sec']):7.1f} img/s  x{median(ratios):.3f} vs default "
              f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})")
    comm = variants_job.get("comm_only_ms", {})
    if comm:
        print("all-reduce alone of the dual model's gradient at K=2 (median ms): "
              + ", ".join(f"{k} {t:.1f}" for k, t in comm.items()))
    opts = ", ".join(f"{k} x{r:.2f}" for k, r in option_ratios.items() if k != "default")
    _common.print_load()
    print(f"SUMMARY: scaling {args.arch} dual {args.batch}/worker: K=1 {ips1:.1f} img/s, K=2 {ips2:.1f} img/s, "
          f"efficiency {eff:.2f}; {dual_bytes / 1e6:.1f} MB all-reduced/step (hook agrees: {hook_ok}); "
          f"vs default: {opts}")
    write_json(args.json, {"bench": "scaling", "args": vars(args), "pairs": pairs, "efficiency": eff,
                           "dual_bytes": dual_bytes, "plain_bytes": plain_bytes, "variants_job": variants_job,
                           "option_ratios": option_ratios})


if __name__ == "__main__":
    main()
