#!/usr/bin/env python
"""Peak memory of a DReg (dual-path) training step over the vanilla one.

Every measurement is a fresh Python process (``--child``) running a few training steps
(forward + loss + backward + momentum SGD step + zero_grad, random data, one thread),
which reports two figures:

* allocator peak (primary, deterministic): the last step runs under ``torch.profiler``
  with ``profile_memory=True``; its allocation/free events, summed in time order, give
  the high-water mark of live tensor bytes during the step, added to what was live at
  its start (parameters, momentum buffers, the batch; gradients are None after
  ``zero_grad(set_to_none=True)``). This is the memory the model needs, independent of
  the C allocator and of other jobs; the same run gives the same bytes.
* peak RSS (process level): ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` minus the RSS
  right after the imports (interpreter + torch + torchvision). It includes allocator
  caching and fragmentation and moves by a few tens of MB between identical runs.

Children run interleaved (vanilla, dreg, vanilla, dreg, ...) and medians are taken. On
CUDA (``--device cuda``) the child reports ``torch.cuda.max_memory_allocated`` as well.
Also printed: parameters + gradients + momentum (3 x 4 bytes per parameter), the part of
the extra memory that comes from W^L (and the per-path norm) alone.

    PYTHONPATH=. python bench/memory.py           # resnet18, vgg16, mobilenet_v2 at batch 32
    PYTHONPATH=. python bench/memory.py --quick   # resnet18 at batch 8, one child per variant
    PYTHONPATH=. python bench/memory.py --device cuda --batch 512 --amp bf16 --channels-last --repeats 1
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from typing import Any, Optional, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)

from _common import REPO, autocast, median, print_machine, run_command, subprocess_env, write_json


def vm_rss_kb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def child(arch: str, variant: str, batch: int, steps: int, device: str, amp: str = "none",
          channels_last: bool = False) -> None:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    from dreg_dist.dreg import DualPathModel
    from dreg_dist.dreg.contrast import DRegObjective
    from dreg_dist.models import build_model

    baseline_kb = vm_rss_kb()
    torch.manual_seed(0)
    model = build_model(arch, 10)
    if variant == "dreg":
        model = DualPathModel(model, "R1")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    objective = DRegObjective()
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with autocast(device, amp):
            if variant == "dreg":
                logits_r, logits_l = model(x)
                loss = objective(logits_r, logits_l, y, model)[0]
            else:
                loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(max(1, steps - 1)):
        step()
    live = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers(), x, y])
    live += sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                if isinstance(v, torch.Tensor))
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # "[memory]" events: +bytes on allocation, -bytes on free (CPU allocator; on CUDA the
    # primary figure is max_memory_allocated instead).
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and "CPU" in str(e.device_type()))
    current = high = 0
    for _, nbytes in events:
        current += nbytes
        high = max(high, current)
    out: dict[str, Any] = {
        "baseline_mb": baseline_kb / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "alloc_peak_mb": (live + high) / 2**20,
        "live_at_start_mb": live / 2**20,
        "params": sum(p.numel() for p in model.parameters()),
    }
    if device == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def measure(arch: str, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", arch, variant, "--batch", str(args.batch), "--steps", str(args.steps),
           "--device", args.device, "--amp", getattr(args, "amp", "none")]
    if getattr(args, "channels_last", False):
        cmd.append("--channels-last")
    done = run_command(cmd, env=subprocess_env(threads=1), cwd=REPO, timeout=getattr(args, "timeout", 600.0))
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"child {arch} {variant} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def run_arch(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    """``args.repeats`` children per variant, interleaved; print and return the medians and ratios."""
    primary = "cuda_peak_mb" if args.device == "cuda" else "alloc_peak_mb"
    runs: dict[str, list[dict[str, Any]]] = {"vanilla": [], "dreg": []}
    for _ in range(args.repeats):
        for variant in runs:
            runs[variant].append(measure(arch, variant, args))
    peak = {v: median([r[primary] for r in rs]) for v, rs in runs.items()}
    rss = {v: median([r["peak_rss_mb"] - r["baseline_mb"] for r in rs]) for v, rs in runs.items()}
    spread = {v: max(r[primary] for r in rs) - min(r[primary] for r in rs) for v, rs in runs.items()}
    state = {v: 3 * 4 * rs[0]["params"] / 2**20 for v, rs in runs.items()}
    ratio, rss_ratio = peak["dreg"] / peak["vanilla"], rss["dreg"] / rss["vanilla"]
    print(f"{arch:<13} allocator peak: vanilla {peak['vanilla']:7.1f} MB, dreg {peak['dreg']:7.1f} MB -> "
          f"x{ratio:.3f} (+{peak['dreg'] - peak['vanilla']:.1f} MB; spread over children "
          f"{max(spread.values()):.1f} MB)")
    print(f"{'':<13} peak RSS above imports: vanilla {rss['vanilla']:7.1f} MB, dreg {rss['dreg']:7.1f} MB -> "
          f"x{rss_ratio:.3f} ({rss['dreg'] - rss['vanilla']:+.1f} MB); params+grads+momentum "
          f"{state['vanilla']:.1f} -> {state['dreg']:.1f} MB (+{state['dreg'] - state['vanilla']:.1f} MB)")
    return {"runs": runs, "metric": primary, "peak_mb": peak, "ratio": ratio, "rss_above_imports_mb": rss,
            "rss_ratio": rss_ratio, "state_mb": state}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="resnet18,vgg16,mobilenet_v2")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=2, help="training steps per child (the peak is reached by step 2)")
    p.add_argument("--repeats", type=int, default=2, help="children per variant, interleaved")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast forward + loss")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before a child is killed")
    p.add_argument("--quick", action="store_true", help="resnet18 at batch 8, one child per variant")
    p.add_argument("--json", default=None)
    p.add_argument("--child", nargs=2, metavar=("ARCH", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick and not args.child:
        args.archs, args.batch, args.repeats = "resnet18", 8, 1
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.batch, args.steps, args.device, args.amp, args.channels_last)
        return
    print_machine()
    print(f"memory: fresh process per measurement, {args.steps} training steps, batch {args.batch}, 1 thread; "
          f"primary = {'torch.cuda.max_memory_allocated' if args.device == 'cuda' else 'allocator peak of the profiled step'}"
          f", secondary = peak RSS - RSS after imports; {args.repeats} interleaved children per variant")
    results = {}
    parts = []
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        try:
            r = run_arch(arch, args)
        except RuntimeError as err:
            raise SystemExit(str(err)) from None
        results[arch] = r
        peak = r["peak_mb"]
        parts.append(f"{arch} x{r['ratio']:.2f} (+{peak['dreg'] - peak['vanilla']:.0f} MB; RSS x{r['rss_ratio']:.2f})")
    _common.print_load()
    print(f"SUMMARY: memory batch {args.batch} {args.device}: dreg/vanilla peak memory of a training step: "
          + ", ".join(parts))
    write_json(args.json, {"bench": "memory", "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
