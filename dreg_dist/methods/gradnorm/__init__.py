"""Micro-batch gradient-norm penalty (Novack et al., ICLR 2023), see README.md.

Per micro-batch M of size m of this rank's batch:  (CE_M + lambda * ||grad_theta R_M||^2)
weighted by |M| / (rank's batch), where R_M = CE_M (gradnorm) or the cross-entropy
against labels sampled from the model's own softmax (fisher, a subclass). The penalty
gradient is exact double backprop; the inner gradient is per-worker (no communication)
and the whole step all-reduces once.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dreg_dist.config.load import ConfigError
from dreg_dist.config.schema import Config
from dreg_dist.methods._util import local_grads, rank_and_world, seed_from, trainable_params
from dreg_dist.methods.base import logits_for_loss
from dreg_dist.methods.base import Batch, Method, StepContext


class GradNorm(Method):
    name = "gradnorm"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.lam = self._lam(cfg)
        self.micro_batch_size = cfg.methods.penalty_micro_batch_size
        if self.lam < 0:
            raise ConfigError(f"config key 'methods.{self.name}_lam' must be >= 0, got {self.lam}")
        if self.micro_batch_size < 1:
            raise ConfigError(
                f"config key 'methods.penalty_micro_batch_size' must be >= 1, got {self.micro_batch_size}"
            )
        if cfg.train.compile:
            raise ConfigError(f"method={self.name} needs double backprop, which torch.compile does not support: "
                              "set train.compile=false")
        self._calls = 0

    def _lam(self, cfg: Config) -> float:
        return cfg.methods.gradnorm_lam

    def penalty_target(self, logits: Tensor, target: Tensor, seed: int) -> Optional[Tensor]:
        """Labels of the penalty's cross-entropy; None = the training loss itself (gradnorm)."""
        return None

    def compute_gradients(self, ctx: StepContext, batches: list[Batch]) -> dict[str, Tensor]:
        step = ctx.step if ctx.step is not None else self._calls
        self._calls += 1
        params = trainable_params(ctx.module)
        rank, _ = rank_and_world()
        local_size = sum(int(y.shape[0]) for _, y in batches)
        chunks: list[tuple[Tensor, Tensor, int]] = []
        offset = rank * local_size  # global position of this rank's first sample (rank-major layout)
        for x, y in batches:
            for start in range(0, int(y.shape[0]), self.micro_batch_size):
                stop = start + self.micro_batch_size
                chunks.append((x[start:stop], y[start:stop], offset + start))
            offset += int(y.shape[0])
        loss_total: Tensor = torch.zeros((), device=batches[0][1].device)
        penalty_total = loss_total
        for i, (x, y, position) in enumerate(chunks):
            weight = y.shape[0] / local_size
            with ctx.no_sync(last=i == len(chunks) - 1):
                with ctx.autocast():
                    outputs = ctx.model(x)
                logits = logits_for_loss(outputs)
                ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
                sampled = self.penalty_target(logits, y, seed_from(self.cfg.train.seed, step, position))
                r = ce if sampled is None else F.cross_entropy(logits, sampled)
                grads = local_grads(ctx, r, params, create_graph=True)
                penalty = torch.stack([g.pow(2).sum() for g in grads]).sum()
                ctx.scaler.scale((ce + self.lam * penalty) * weight).backward()
            loss_total = loss_total + ce.detach().float() * weight
            penalty_total = penalty_total + penalty.detach().float() * weight
        return {"loss": loss_total, "penalty": penalty_total}


__all__ = ["GradNorm"]
