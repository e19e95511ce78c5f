"""The DReg objective: both paths' cross-entropy minus lambda times the contrast term.

Eq. 3 of the paper, per batch::

    L = CE(f(x; W, W^R), y) + CE(f(x; W, W^L), y) - lambda * ||W^R - W^L||_F^2

The literal contrast is unbounded: plain gradient descent on ``-lambda * d^2`` grows
``d = W^R - W^L`` by about ``(1 + 4 * lambda * lr)`` per step (amplified ~1/(1-beta) by
momentum), which large-batch learning rates turn into exponential growth. The literal
form stays the default and exact; the bounded forms are options for long runs or
high learning rates:

* ``relative``: ``d^2 / (||W^R||^2 + ||W^L||^2)``, in ``[0, 2]`` and invariant to the scale
  of the weights, which matches a layer followed by batch norm (where only direction
  matters). Use when the branch norms themselves drift.
* ``saturating``: ``tau^2 * (1 - exp(-d^2 / tau^2))``, in ``[0, tau^2)``. Equal to the literal
  form to first order while ``d << tau`` and with a vanishing push once ``d >> tau``.
  Use to keep the paper's early-training behaviour but cap the distance near ``tau``.

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
rank 0 only would give 1/K of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from dreg_dist.dreg.dual_path import DualPathModel

ContrastForm = Literal["literal", "relative", "saturating"]
Reduction = Literal["sum", "mean"]
CEReduction = Literal["sum", "mean", "per_path"]


def contrast_term(
    w_r: Tensor,
    w_l: Tensor,
    form: ContrastForm = "literal",
    reduction: Reduction = "sum",
    tau: float = 1.0,
) -> Tensor:
    """The (positive) contrast between the branches; the loss subtracts ``lambda`` times it."""
    dist2 = (w_r - w_l).pow(2).sum()
    if form == "relative":
        # A ratio: the reduction convention cancels out.
        return dist2 / (w_r.pow(2).sum() + w_l.pow(2).sum()).clamp_min(1e-12)
    if reduction == "mean":
        dist2 = dist2 / w_r.numel()
    elif reduction != "sum":
        raise ValueError(f"dreg.contrast_reduction must be one of {get_args(Reduction)}, got {reduction!r}")
    if form == "literal":
        return dist2
    if form == "saturating":
        t2 = tau * tau
        return t2 * (1.0 - torch.exp(-dist2 / t2))
    raise ValueError(f"dreg.form must be one of {get_args(ContrastForm)}, got {form!r}")


@torch.no_grad()
def branch_stats(model: DualPathModel) -> dict[str, float]:
    """Distances and norms for monitoring (an exploding contrast shows up here first)."""
    w_r, w_l = model.branch_weights()
    dist = (w_r - w_l).float().norm().item()
    norm_r = w_r.float().norm().item()
    norm_l = w_l.float().norm().item()
    return {
        "branch_distance": dist,
        "branch_distance_rel": dist / max(norm_r, 1e-12),
        "branch_norm_R": norm_r,
        "branch_norm_L": norm_l,
    }


@dataclass(frozen=True)
class DRegObjective:
    """Callable loss for a :class:`DualPathModel`'s two outputs (Eq. 3 by default)."""

    lam: float = 0.1
    form: ContrastForm = "literal"
    contrast_reduction: Reduction = "sum"
    ce_reduction: CEReduction = "sum"
    tau: float = 1.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ValueError(
                f"dreg.lam must be >= 0 (got {self.lam}): the loss already subtracts "
                "lambda * contrast; use 0 to train both paths without contrast"
            )
        if self.ce_reduction not in get_args(CEReduction):
            raise ValueError(f"dreg.ce_reduction must be one of {get_args(CEReduction)}, got {self.ce_reduction!r}")
        if self.form == "saturating" and not self.tau > 0:
            raise ValueError(f"dreg.tau must be > 0 for the saturating form, got {self.tau}")

    @property
    def branch_grad_scale(self) -> float:
        """What the :class:`DualPathModel` this objective trains must be built with."""
        return 2.0 if self.ce_reduction == "per_path" else 1.0

    def contrast(self, model: DualPathModel) -> Tensor:
        w_r, w_l = model.branch_weights()
        return contrast_term(w_r, w_l, self.form, self.contrast_reduction, self.tau)

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
