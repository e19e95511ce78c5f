"""Local extrapolation / extragradient (Lin, Kong, Stich, Jaggi, ICML 2020), see README.md.

Each rank: g = grad of its local loss (no all-reduce), u = w - gamma * g, gradient of the
local loss at u through the DDP model (the step's one all-reduce), then w is restored;
the optimizer applies that gradient from w. gamma defaults to the step's learning rate.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from dreg_dist.config.load import ConfigError
from dreg_dist.config.schema import Config
from dreg_dist.methods._util import LocalPerturbationMethod
from dreg_dist.methods.base import StepContext


class Extragradient(LocalPerturbationMethod):
    name = "extragradient"
    perturbed_key = "loss_extrapolated"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.gamma = cfg.methods.extragradient_gamma
        if self.gamma is not None and self.gamma < 0:
            raise ConfigError(f"config key 'methods.extragradient_gamma' must be >= 0 or null, got {self.gamma}")

    def step_size(self, ctx: StepContext) -> float:
        if self.gamma is not None:
            return self.gamma
        if ctx.lr is None:
            raise RuntimeError(
                "extragradient extrapolates by the current learning rate, but the trainer did not pass it: "
                "StepContext(..., lr=optimizer.param_groups[0]['lr']) is required, or set methods.extragradient_gamma"
            )
        return float(ctx.lr)

    def perturbation(self, ctx: StepContext, grads: list[Tensor], norm: Tensor) -> Optional[list[Tensor]]:
        gamma = self.step_size(ctx)
        if gamma == 0:
            return None
        return [g * -gamma for g in grads]


__all__ = ["Extragradient"]
