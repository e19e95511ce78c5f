"""Small helpers shared by the comparison methods (gradnorm/fisher, sam/extragradient, gradientmix).

None of them communicates: local gradients are taken with ``torch.autograd.grad`` (which
never runs the AccumulateGrad nodes DDP hooks into), so they stay per-worker, and local
passes run with :func:`local_norm_statistics`, so SyncBatchNorm (``train.sync_bn``) does
not synchronize them either.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from dreg_dist.methods.base import Batch, Method, StepContext


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


class LocalPerturbationMethod(Method):
    """Two passes per step: a local gradient at w, then the all-reduced gradient at w + delta.

    Pass 1 runs on the unwrapped module (no DDP, no communication, BatchNorm statistics
    left untouched) and gives g_local, the gradient of this rank's mean loss over all its
    accumulation micro-batches. Subclasses turn it into ``delta`` (:meth:`perturbation`).
    Pass 2 is the plain accumulation of :class:`Method` through the DDP model at w + delta
    (one all-reduce); the weights are then restored exactly, so the optimizer steps from w
    with the gradient taken at w + delta.
    """

    perturbed_key = "loss_perturbed"
    """Name under which the loss at w + delta is logged."""

    def perturbation(self, ctx: StepContext, grads: list[Tensor], norm: Tensor) -> Optional[list[Tensor]]:
        raise NotImplementedError

    def local_gradient(
        self, ctx: StepContext, batches: list[Batch], params: list[nn.Parameter]
    ) -> tuple[list[Tensor], Tensor]:
        """(g_local, mean local loss) at the current weights, on this worker only."""
        n = len(batches)
        total: Optional[list[Tensor]] = None
        loss_sum = torch.zeros((), device=batches[0][1].device)
        with frozen_bn_stats(ctx.module), local_norm_statistics(ctx.module):
            for x, y in batches:
                with ctx.autocast():
                    outputs = ctx.module(x)
                loss, _ = self.loss(outputs, y, ctx.module)
                grads = local_grads(ctx, loss / n, params)
                total = grads if total is None else [a + b for a, b in zip(total, grads)]
                loss_sum = loss_sum + loss.detach() / n
        assert total is not None
        return total, loss_sum

    def compute_gradients(self, ctx: StepContext, batches: list[Batch]) -> dict[str, Tensor]:
        params = trainable_params(ctx.module)
        grads, loss = self.local_gradient(ctx, batches, params)
        norm = global_norm(grads)
        deltas = self.perturbation(ctx, grads, norm) if bool(torch.isfinite(norm)) else None
        del grads
        with shifted(params, deltas):
            parts = Method.compute_gradients(self, ctx, batches)
        return {"loss": loss, self.perturbed_key: parts["loss"], "local_grad_norm": norm.to(loss.device)}
