"""Small helpers shared by the comparison methods (gradnorm/fisher, sam/extragradient, gradientmix).

None of them communicates: local gradients are taken with ``torch.autograd.grad`` (which
never runs the AccumulateGrad nodes DDP hooks into), so they stay per-worker, and local
passes run with :func:`local_norm_statistics`, so SyncBatchNorm (``train.sync_bn``) does
not synchronize them either.
"""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from dreg_dist.errors import ConfigError
from dreg_dist.methods.base import Batch, Method, RunSettings, StepContext
from dreg_dist.methods.naming import config_key
from dreg_dist.methods.traits import Traits
from dreg_dist.models.batch import with_positions
from dreg_dist.models.forward_keys import keyed


def trainable_params(module: nn.Module) -> list[nn.Parameter]:
    """All parameters with ``requires_grad``, each once, in registration order."""
    seen: set[int] = set()
    out: list[nn.Parameter] = []
    for p in module.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_from(*values: int) -> int:
    """A 63-bit seed from integers (hashing, so nearby inputs give unrelated streams)."""
    words = [int(v) % (1 << 63) for v in values]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint32).astype(np.uint64)
               .dot(np.array([1 << 31, 1], dtype=np.uint64)))


def local_grads(ctx: StepContext, loss: Tensor, params: Sequence[Tensor], create_graph: bool = False) -> list[Tensor]:
    """d loss / d params on this worker only, unscaled; zeros for parameters the loss skips.

    The loss is multiplied by the GradScaler's scale before differentiating (so fp16
    gradients do not underflow) and the result divided by it again; both are no-ops when
    the scaler is disabled.
    """
    scaled = ctx.scaler.scale(loss)
    grads = torch.autograd.grad(scaled, list(params), create_graph=create_graph, allow_unused=True)
    scale = ctx.scaler.get_scale() if ctx.scaler.is_enabled() else 1.0
    out = []
    for g, p in zip(grads, params):
        if g is None:
            g = torch.zeros_like(p)
        out.append(g / scale if scale != 1.0 else g)
    return out


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """The 2-norm of all ``tensors`` taken together (detached; at least float32)."""
    norms = [torch.linalg.vector_norm(t.detach(), dtype=torch.promote_types(t.dtype, torch.float32)) for t in tensors]
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].dtype) for n in norms]))


@contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Leave BatchNorm running statistics as they were after an extra (auxiliary) forward."""
    saved: list[tuple[Tensor, Tensor]] = []
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked):
                if buf is not None:
                    saved.append((buf, buf.detach().clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


@contextmanager
def local_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Inside, every SyncBatchNorm normalizes with this worker's own batch statistics.

    A method's local pass (SAM's and extragradient's first pass, a penalty's inner gradient)
    is per worker by definition; with ``train.sync_bn`` its SyncBatchNorm layers would
    otherwise all-reduce statistics (and, in backward, gradients) with the other ranks.
    """
    swapped = [m for m in module.modules() if isinstance(m, nn.SyncBatchNorm)]
    for m in swapped:
        m.forward = types.MethodType(_BatchNorm.forward, m)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m in swapped:
            del m.forward


