"""Data-parallel plumbing of the trainer: wrapping the model in DDP with its communication
hook, and giving every rank the same buffers before evaluation and checkpoints."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from dreg_dist.config import Config
from dreg_dist.methods import Method
from dreg_dist.train.noise import NoiseScaleMeter
from dreg_dist.train.preflight import check_method_options

COMPRESSION_HOOKS = {"fp16": default_hooks.fp16_compress_hook, "bf16": default_hooks.bf16_compress_hook}
"""train.grad_compression -> DDP communication hook (cast, all-reduce, cast back to fp32)."""


def wrap_ddp(module: nn.Module, device: torch.device, cfg: Config, method: Method, noise: NoiseScaleMeter) -> DDP:
    """``module`` in DDP with at most one communication hook: the method's own (it replaces the
    all-reduce), or the configured compression hook or plain all-reduce, read first by the
    noise-scale meter when it measures there."""
    model = DDP(module, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    check_method_options(cfg, method)  # as in pre-flight: one comm hook at most
    hook = COMPRESSION_HOOKS.get(cfg.train.grad_compression)
    if noise.mode == "hook":
        hook = noise.wrap(hook or default_hooks.allreduce_hook)
    if hook is not None:
        model.register_comm_hook(None, hook)
    method.configure_ddp(model)
    return model


def sync_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BN running statistics).

    DDP broadcasts buffers at the *start* of each forward, so after the last step each
    rank's statistics include its own last batch; evaluation and export must all use
    the same ones.
    """
    if dist.is_available() and dist.is_initialized():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


__all__ = ["COMPRESSION_HOOKS", "sync_buffers", "wrap_ddp"]
