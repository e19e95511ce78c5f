"""Local extrapolation / extragradient (Lin, Kong, Stich, Jaggi, ICML 2020), see README.md.

Each rank: g = grad of its local loss (no all-reduce), u = w - gamma * g, gradient of the
local loss at u through the DDP model (the step's one all-reduce), then w is restored;
the optimizer applies that gradient from w. gamma defaults to the step's learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from dreg_dist.errors import ConfigError
from dreg_dist.methods._util import LocalPerturbationMethod
from dreg_dist.methods.base import StepContext


@dataclass
class ExtragradientConfig:
    gamma: Optional[float] = None
    """Local extrapolation step u = w - gamma * g_local; null = the current learning rate."""


class Extragradient(LocalPerturbationMethod):
    name = "extragradient"
    Config = ExtragradientConfig
    labels = {"gamma": "gamma"}
    legacy_keys = {"methods.extragradient_gamma": "gamma"}
    perturbed_key = "loss_extrapolated"

    def check(self) -> None:
        self.gamma = self.hp.gamma
        if self.gamma is not None and not self.gamma >= 0:
            raise ConfigError(f"config key '{self.key('gamma')}' must be >= 0 or null, got {self.gamma}")

    def step_size(self, ctx: StepContext) -> float:
        if self.gamma is not None:
            return self.gamma
        if ctx.lr is None:
            raise RuntimeError(
                "extragradient extrapolates by the current learning rate, but the trainer did not pass it: "
                "StepContext(..., lr=optimizer.param_groups[0]['lr']) is required, or set methods.extragradient.gamma"
            )
        return float(ctx.lr)

    def perturbation(self, ctx: StepContext, grads: list[Tensor], norm: Tensor) -> Optional[list[Tensor]]:
        gamma = self.step_size(ctx)
        if gamma == 0:
            return None
        return [g * -gamma for g in grads]


__all__ = ["Extragradient", "ExtragradientConfig"]
