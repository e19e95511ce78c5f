"""The DReg objective (Eq. 3) and its gradients against hand-computed references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dreg_dist.dreg import DRegObjective, DualPathModel, branch_stats, contrast_term
from dreg_dist.models import build_model


def _dual(seed: int = 0) -> DualPathModel:
    torch.manual_seed(seed)
    return DualPathModel(build_model("cnn_small_gn", 10), "R1", seed=seed, init_scale=0.05)


def test_contrast_gradient_is_two_lambda_times_difference() -> None:
    dual = _dual()
    lam = 0.3
    objective = DRegObjective(lam=lam)
    w_r, w_l = dual.branch_weights()
    (lam * objective.contrast(dual)).backward()
    diff = (w_r - w_l).detach()
    assert torch.allclose(w_r.grad, 2 * lam * diff, atol=1e-7)
    assert torch.allclose(w_l.grad, -2 * lam * diff, atol=1e-7)


def test_total_loss_is_eq3_and_trunk_gradient_is_sum_of_both_ce_gradients() -> None:
    dual = _dual()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    lam = 0.1
    objective = DRegObjective(lam=lam)
    logits_r, logits_l = dual(x)
    loss, parts = objective(logits_r, logits_l, y, dual)
    w_r, w_l = dual.branch_weights()
    expected = F.cross_entropy(logits_r, y) + F.cross_entropy(logits_l, y) - lam * (w_r - w_l).pow(2).sum()
    assert torch.allclose(loss, expected)
    loss.backward()

    trunk = [p for n, p in dual.net.named_parameters() if n.startswith(("conv1", "conv2", "fc"))]
    total = [p.grad.clone() for p in trunk]
    total_w_r = w_r.grad.clone()
    reference = [torch.zeros_like(p) for p in trunk]
    for path in ("R", "L"):
        dual.zero_grad()
        F.cross_entropy(dual(x, path=path), y).backward()
        reference = [r + p.grad for r, p in zip(reference, trunk)]
        if path == "R":
            ce_grad_w_r = w_r.grad.clone()
    for got, want in zip(total, reference):
        assert torch.allclose(got, want, atol=1e-6)
    diff = (w_r - w_l).detach()
    assert torch.allclose(total_w_r, ce_grad_w_r - 2 * lam * diff, atol=1e-6)
    assert set(parts) == {"loss_R", "loss_L", "contrast"}


def test_mean_reductions_scale_the_gradient() -> None:
    dual = _dual()
    w_r, w_l = dual.branch_weights()
    diff = (w_r - w_l).detach()
    contrast_term(w_r, w_l, "literal", "mean").backward()
    assert torch.allclose(w_r.grad, 2 * diff / w_r.numel(), atol=1e-9)

    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    r, l = dual(x)
    summed, _ = DRegObjective(lam=0.0, ce_reduction="sum")(r, l, y, dual)
    mean, _ = DRegObjective(lam=0.0, ce_reduction="mean")(r, l, y, dual)
    assert torch.allclose(mean, summed / 2)


def test_relative_form_gradient_and_bound() -> None:
    w_r = torch.randn(5, 4, requires_grad=True)
    w_l = torch.randn(5, 4, requires_grad=True)
    value = contrast_term(w_r, w_l, "relative")
    value.backward()
    d2 = (w_r - w_l).pow(2).sum().detach()
    s = (w_r.pow(2).sum() + w_l.pow(2).sum()).detach()
    diff, wr = (w_r - w_l).detach(), w_r.detach()
    assert torch.allclose(w_r.grad, 2 * diff / s - 2 * d2 * wr / s**2, atol=1e-6)
    assert 0 <= value.item() <= 2
    # Scale invariance: multiplying both branches leaves the term unchanged.
    assert torch.allclose(contrast_term(10 * w_r, 10 * w_l, "relative"), value)


def test_saturating_form_matches_literal_near_zero_and_is_bounded() -> None:
    w_r = torch.randn(3, 3, requires_grad=True)
    w_l = (w_r.detach() + 1e-3 * torch.randn(3, 3)).requires_grad_()
    tau = 2.0
    contrast_term(w_r, w_l, "saturating", tau=tau).backward()
    d2 = (w_r - w_l).pow(2).sum().detach()
    expected = 2 * (w_r - w_l).detach() * torch.exp(-d2 / tau**2)
    assert torch.allclose(w_r.grad, expected, atol=1e-9)
    far = contrast_term(torch.zeros(3), torch.full((3,), 1e3), "saturating", tau=tau)
    assert far.item() <= tau**2


def test_negative_lambda_is_rejected_with_advice() -> None:
    with pytest.raises(ValueError, match=r"dreg.lam must be >= 0 .*use 0"):
        DRegObjective(lam=-0.1)


def test_branch_stats_report_distance_and_norms() -> None:
    dual = _dual()
    stats = branch_stats(dual)
    w_r, w_l = dual.branch_weights()
    assert stats["branch_distance"] == pytest.approx((w_r - w_l).norm().item(), rel=1e-6)
    assert stats["branch_distance_rel"] == pytest.approx(stats["branch_distance"] / w_r.norm().item())
    assert stats["branch_norm_L"] == pytest.approx(w_l.norm().item(), rel=1e-6)
