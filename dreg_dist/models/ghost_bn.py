"""Ghost batch norm: batch statistics over fixed groups of the global batch, on any K.

Plain BatchNorm normalizes each worker's micro-batch with that micro-batch's statistics,
so a BN model trains differently on 1, 2 or 8 workers, and with 2 or 4 accumulation steps.
Ghost batch norm (Hoffer, Hubara, Soudry 2017, "Train longer, generalize better") instead
cuts the batch into groups of ``G`` consecutive samples and normalizes each group with its
own mean and variance (same affine weight and bias for all groups). Each worker's
micro-batch is a contiguous slice of the global batch (:mod:`dreg_dist.data.sampling`), so
when ``G`` divides the micro-batch, the groups are the same fixed groups of the global
batch whatever K and the accumulation steps are: the forward and the gradients are those
of one worker holding the whole batch.

**Running statistics** (what eval and the export use) are formed once per optimizer step
from the group statistics of *all* groups of the global batch, in a way that does not
depend on K either::

    mean_t = average over the B/G groups g of the step of mean_g
    var_t  = average over the groups of var_g   (unbiased within the group)
    running_mean = (1 - momentum) * running_mean + momentum * mean_t   (same for running_var)
    num_batches_tracked += 1                      (momentum None: factor 1 / num_batches_tracked)

Each worker sums its groups' statistics during the step; at the optimizer step (a
pre-hook, :func:`install_running_stat_updates`) the sums are all-reduced in one small
collective and every rank applies the same update, so the buffers are identical on all
ranks (DDP's broadcast of rank 0's buffers and the trainer's ``sync_buffers`` change
nothing) and the same for any K, up to floating-point summation order. With ``G`` equal
to the global batch on one worker this is exactly plain BatchNorm's update. A forward's
statistics are filed under the positions of the samples it computes (the micro-batch's
:attr:`~dreg_dist.models.batch.Batch.index`, through the forward keys), so when a
micro-batch is forwarded more than once in a step (two-pass methods), its last forward's
statistics count, whatever copy of its input each pass was given; a module called twice in
one forward counts both calls. An unkeyed forward (no positions) counts on its own.

In eval mode (and for the export, which is a plain state_dict and a traced eval-mode
program) the modules are plain BatchNorm: same class hierarchy, same state_dict keys.
"""

from __future__ import annotations

import itertools
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from dreg_dist.models.forward_keys import ForwardKeys

_unkeyed = itertools.count()


