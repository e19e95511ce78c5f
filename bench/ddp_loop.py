#!/usr/bin/env python
"""A bare hand-written DDP training loop: the reference the benchmarks hold the service to.

Launched like the trainer (``torchrun --nproc_per_node=K bench/ddp_loop.py ...``, gloo on
CPU; ``--device cuda``: NCCL, one GPU per process, channels_last as the trainer's default;
``--amp bf16``: autocast as ``train.amp=bf16``): the same dual-path model (``DualPathModel``, layer R1, per-path norm) and the same
Eq. 3 loss (``DRegObjective``), random tensors already in memory, plain momentum SGD, and
nothing else: no data pipeline, no logging, no checkpoints, no per-step collectives beside
DDP's gradient all-reduce. With K = 1 the model is not wrapped in DDP (as in the trainer).

Several DDP configurations (``--variants``) can be timed in one job, each on its own copy
of the model, interleaved round by round (A, B, A, B, ...):

* ``default``: DDP defaults (bucket_cap_mb 25, fp32 all-reduce)
* ``bucketN``: ``bucket_cap_mb=N`` (e.g. ``bucket1``)
* ``fp16`` / ``bf16``: PyTorch's ``fp16_compress_hook`` / ``bf16_compress_hook``

Every variant's communication hook is wrapped to record the buckets it all-reduces (count,
elements, bytes sent), which gives the bytes per step as DDP sees them. ``--comm-only``
also times the all-reduce of a gradient-sized buffer alone (fp32 / fp16 / bf16, one
bucket or 1 MB buckets), without the compute that hides it in a training step.

Rank 0 prints one JSON object per job (also to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from _common import autocast  # noqa: E402  (bench/ is this script's directory)
from dreg_dist.dreg import DualPathModel  # noqa: E402
from dreg_dist.dreg.contrast import DRegObjective  # noqa: E402
from dreg_dist.models import build_model  # noqa: E402

HOOKS = {"none": default_hooks.allreduce_hook, "fp16": default_hooks.fp16_compress_hook,
         "bf16": default_hooks.bf16_compress_hook}
WIRE_BYTES = {"none": None, "fp16": 2, "bf16": 2}


class CountingState:
    """Bucket sizes seen by the hook during the current step."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.reset()

    def reset(self) -> None:
        self.buckets = 0
        self.numel = 0
        self.bytes_sent = 0

    def record(self, bucket: Any) -> None:
        buf = bucket.buffer()
        self.buckets += 1
        self.numel += buf.numel()
        self.bytes_sent += buf.numel() * (WIRE_BYTES[self.codec] or buf.element_size())


def counting_hook(state, bucket):  # type: ignore[no-untyped-def]
    """Record the bucket, then run the real hook (no annotations: DDP checks them by identity)."""
    state.record(bucket)
    return HOOKS[state.codec](None, bucket)


def parse_variant(name: str) -> dict[str, Any]:
    if name == "default":
        return {"bucket_cap_mb": None, "codec": "none"}
    if name.startswith("bucket"):
        return {"bucket_cap_mb": float(name[len("bucket"):]), "codec": "none"}
    if name in ("fp16", "bf16"):
        return {"bucket_cap_mb": None, "codec": name}
    raise SystemExit(f"unknown variant {name!r}: default | bucketN | fp16 | bf16")


def build(args: argparse.Namespace, world_size: int, variant: str,
          device: torch.device) -> tuple[nn.Module, Callable[[int], None], Any]:
    torch.manual_seed(0)  # identical replicas
    module: nn.Module = build_model(args.arch, 10)
    if not args.vanilla:
        module = DualPathModel(module, args.layer)
    # channels_last on CUDA, as the trainer does by default (train.channels_last null).
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    module = module.to(device, memory_format=memory_format)
    model: nn.Module = module
    state = None
    if world_size > 1:
        spec = parse_variant(variant)
        kwargs = {"bucket_cap_mb": spec["bucket_cap_mb"]} if spec["bucket_cap_mb"] is not None else {}
        model = DDP(module, device_ids=[device.index] if device.type == "cuda" else None,
                    gradient_as_bucket_view=True, **kwargs)
        state = CountingState(spec["codec"])
        model.register_comm_hook(state, counting_hook)
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    objective = DRegObjective()
    gen = torch.Generator().manual_seed(1000 + dist.get_rank() if dist.is_initialized() else 1000)
    x = torch.randn(args.batch, 3, 32, 32, generator=gen).to(device, memory_format=memory_format)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(device)
    if args.vanilla:
        loss_fn: Callable[[Any], torch.Tensor] = lambda out: nn.functional.cross_entropy(out.float(), y)
    else:
        loss_fn = lambda out: objective(out[0], out[1], y, module)[0]  # noqa: E731

    def steps(n: int) -> None:
        for _ in range(n):
            if state is not None:
                state.reset()
            with autocast(device, args.amp):
                loss = loss_fn(model(x))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return model, steps, state


