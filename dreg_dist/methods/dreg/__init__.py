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

from dataclasses import dataclass
from typing import Any, Optional

import torch
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
    defaults,
    plain_model,
)
from dreg_dist.errors import ConfigError
from dreg_dist.methods.base import Method, RunSettings
from dreg_dist.methods.outputs import with_export_meta
from dreg_dist.methods.traits import Traits


@dataclass
class DRegConfig:
    """The ``dreg:`` section. Defaults: the library's (:mod:`dreg_dist.dreg.defaults`), so
    ``DRegObjective()`` and ``method=dreg`` train the same objective."""

    layer: str = defaults.LAYER
    """Module path (``layer4.1.conv2``) or reverse topological level among 3x3 convs
    (``R1`` = last 3x3 conv, ``R2`` the one before, ...)."""
    lam: float = defaults.LAMBDA
    """lambda in Eq. 3: weight of the contrast term, >= 0."""
    init_scale: float = defaults.INIT_SCALE
    """W^L = W^R + init_scale * rms(W^R) * N(0, 1) at start (seeded, identical on every worker)."""
    norm: NormMode = defaults.NORM  # type: ignore[assignment]
    """Whether the norm layer right after the DReg layer is duplicated per path (own affine
    weights and running statistics) or shared by both paths (the paper's layout)."""
    form: ContrastForm = defaults.FORM  # type: ignore[assignment]
    """Contrast term: projected (the literal push, relative distance held at ``radius``);
    literal ||W^R-W^L||_F^2 (Eq. 3, unbounded); relative (divided by ||W^R||^2+||W^L||^2,
    bounded by 2); saturating (tau^2 (1-exp(-d^2/tau^2)), bounded by tau^2)."""
    radius: float = defaults.RADIUS
    """Projected form: the largest relative distance ||W^R-W^L|| / rms(||W^R||, ||W^L||), in (0, 2)."""
    tau: float = defaults.TAU
    """Saturation distance of the saturating form."""
    contrast_reduction: Reduction = defaults.CONTRAST_REDUCTION  # type: ignore[assignment]
    """sum over the layer's elements (literal) or mean (divided by their number)."""
    ce_reduction: CEReduction = defaults.CE_REDUCTION  # type: ignore[assignment]
    """How the two paths' cross-entropies combine: ``sum`` (Eq. 3: the shared modules get twice
    vanilla's gradient), ``mean`` (vanilla's scale for the shared modules, half for each path's own
    DReg layer and norm) or ``per_path`` (the mean for the shared modules, each path's whole
    cross-entropy for its own layer and norm: with identical branches and lambda 0 each path
    trains exactly like vanilla)."""


class DReg(Method):
    name = "dreg"
    Config = DRegConfig
    # The objective's contrast and projection are tensor operations (branch_stats' .item() is logging).
    traits = Traits(section="dreg", outputs=("R", "L"))

    def __init__(self, hp: Optional[DRegConfig] = None, settings: RunSettings = RunSettings()) -> None:
        super().__init__(hp, settings)
        h = self.hp
        self.objective = DRegObjective(lam=h.lam, form=h.form, contrast_reduction=h.contrast_reduction,
                                       ce_reduction=h.ce_reduction, tau=h.tau,
                                       radius=h.radius,
                                       label_smoothing=settings.label_smoothing)

    def check(self, module: Optional[nn.Module] = None) -> list[str]:
        h = self.hp
        if not h.lam >= 0:
            raise ConfigError(f"config key 'dreg.lam' must be >= 0, got {h.lam} (the loss subtracts lambda * contrast)")
        if not h.init_scale > 0:
            raise ConfigError(f"config key 'dreg.init_scale' must be > 0, got {h.init_scale}; try 0.01")
        if h.form == "saturating" and not h.tau > 0:
            raise ConfigError(f"config key 'dreg.tau' must be > 0 for the saturating form, got {h.tau}")
        if h.form == "projected" and not 0 < h.radius < 2:
            raise ConfigError(f"config key 'dreg.radius' must be in (0, 2) for the projected form (2 = mirror "
                              f"images), got {h.radius}; try 0.5")
        if module is None:
            return []
        s, lam = self.settings, h.lam
        growth = self.objective.unbounded_growth(_dual(module), s.peak_lr, s.weight_decay)
        if growth is None:
            return []
        return [f"warning: dreg.form=literal with 4 x dreg.lam ({4 * lam:g}) > weight decay ({s.weight_decay:g}): "
                f"W^R - W^L grows without bound, by about x{growth:.4g} per step at the peak learning rate "
                f"{s.peak_lr:g} (1 + lr (4 lambda - wd); momentum makes it faster); dreg.form=projected holds "
                "it at dreg.radius"]

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

    def after_step(self, module: nn.Module) -> None:
        self.objective.after_step(_dual(module))

    def values(self, module: nn.Module, final: bool) -> dict[str, float]:
        dual = _dual(module)
        if not final:
            return branch_stats(dual)
        with torch.no_grad():
            contrast = float(self.objective.contrast(dual))
        return {**branch_stats(dual), "contrast": contrast}

    def eval_outputs(self, module: nn.Module, x: Tensor) -> dict[str, Tensor]:
        logits_r, logits_l = module(x)
        return {"R": logits_r, "L": logits_l}

    def export_model(self, module: nn.Module, output: Optional[str]) -> nn.Module:
        dual, path = _dual(module), output or "R"
        # meta.json as dreg_dist.dreg.write_export writes it: the layer, the path asked for, the norm layout
        return with_export_meta(plain_model(dual, path), dreg_layer=dual.layer_path,  # type: ignore[arg-type]
                                path_requested=path, dreg_norm=dual.norm_mode)


def _dual(module: nn.Module) -> DualPathModel:
    if not isinstance(module, DualPathModel):
        raise TypeError(f"method dreg needs the DualPathModel its prepare_model built, got {type(module).__name__}")
    return module


__all__ = ["DReg", "DRegConfig"]
