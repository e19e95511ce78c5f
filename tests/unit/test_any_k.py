"""Single-process checks of what makes training K-independent: ghost batch norm, random ops
keyed by sample, the micro-batch layout and its config checks, the resume-on-another-K line.

A "K=2 run" is simulated here by forwarding the two halves of a batch as separate
micro-batches, each with its samples' positions; ``tests/distributed/test_any_k.py`` runs
real worker groups.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from dreg_dist.config import ConfigError, load_config
from dreg_dist.config.validate import validate_config, worker_batch_layout
from dreg_dist.models import ForwardKeys, build_model, convert_ghost_batch_norm, convert_keyed_random, ghost_modules
from dreg_dist.models.batch import Batch, rank_positions, with_positions
from dreg_dist.models.forward_keys import KeyedDropout, keep_mask, keyed
from dreg_dist.models.ghost_bn import GhostBatchNorm2d, update_running_stats
from dreg_dist.train import any_k

QUICKSTART = "configs/quickstart.yaml"
PACKAGE = Path(__file__).resolve().parents[2] / "dreg_dist"


def _batch(x: torch.Tensor, start: int, y: torch.Tensor | None = None) -> Batch:
    """``x`` as a micro-batch whose samples sit at positions start, start + 1, ... of the global batch."""
    n = x.shape[0]
    return Batch(x, y if y is not None else torch.zeros(n, dtype=torch.int64), torch.arange(start, start + n))


def _forward(model: nn.Module, batch: Batch, x: torch.Tensor | None = None) -> torch.Tensor:
    """A training forward of ``batch``'s samples (of ``x``, a copy of its input, when given)."""
    with keyed(batch):
        return model(batch.x if x is None else x)


def _net(norm: bool = True, dropout: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 6, 3, padding=1)]
    if norm:
        layers.append(nn.BatchNorm2d(6))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 20)]
    if dropout:
        layers += [nn.Dropout(0.4), nn.Linear(20, 20), nn.Dropout(0.4)]
    layers += [nn.BatchNorm1d(20) if norm else nn.Identity(), nn.Linear(20, 5)]
    return nn.Sequential(*layers)


def _keyed(model: nn.Module, group: int | None = None) -> ForwardKeys:
    keys = ForwardKeys(seed=3)
    convert_keyed_random(model, keys)
    if group is not None:
        convert_ghost_batch_norm(model, group, keys)
    keys.attach(model)
    return keys


