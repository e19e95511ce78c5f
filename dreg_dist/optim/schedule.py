"""Learning-rate scaling with the global batch and the per-iteration schedule.

The configured ``optim.lr`` is the peak rate for a global batch of
``optim.base_batch_size`` (256 by convention) and is scaled with the actual global
batch: linearly (Goyal et al. 2017), by the square root, or not at all. The schedule is
a multiplier of that peak, evaluated at every optimizer step (not per epoch), so that
warmup and decay behave the same for any number of steps per epoch.
"""

from __future__ import annotations

import math
from typing import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from dreg_dist.config.schema import OptimConfig


def peak_lr(cfg: OptimConfig, global_batch_size: int) -> float:
    ratio = global_batch_size / cfg.base_batch_size
    if cfg.lr_scaling == "linear":
        return cfg.lr * ratio
    if cfg.lr_scaling == "sqrt":
        return cfg.lr * math.sqrt(ratio)
    return cfg.lr


def lr_multiplier(cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """Step -> multiplier of the peak learning rate (warmup, then decay)."""
    total = max(1, steps_per_epoch * epochs)
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
    milestones = sorted(m * steps_per_epoch for m in cfg.milestones)
    floor = cfg.min_lr_factor

    def decay(step: int) -> float:
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule in ("step", "multistep"):
            return cfg.gamma ** sum(step >= m for m in milestones)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if cfg.schedule == "cosine":
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.schedule == "poly":
            return floor + (1.0 - floor) * (1.0 - progress) ** cfg.poly_power
        raise ValueError(f"optim.schedule {cfg.schedule!r} is not known")

    def multiplier(step: int) -> float:
        if step < warmup:
            start = cfg.warmup_start_factor
            return start + (1.0 - start) * step / warmup
        return decay(step)

    return multiplier


def build_scheduler(
    optimizer: Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int
) -> LambdaLR:
    """A LambdaLR stepped once per optimizer step; its state_dict is checkpointable."""
    return LambdaLR(optimizer, lr_multiplier(cfg, steps_per_epoch, epochs))
