"""Comparison methods under 2 gloo workers vs single-process references.

Two processes (torch.multiprocessing.spawn, gloo, 127.0.0.1) each take their half of a
global batch (rank-major, as the data pipeline shards it), run one method step through a
real DDP model, then one SGD step. The main process checks the all-reduced gradients
against formulas computed here on one process, that each step did exactly as many
all-reduces as a vanilla step, and that both replicas hold identical weights afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from dreg_dist.config import Config, build_method
from dreg_dist.distributed import exit_process, init_distributed, shutdown
from dreg_dist.methods import StepContext, method_class
from dreg_dist.methods._util import seed_from

from ..conftest import launch
from .gloo_world import free_port, rank_env

pytestmark = pytest.mark.distributed

DT = torch.float64
K = 2
B = 8  # global batch; 4 per worker
SEED = 3

# name, methods.* overrides, StepContext extras, accumulation micro-batches per worker
CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any], int]] = {
    "vanilla": ("vanilla", {}, {}, 1),
    "gradnorm": ("gradnorm", {"lam": 0.5, "micro_batch_size": 2}, {"step": 1}, 2),
    "fisher": ("fisher", {"lam": 0.5, "micro_batch_size": 2}, {"step": 3}, 1),
    "sam": ("sam", {"rho": 0.1, "micro_batch_size": None}, {}, 1),
    "extragradient": ("extragradient", {"micro_batch_size": None, "gamma_rule": "lr"}, {"lr": 0.5}, 2),
    "sam_m2": ("sam", {"rho": 0.1, "micro_batch_size": 2}, {}, 1),
    "extragradient_m2": ("extragradient", {"micro_batch_size": 2}, {"lr": 0.5}, 2),
    "gradientmix": ("gradientmix", {"strength": 1.0, "alpha": 1.0}, {"step": 5}, 1),
    "gradientmix_off": ("gradientmix", {"strength": 0.0}, {"step": 5}, 1),
}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 6, generator=g, dtype=DT), torch.randint(0, 3, (B,), generator=g)


def _shard(rank: int) -> tuple[Tensor, Tensor]:
    x, y = _data()
    n = B // K
    return x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]


def _cfg(name: str, methods: dict[str, Any]) -> Config:
    cfg = Config()
    cfg.method = name
    cfg.train.seed = SEED
    cfg.method_config = method_class(name).Config(**methods)
    return cfg


def _ctx(model: nn.Module, module: nn.Module, extras: dict[str, Any]) -> StepContext:
    return StepContext(model, module, contextlib.nullcontext, torch.amp.GradScaler("cpu", enabled=False), **extras)


def _counting_allreduce(state, bucket):  # type: ignore[no-untyped-def]
    """DDP's default all-reduce (mean), counting the calls (unannotated: DDP checks them)."""
    state["calls"] += 1
    buffer = bucket.buffer().div_(dist.get_world_size())
    return dist.all_reduce(buffer, async_op=True).get_future().then(lambda fut: fut.value()[0])


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(rank_env(rank, K, port))
    torch.set_num_threads(1)
    init_distributed("cpu")
    results: dict[str, Any] = {}
    try:
        for key, (name, methods, extras, accumulation) in CASES.items():
            module = _mlp()
            ddp = DDP(module)
            method = build_method(_cfg(name, methods))
            method.configure_ddp(ddp)  # gradientmix registers its mixing hook here
            counter = {"calls": 0}
            if not getattr(method, "hooked", False):
                ddp.register_comm_hook(counter, _counting_allreduce)
            x, y = _shard(rank)
            batches = list(zip(x.chunk(accumulation), y.chunk(accumulation)))
            parts = method.compute_gradients(_ctx(ddp, module, extras), batches)
            grads = [p.grad.detach().clone() for p in module.parameters()]
            torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9).step()
            results[key] = {
                "grads": grads,
                "params": [p.detach().clone() for p in module.parameters()],
                "calls": counter["calls"],
                "parts": {k: float(v) for k, v in parts.items()},
            }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        shutdown()
    exit_process(0)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("methods_ddp")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=K, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(K)]


# ----------------------------------------------------------------- single-process references
def _loss_grad(model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    return list(torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters())))


def _grad_at(deltas: list[Tensor], x: Tensor, y: Tensor) -> list[Tensor]:
    model = _mlp()
    with torch.no_grad():
        for p, d in zip(model.parameters(), deltas):
            p.add_(d)
    return _loss_grad(model, x, y)


def _norm(ts: list[Tensor]) -> Tensor:
    return torch.sqrt(sum((t**2).sum() for t in ts))


def _mean(per_worker: list[list[Tensor]]) -> list[Tensor]:
    return [sum(ts) / len(ts) for ts in zip(*per_worker)]


def _single_process(name: str) -> list[Tensor]:
    """The method itself on one process over the whole global batch (K = 1)."""
    _, methods, extras, _ = CASES[name]
    model = _mlp()
    x, y = _data()
    build_method(_cfg(CASES[name][0], methods)).compute_gradients(_ctx(model, model, extras), [(x, y)])
    return [p.grad.detach().clone() for p in model.parameters()]


def _close(a: list[Tensor], b: list[Tensor]) -> None:
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


def _differs(a: list[Tensor], b: list[Tensor]) -> bool:
    return any(not torch.allclose(u, v, rtol=1e-6, atol=1e-9) for u, v in zip(a, b))


# ----------------------------------------------------------------- tests
@pytest.mark.parametrize("key", list(CASES))
def test_replicas_identical_and_one_all_reduce_per_step(ranks: list[dict[str, Any]], key: str) -> None:
    r0, r1 = ranks[0][key], ranks[1][key]
    for a, b in zip(r0["grads"], r1["grads"]):
        assert torch.equal(a, b)
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)
    if key != "gradientmix":  # its own hook replaces the counting one
        assert r0["calls"] == r1["calls"] == ranks[0]["vanilla"]["calls"] >= 1


