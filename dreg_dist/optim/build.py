"""Optimizer construction from the ``optim`` config section."""

from __future__ import annotations

from torch import nn
from torch.optim import SGD, Optimizer

from dreg_dist.config.schema import OptimConfig
from dreg_dist.optim.param_groups import param_groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> Optimizer:
    """Momentum SGD (optionally Nesterov), LARS or LAMB at peak rate ``lr``."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    if cfg.name == "sgd":
        for group in groups:
            group.pop("exclude_from_trust")
        return SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "lars":
        from dreg_dist.optim.lars import LARS

        return LARS(
            groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
            trust_coefficient=cfg.trust_coefficient, eps=cfg.eps,
        )
    if cfg.name == "lamb":
        from dreg_dist.optim.lamb import LAMB

        return LAMB(groups, lr=lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps)
    raise ValueError(f"optim.name {cfg.name!r} is not known (sgd, lars, lamb)")