def _step(model: nn.Module, keys: ForwardKeys, x: torch.Tensor, y: torch.Tensor, parts: int, step: int = 0
          ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One step as ``parts`` equal micro-batches (workers or accumulation steps): outputs and grads."""
    model.zero_grad()
    micro = [_batch(xi, i * (x.shape[0] // parts), yi) for i, (xi, yi) in enumerate(zip(x.chunk(parts), y.chunk(parts)))]
    keys.begin_step(step)
    outs = []
    for batch in micro:
        out = _forward(model, batch)
        (F.cross_entropy(out, batch.y) / parts).backward()
        outs.append(out.detach())
    update_running_stats(ghost_modules(model))
    return torch.cat(outs), [p.grad.clone() for p in model.parameters()]


# ------------------------------------------------------------------ ghost batch norm
@pytest.mark.parametrize("momentum", [0.1, None])
def test_one_group_is_plain_batch_norm(momentum: float | None) -> None:
    plain = nn.BatchNorm2d(4, momentum=momentum)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.normal_()
    ghost = copy.deepcopy(plain)
    convert_ghost_batch_norm(ghost, 8)
    for _ in range(3):
        x = torch.randn(8, 4, 5, 5, requires_grad=True)
        a, b = plain(x), ghost(x)
        assert torch.allclose(a, b, atol=1e-5)
        ga = torch.autograd.grad(a.pow(3).sum(), [x, plain.weight, plain.bias])
        gb = torch.autograd.grad(b.pow(3).sum(), [x, ghost.weight, ghost.bias])
        for u, v in zip(ga, gb):
            assert torch.allclose(u, v, rtol=1e-4, atol=1e-4)
        update_running_stats([ghost])
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(plain, name).double(), getattr(ghost, name).double(), atol=1e-6), name
    plain.eval()
    ghost.eval()
    x = torch.randn(3, 4, 5, 5)
    assert torch.allclose(plain(x), ghost(x), atol=1e-5)  # eval: the running statistics, plain BatchNorm


def test_ghost_bn_trains_the_same_on_any_split_and_plain_bn_does_not() -> None:
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    results = {}
    for group in (4, None):
        for parts in (1, 2, 4):  # 1 worker; 2 workers (or 2 accumulation steps); 4
            model = _net()
            keys = _keyed(model, group)
            out, grads = _step(model, keys, x, y, parts)
            results[group, parts] = (out, grads, [b.clone() for b in model.buffers()])
    for parts in (2, 4):
        out, grads, buffers = results[4, parts]
        ref_out, ref_grads, ref_buffers = results[4, 1]
        assert torch.allclose(out, ref_out, atol=1e-5)
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r, atol=1e-5)
        for b, r in zip(buffers, ref_buffers):
            assert torch.allclose(b.double(), r.double(), atol=1e-6)
    # Sensitivity: plain BN over the micro-batch changes the forward with the split.
    assert not torch.allclose(results[None, 2][0], results[None, 1][0], atol=1e-3)


def test_group_statistics_count_once_per_micro_batch_and_once_per_call() -> None:
    """A second forward of the same micro-batch (two-pass methods) replaces the first one's
    statistics; a module called twice in one forward counts both calls."""
    bn = nn.BatchNorm1d(3, momentum=1.0)  # running stats = the step's statistics
    model = nn.Sequential(bn)
    keys = _keyed(model, group=2)
    x = torch.randn(4, 3)
    keys.begin_step(0)
    model(x * 100)  # no positions: counts as its own forward
    _forward(model, _batch(x, 0))
    _forward(model, _batch(x, 0), x.clone())  # the same micro-batch again, from a copy of its input
    groups = x.view(2, 2, 3)
    assert len(bn._pending) == 2
    bn._pending = {k: v for k, v in bn._pending.items() if k[0] != "unkeyed"}
    update_running_stats([bn])
    assert torch.allclose(bn.running_mean, groups.mean(1).mean(0))
    assert torch.allclose(bn.running_var, groups.var(1).mean(0))  # unbiased within each group
    assert int(bn.num_batches_tracked) == 1

    twice = nn.BatchNorm1d(3, momentum=1.0)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = twice

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return self.bn(v) + self.bn(2 * v)

    model2 = Twice()
    keys2 = _keyed(model2, group=4)
    keys2.begin_step(0)
    _forward(model2, _batch(x, 0))
    update_running_stats([twice])
    assert torch.allclose(twice.running_mean, 1.5 * x.mean(0))


def test_ghost_conversion_keeps_the_architecture_and_state_dict() -> None:
    plain = build_model("cnn_small", 10)
    ghost = copy.deepcopy(plain)
    names = convert_ghost_batch_norm(ghost, 8, ForwardKeys(0))
    assert names == ["bn1", "bn2", "bn3", "bn4"] and isinstance(ghost.bn1, GhostBatchNorm2d)
    assert isinstance(ghost.bn1, nn.BatchNorm2d)
    assert list(plain.state_dict()) == list(ghost.state_dict())
    plain.load_state_dict(ghost.state_dict(), strict=True)
    plain.eval()
    ghost.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(plain(x), ghost(x))


def test_ghost_bn_channels_last_and_bf16() -> None:
    bn = nn.BatchNorm2d(4)
    convert_ghost_batch_norm(bn, 2)
    x = torch.randn(4, 4, 3, 3)
    y = bn(x)
    assert torch.equal(bn(x.contiguous(memory_format=torch.channels_last)), y)
    assert bn(x.contiguous(memory_format=torch.channels_last)).is_contiguous(memory_format=torch.channels_last)
    assert bn(x.bfloat16()).dtype == torch.bfloat16
    one = nn.BatchNorm1d(4)
    convert_ghost_batch_norm(one, 1)  # a group of 1 sample with 1 value per channel has no variance
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        one(torch.randn(4, 4))


# ------------------------------------------------------------------ keyed random ops
def test_dropout_masks_depend_only_on_the_sample() -> None:
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    runs = {}
    for parts in (1, 2, 4):
        model = _net(norm=False, dropout=True)
        keys = _keyed(model)
        runs[parts] = _step(model, keys, x, y, parts, step=5)
    for parts in (2, 4):
        assert torch.allclose(runs[parts][0], runs[1][0], atol=1e-6)
        for g, r in zip(runs[parts][1], runs[1][1]):
            assert torch.allclose(g, r, atol=1e-6)
    # Another step draws other masks; every sample gets its own.
    model = _net(norm=False, dropout=True)
    keys = _keyed(model)
    assert not torch.allclose(_step(model, keys, x, y, 1, step=6)[0], runs[1][0])
    drop = nn.Sequential(nn.Dropout(0.5))
    keys = _keyed(drop)
    same = torch.ones(8, 1000)
    keys.begin_step(0)
    out = _forward(drop, _batch(same, 0))
    assert 0.45 < (out == 0).float().mean() < 0.55 and set(out.unique().tolist()) == {0.0, 2.0}
    assert not torch.equal(out[0], out[1])


def test_dropout_masks_repeat_across_passes_and_differ_between_calls() -> None:
    layer = nn.Dropout(0.5)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = layer

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return torch.stack([self.drop(v), self.drop(v)])

    model = Twice()
    keys = _keyed(model)
    assert isinstance(layer, KeyedDropout)
    x = torch.ones(4, 64)
    keys.begin_step(0)
    first, again = _forward(model, _batch(x, 0)), _forward(model, _batch(x, 0))
    assert torch.equal(first, again)  # a second pass over the micro-batch: same masks
    assert not torch.equal(first[0], first[1])  # two calls in one forward: different masks
    model.eval()
    assert torch.equal(model(x), torch.stack([x, x]))


def test_feature_dropout_and_stochastic_depth_are_keyed() -> None:
    model = nn.Sequential(nn.Dropout2d(0.5), StochasticDepth(0.5, "row"), StochasticDepth(0.5, "batch"))
    keys = _keyed(model)
    x = torch.ones(8, 6, 2, 2)
    outs = []
    for parts in (1, 2):
        keys.begin_step(1)
        outs.append(torch.cat([_forward(model, _batch(xi, i * (8 // parts))) for i, xi in enumerate(x.chunk(parts))]))
    assert torch.equal(outs[0], outs[1])
    per_channel = outs[0].flatten(2)
    assert torch.equal(per_channel.amin(2), per_channel.amax(2))  # one decision per (sample, channel)


def test_forwards_without_positions_and_state_dict() -> None:
    model = _net(norm=False, dropout=True)
    plain_keys = list(model.state_dict())
    keys = _keyed(model)
    assert list(model.state_dict()) == plain_keys
    keys.begin_step(0)
    x = torch.randn(4, 3, 8, 8)
    model(x)  # outside keyed(): the global generator, as nn.Dropout
    with keyed((x, torch.zeros(4, dtype=torch.int64))):  # a plain pair has no positions
        model(x)
    assert keys.unkeyed_forwards == 2 and keys.current is None


def test_other_random_ops_differ_per_rank_and_repeat() -> None:
    """Functional dropout cannot be keyed per sample: it draws from the global generator, which
    is reseeded per micro-batch from (seed, step, first sample index)."""

    class Functional(nn.Module):
        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return F.dropout(v, 0.5, training=self.training)

    model = Functional()
    keys = _keyed(model)
    x = torch.ones(8, 100)
    rank0, rank1 = _batch(x[:4], 0), _batch(x[4:], 4)
    keys.begin_step(2)
    a = _forward(model, rank0)
    b = _forward(model, rank1)  # the same data as rank 1's micro-batch
    keys.begin_step(2)  # a resumed run repeats it
    assert not torch.equal(a, b) and torch.equal(_forward(model, rank0), a)


def test_keep_mask_rows_do_not_depend_on_their_neighbours() -> None:
    rows = torch.arange(10, 20)
    full = keep_mask(7, rows, 300, 0.3)
    assert torch.equal(full[3:5], keep_mask(7, rows[3:5], 300, 0.3))
    assert 0.65 < full.float().mean() < 0.75
    assert keep_mask(7, rows, 10, 0.0).all() and not keep_mask(7, rows, 10, 1.0).any()


def test_a_copied_input_keeps_its_samples_keys() -> None:
    """Keys belong to the batch's samples, not to the storage of its input: a copy, another
    memory format or another dtype of x draws the same per-sample masks, and so does a slice
    of the batch at the same positions."""
    model = nn.Sequential(nn.Dropout(0.5), nn.Dropout2d(0.5), StochasticDepth(0.5, "row"))
    keys = _keyed(model)
    x = torch.ones(6, 4, 3, 3, dtype=torch.float64)
    batch = _batch(x, 10)
    keys.begin_step(3)
    ref = _forward(model, batch)
    assert keys.current is not None and keys.current.start == 10
    for copy_of_x in (x.clone(), x.contiguous(memory_format=torch.channels_last), x.float(), x.to(torch.bfloat16)):
        out = _forward(model, batch, copy_of_x)
        assert torch.equal(out.double() == 0, ref == 0), copy_of_x.dtype  # the same samples dropped, element by element
    assert torch.equal(_forward(model, batch.with_x(x.float())).double(), ref)
    assert torch.equal(_forward(model, batch.narrow(2, 5)), ref[2:5])  # a slice keeps its samples' positions
    other = _forward(model, _batch(x, 11))  # other positions: other masks
    assert not torch.equal(other, ref)
    assert keys.unkeyed_forwards == 0
    with pytest.raises(ValueError, match="key the slice"):  # a slice of x under its whole batch's keys
        _forward(model, batch, x[:3])


@pytest.mark.parametrize("method", ["vanilla", "gradnorm", "sam"])
def test_methods_key_their_forwards_from_the_batch(method: str) -> None:
    """Through a method's own forwards (whole micro-batches, chunks of m, two passes), a channels-last
    copy of the input (what the trainer makes on CUDA) and another split of the step give the same
    gradient: the dropout masks follow the samples."""
    import contextlib

    from dreg_dist.methods import StepContext, method_class

    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    grads = []
    for parts, channels_last in ((1, False), (1, True), (2, True)):
        model = _net(norm=False, dropout=True)
        keys = _keyed(model)
        keys.begin_step(4)
        batches = [b.with_x(b.x.contiguous(memory_format=torch.channels_last)) if channels_last else b
                   for b in with_positions(list(zip(x.chunk(parts), y.chunk(parts))), 0)]
        cls = method_class(method)
        hp = cls.Config(micro_batch_size=4) if method != "vanilla" else None
        ctx = StepContext(model, model, contextlib.nullcontext, torch.amp.GradScaler("cpu", enabled=False), lr=0.1, step=4)
        cls(hp).compute_gradients(ctx, batches)
        assert keys.unkeyed_forwards == 0
        grads.append([p.grad.clone() for p in model.parameters()])
    for other in grads[1:]:
        for g, r in zip(other, grads[0]):
            assert torch.allclose(g, r, atol=1e-6)


def test_positions_that_are_not_consecutive_key_each_sample() -> None:
    """A micro-batch that lost a sample (undecodable, skipped) keeps the others' positions and
    masks."""
    model = nn.Sequential(nn.Dropout(0.5))
    keys = _keyed(model)
    keys.begin_step(0)
    x = torch.ones(5, 200)
    full = _forward(model, _batch(x, 0))
    gap = Batch(x[[0, 1, 3, 4]], torch.zeros(4, dtype=torch.int64), torch.tensor([0, 1, 3, 4]))
    assert torch.equal(_forward(model, gap), full[[0, 1, 3, 4]])


def test_batches_carry_positions_through_the_data_module() -> None:
    from dreg_dist.data import build_data

    cfg = _cfg("train.global_batch_size=32", "data.synthetic_train_size=320", "data.val_size=64")
    data = build_data(cfg.data, seed=0, device=torch.device("cpu"), num_classes=10)
    whole = next(iter(data.train_batches(0, 32, 0, 1)))[0]
    assert torch.equal(whole.index, torch.arange(32))
    for rank in range(2):
        for i, b in enumerate(next(iter(data.train_batches(0, 32, rank, 2, accumulation_steps=2)))):
            assert torch.equal(b.index, rank_positions(rank, [8, 8])[i])
            assert torch.equal(b.x, whole.x[b.index]) and torch.equal(b.y, whole.y[b.index])
            x, y = b  # still the (x, y) pair of earlier releases
            assert x is b.x and y is b.y


def test_the_layout_formula_lives_in_one_function() -> None:
    """rank_positions states where a rank's samples sit; the sampler, the trainer's data glue
    and the methods' chunks use it, and no other code multiplies a rank into a position."""
    from dreg_dist.data import sampling
    from dreg_dist.methods import _util

    assert sampling.rank_positions is rank_positions
    assert any_k.with_positions is with_positions and _util.with_positions is with_positions
    pairs = [(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64)), (torch.zeros(2, 2), torch.zeros(2, dtype=torch.int64))]
    assert [b.index.tolist() for b in with_positions(pairs, 2)] == [[10, 11, 12], [13, 14]]
    assert [c.position for c in _util.micro_chunks(pairs, 2)] == [0, 2, 3]
    assert torch.equal(sampling.micro_batch_positions(1, 2, 4), torch.arange(8, 16).view(2, 4))
    allowed = {("models/batch.py", "rank_positions"), ("data/sampling.py", "eval_shard")}
    found = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult) and any(
                        isinstance(side, ast.Name) and side.id == "rank" for side in (node.left, node.right)):
                    found.add((path.relative_to(PACKAGE).as_posix(), fn.name))
    assert found == allowed, found - allowed