class _GhostBatchNorm:
    """Mixin over a ``nn.BatchNorm{1,2,3}d``; attributes set by :func:`convert_ghost_batch_norm`."""

    group_size: int
    _forward_keys: Optional[ForwardKeys]
    _ghost_name: str
    _pending: dict[Any, tuple[Tensor, Tensor, int]]

    # Provided by the BatchNorm base class.
    training: bool
    num_features: int
    eps: float
    momentum: Optional[float]
    affine: bool
    weight: Optional[Tensor]
    bias: Optional[Tensor]
    running_mean: Optional[Tensor]
    running_var: Optional[Tensor]
    num_batches_tracked: Optional[Tensor]

    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return super().forward(input)  # type: ignore[misc]
        self._check_input_dim(input)  # type: ignore[attr-defined]
        return self._ghost_forward(input)

    def _ghost_forward(self, x: Tensor) -> Tensor:
        n, c = int(x.shape[0]), int(x.shape[1])
        g = self.group_size
        full = n - n % g
        pieces = [(x[:full], full // g)] if full else []
        if n % g:  # only for inputs the config check did not size (a sample dropped as undecodable)
            pieces.append((x[full:], 1))
        outs, means, variances = [], [], []
        for part, groups in pieces:
            out, mean, var = self._normalize(part, groups)
            outs.append(out)
            means.append(mean)
            variances.append(var)
        y = outs[0] if len(outs) == 1 else torch.cat(outs)
        if self.affine:
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = y * self.weight.view(shape) + self.bias.view(shape)  # type: ignore[union-attr]
        y = y.to(x.dtype)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            y = y.contiguous(memory_format=torch.channels_last)
        if self.running_mean is not None:
            self._record(torch.cat(means), torch.cat(variances))
        return y

    def _normalize(self, part: Tensor, groups: int) -> tuple[Tensor, Tensor, Tensor]:
        """(normalized part, float32) and the detached per-group mean and unbiased variance [groups, C]."""
        xf = part.float() if part.dtype in (torch.float16, torch.bfloat16) else part
        c = int(part.shape[1])
        v = xf.reshape(groups, int(part.shape[0]) // groups, c, -1)
        count = v.shape[1] * v.shape[3]
        if count < 2:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got a group of {v.shape[1]} sample(s) with "
                f"{v.shape[3]} value(s) per channel: raise train.bn_group_size"
            )
        var, mean = torch.var_mean(v, dim=(1, 3), correction=0, keepdim=True)
        out = ((v - mean) * torch.rsqrt(var + self.eps)).reshape(part.shape)
        unbiased = var.detach().reshape(groups, c) * (count / (count - 1))
        return out, mean.detach().reshape(groups, c), unbiased

    @torch.compiler.disable
    def _record(self, means: Tensor, variances: Tensor) -> None:
        keys = self._forward_keys
        if keys is not None and keys.current is not None:
            key: Any = (keys.current.step, keys.current.start, keys.call_index(self._ghost_name))
        else:
            key = ("unkeyed", next(_unkeyed))
        self._pending[key] = (means.double().sum(0), variances.double().sum(0), int(means.shape[0]))


class GhostBatchNorm1d(_GhostBatchNorm, nn.BatchNorm1d):
    pass


class GhostBatchNorm2d(_GhostBatchNorm, nn.BatchNorm2d):
    pass


class GhostBatchNorm3d(_GhostBatchNorm, nn.BatchNorm3d):
    pass


GHOST_CLASSES: dict[type, type] = {
    nn.BatchNorm1d: GhostBatchNorm1d,
    nn.BatchNorm2d: GhostBatchNorm2d,
    nn.BatchNorm3d: GhostBatchNorm3d,
}
"""Exact class -> ghost subclass (SyncBatchNorm, LazyBatchNorm and subclasses are left alone)."""


def convert_ghost_batch_norm(model: nn.Module, group_size: int, keys: Optional[ForwardKeys] = None) -> list[str]:
    """Turn, in place, every BatchNorm{1,2,3}d of ``model`` into its ghost form with groups of
    ``group_size`` samples. Parameters, buffers, module paths and state_dict keys stay.
    Returns the names of the converted modules."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    converted = []
    for name, module in model.named_modules():
        ghost = GHOST_CLASSES.get(type(module))
        if ghost is None:
            continue
        module.__class__ = ghost
        module.group_size = int(group_size)  # type: ignore[assignment]
        module._forward_keys = keys  # type: ignore[assignment]
        module._ghost_name = name  # type: ignore[assignment]
        module._pending = {}  # type: ignore[assignment]
        converted.append(name)
    if keys is not None and converted:
        modules = ghost_modules(model)
        keys.on_begin_step(lambda: [m._pending.clear() for m in modules])
    return converted


def ghost_modules(model: nn.Module) -> list[_GhostBatchNorm]:
    return [m for m in model.modules() if isinstance(m, _GhostBatchNorm)]


@torch.no_grad()
def update_running_stats(modules: Sequence[_GhostBatchNorm]) -> None:
    """Apply one running-statistics update per module from the step's groups on all ranks.

    Collective when a process group exists: every rank must call it at the same point with
    the same modules (it is one all-reduce). Clears the pending group statistics.
    """
    tracked = [m for m in modules if m.running_mean is not None]
    if not tracked:
        return
    device = tracked[0].running_mean.device  # type: ignore[union-attr]
    parts: list[Tensor] = []
    for m in tracked:
        sums = torch.zeros(2 * m.num_features + 1, dtype=torch.float64, device=device)
        for mean, var, groups in m._pending.values():
            sums[: m.num_features] += mean.to(device)
            sums[m.num_features: 2 * m.num_features] += var.to(device)
            sums[-1] += groups
        parts.append(sums)
        m._pending.clear()
    total = torch.cat(parts)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
    offset = 0
    for m in tracked:
        c = m.num_features
        sums = total[offset: offset + 2 * c + 1]
        offset += 2 * c + 1
        count = sums[-1]
        has = count > 0  # a module no rank ran this step keeps its statistics (no host sync to find out)
        assert m.num_batches_tracked is not None and m.running_var is not None and m.running_mean is not None
        m.num_batches_tracked.add_(has.to(m.num_batches_tracked.dtype))
        if m.momentum is None:  # cumulative moving average, as BatchNorm
            factor: Any = 1.0 / m.num_batches_tracked.clamp(min=1).double()
        else:
            factor = m.momentum
        mean = sums[:c] / count.clamp(min=1)
        var = sums[c: 2 * c] / count.clamp(min=1)
        old_mean, old_var = m.running_mean.double(), m.running_var.double()
        m.running_mean.copy_(torch.where(has, old_mean * (1 - factor) + mean * factor, old_mean))
        m.running_var.copy_(torch.where(has, old_var * (1 - factor) + var * factor, old_var))


def install_running_stat_updates(optimizer: Optimizer, model: nn.Module,
                                 keys: Optional[ForwardKeys] = None) -> Optional[RemovableHandle]:
    """Update ghost modules' running statistics at every ``optimizer.step()`` (a pre-hook),
    then end the step for the forward keys. None when ``model`` has no ghost module."""
    modules = ghost_modules(model)
    if not modules:
        return None

    def hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
        update_running_stats(modules)
        if keys is not None:
            keys.end_step()

    return optimizer.register_step_pre_hook(hook)


__all__ = [
    "GHOST_CLASSES",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "convert_ghost_batch_norm",
    "ghost_modules",
    "install_running_stat_updates",
    "update_running_stats",
]