def comm_only(numel: int, reps: int, device: torch.device) -> dict[str, float]:
    """Median ms of all-reducing ``numel`` fp32 gradient values, by codec and bucket size."""
    grad = torch.randn(numel, device=device)
    out: dict[str, float] = {}
    chunk_1mb = (1 << 20) // 4
    for name, dtype, chunk in (("fp32 one bucket", None, numel), ("fp32 1MB buckets", None, chunk_1mb),
                               ("fp16 one bucket", torch.float16, numel), ("bf16 one bucket", torch.bfloat16, numel)):
        times = []
        for _ in range(reps + 1):
            dist.barrier()
            t0 = time.perf_counter()
            for start in range(0, numel, chunk):
                part = grad[start:start + chunk]
                if dtype is not None:
                    wire = part.to(dtype)
                    dist.all_reduce(wire)
                    part.copy_(wire)
                else:
                    dist.all_reduce(part)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        times = sorted(times[1:])
        out[name] = 1e3 * times[len(times) // 2]
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="bare DDP loop (see module docstring)")
    p.add_argument("--arch", default="cnn_small")
    p.add_argument("--layer", default="R1")
    p.add_argument("--vanilla", action="store_true", help="plain model and cross-entropy instead of DReg")
    p.add_argument("--batch", type=int, default=32, help="per-worker batch")
    p.add_argument("--variants", default="default")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup-rounds", type=int, default=1)
    p.add_argument("--warmup-steps", type=int, default=0, help="untimed steps per variant before the rounds")
    p.add_argument("--steps-per-round", type=int, default=10)
    p.add_argument("--comm-only", type=int, default=0, help="repetitions of the all-reduce-only timing (0 = skip)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: NCCL, one GPU per local rank")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                   help="autocast forward + loss, as train.amp (no grad scaler: fp16 is for timing only)")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def run(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """One bare-loop measurement in this process (joins / creates the gloo group when K > 1)."""
    args = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cpu")
    if args.device == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    names = [v for v in args.variants.split(",") if v] if world_size > 1 else ["default"]
    built = {name: build(args, world_size, name, device) for name in names}
    for _, steps, _ in built.values():
        for _ in range(args.warmup_steps):
            steps(1)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.warmup_rounds + args.rounds):
        for name, (_, steps, _) in built.items():
            if dist.is_initialized():
                dist.barrier()
            t0 = time.perf_counter()
            steps(args.steps_per_round)
            if dist.is_initialized():
                dist.barrier()
            if r >= args.warmup_rounds:
                times[name].append(time.perf_counter() - t0)
    module = built[names[0]][0]
    module = module.module if isinstance(module, DDP) else module
    grad_numel = sum(p.numel() for p in module.parameters() if p.requires_grad)
    result: dict[str, Any] = {
        "world_size": world_size, "device": str(device), "arch": args.arch, "dreg": not args.vanilla, "batch_per_worker": args.batch,
        "amp": args.amp,
        "threads": torch.get_num_threads(), "steps_per_round": args.steps_per_round,
        "grad_numel": grad_numel,
        "grad_bytes_fp32": sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad),
        "variants": {},
    }
    for name, (_, _, state) in built.items():
        ips = [args.steps_per_round * args.batch * world_size / t for t in times[name]]
        entry: dict[str, Any] = {"images_per_sec": ips, "round_s": times[name]}
        if state is not None:
            entry.update(buckets=state.buckets, bucket_numel=state.numel, bytes_sent_per_step=state.bytes_sent)
        result["variants"][name] = entry
    if args.comm_only and world_size > 1:
        result["comm_only_ms"] = comm_only(grad_numel, args.comm_only, device)
    if rank == 0:
        text = json.dumps(result)
        print("RESULT " + text, flush=True)
        if args.out:
            Path(args.out).write_text(text + "\n")
    return result


def main() -> None:
    run()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