# ------------------------------------------------------------------ config and trainer glue
def _cfg(*overrides: str):  # type: ignore[no-untyped-def]
    return load_config(QUICKSTART, list(overrides))


def test_micro_batch_size_derives_the_accumulation_steps() -> None:
    t = _cfg("train.global_batch_size=64", "train.micro_batch_size=16").train
    assert [worker_batch_layout(t, k) for k in (1, 2, 4)] == [(4, 16), (2, 16), (1, 16)]
    assert worker_batch_layout(_cfg("train.global_batch_size=64", "train.accumulation_steps=2").train, 2) == (2, 16)


@pytest.mark.parametrize("overrides, world_size, message", [
    (["train.micro_batch_size=64"], 3, "4 micro-batches per step can't be shared equally by 3 workers: run on a "
                                       "number of workers that divides 4 (1, 2, 4)"),
    (["train.micro_batch_size=48"], 1, "not divisible by train.micro_batch_size 48"),
    (["train.micro_batch_size=64", "train.accumulation_steps=2"], 1, "set train.accumulation_steps=1 or "
                                                                     "train.micro_batch_size=null"),
    (["train.bn_group_size=24"], 2, "train.bn_group_size 24 does not divide each worker's micro-batch of 128 images "
                                    "(train.global_batch_size 256 / (2 workers x 1 accumulation step)): use a "
                                    "group size that divides 128 (e.g. 16), or use a global batch that is a "
                                    "multiple of 48"),
    (["train.bn_group_size=32", "train.accumulation_steps=16"], 4, "set train.accumulation_steps=1 and "
                                                                   "train.micro_batch_size to a multiple of 32 that "
                                                                   "divides 64"),
    (["train.bn_group_size=32", "train.micro_batch_size=16"], 2, "set train.micro_batch_size to a multiple of 32"),
    (["train.bn_group_size=8", "train.sync_bn=true"], 1, "can't be combined"),
    (["train.bn_group_size=0"], 1, "'train.bn_group_size' must be > 0"),
])
def test_layout_checks_say_what_to_change(overrides: list[str], world_size: int, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(_cfg(*overrides), world_size)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_layouts_that_fit_pass() -> None:
    for overrides, k in ((["train.bn_group_size=16", "train.micro_batch_size=64"], 4),
                         (["train.bn_group_size=32"], 2), (["train.micro_batch_size=32"], 8)):
        validate_config(_cfg(*overrides), k)


def test_keyed_train_data_numbers_the_step_and_keeps_positions() -> None:
    cfg = _cfg("train.global_batch_size=32", "train.micro_batch_size=8", "data.synthetic_train_size=320",
               "data.val_size=64")
    from dreg_dist.data import build_data

    data = build_data(cfg.data, seed=0, device=torch.device("cpu"), num_classes=10)
    keys = ForwardKeys(0)
    wrapped = any_k.KeyedTrainData(data, keys, cfg.train, 2, step=lambda: 7)
    assert wrapped.steps_per_epoch(32) == data.steps_per_epoch(32)  # everything else is the data module's
    batches = next(iter(wrapped.train_batches(0, 32, 1, 2, accumulation_steps=1)))  # 2 micro-batches of 8
    assert [b.index.tolist() for b in batches] == [list(range(16, 24)), list(range(24, 32))] and keys.step == 7
    whole = torch.cat([x for x, _ in next(iter(data.train_batches(0, 32, 0, 1)))])
    assert torch.equal(torch.cat([x for x, _ in batches]), whole[16:])


def test_resume_on_another_k_says_what_differs() -> None:
    cfg = _cfg("train.global_batch_size=32")
    saved = {"world_size": 2, "rng": [None, None], "config": {"train": {"global_batch_size": 32,
                                                                        "accumulation_steps": 1}}}
    model = build_model("cnn_small", 10)
    any_k.prepare_model(model, cfg.train, ForwardKeys(0))
    line = any_k.different_world_warning(saved, cfg, 1, model)
    assert line.startswith("warning: checkpoint was written by 2 workers, now 1; unchanged: the data order and "
                           "augmentation, dropout and stochastic-depth masks (keyed by sample); different: BatchNorm "
                           "batch statistics, gradients and running statistics (over each worker's micro-batch of 32 "
                           "images, before 16)"), line
    assert line.endswith("; set train.bn_group_size to make BatchNorm independent of K")

    same_micro = _cfg("train.global_batch_size=32", "train.micro_batch_size=16")
    line = any_k.different_world_warning(saved, same_micro, 1, model)
    assert "BatchNorm running statistics (each worker's micro-batch is still 16 images" in line
    assert "other random ops in the forward (seeded per micro-batch, same size)" in line

    ghost_cfg = _cfg("train.global_batch_size=32", "train.bn_group_size=8")
    ghost = build_model("cnn_small", 10)
    any_k.prepare_model(ghost, ghost_cfg.train, ForwardKeys(0))
    line = any_k.different_world_warning(saved, ghost_cfg, 1, ghost)
    assert "BatchNorm (groups of train.bn_group_size=8)" in line.split("different:")[0]
    assert "set train.bn_group_size" not in line
