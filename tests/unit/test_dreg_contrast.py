"""The DReg objective (Eq. 3) and its gradients against hand-computed references."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dreg_dist.dreg import DRegObjective, DualPathModel, branch_stats, contrast_term
from dreg_dist.models import build_model


def _dual(seed: int = 0, branch_grad_scale: float = 1.0) -> DualPathModel:
    torch.manual_seed(seed)
    return DualPathModel(build_model("cnn_small_gn", 10), "R1", seed=seed, init_scale=0.05,
                         branch_grad_scale=branch_grad_scale)


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


@pytest.mark.parametrize("form, contrast_reduction, ce_reduction", [
    ("literal", "sum", "sum"), ("literal", "mean", "sum"), ("literal", "sum", "mean"), ("relative", "sum", "sum"),
    ("relative", "sum", "mean"), ("relative", "sum", "per_path"),
])
def test_each_convention_gradient_on_a_tiny_model(form: str, contrast_reduction: str, ce_reduction: str) -> None:
    """Trunk and branch gradients of the whole objective, against references built from each
    path's own cross-entropy gradient and the contrast's formula (README table)."""
    objective = DRegObjective(form=form, contrast_reduction=contrast_reduction, ce_reduction=ce_reduction)
    dual = _dual(1, objective.branch_grad_scale)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    trunk = [p for n, p in dual.net.named_parameters() if n.startswith(("conv1", "conv2", "fc"))]
    w_r, w_l = dual.branch_weights()
    # The mean and relative contrasts are ~N times weaker per weight: a lambda N times larger
    # keeps them measurable next to the cross-entropy.
    lam = 0.2 * (w_r.numel() if contrast_reduction == "mean" or form == "relative" else 1)
    ce_grads = {}
    for path in ("R", "L"):
        dual.zero_grad()
        F.cross_entropy(dual(x, path=path), y).backward()
        ce_grads[path] = ([p.grad.clone() for p in trunk],
                          *(torch.zeros_like(w) if w.grad is None else w.grad.clone() for w in (w_r, w_l)))
    dual.zero_grad()
    loss, _ = DRegObjective(lam=lam, form=form, contrast_reduction=contrast_reduction,
                            ce_reduction=ce_reduction)(*dual(x), y, dual)
    loss.backward()

    scale = 1.0 if ce_reduction == "sum" else 0.5
    for got, g_r, g_l in zip(trunk, ce_grads["R"][0], ce_grads["L"][0]):
        assert torch.allclose(got.grad, scale * (g_r + g_l), atol=1e-6)
    # Each path's own layer: its path's whole cross-entropy gradient unless the mean halves it.
    scale = 0.5 if ce_reduction == "mean" else 1.0
    d = (w_r - w_l).detach()
    if form == "relative":
        s_ = (w_r.pow(2).sum() + w_l.pow(2).sum()).detach()
        push_r = 2 * (d * s_ - d.pow(2).sum() * w_r.detach()) / s_**2
        push_l = 2 * (-d * s_ - d.pow(2).sum() * w_l.detach()) / s_**2
    else:
        n = w_r.numel() if contrast_reduction == "mean" else 1
        push_r, push_l = 2 * d / n, -2 * d / n
    assert torch.allclose(w_r.grad, scale * ce_grads["R"][1] - lam * push_r, atol=1e-6)
    assert torch.allclose(w_l.grad, scale * ce_grads["L"][2] - lam * push_l, atol=1e-6)
    assert (lam * push_r).abs().max() > 1e-2 * ce_grads["R"][1].abs().max()  # the contrast part is measurable


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


@pytest.mark.parametrize("ce_reduction, same", [("per_path", True), ("mean", False), ("sum", False)])
def test_per_path_reduction_without_contrast_trains_each_path_like_the_plain_model(ce_reduction: str, same: bool) -> None:
    """Identical branches, lambda 0, momentum SGD: under ``per_path`` path R's weights follow
    the plain model's step for step (trunk, DReg layer, per-path norm, head); the mean halves
    the DReg layer's and its norm's steps and the sum doubles the trunk's."""
    torch.manual_seed(3)
    plain = build_model("cnn_small_gn", 10)
    objective = DRegObjective(lam=0.0, form="relative", ce_reduction=ce_reduction)
    dual = DualPathModel(copy.deepcopy(plain), "R1", init_scale=1e-30, branch_grad_scale=objective.branch_grad_scale)
    assert dual.per_path_norm and torch.equal(*dual.branch_weights())
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    opt_dual = torch.optim.SGD(dual.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        opt_plain.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        opt_plain.step()
        opt_dual.zero_grad()
        objective(*dual(x), y, dual)[0].backward()
        opt_dual.step()
    mine = dict(dual.net.named_parameters())
    close = {n: torch.allclose(mine[n], p, atol=1e-6) for n, p in plain.named_parameters()}
    assert all(close.values()) == same, close
    assert torch.allclose(*dual.branch_weights(), atol=1e-6)  # nothing pushes them apart


def test_objective_refuses_a_model_built_for_another_reduction() -> None:
    with pytest.raises(ValueError, match="branch_grad_scale=2.0"):
        dual = _dual()
        DRegObjective(ce_reduction="per_path")(*dual(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]), dual)
