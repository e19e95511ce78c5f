"""DReg as a training method: dual-path model and the Eq. 3 objective per micro-batch.

Every rank adds the same contrast term to its local loss; DDP averages gradients over
ranks, so the contrast gradient enters each update exactly once (see contrast.py).
Accumulation divides each micro-batch's loss, contrast included, by the number of
micro-batches, so the contrast also counts once per optimizer step.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from dreg_dist.config.schema import Config
from dreg_dist.dreg import build_dual_model, build_objective
from dreg_dist.dreg.contrast import branch_stats
from dreg_dist.dreg.dual_path import DualPathModel
from dreg_dist.methods.base import Method


class DReg(Method):
    name = "dreg"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.objective = build_objective(cfg.dreg, label_smoothing=cfg.train.label_smoothing)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return build_dual_model(model, self.cfg.dreg, seed=self.cfg.train.seed)

    def loss(self, outputs: Any, target: Tensor, module: nn.Module) -> tuple[Tensor, dict[str, Tensor]]:
        logits_r, logits_l = outputs
        assert isinstance(module, DualPathModel)
        return self.objective(logits_r, logits_l, target, module)

    def log_values(self, module: nn.Module) -> dict[str, float]:
        assert isinstance(module, DualPathModel)
        return branch_stats(module)
