"""DReg as a training method: dual-path model and the Eq. 3 objective per micro-batch.

The pure library (surgery, objective, export, cost) is :mod:`dreg_dist.dreg`; this module
maps the ``dreg:`` config section onto it and tells the service what a dual-path model
evaluates, exports, logs and reports (see README.md beside this file).

Every rank adds the same contrast term to its local loss; DDP averages gradients over
ranks, so the contrast gradient enters each update exactly once (see
``dreg_dist/dreg/contrast.py``). Accumulation divides each micro-batch's loss, contrast
included, by the number of micro-batches, so the contrast also counts once per step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from torch import Tensor, nn

from dreg_dist.dreg import (
    CEReduction,
    ContrastForm,
    DRegLayerError,
    DRegObjective,
    DualPathModel,
    NormMode,
    Reduction,
    UnsupportedModelError,
    branch_stats,
    choose_path,
    plain_model,
    write_export,
)
from dreg_dist.errors import ConfigError
from dreg_dist.methods.base import Method, RunSettings


@dataclass
class DRegConfig:
    layer: str = "R1"
    """Module path (``layer4.1.conv2``) or reverse topological level among 3x3 convs
    (``R1`` = last 3x3 conv, ``R2`` the one before, ...)."""
    lam: float = 0.1
    """lambda in Eq. 3: weight of the contrast term, >= 0."""
    init_scale: float = 0.01
    """W^L = W^R + init_scale * rms(W^R) * N(0, 1) at start (seeded, identical on every worker)."""
    norm: NormMode = "per_path"
    """Whether the norm layer right after the DReg layer is duplicated per path (own affine
    weights and running statistics) or shared by both paths."""
    form: ContrastForm = "relative"
    """Contrast term: literal ||W^R-W^L||_F^2 (Eq. 3, unbounded); relative (divided by
    ||W^R||^2+||W^L||^2, bounded by 2); saturating (tau^2 (1-exp(-d^2/tau^2)), bounded by tau^2).
    The default is ``relative`` because of the CIFAR-10 study in docs/results/: the literal
    term with the paper's lambda diverged at batch 512 at every learning rate tried and lost
    accuracy at 4096, the relative one never did. ``literal`` gives Eq. 3 exactly."""
    tau: float = 1.0
    """Saturation distance of the saturating form."""
    contrast_reduction: Reduction = "sum"
    """sum over the layer's elements (literal) or mean (divided by their number)."""
    ce_reduction: CEReduction = "per_path"
    """How the two paths' cross-entropies combine: ``sum`` (Eq. 3: the shared modules get twice
    vanilla's gradient), ``mean`` (vanilla's scale for the shared modules, half for each path's own
    DReg layer and norm) or ``per_path`` (the mean for the shared modules, each path's whole
    cross-entropy for its own layer and norm: with identical branches and lambda 0 each path
    trains exactly like vanilla). The default is ``per_path`` because of the head-to-head study
    in docs/results/: at the learning rate tuned for vanilla, ``sum`` lost 6 points at batch 4096
    and ``mean`` lost 6 points at 8192; ``per_path`` stayed within seed noise of vanilla at both."""


class DReg(Method):
    name = "dreg"
    Config = DRegConfig
    section = "dreg"
    labels = {"lam": "lam", "layer": "layer", "form": "", "contrast_reduction": "contrast",
              "ce_reduction": "ce", "norm": "norm", "init_scale": "init", "tau": "tau"}
    outputs = ("R", "L")
    study_keys = {"layer": "DReg layer (reverse topological level)", "lam": "DReg lambda"}
    console_keys = ("loss_R", "loss_L", "contrast")  # the total goes negative as the contrast grows
    train_ce_keys = ("loss_R", "loss_L")
    report_curves = {"branch_distance_rel": "||W^R - W^L|| / ||W^R||"}
    report_columns = {"branch_distance": "branch distance", "branch_distance_rel": "branch distance (rel.)"}
    report_notes = (
        "**DReg**: validation accuracy is the better of the two paths at each epoch (`max(acc_R, acc_L)`), "
        "the quantity the exported (epoch, path) is chosen on; the training loss is the mean of the two paths' "
        "cross-entropies (its total loss also holds the contrast term); **branch distance** is "
        "`||W^R - W^L||_F` of the final weights, (rel.) divided by `||W^R||_F`. Its figure shows the relative "
        "distance as logged: left, at each variant's selected learning rate (mean over seeds); right, at the end "
        "of training for every learning rate tried. The literal contrast is unbounded below, so a growing curve "
        "there is the contrast taking over the objective.",
    )

    def __init__(self, hp: Optional[DRegConfig] = None, settings: RunSettings = RunSettings()) -> None:
        super().__init__(hp, settings)
        h = self.hp
        self.objective = DRegObjective(lam=h.lam, form=h.form, contrast_reduction=h.contrast_reduction,
                                       ce_reduction=h.ce_reduction, tau=h.tau,
                                       label_smoothing=settings.label_smoothing)

    def check(self) -> None:
        h = self.hp
        if not h.lam >= 0:
            raise ConfigError(f"config key 'dreg.lam' must be >= 0, got {h.lam} (the loss subtracts lambda * contrast)")
        if not h.init_scale > 0:
            raise ConfigError(f"config key 'dreg.init_scale' must be > 0, got {h.init_scale}; try 0.01")
        if h.form == "saturating" and not h.tau > 0:
            raise ConfigError(f"config key 'dreg.tau' must be > 0 for the saturating form, got {h.tau}")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        h = self.hp
        try:
            return DualPathModel(model, h.layer, norm=h.norm, init_scale=h.init_scale, seed=self.settings.seed,
                                 branch_grad_scale=self.objective.branch_grad_scale)
        except (DRegLayerError, UnsupportedModelError) as err:
            raise ConfigError(str(err)) from None

    def loss(self, outputs: Any, target: Tensor, module: nn.Module) -> tuple[Tensor, dict[str, Tensor]]:
        logits_r, logits_l = outputs
        return self.objective(logits_r, logits_l, target, _dual(module))

    def log_values(self, module: nn.Module) -> dict[str, float]:
        return branch_stats(_dual(module))

    def summary_values(self, module: nn.Module) -> dict[str, float]:
        return branch_stats(_dual(module))

    def eval_outputs(self, module: nn.Module, x: Tensor) -> dict[str, Tensor]:
        logits_r, logits_l = module(x)
        return {"R": logits_r, "L": logits_l}

    def choose_output(self, val_acc: Mapping[str, float], requested: str = "auto") -> Optional[str]:
        return choose_path(val_acc, requested)  # type: ignore[arg-type]

    def exported_model(self, module: nn.Module, output: Optional[str]) -> nn.Module:
        return plain_model(_dual(module), output or "R")  # type: ignore[arg-type]

    def export(
        self,
        module: nn.Module,
        out_dir: Union[str, os.PathLike[str]],
        *,
        val_acc: Mapping[str, float],
        output: Optional[str],
        **meta: Any,
    ) -> dict[str, Any]:
        return write_export(_dual(module), out_dir, val_acc=val_acc, path=output or "R", **meta)


def _dual(module: nn.Module) -> DualPathModel:
    if not isinstance(module, DualPathModel):
        raise TypeError(f"method dreg needs the DualPathModel its prepare_model built, got {type(module).__name__}")
    return module


__all__ = ["DReg", "DRegConfig"]
