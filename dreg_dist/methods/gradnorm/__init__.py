"""Micro-batch gradient-norm penalty (Novack et al., ICLR 2023), see README.md.

Per micro-batch M of size m of this rank's batch:  (CE_M + lambda * ||grad_theta R_M||^2)
weighted by |M| / (rank's batch), where R_M = CE_M (gradnorm) or the cross-entropy
against labels sampled from the model's own softmax (fisher, a subclass). The penalty
gradient is exact double backprop; the inner gradient is per-worker (no communication)
and the whole step all-reduces once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreg_dist.errors import ConfigError
from dreg_dist.methods._util import (
    CutWarning,
    local_grads,
    local_norm_statistics,
    micro_chunks,
    seed_from,
    trainable_params,
)
from dreg_dist.methods.base import Batch, Method, RunSettings, StepContext, logits_for_loss
from dreg_dist.methods.naming import config_key
from dreg_dist.methods.traits import Traits
from dreg_dist.models.forward_keys import keyed


@dataclass
class GradNormConfig:
    lam: float = 0.01
    """Weight lambda of the micro-batch penalty ||grad CE_M||^2 (Novack et al. 2023)."""
    micro_batch_size: int = 128
    """Micro-batch size m; each rank's batch is cut into chunks of m (paper: 128)."""


class GradNorm(Method):
    name = "gradnorm"
    Config = GradNormConfig
    # Double backprop (no torch.compile); chunks seeded by their first sample's position (fisher's
    # labels); local_grads reads the loss scale on the host (GradScaler.get_scale) under fp16.
    traits = Traits(compiles=False, needs_sample_index=True, syncs_with_host=True)

    def check(self, module: Optional[nn.Module] = None) -> list[str]:
        if not self.hp.lam >= 0:
            raise ConfigError(f"config key '{config_key(self, 'lam')}' must be >= 0, got {self.hp.lam}")
        if self.hp.micro_batch_size < 1:
            raise ConfigError(f"config key '{config_key(self, 'micro_batch_size')}' must be >= 1, "
                              f"got {self.hp.micro_batch_size}")
        return []

    def __init__(self, hp: Optional[GradNormConfig] = None, settings: RunSettings = RunSettings()) -> None:
        super().__init__(hp, settings)
        self._calls = 0
        self._cut = CutWarning(config_key(self, "micro_batch_size"), "penalty")

    def penalty_target(self, logits: Tensor, target: Tensor, seed: int) -> Optional[Tensor]:
        """Labels of the penalty's cross-entropy; None = the training loss itself (gradnorm)."""
        return None

    def compute_gradients(self, ctx: StepContext, batches: list[Batch]) -> dict[str, Tensor]:
        step = ctx.step if ctx.step is not None else self._calls
        self._calls += 1
        params = trainable_params(ctx.module)
        self._cut.check(self.hp.micro_batch_size, batches)
        chunks = micro_chunks(batches, self.hp.micro_batch_size)
        loss_total: Tensor = torch.zeros((), device=batches[0][1].device)
        penalty_total = loss_total
        for i, chunk in enumerate(chunks):
            x, y = chunk.batch
            # The penalty is per micro-batch by definition: with train.sync_bn its forward uses
            # local statistics, so the inner gradient's double backward does not communicate.
            with ctx.no_sync(last=i == len(chunks) - 1, samples=chunk.batch.size), local_norm_statistics(ctx.module):
                with ctx.autocast(), keyed(chunk.batch):
                    outputs = ctx.model(x)
                logits = logits_for_loss(outputs)
                ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
                sampled = self.penalty_target(logits, y, seed_from(self.settings.seed, step, chunk.position))
                r = ce if sampled is None else F.cross_entropy(logits, sampled)
                grads = local_grads(ctx, r, params, create_graph=True)
                penalty = torch.stack([g.pow(2).sum() for g in grads]).sum()
                ctx.scaler.scale((ce + self.hp.lam * penalty) * chunk.weight).backward()
            loss_total = loss_total + ce.detach().float() * chunk.weight
            penalty_total = penalty_total + penalty.detach().float() * chunk.weight
        return {"loss": loss_total, "penalty": penalty_total}


__all__ = ["GradNorm", "GradNormConfig"]