@pytest.mark.parametrize("key", ["gradnorm", "fisher"])
def test_penalties_two_workers_equal_one(ranks: list[dict[str, Any]], key: str) -> None:
    # Same micro-batch partition (m = 2 cuts the global batch identically whether it is
    # held by one worker or split 4 + 4; per-worker accumulation does not change it), the
    # penalty is a sum over micro-batches of purely local terms, and the Fisher labels are
    # seeded by the micro-batch's global position: K = 2 must equal K = 1.
    _close(ranks[0][key]["grads"], _single_process(key))
    assert ranks[0][key]["parts"]["penalty"] > 0


def test_sam_is_the_mean_of_per_shard_sam(ranks: list[dict[str, Any]]) -> None:
    rho = CASES["sam"][1]["rho"]
    per_worker = []
    for rank in range(K):
        x, y = _shard(rank)
        g = _loss_grad(_mlp(), x, y)
        n = _norm(g)
        per_worker.append(_grad_at([rho * gi / (n + 1e-12) for gi in g], x, y))
    _close(ranks[0]["sam"]["grads"], _mean(per_worker))
    # Not equal to full-batch SAM: each worker ascends along its own shard's gradient
    # (m-sharpness with m = B/K), full-batch SAM along the global one.
    assert _differs(ranks[0]["sam"]["grads"], _single_process("sam"))


def test_extragradient_is_the_mean_of_per_worker_extrapolations(ranks: list[dict[str, Any]]) -> None:
    lr = CASES["extragradient"][2]["lr"]
    per_worker = []
    for rank in range(K):
        x, y = _shard(rank)
        g = _loss_grad(_mlp(), x, y)  # the worker's mean loss over its 2 equal accumulation chunks
        per_worker.append(_grad_at([-lr * gi for gi in g], x, y))
    _close(ranks[0]["extragradient"]["grads"], _mean(per_worker))
    # Not equal to K = 1: the extrapolation is local (no communication), so worker k
    # evaluates its shard at w - lr * g_k, while one process would use w - lr * mean_k g_k;
    # (1/K) sum_k grad L_k(w - lr g_k) != grad L(w - lr g) unless the loss is linear or
    # the shards agree.
    assert _differs(ranks[0]["extragradient"]["grads"], _single_process("extragradient"))


@pytest.mark.parametrize("key", ["sam_m2", "extragradient_m2"])
def test_perturbation_per_chunk_is_the_same_on_one_and_two_workers(ranks: list[dict[str, Any]], key: str) -> None:
    """Per chunk of m = 2 samples (two chunks per worker, and per accumulation micro-batch for
    extragradient), the gradient and the weights after the step are those of one process over
    the whole batch, up to summation order; with m = B/K (earlier releases) they are not."""
    one = _single_process(key)
    _close(ranks[0][key]["grads"], one)
    model = _mlp()
    for p, g in zip(model.parameters(), one):
        p.grad = g.clone()
    torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).step()
    _close(ranks[1][key]["params"], [p.detach() for p in model.parameters()])
    legacy = key.removesuffix("_m2")
    assert _differs(ranks[0][key]["grads"], ranks[0][legacy]["grads"])


def test_gradientmix_is_the_stated_convex_mix(ranks: list[dict[str, Any]]) -> None:
    local = [_loss_grad(_mlp(), *_shard(rank)) for rank in range(K)]
    # Stated rule: a = Dirichlet(alpha=1, 1) from numpy's default_rng(seed_from(seed, step)),
    # strength 1, the same on both ranks.
    a = np.random.default_rng(seed_from(SEED, 5)).dirichlet([1.0, 1.0])
    expected = [float(a[0]) * g0 + float(a[1]) * g1 for g0, g1 in zip(*local)]
    _close(ranks[0]["gradientmix"]["grads"], expected)
    assert ranks[0]["gradientmix"]["parts"]["mix_weight_max"] == pytest.approx(a.max())
    assert abs(a[0] - 0.5) > 1e-3  # the check above really is not the plain mean
    # Strength 0 is plain averaging, which equals the one-process gradient (no BN).
    _close(ranks[0]["gradientmix_off"]["grads"], _mean(local))
    _close(ranks[0]["gradientmix_off"]["grads"], _single_process("gradientmix_off"))


# ----------------------------------------------------------------- through the real trainer
TINY = [
    "model.arch=cnn_small_gn", "data.name=synthetic", "data.synthetic_train_size=192", "data.val_size=64",
    "data.synthetic_test_size=64", "train.epochs=1", "train.global_batch_size=64", "train.eval_batch_size=64",
    "train.device=cpu", "log.tensorboard=false", "log.every_steps=1", "log.progress=lines",
    "optim.warmup_epochs=0", "methods.gradnorm.micro_batch_size=16",
]
OWN_KEY = {"gradnorm": "penalty", "gradientmix": "mix_weight_max"}


@pytest.mark.parametrize("name", ["gradnorm", "gradientmix"])
def test_two_worker_training_run(tmp_path: Path, name: str) -> None:
    """gradnorm: DDP + double backprop in the real loop. gradientmix needs the trainer to
    call ``method.configure_ddp(ddp_model)`` after wrapping (it refuses to run otherwise)."""
    done = launch(2, "configs/quickstart.yaml", tmp_path, [*TINY, f"method={name}"])
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["method"] == name and summary["global_steps"] == 2
    train = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
             if r.get("kind") == "train"]
    assert len(train) == 2 and all(np.isfinite(r[OWN_KEY[name]]) for r in train)
    weights = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