@contextmanager
def shifted(params: Sequence[Tensor], deltas: Optional[Sequence[Tensor]]) -> Iterator[None]:
    """Temporarily add ``deltas`` to ``params`` in place; restores the exact original values."""
    if deltas is None:
        yield
        return
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, d in zip(params, deltas):
            p.add_(d.to(p.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


@dataclass(frozen=True)
class Chunk:
    """``m`` samples of this rank's step (a :class:`Batch` with their positions in the global batch)."""

    batch: Batch
    weight: float
    """Its share of this rank's samples (the chunk's loss is weighted by it)."""

    @property
    def x(self) -> Tensor:
        return self.batch.x

    @property
    def y(self) -> Tensor:
        return self.batch.y

    @property
    def position(self) -> int:
        """Position in the step's global batch of the chunk's first sample (the same on any K)."""
        assert self.batch.index is not None
        return int(self.batch.index[0])


def micro_chunks(batches: Sequence[Batch], m: Optional[int]) -> list[Chunk]:
    """This rank's micro-batches cut into consecutive chunks of ``m`` samples (None: one chunk
    per micro-batch), each with its samples' positions (micro-batches handed over without
    positions get the sampler's layout, :func:`~dreg_dist.models.batch.with_positions`). With
    ``m`` dividing each micro-batch the chunks are the same on any number of workers and
    accumulation steps."""
    rank, _ = rank_and_world()
    placed = with_positions(batches, rank)
    local = sum(b.size for b in placed)
    out = []
    for batch in placed:
        step = batch.size if m is None else m
        for start in range(0, batch.size, step):
            part = batch.narrow(start, min(start + step, batch.size))
            out.append(Chunk(part, part.size / local))
    return out


class CutWarning:
    """Says once (rank 0) when a worker's micro-batch is smaller than the method's ``m`` or not
    a multiple of it: chunks then depend on the split, and the method's result with them."""

    def __init__(self, key: str, what: str) -> None:
        self.key, self.what = key, what
        self.warned = False

    def check(self, m: Optional[int], batches: list[Batch]) -> None:
        sizes = {int(y.shape[0]) for _, y in batches}
        if m is None or self.warned or all(s % m == 0 for s in sizes):
            return
        self.warned = True
        if rank_and_world()[0] == 0:
            size = min(sizes)
            how = (f"over chunks of {size} instead" if size < m else
                   f"over chunks of {m} and a last, shorter chunk in each micro-batch")
            print(f"warning: {self.key}={m} but each worker's micro-batch holds {size} samples (global batch / "
                  f"(workers x accumulation steps)), not a multiple of it: the {self.what} is taken {how}, which "
                  f"changes its result; use fewer accumulation steps or workers, or set {self.key} to a divisor "
                  f"of {size}", file=sys.stderr)


class LocalPerturbationMethod(Method):
    """Two passes per chunk of ``m`` samples: a local gradient at w, then the gradient at w + delta.

    For each chunk of this rank's step (:func:`micro_chunks`; ``m`` is the method's
    ``micro_batch_size``), pass 1 runs on the unwrapped module (no DDP, no communication,
    BatchNorm statistics left untouched) and gives the chunk's gradient g at w; subclasses
    turn it into ``delta`` (:meth:`perturbation`). Pass 2 takes the chunk's gradient at
    w + delta through the DDP model, accumulated over the chunks under ``no_sync`` so that the
    step all-reduces once; the weights are restored exactly after each chunk, so the optimizer
    steps from w with the mean over chunks of the perturbed gradients. Each chunk's
    perturbation depends on its own ``m`` samples only, so the step is the same on any K.
    ``micro_batch_size=None`` is the behaviour of earlier releases: one perturbation from this
    rank's whole local batch (m = B / K, so the result depends on K).
    """

    # Chunks keep their samples' positions (micro_chunks); the step reads the local gradient's norm
    # on the host (bool(isfinite(norm)), SAM's float(norm)) and, under fp16, the loss scale.
    traits = Traits(needs_sample_index=True, syncs_with_host=True)
    perturbed_key = "loss_perturbed"
    """Name under which the loss at w + delta is logged."""

    def __init__(self, hp: Any = None, settings: RunSettings = RunSettings()) -> None:
        super().__init__(hp, settings)
        self._cut = CutWarning(config_key(self, "micro_batch_size"), "perturbation")

    @property
    def micro_batch_size(self) -> Optional[int]:
        return self.hp.micro_batch_size

    def check_micro_batch_size(self) -> None:
        m = self.hp.micro_batch_size
        if m is not None and not (isinstance(m, int) and m >= 1):
            raise ConfigError(f"config key '{config_key(self, 'micro_batch_size')}' must be >= 1 or null, got {m}; try 128")

    def perturbation(self, ctx: StepContext, grads: list[Tensor], norm: Tensor, samples: int,
                     global_batch: int) -> Optional[list[Tensor]]:
        """delta for a chunk of ``samples`` samples (of a global batch of ``global_batch``)."""
        raise NotImplementedError

    def extra_parts(self, loss: Tensor, perturbed: Tensor) -> dict[str, Tensor]:
        """More logged values from the chunk-weighted losses at w and at w + delta."""
        return {}

    def local_gradient(
        self, ctx: StepContext, batches: list[Batch], params: list[nn.Parameter]
    ) -> tuple[list[Tensor], Tensor]:
        """(gradient, mean loss) of ``batches`` at the current weights, on this worker only."""
        n = sum(int(y.shape[0]) for _, y in batches)
        total: Optional[list[Tensor]] = None
        loss_sum = torch.zeros((), device=batches[0][1].device)
        with frozen_bn_stats(ctx.module), local_norm_statistics(ctx.module):
            for batch in batches:
                x, y = batch
                with ctx.autocast(), keyed(batch):
                    outputs = ctx.module(x)
                loss, _ = self.loss(outputs, y, ctx.module)
                share = int(y.shape[0]) / n
                grads = local_grads(ctx, loss * share, params)
                total = grads if total is None else [a + b for a, b in zip(total, grads)]
                loss_sum = loss_sum + loss.detach() * share
        assert total is not None
        return total, loss_sum

    def compute_gradients(self, ctx: StepContext, batches: list[Batch]) -> dict[str, Tensor]:
        params = trainable_params(ctx.module)
        _, world = rank_and_world()
        local = sum(int(y.shape[0]) for _, y in batches)
        global_batch = local * world
        m = self.micro_batch_size
        self._cut.check(m, batches)
        if m is None:  # earlier releases: one perturbation from the whole local batch
            groups: list[tuple[list[Batch], float]] = [(batches, 1.0)]
        else:
            groups = [([c.batch], c.weight) for c in micro_chunks(batches, m)]
        device = batches[0][1].device
        totals = {key: torch.zeros((), device=device) for key in ("loss", self.perturbed_key, "local_grad_norm")}
        for i, (group, weight) in enumerate(groups):
            grads, loss = self.local_gradient(ctx, group, params)
            norm = global_norm(grads)
            samples = sum(int(y.shape[0]) for _, y in group)
            deltas = (self.perturbation(ctx, grads, norm, samples, global_batch)
                      if bool(torch.isfinite(norm)) else None)
            del grads
            with shifted(params, deltas):
                perturbed = self._accumulate(ctx, group, weight, last=i == len(groups) - 1)
            totals["loss"] = totals["loss"] + loss.float() * weight
            totals[self.perturbed_key] = totals[self.perturbed_key] + perturbed * weight
            totals["local_grad_norm"] = totals["local_grad_norm"] + norm.to(device) * weight
        totals.update(self.extra_parts(totals["loss"], totals[self.perturbed_key]))
        return totals

    def _accumulate(self, ctx: StepContext, group: list[Batch], weight: float, last: bool) -> Tensor:
        """Backward ``weight`` x the mean loss of ``group`` through the DDP model (all-reduced with
        the step's other chunks on the last one); returns that mean loss."""
        n = sum(int(y.shape[0]) for _, y in group)
        total = torch.zeros((), device=group[0][1].device)
        for j, batch in enumerate(group):
            x, y = batch
            share = int(y.shape[0]) / n
            with ctx.no_sync(last=last and j == len(group) - 1, samples=int(y.shape[0])):
                with ctx.autocast(), keyed(batch):
                    outputs = ctx.model(x)
                loss, _ = self.loss(outputs, y, ctx.module)
                ctx.scaler.scale(loss * (share * weight)).backward()
            total = total + loss.detach().float() * share
        return total
