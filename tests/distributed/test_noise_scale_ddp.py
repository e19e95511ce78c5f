"""The gradient noise scale on two real workers (gloo): the communication-hook estimate against
the closed form of linear regression (see tests/unit/test_noise_scale.py), and a training run
whose weights the measurement does not change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from dreg_dist.distributed import exit_process, init_distributed, shutdown
from dreg_dist.train.noise import NoiseScaleMeter

from ..conftest import assert_ok, final_weights, launch
from .gloo_world import free_port, rank_env
from ..unit.test_noise_scale import SIGMA, D, regression, truth

pytestmark = pytest.mark.distributed

K = 2
STEPS = 1000


def _worker(rank: int, port: int, batches: list[int], out: str) -> None:
    os.environ.update(rank_env(rank, K, port))
    torch.set_num_threads(1)
    init_distributed("cpu")
    results = {}
    for batch in batches:
        model, wstar = regression()
        meter = NoiseScaleMeter(model, torch.device("cpu"), batch, K, decay=0.999, enabled=True, hookable=True,
                                scale=lambda: None)
        assert meter.mode == "hook"
        ddp = DDP(model, gradient_as_bucket_view=True)
        ddp.register_comm_hook(None, meter.wrap(default_hooks.allreduce_hook))
        gen = torch.Generator().manual_seed(100 + rank)  # each worker its own samples
        local = batch // K
        for _ in range(STEPS):
            ddp.zero_grad(set_to_none=True)
            x = torch.randn(local, D, generator=gen)
            y = x @ wstar + SIGMA * torch.randn(local, generator=gen)
            (0.5 * (ddp(x)[:, 0] - y).pow(2).mean()).backward()
            meter.step([p.grad for p in model.parameters()], torch.tensor(False))
        vec = torch.stack([meter.rank_values()[k] for k in ("grad_sq_norm", "grad_trace_cov")])
        dist.all_reduce(vec)  # what the loss window's all-reduce does with them
        results[batch] = (vec / K).tolist() + [meter.small_batch]
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    shutdown()
    exit_process(0)


def test_two_worker_estimate_is_within_ten_percent_of_the_closed_form(tmp_path: Path) -> None:
    out = tmp_path / "estimates.json"
    batches = [64, 512]
    mp.spawn(_worker, args=(free_port(), batches, str(out)), nprocs=K, join=True)
    model, wstar = regression()
    g_sq, trace = truth(model.weight.detach()[0] - wstar)
    got = json.loads(out.read_text())
    for batch, (got_g, got_trace, small) in got.items():
        assert small == int(batch) // K  # one worker's share is the small batch
        assert got_g == pytest.approx(g_sq, rel=0.10), batch
        assert got_trace == pytest.approx(trace, rel=0.10), batch


def test_measuring_on_two_workers_changes_no_weight(tmp_path: Path, tiny: list[str]) -> None:
    runs = {}
    for on in ("true", "false"):
        run = tmp_path / on
        done = launch(2, "configs/quickstart.yaml", run, tiny + ["method=vanilla", "train.epochs=1",
                                                                  f"log.noise_scale={on}"])
        assert_ok(done)
        runs[on] = run
    measured = json.loads((runs["true"] / "summary.json").read_text())["noise_scale"]
    assert measured["measured"] and measured["mode"] == "hook" and measured["small_batch"] == 32
    assert json.loads((runs["false"] / "summary.json").read_text())["noise_scale"]["measured"] is False
    on, off = final_weights(runs["true"]), final_weights(runs["false"])
    for key in on:
        assert torch.equal(on[key], off[key]), key
