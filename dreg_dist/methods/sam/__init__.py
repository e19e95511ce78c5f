"""Sharpness-aware minimization with per-worker perturbation (m-sharpness), see README.md.

Each rank: g = grad of its local loss (no all-reduce), e = rho * g / (||g|| + 1e-12),
gradient of the local loss at w + e through the DDP model (the step's one all-reduce),
then w is restored. With K workers the update is the mean over workers of the per-shard
SAM gradients (m = B/K), not full-batch SAM.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from dreg_dist.config.load import ConfigError
from dreg_dist.config.schema import Config
from dreg_dist.methods._util import LocalPerturbationMethod
from dreg_dist.methods.base import StepContext

EPS = 1e-12


class SAM(LocalPerturbationMethod):
    name = "sam"
    perturbed_key = "loss_perturbed"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.rho = cfg.methods.sam_rho
        if self.rho < 0:
            raise ConfigError(f"config key 'methods.sam_rho' must be >= 0, got {self.rho}; try 0.05")

    def perturbation(self, ctx: StepContext, grads: list[Tensor], norm: Tensor) -> Optional[list[Tensor]]:
        if self.rho == 0:
            return None
        scale = self.rho / (float(norm) + EPS)
        return [g * scale for g in grads]


__all__ = ["SAM"]
