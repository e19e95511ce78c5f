#!/usr/bin/env python
"""Cost of measuring the gradient noise scale (``log.noise_scale``), as a ratio of step times.

Block mode (one worker, accumulation): a vanilla step over the accumulation micro-batches
(``Method.compute_gradients`` and the optimizer step) with the meter's first-block callback
and per-step update, against the same step without them; interleaved rounds on one process,
CPU time with one thread (the work done, nearly immune to other jobs on the cores).

Hook mode (``--k 2``): the same on K gloo workers, where the meter reads each gradient
bucket in a DDP communication hook before the all-reduce, against DDP's built-in all-reduce;
wall time per step, rounds interleaved in one process group, the median over rounds of rank
0's ratio.

    PYTHONPATH=. python bench/noise_scale_cost.py                 # block mode, cnn_tiny, batch 512 = 4 x 128
    PYTHONPATH=. python bench/noise_scale_cost.py --k 2           # hook mode on 2 workers
    PYTHONPATH=. python bench/noise_scale_cost.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import time
from typing import Callable, Optional, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from _common import fmt_ratio, interleave, paired_ratio, print_machine
from dreg_dist.distributed import exit_process, init_distributed, shutdown
from dreg_dist.methods import StepContext, method_class
from dreg_dist.models import build_model
from dreg_dist.train.noise import NoiseScaleMeter


def _setup(arch: str, batch: int, blocks: int, world: int):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(arch, 10).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    micro = batch // world // blocks
    batches = [(torch.randn(micro, 3, 32, 32).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (micro,))) for _ in range(blocks)]
    return model, optimizer, batches


def make_step(model: torch.nn.Module, step_model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              batches: list, meter: Optional[NoiseScaleMeter], steps: int) -> Callable[[], None]:
    method = method_class("vanilla")()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    no = torch.tensor(False)

    def step() -> None:
        for _ in range(steps):
            ctx = StepContext(step_model, model, contextlib.nullcontext, scaler,
                              first_block=meter.first_block() if meter else None)
            method.compute_gradients(ctx, batches)
            if meter is not None:
                meter.step([p.grad for p in model.parameters() if p.grad is not None], no)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def block_mode(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    model, optimizer, batches = _setup(args.arch, args.batch, args.blocks, 1)
    meter = NoiseScaleMeter(model, torch.device("cpu"), args.batch, 1, decay=0.95, enabled=True, hookable=False,
                            scale=lambda: None)
    times = interleave({"off": make_step(model, model, optimizer, batches, None, args.steps),
                        "on": make_step(model, model, optimizer, batches, meter, args.steps)}, rounds=args.rounds)
    ratio = paired_ratio(times["on"]["cpu"], times["off"]["cpu"])
    print(f"block mode, {args.arch}, batch {args.batch} = {args.blocks} x {args.batch // args.blocks}: "
          f"step CPU time with the meter / without = {fmt_ratio(ratio)}")
    # The whole-step ratio is inside round-to-round noise; the meter's own work, timed alone on
    # the same gradients (its first-block read and its per-step update), is the precise figure.
    grads = [p.grad if p.grad is not None else torch.randn_like(p) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g
    no, reps = torch.tensor(False), 200
    c0 = time.process_time()
    for _ in range(reps):
        meter.first_block()(args.batch // args.blocks)  # type: ignore[misc]
        meter.step(grads, no)
    own = (time.process_time() - c0) / reps
    step = min(times["off"]["cpu"]) / args.steps
    print(f"the meter's own work: {own * 1e3:.3f} ms per step = {own / step:.2%} of the fastest step without it "
          f"({step * 1e3:.1f} ms)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hook_worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    init_distributed("cpu")
    fns = {}
    for on in (False, True):
        model, optimizer, batches = _setup(args.arch, args.batch, 1, world)
        ddp = DDP(model, gradient_as_bucket_view=True)
        meter = None
        if on:
            meter = NoiseScaleMeter(model, torch.device("cpu"), args.batch, world, decay=0.95, enabled=True,
                                    hookable=True, scale=lambda: None)
            ddp.register_comm_hook(None, meter.wrap(default_hooks.allreduce_hook))
        fns["on" if on else "off"] = make_step(model, ddp, optimizer, batches, meter, args.steps)
    walls: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(1 + args.rounds):
        for name, fn in fns.items():
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            dist.barrier()
            if r:
                walls[name].append(time.perf_counter() - t0)
    if rank == 0:
        ratio = paired_ratio(walls["on"], walls["off"])
        print(f"hook mode, {world} gloo workers, {args.arch}, batch {args.batch} ({args.batch // world} per worker): "
              f"step wall time with the meter's hook / DDP's built-in all-reduce = {fmt_ratio(ratio)}")
    shutdown()
    exit_process(0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--arch", default="cnn_tiny")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--blocks", type=int, default=4, help="accumulation micro-batches (block mode)")
    parser.add_argument("--k", type=int, default=1, help="workers; 2 or more: hook mode")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--quick", action="store_true", help="batch 64, 3 rounds of 2 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.rounds, args.steps = 64, 3, 2
    print_machine()
    if args.k > 1:
        mp.spawn(_hook_worker, args=(args.k, _free_port(), args), nprocs=args.k, join=True)
    else:
        block_mode(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
