"""Distinctive regularization (DReg): dual-path surgery, contrast term, best-path export.

The pure library: it imports nothing of the service above it (config, methods, trainer).
The training method built on it is :mod:`dreg_dist.methods.dreg`.

Typical use::

    from dreg_dist.dreg import DualPathModel, DRegObjective, write_export
    dual = DualPathModel(model, "R1")                 # last 3x3 conv replicated
    objective = DRegObjective()                       # the service's defaults (defaults.py)
    logits_r, logits_l = dual(x)
    loss, parts = objective(logits_r, logits_l, y, dual)
    loss.backward(); opt.step(); objective.after_step(dual)   # the projection
    ...
    write_export(dual, "export/", arch="resnet18", num_classes=10, val_acc={"R": .91, "L": .92})
"""

from __future__ import annotations

from dreg_dist.dreg import defaults
from dreg_dist.dreg.contrast import (
    CEReduction,
    ContrastForm,
    DRegObjective,
    Reduction,
    branch_stats,
    contrast_term,
    project_distance_,
    relative_distance,
)
from dreg_dist.dreg.cost import CostReport, cost_report
from dreg_dist.dreg.dual_path import DualPathModel, NormMode, UnsupportedModelError, trace, unwrap
from dreg_dist.dreg.export import (
    choose_path,
    path_state_dict,
    plain_model,
    write_export,
    write_plain_export,
)
from dreg_dist.dreg.layer_select import DRegLayerError, level_candidates, resolve_layer


__all__ = [
    "CEReduction",
    "ContrastForm",
    "CostReport",
    "DRegLayerError",
    "DRegObjective",
    "DualPathModel",
    "NormMode",
    "Reduction",
    "UnsupportedModelError",
    "branch_stats",
    "choose_path",
    "contrast_term",
    "cost_report",
    "defaults",
    "level_candidates",
    "path_state_dict",
    "plain_model",
    "project_distance_",
    "relative_distance",
    "resolve_layer",
    "trace",
    "unwrap",
    "write_export",
    "write_plain_export",
]
