#!/usr/bin/env python
"""Step time of the dual-path (DReg) model over the vanilla model, next to the FLOP floor.

One training step = forward + loss + backward + SGD step (momentum 0.9, weight decay, the
service's own optimizer builder) + zero_grad, on one process, at a fixed batch of random
CIFAR-shaped tensors. Vanilla: the plain CIFAR model with cross-entropy. DReg: the same
architecture wrapped in ``DualPathModel`` (layer R1, per-path norm) with the Eq. 3 objective
(both cross-entropies minus lambda times the contrast). Variants are timed interleaved
(vanilla, dreg, vanilla, dreg, ...); the overhead is the median of the per-round ratios.
The floor is ``cost_report(...).extra_train_pct``: the extra matmul/conv FLOPs of a
training step counted by FlopCounterMode.

    PYTHONPATH=. python bench/dreg_overhead.py            # resnet18, vgg16, mobilenet_v2, batch 32
    PYTHONPATH=. python bench/dreg_overhead.py --quick    # resnet18 at batch 8, < 30 s
    PYTHONPATH=. python bench/dreg_overhead.py --device cuda --batch 128 --rounds 20   # on a GPU
    PYTHONPATH=. python bench/dreg_overhead.py --device cuda --batch 512 --amp bf16 --channels-last --compile

``--compile`` wraps both models in ``torch.compile`` (as ``train.compile`` does; the
optimizer step stays eager) and ``--amp bf16`` runs forward and loss under autocast; the
first (warm-up) round then also holds the compilation.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Optional, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.nn.functional as F

from _common import autocast, fmt_ratio, interleave, median, paired_ratio, print_machine, write_json
from dreg_dist.config.schema import OptimConfig
from dreg_dist.dreg import DualPathModel
from dreg_dist.dreg.contrast import DRegObjective
from dreg_dist.dreg.cost import cost_report
from dreg_dist.models import build_model
from dreg_dist.optim import build_optimizer

TARGET_PP = 3.0
"""Target: measured overhead at most this many percentage points above the FLOP floor."""


def make_step(model: torch.nn.Module, dual: bool, x: torch.Tensor, y: torch.Tensor, steps: int,
              forward: Optional[Callable[[torch.Tensor], Any]] = None, amp: str = "none") -> Callable[[], None]:
    """``steps`` training steps of ``model``; ``forward`` (e.g. its ``torch.compile`` wrapper)
    runs the forward pass, ``model`` itself owns the parameters the contrast term reads."""
    opt = build_optimizer(model, OptimConfig(), lr=0.01)
    objective = DRegObjective()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    fwd = forward if forward is not None else model

    def step() -> None:
        for _ in range(steps):
            with autocast(x.device, amp):
                if dual:
                    logits_r, logits_l = fwd(x)
                    loss, _ = objective(logits_r, logits_l, y, model)  # type: ignore[arg-type]
                else:
                    loss = F.cross_entropy(fwd(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync()

    return step


def run_arch(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    plain = build_model(arch, 10).to(device).train()
    dual = DualPathModel(build_model(arch, 10), args.layer).to(device).train()
    t0 = time.perf_counter()
    cost = cost_report(DualPathModel(build_model(arch, 10), args.layer))
    cost_s = time.perf_counter() - t0
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        plain = plain.to(memory_format=torch.channels_last)
        dual = dual.to(memory_format=torch.channels_last)
    compiled = getattr(args, "compile", False)
    amp = getattr(args, "amp", "none")
    variants = {
        "vanilla": make_step(plain, False, x, y, args.steps_per_round,
                             torch.compile(plain) if compiled else None, amp),
        "dreg": make_step(dual, True, x, y, args.steps_per_round, torch.compile(dual) if compiled else None, amp),
    }
    # Warm-up round(s), timed to size the run: as many rounds as fit in --budget-s, at least --rounds.
    warm = interleave(variants, args.warmup_rounds, 0) if args.warmup_rounds else {}
    round_s = sum(v["wall"][-1] for v in warm.values()) if warm else 0.0
    rounds = args.rounds
    if args.budget_s and round_s > 0:
        rounds = max(args.rounds, min(args.max_rounds, int(args.budget_s / round_s)))
    times = interleave(variants, rounds, 0)
    clock = args.clock
    ratios = {c: paired_ratio(times["dreg"][c], times["vanilla"][c]) for c in ("wall", "cpu")}
    ratio = ratios[clock]
    per_step = {k: {c: 1e3 * median(v[c]) / args.steps_per_round for c in ("wall", "cpu")} for k, v in times.items()}
    measured_pct = 100.0 * (ratio["median"] - 1.0)
    floor_pct = cost.extra_train_pct
    gap = measured_pct - floor_pct
    mode = ("compiled" if compiled else "eager") + (f", {amp}" if amp != "none" else "")
    print(f"{arch:<13} layer {dual.layer_path:<22} batch {args.batch} ({mode}), {rounds} rounds: "
          f"vanilla {per_step['vanilla']['wall']:7.1f} ms/step wall ({per_step['vanilla']['cpu']:7.1f} cpu), "
          f"dreg {per_step['dreg']['wall']:7.1f} ms/step wall ({per_step['dreg']['cpu']:7.1f} cpu)")
    minima = {c: min(times["dreg"][c]) / min(times["vanilla"][c]) for c in ("cpu", "wall")}
    for c in ("cpu", "wall"):
        print(f"{'':<13} dreg/vanilla {c:<4} = {fmt_ratio(ratios[c])}; ratio of minima {minima[c]:.3f}")
    print(f"{'':<13} overhead measured ({clock} clock) {measured_pct:+.1f}% vs FLOP floor +{floor_pct:.1f}% "
          f"(params +{cost.extra_params_pct:.1f}%): gap {gap:+.1f} pp "
          f"[{'met' if gap <= TARGET_PP else 'NOT met'}: <= {TARGET_PP:.0f} pp] (FLOP count took {cost_s:.1f}s)")
    return {
        "arch": arch, "layer": dual.layer_path, "batch": args.batch, "compiled": compiled, "amp": amp,
        "channels_last": bool(args.channels_last), "ms_per_step": per_step,
        "ratio": ratios, "ratio_of_minima": minima, "rounds": rounds, "clock": clock, "measured_pct": measured_pct, "floor_pct": floor_pct, "gap_pp": gap,
        "extra_params_pct": cost.extra_params_pct, "met": gap <= TARGET_PP, "times_s": times,
    }


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (``argv``, default sys.argv) with --quick and the clock choice applied."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="resnet18,vgg16,mobilenet_v2")
    p.add_argument("--layer", default="R1", help="DReg layer (dreg.layer)")
    p.add_argument("--batch", type=int, default=32, help="per-worker batch")
    p.add_argument("--rounds", type=int, default=5, help="minimum timed rounds (vanilla, dreg) per arch")
    p.add_argument("--budget-s", type=float, default=25.0,
                   help="seconds of timed rounds per arch (rounds = budget / warm-up round time, >= --rounds)")
    p.add_argument("--max-rounds", type=int, default=30)
    p.add_argument("--warmup-rounds", type=int, default=1)
    p.add_argument("--steps-per-round", type=int, default=1)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for both variants (1 = what each of K=2 torchrun workers gets here)")
    p.add_argument("--clock", choices=("cpu", "wall"), default=None,
                   help="clock the target is judged on: cpu (process CPU time; default with 1 thread on CPU, "
                        "robust to other jobs on the cores) or wall (default otherwise; always on CUDA)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (the warm-up round compiles)")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast forward + loss")
    p.add_argument("--quick", action="store_true", help="resnet18 at batch 8, ~8 s of rounds (< 30 s)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.archs, args.batch, args.rounds, args.budget_s = "resnet18", 8, 3, 8.0
    if args.device != "cpu":
        args.clock = "wall"  # CPU time says nothing about GPU kernels
    elif args.clock is None:
        args.clock = "cpu" if args.threads == 1 else "wall"
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print_machine()
    print(f"dreg_overhead: step = fwd + bwd + SGD step, batch {args.batch}, threads {args.threads}, "
          f"device {args.device}, clock {args.clock}; per arch {args.warmup_rounds} warm-up round, then interleaved "
          f"rounds (vanilla, dreg) for ~{args.budget_s:.0f}s (>= {args.rounds})")
    results = [run_arch(a.strip(), args) for a in args.archs.split(",") if a.strip()]
    parts = [f"{r['arch']} {r['measured_pct']:+.1f}% (floor +{r['floor_pct']:.1f}%, gap {r['gap_pp']:+.1f}pp)"
             for r in results]
    met = sum(r["met"] for r in results)
    _common.print_load()
    print(f"SUMMARY: dreg_overhead batch {args.batch} {args.device}: " + "; ".join(parts)
          + f" -> target gap <= {TARGET_PP:.0f}pp met {met}/{len(results)}")
    write_json(args.json, {"bench": "dreg_overhead", "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
