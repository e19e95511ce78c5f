"""Sharpness-aware minimization with m-sharpness (Foret et al. 2021), see README.md.

For each chunk of m samples of this rank's step (``methods.sam.micro_batch_size``): g = the
chunk's gradient at w (no all-reduce), e = rho * g / (||g|| + 1e-12), the chunk's gradient at
w + e accumulated through the DDP model (one all-reduce per step), then w is restored. The
update is the mean over the global batch's chunks of their SAM gradients, so it depends on m
and not on the number of workers or accumulation steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from dreg_dist.errors import ConfigError
from dreg_dist.methods._util import LocalPerturbationMethod
from dreg_dist.methods.base import StepContext
from dreg_dist.methods.naming import config_key

EPS = 1e-12


@dataclass
class SAMConfig:
    rho: float = 0.05
    """Radius of each chunk's ascent step e = rho * g / ||g||."""
    micro_batch_size: Optional[int] = 128
    """m of m-sharpness: samples per ascent step (chunks of each worker's micro-batch, which m
    should divide); null = each worker's whole local batch (m = B/K, earlier releases)."""


class SAM(LocalPerturbationMethod):
    name = "sam"
    Config = SAMConfig
    perturbed_key = "loss_perturbed"

    def check(self, module: Optional[nn.Module] = None) -> list[str]:
        if not self.hp.rho >= 0:
            raise ConfigError(f"config key '{config_key(self, 'rho')}' must be >= 0, got {self.hp.rho}; try 0.05")
        self.check_micro_batch_size()
        return []

    def perturbation(self, ctx: StepContext, grads: list[Tensor], norm: Tensor, samples: int,
                     global_batch: int) -> Optional[list[Tensor]]:
        if self.hp.rho == 0:
            return None
        scale = self.hp.rho / (float(norm) + EPS)
        return [g * scale for g in grads]


__all__ = ["SAM", "SAMConfig"]
