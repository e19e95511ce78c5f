"""Local extrapolation / extragradient (after Lin, Kong, Stich, Jaggi, ICML 2020), see README.md.

For each chunk of m samples of this rank's step (``methods.extragradient.micro_batch_size``):
g = the chunk's gradient at w (no all-reduce), u = w - gamma * g, the chunk's gradient at u
accumulated through the DDP model (one all-reduce per step), then w is restored; the optimizer
applies the mean of those gradients from w. By default gamma is the step SGD with a batch of m
would take at this run's learning rate: gamma_t = lr_t * m / B (``gamma_rule=micro_batch``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from dreg_dist.errors import ConfigError
from dreg_dist.methods._util import LocalPerturbationMethod
from dreg_dist.methods.base import StepContext
from dreg_dist.methods.naming import config_key

GammaRule = Literal["micro_batch", "lr"]


@dataclass
class ExtragradientConfig:
    micro_batch_size: Optional[int] = 128
    """Samples per extrapolation (chunks of each worker's micro-batch, which it should divide);
    null = each worker's whole local batch (B/K, earlier releases)."""
    gamma_rule: GammaRule = "micro_batch"
    """The extrapolation step: ``micro_batch``: gamma_t = lr_t * m / B, the step SGD with a batch
    of m takes at this run's per-sample rate; ``lr``: gamma_t = lr_t (earlier releases: at large
    batch it collapses, see README.md)."""
    gamma_scale: float = 1.0
    """Multiplies the rule's step (the method's own knob)."""
    gamma: Optional[float] = None
    """A fixed extrapolation step instead of the rule (no schedule); null = the rule."""


class Extragradient(LocalPerturbationMethod):
    name = "extragradient"
    Config = ExtragradientConfig
    perturbed_key = "loss_extrapolated"

    def check(self, module: Optional[nn.Module] = None) -> list[str]:
        gamma = self.hp.gamma
        if gamma is not None and not gamma >= 0:
            raise ConfigError(f"config key '{config_key(self, 'gamma')}' must be >= 0 or null, got {gamma}")
        if not self.hp.gamma_scale >= 0:
            raise ConfigError(f"config key '{config_key(self, 'gamma_scale')}' must be >= 0, got {self.hp.gamma_scale}")
        self.check_micro_batch_size()
        return []

    def step_size(self, ctx: StepContext, samples: int, global_batch: int) -> float:
        """gamma for a chunk of ``samples`` samples of a global batch of ``global_batch``."""
        if self.hp.gamma is not None:
            return self.hp.gamma
        if ctx.lr is None:
            raise RuntimeError(
                "extragradient extrapolates by the current learning rate, but the trainer did not pass it: "
                "StepContext(..., lr=optimizer.param_groups[0]['lr']) is required, or set methods.extragradient.gamma"
            )
        rule = float(ctx.lr) * (samples / global_batch if self.hp.gamma_rule == "micro_batch" else 1.0)
        return rule * self.hp.gamma_scale

    def perturbation(self, ctx: StepContext, grads: list[Tensor], norm: Tensor, samples: int,
                     global_batch: int) -> Optional[list[Tensor]]:
        gamma = self.step_size(ctx, samples, global_batch)
        if gamma == 0:
            return None
        return [g * -gamma for g in grads]

    def extra_parts(self, loss: Tensor, perturbed: Tensor) -> dict[str, Tensor]:
        # Above 1: w sits where one extrapolation step lands lower, the sign of a collapse.
        return {"loss_ratio": loss / perturbed.clamp_min(torch.finfo(perturbed.dtype).tiny)}


__all__ = ["Extragradient", "ExtragradientConfig"]
