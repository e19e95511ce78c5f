"""Optimizers, parameter groups and learning-rate schedules for large-batch training."""

from dreg_dist.optim.build import build_optimizer
from dreg_dist.optim.param_groups import param_groups
from dreg_dist.optim.schedule import build_scheduler, lr_multiplier, peak_lr

__all__ = ["build_optimizer", "build_scheduler", "lr_multiplier", "param_groups", "peak_lr"]
