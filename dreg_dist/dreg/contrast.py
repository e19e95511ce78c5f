"""The DReg objective: both paths' cross-entropy minus lambda times the contrast term.

Eq. 3 of the paper, per batch::

    L = CE(f(x; W, W^R), y) + CE(f(x; W, W^L), y) - lambda * ||W^R - W^L||_F^2

The literal contrast is unbounded: gradient descent on ``-lambda * d^2`` with weight decay
``wd`` multiplies ``d = W^R - W^L`` by about ``1 + lr * (4 * lambda - wd)`` per step (more
with momentum), so whenever ``4 * lambda > wd`` the difference grows without bound and
large-batch learning rates make that exponential. The forms (``form``):

* ``projected`` (the default): the literal push (the paper's gradient, along ``d``), with
  the branches' relative distance (:func:`relative_distance`) held at ``radius`` at most:
  after every optimizer step :meth:`DRegObjective.after_step` shrinks ``d`` about the
  branches' midpoint back onto the radius when the step took it past (a projection; inside
  the radius nothing changes). The push takes the branches out to the radius within a few
  hundred steps and keeps them there, so they stay distinct and the run stays finite.
* ``literal``: Eq. 3 exactly, unbounded.
* ``relative``: ``d^2 / (||W^R||^2 + ||W^L||^2)``, in ``[0, 2]`` and invariant to the scale
  of the weights. Its push shrinks as ``1/|W|^2``: at the paper's lambda it barely
  separates the branches (relative distance 0.045 after 20 epochs in our CIFAR-10 study).
* ``saturating``: ``tau^2 * (1 - exp(-d^2 / tau^2))``, in ``[0, tau^2)``: literal while
  ``d << tau``, no push once ``d >> tau``.

Two scale conventions the paper leaves open are options too: ``contrast_reduction``
("sum" over the layer's elements, or "mean" = divided by their number) and
``ce_reduction`` ("sum" of the two cross-entropies as in Eq. 3, which gives the shared
trunk twice a vanilla run's gradient; "mean", which gives it a vanilla run's but each
path's own layer half of its path's; or "per_path": the mean, with the dual-path model
built with ``branch_grad_scale`` = :attr:`DRegObjective.branch_grad_scale` (2) so each path's
own modules get their whole path's gradient, i.e. with identical branches and lambda = 0
each path trains exactly like the plain model).

Distributed note: every rank adds the same contrast term to its loss. DDP *averages*
gradients over the K ranks, so K identical copies average to exactly one; adding it on
rank 0 only would give 1/K of it. The projection runs on every rank on identical weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from dreg_dist.dreg import defaults
from dreg_dist.dreg.dual_path import DualPathModel

ContrastForm = Literal["projected", "literal", "relative", "saturating"]
Reduction = Literal["sum", "mean"]
CEReduction = Literal["sum", "mean", "per_path"]


def contrast_term(
    w_r: Tensor,
    w_l: Tensor,
    form: ContrastForm = "literal",
    reduction: Reduction = "sum",
    tau: float = defaults.TAU,
) -> Tensor:
    """The (positive) contrast between the branches; the loss subtracts ``lambda`` times it.

    ``projected`` has the literal term (its bound is a projection of the weights, not a term).
    """
    dist2 = (w_r - w_l).pow(2).sum()
    if form == "relative":
        # A ratio: the reduction convention cancels out.
        return dist2 / (w_r.pow(2).sum() + w_l.pow(2).sum()).clamp_min(1e-12)
    if reduction == "mean":
        dist2 = dist2 / w_r.numel()
    elif reduction != "sum":
        raise ValueError(f"dreg.contrast_reduction must be one of {get_args(Reduction)}, got {reduction!r}")
    if form in ("literal", "projected"):
        return dist2
    if form == "saturating":
        t2 = tau * tau
        return t2 * (1.0 - torch.exp(-dist2 / t2))
    raise ValueError(f"dreg.form must be one of {get_args(ContrastForm)}, got {form!r}")


@torch.no_grad()
def relative_distance(w_r: Tensor, w_l: Tensor) -> Tensor:
    """``||W^R - W^L|| / sqrt((||W^R||^2 + ||W^L||^2) / 2)``: 0 for equal branches, 2 for mirror
    images (``W^L = -W^R``), and the same whichever branch is called R. (Releases before the
    projected form divided by ``||W^R||`` alone; the two agree while the branch norms do.)"""
    d2 = (w_r - w_l).float().pow(2).sum()
    s = 0.5 * (w_r.float().pow(2).sum() + w_l.float().pow(2).sum())
    return (d2 / s.clamp_min(1e-30)).sqrt()


@torch.no_grad()
def project_distance_(w_r: Tensor, w_l: Tensor, radius: float) -> None:
    """Shrink ``d = W^R - W^L`` about the midpoint ``(W^R + W^L) / 2`` so that
    :func:`relative_distance` is at most ``radius``; in place, no change when it already is.

    With ``m`` the midpoint, ``rel^2 = |d|^2 / (|m|^2 + |d|^2 / 4)``, so the largest allowed
    ``|d|`` is ``radius * |m| / sqrt(1 - radius^2 / 4)``. Tensor arithmetic only: no host sync.
    """
    if not 0 < radius < 2:
        raise ValueError(f"dreg.radius must be in (0, 2) (2 = mirror images), got {radius}")
    d = w_r - w_l
    d_norm = d.float().norm()
    m_norm = (0.5 * (w_r + w_l)).float().norm()
    limit = radius * m_norm / math.sqrt(1.0 - radius * radius / 4.0)
    shrink = (1.0 - limit / d_norm.clamp_min(1e-30)).clamp_min(0.0)  # 0 inside the radius
    half = (0.5 * shrink).to(d.dtype) * d
    w_r.sub_(half)
    w_l.add_(half)


@torch.no_grad()
def branch_stats(model: DualPathModel) -> dict[str, float]:
    """Distances and norms for monitoring (an exploding contrast shows up here first)."""
    w_r, w_l = model.branch_weights()
    return {
        "branch_distance": (w_r - w_l).float().norm().item(),
        "branch_distance_rel": relative_distance(w_r, w_l).item(),
        "branch_norm_R": w_r.float().norm().item(),
        "branch_norm_L": w_l.float().norm().item(),
    }


@dataclass(frozen=True)
class DRegObjective:
    """Callable loss for a :class:`DualPathModel`'s two outputs; defaults: :mod:`dreg_dist.dreg.defaults`.

    ``form=literal`` with ``ce_reduction=sum`` is Eq. 3 exactly. Call :meth:`after_step` after
    every optimizer step (the projected form's projection; nothing for the other forms).
    """

    lam: float = defaults.LAMBDA
    form: ContrastForm = defaults.FORM  # type: ignore[assignment]
    contrast_reduction: Reduction = defaults.CONTRAST_REDUCTION  # type: ignore[assignment]
    ce_reduction: CEReduction = defaults.CE_REDUCTION  # type: ignore[assignment]
    tau: float = defaults.TAU
    radius: float = defaults.RADIUS
    """The projected form's largest relative distance (:func:`relative_distance`), in (0, 2)."""
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ValueError(
                f"dreg.lam must be >= 0 (got {self.lam}): the loss already subtracts "
                "lambda * contrast; use 0 to train both paths without contrast"
            )
        if self.form not in get_args(ContrastForm):
            raise ValueError(f"dreg.form must be one of {get_args(ContrastForm)}, got {self.form!r}")
        if self.ce_reduction not in get_args(CEReduction):
            raise ValueError(f"dreg.ce_reduction must be one of {get_args(CEReduction)}, got {self.ce_reduction!r}")
        if self.form == "saturating" and not self.tau > 0:
            raise ValueError(f"dreg.tau must be > 0 for the saturating form, got {self.tau}")
        if self.form == "projected" and not 0 < self.radius < 2:
            raise ValueError(f"dreg.radius must be in (0, 2) for the projected form (2 = mirror images), "
                             f"got {self.radius}; try 0.5")

    @property
    def branch_grad_scale(self) -> float:
        """What the :class:`DualPathModel` this objective trains must be built with."""
        return defaults.branch_grad_scale(self.ce_reduction)

    def contrast(self, model: DualPathModel) -> Tensor:
        w_r, w_l = model.branch_weights()
        return contrast_term(w_r, w_l, self.form, self.contrast_reduction, self.tau)

    def after_step(self, model: DualPathModel) -> None:
        """After each optimizer step: the projected form holds the distance at ``radius``."""
        if self.form == "projected":
            project_distance_(*model.branch_weights(), self.radius)

    def unbounded_growth(self, model: DualPathModel, lr: float, weight_decay: float) -> Optional[float]:
        """The factor ``1 + lr * (4 lambda - wd)`` by which each step at rate ``lr`` multiplies
        ``W^R - W^L`` when nothing bounds the literal push (``form=literal`` and
        ``4 lambda > wd``, lambda per element under ``contrast_reduction=mean``); else None."""
        if self.form != "literal":
            return None
        lam = self.lam / (model.branch_weights()[0].numel() if self.contrast_reduction == "mean" else 1)
        return 1.0 + lr * (4.0 * lam - weight_decay) if 4.0 * lam > weight_decay else None

    def __call__(
        self, logits_r: Tensor, logits_l: Tensor, target: Tensor, model: DualPathModel
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Return the loss to backpropagate and detached parts for logging."""
        ce_r = F.cross_entropy(logits_r.float(), target, label_smoothing=self.label_smoothing)
        ce_l = F.cross_entropy(logits_l.float(), target, label_smoothing=self.label_smoothing)
        if model.branch_grad_scale != self.branch_grad_scale:
            raise ValueError(
                f"ce_reduction={self.ce_reduction!r} needs DualPathModel(branch_grad_scale="
                f"{self.branch_grad_scale}), this one has {model.branch_grad_scale}"
            )
        ce = ce_r + ce_l if self.ce_reduction == "sum" else 0.5 * (ce_r + ce_l)
        contrast = self.contrast(model)
        loss = ce - self.lam * contrast
        return loss, {
            "loss_R": ce_r.detach(),
            "loss_L": ce_l.detach(),
            "contrast": contrast.detach(),
        }
