"""Distinctive regularization (DReg): dual-path surgery, contrast term, best-path export.

Typical use::

    from dreg_dist.dreg import DualPathModel, DRegObjective, write_export
    dual = DualPathModel(model, "R1")                 # last 3x3 conv replicated
    objective = DRegObjective(lam=0.1)                # Eq. 3
    logits_r, logits_l = dual(x)
    loss, parts = objective(logits_r, logits_l, y, dual)
    ...
    write_export(dual, "export/", arch="resnet18", num_classes=10, val_acc={"R": .91, "L": .92})
"""

from __future__ import annotations

from dreg_dist.config.schema import DRegConfig
from dreg_dist.dreg.contrast import DRegObjective, branch_stats, contrast_term
from dreg_dist.dreg.cost import CostReport, cost_report
from dreg_dist.dreg.dual_path import DualPathModel, UnsupportedModelError, trace, unwrap
from dreg_dist.dreg.export import (
    choose_path,
    path_state_dict,
    plain_model,
    write_export,
    write_plain_export,
)
from dreg_dist.dreg.layer_select import DRegLayerError, level_candidates, resolve_layer
from torch import nn


def build_dual_model(model: nn.Module, cfg: DRegConfig, *, seed: int) -> DualPathModel:
    """Wrap ``model`` as configured by the ``dreg`` config section."""
    return DualPathModel(model, cfg.layer, norm=cfg.norm, init_scale=cfg.init_scale, seed=seed)


def build_objective(cfg: DRegConfig, *, label_smoothing: float = 0.0) -> DRegObjective:
    """The loss configured by the ``dreg`` config section."""
    return DRegObjective(
        lam=cfg.lam,
        form=cfg.form,
        contrast_reduction=cfg.contrast_reduction,
        ce_reduction=cfg.ce_reduction,
        tau=cfg.tau,
        label_smoothing=label_smoothing,
    )


__all__ = [
    "CostReport",
    "DRegLayerError",
    "DRegObjective",
    "DualPathModel",
    "UnsupportedModelError",
    "branch_stats",
    "build_dual_model",
    "build_objective",
    "choose_path",
    "contrast_term",
    "cost_report",
    "level_candidates",
    "path_state_dict",
    "plain_model",
    "resolve_layer",
    "trace",
    "unwrap",
    "write_export",
    "write_plain_export",
]
