"""Sharpness-aware minimization with per-worker perturbation (m-sharpness), see README.md.

Each rank: g = grad of its local loss (no all-reduce), e = rho * g / (||g|| + 1e-12),
gradient of the local loss at w + e through the DDP model (the step's one all-reduce),
then w is restored. With K workers the update is the mean over workers of the per-shard
SAM gradients (m = B/K), not full-batch SAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from dreg_dist.errors import ConfigError
from dreg_dist.methods._util import LocalPerturbationMethod
from dreg_dist.methods.base import StepContext

EPS = 1e-12


@dataclass
class SAMConfig:
    rho: float = 0.05
    """Radius of the per-worker ascent step e = rho * g / ||g|| (m-sharpness, m = B/K)."""


class SAM(LocalPerturbationMethod):
    name = "sam"
    Config = SAMConfig
    labels = {"rho": "rho"}
    legacy_keys = {"methods.sam_rho": "rho"}
    perturbed_key = "loss_perturbed"

    def check(self) -> None:
        self.rho = self.hp.rho
        if not self.rho >= 0:
            raise ConfigError(f"config key '{self.key('rho')}' must be >= 0, got {self.rho}; try 0.05")

    def perturbation(self, ctx: StepContext, grads: list[Tensor], norm: Tensor) -> Optional[list[Tensor]]:
        if self.rho == 0:
            return None
        scale = self.rho / (float(norm) + EPS)
        return [g * scale for g in grads]


__all__ = ["SAM", "SAMConfig"]
