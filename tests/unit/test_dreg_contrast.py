"""The DReg objective (Eq. 3) and its gradients against hand-computed references."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dreg_dist.dreg import (
    DRegObjective,
    DualPathModel,
    branch_stats,
    contrast_term,
    defaults,
    project_distance_,
    relative_distance,
)
from dreg_dist.models import build_model


def _dual(seed: int = 0, branch_grad_scale: float = 1.0) -> DualPathModel:
    torch.manual_seed(seed)
    return DualPathModel(build_model("cnn_small_gn", 10), "R1", seed=seed, init_scale=0.05,
                         branch_grad_scale=branch_grad_scale)


def test_contrast_gradient_is_two_lambda_times_difference() -> None:
    dual = _dual()
    lam = 0.3
    objective = DRegObjective(lam=lam, form="literal", ce_reduction="sum")
    w_r, w_l = dual.branch_weights()
    (lam * objective.contrast(dual)).backward()
    diff = (w_r - w_l).detach()
    assert torch.allclose(w_r.grad, 2 * lam * diff, atol=1e-7)
    assert torch.allclose(w_l.grad, -2 * lam * diff, atol=1e-7)


def test_total_loss_is_eq3_and_trunk_gradient_is_sum_of_both_ce_gradients() -> None:
    dual = _dual()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    lam = 0.1
    objective = DRegObjective(lam=lam, form="literal", ce_reduction="sum")
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
    rms = ((w_r.norm() ** 2 + w_l.norm() ** 2) / 2).sqrt().item()
    assert stats["branch_distance_rel"] == pytest.approx(stats["branch_distance"] / rms, rel=1e-5)
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


# --------------------------------------------------------------------- the projected form
def test_projected_form_gradient_is_the_literal_push() -> None:
    """Inside the radius the projected form's gradient is Eq. 3's: each branch gets its own
    path's cross-entropy gradient (per_path) and -/+ 2 lambda (W^R - W^L)."""
    objective = DRegObjective(lam=0.3, form="projected", radius=1.5)
    dual = _dual(2, objective.branch_grad_scale)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    w_r, w_l = dual.branch_weights()
    ce = {}
    for path, w in (("R", w_r), ("L", w_l)):
        dual.zero_grad()
        F.cross_entropy(dual(x, path=path), y).backward()
        ce[path] = w.grad.clone()
    dual.zero_grad()
    loss, parts = objective(*dual(x), y, dual)
    loss.backward()
    d = (w_r - w_l).detach()
    assert torch.allclose(w_r.grad, ce["R"] - 2 * 0.3 * d, atol=1e-6)
    assert torch.allclose(w_l.grad, ce["L"] + 2 * 0.3 * d, atol=1e-6)
    assert float(parts["contrast"]) == pytest.approx(float(d.pow(2).sum()), rel=1e-6)


def test_projection_holds_the_relative_distance_and_keeps_the_midpoint() -> None:
    g = torch.Generator().manual_seed(0)
    w_r, w_l = torch.randn(64, 32, 3, 3, generator=g), torch.randn(64, 32, 3, 3, generator=g)
    mid = (w_r + w_l) / 2
    project_distance_(w_r, w_l, 0.5)
    assert float(relative_distance(w_r, w_l)) == pytest.approx(0.5, rel=1e-5)
    assert torch.allclose((w_r + w_l) / 2, mid, atol=1e-6)
    inside_r, inside_l = mid + 0.01, mid - 0.01
    before = inside_r.clone(), inside_l.clone()
    project_distance_(inside_r, inside_l, 0.5)  # already inside: bit for bit unchanged
    assert torch.equal(inside_r, before[0]) and torch.equal(inside_l, before[1])
    with pytest.raises(ValueError, match="radius must be in"):
        project_distance_(w_r, w_l, 2.0)


@pytest.mark.parametrize("radius", [0.05, 0.5, 1.2])
def test_projected_distance_stays_at_its_radius_over_1000_steps_with_large_lambda(radius: float) -> None:
    """A toy two-branch problem (shared input layer, two branch layers, shared head), momentum
    SGD with lambda 10: the literal form runs away, the projected one reaches the radius and
    stays there to 1e-4 while both paths keep learning."""
    def run(form: str) -> tuple[list[float], float]:
        torch.manual_seed(0)
        trunk, head = torch.nn.Linear(8, 16), torch.nn.Linear(16, 3)
        w_r = torch.nn.Parameter(torch.randn(16, 16) * 0.25)
        w_l = torch.nn.Parameter(w_r.detach() + 0.01 * torch.randn(16, 16))
        opt = torch.optim.SGD([*trunk.parameters(), *head.parameters(), w_r, w_l], lr=0.05, momentum=0.9,
                              weight_decay=5e-4)
        objective = DRegObjective(lam=10.0, form=form, radius=radius, ce_reduction="mean")
        x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        rel, ce = [], 0.0
        for _ in range(1000):
            h = torch.relu(trunk(x))
            ce_r = F.cross_entropy(head(torch.relu(h @ w_r.T)), y)
            ce_l = F.cross_entropy(head(torch.relu(h @ w_l.T)), y)
            loss = 0.5 * (ce_r + ce_l) - objective.lam * contrast_term(w_r, w_l, form)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                if form == "projected":
                    project_distance_(w_r, w_l, radius)
                rel.append(float(relative_distance(w_r, w_l)))
            ce = float((ce_r + ce_l).detach()) / 2
        return rel, ce

    held, ce = run("projected")
    assert max(held) <= radius * (1 + 1e-4)
    assert all(abs(r - radius) <= 1e-4 * radius for r in held[100:])
    assert ce < 1.0 and torch.isfinite(torch.tensor(ce))  # still learning (chance: ln 3 = 1.10)
    if radius == 0.5:  # the literal form does not depend on the radius: once is enough
        free, _ = run("literal")
        finite = [r for r in free if r == r]
        assert max(finite) > 1.9  # unbounded: the branches become mirror images (and overflow)


def test_objective_after_step_projects_only_the_projected_form() -> None:
    dual = _dual(0, defaults.branch_grad_scale("per_path"))
    w_r, w_l = dual.branch_weights()
    with torch.no_grad():
        w_l.copy_(-w_r)  # mirror images: relative distance 2
    DRegObjective(form="literal").after_step(dual)
    assert float(relative_distance(w_r, w_l)) == pytest.approx(2.0)
    DRegObjective(form="projected", radius=0.5).after_step(dual)
    assert float(relative_distance(*dual.branch_weights())) <= 0.5 + 1e-6


@pytest.mark.parametrize("lam, wd, form, expected", [
    (0.1, 5e-4, "literal", 1 + 0.4 * (0.4 - 5e-4)), (1e-4, 5e-4, "literal", None), (0.1, 5e-4, "projected", None),
    (0.1, 5e-4, "relative", None),
])
def test_unbounded_growth_exactly_when_four_lambda_exceeds_weight_decay(lam: float, wd: float, form: str,
                                                                      expected: float | None) -> None:
    dual = _dual(0, defaults.branch_grad_scale("per_path"))
    got = DRegObjective(lam=lam, form=form).unbounded_growth(dual, 0.4, wd)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_library_and_service_share_one_set_of_defaults() -> None:
    from dreg_dist.methods.dreg import DRegConfig

    service, library = DRegConfig(), DRegObjective()
    for field in ("lam", "form", "contrast_reduction", "ce_reduction", "tau", "radius"):
        assert getattr(service, field) == getattr(library, field), field
    dual = DualPathModel(build_model("cnn_tiny", 10))
    assert dual.layer_spec == service.layer and dual.norm_mode == service.norm
    assert dual.branch_grad_scale == library.branch_grad_scale  # the README example runs as is


@pytest.mark.parametrize("arch", ["cnn_tiny", "cnn_small"])
def test_projected_form_reaches_any_radius_on_bn_models_without_divergence(arch: str) -> None:
    """Two BN architectures, a whole warmup + cosine schedule at a large-batch learning rate, the
    paper's lambda: the projected form takes the branches to each radius asked for (0.1 to 1.0)
    and holds them there while the cross-entropy falls; the literal form's distance runs off."""
    from dreg_dist.optim.schedule import lr_multiplier
    from dreg_dist.config import OptimConfig

    def train(form: str, radius: float) -> tuple[list[float], float, float]:
        torch.manual_seed(0)
        objective = DRegObjective(form=form, radius=radius)
        dual = DualPathModel(build_model(arch, 10), "R1", seed=0)
        opt = torch.optim.SGD(dual.parameters(), lr=0.8, momentum=0.9, nesterov=True, weight_decay=5e-4)
        steps = 24
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(OptimConfig(warmup_epochs=1), 4, steps // 4))
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
        x = x + torch.nn.functional.one_hot(y, 10).float().repeat_interleave(308, 1)[:, :3072].view(16, 3, 32, 32)
        rel, ces = [], []
        for _ in range(steps):
            loss, parts = objective(*dual(x), y, dual)
            opt.zero_grad()
            loss.backward()
            opt.step()
            objective.after_step(dual)
            sched.step()
            rel.append(float(relative_distance(*dual.branch_weights())))
            ces.append(float(parts["loss_R"] + parts["loss_L"]) / 2)
        return rel, ces[0], ces[-1]

    for radius in (0.1, 0.5, 1.0):
        rel, first, last = train("projected", radius)
        assert max(rel) <= radius * (1 + 1e-4), (radius, max(rel))
        assert rel[-1] == pytest.approx(radius, rel=1e-3), (radius, rel[-1])
        assert last < first and last == last, (radius, first, last)  # finite and learning
    if arch == "cnn_tiny":
        free, _, _ = train("literal", 0.5)
        assert max(r for r in free if r == r) > 1.0  # unbounded: far past any radius above


@pytest.mark.parametrize("form, lam, wd, says", [
    ("literal", 0.1, 5e-4, True), ("literal", 1e-4, 5e-4, False), ("literal", 0.1, 0.5, False),
    ("projected", 0.1, 5e-4, False), ("relative", 0.1, 5e-4, False),
])
def test_literal_form_says_at_start_up_when_the_difference_grows_without_bound(form: str, lam: float, wd: float,
                                                                                 says: bool) -> None:
    from dreg_dist.config import build_method, load_config

    cfg = load_config(None, ["method=dreg", f"dreg.form={form}", f"dreg.lam={lam}", f"optim.weight_decay={wd}",
                             "optim.lr=0.1", "train.global_batch_size=1024", "model.arch=cnn_tiny"], warn=None)
    method = build_method(cfg)
    assert method.check() == []  # without the model: the hyperparameters only
    notes = method.check(method.prepare_model(build_model("cnn_tiny", 10)))
    if not says:
        assert notes == []
        return
    (line,) = notes
    factor = 1 + 0.4 * (4 * lam - wd)  # peak lr 0.1 x 1024 / 256
    assert line.startswith("warning: dreg.form=literal") and "\n" not in line
    assert f"x{factor:.4g} per step" in line and "peak learning rate 0.4" in line and "dreg.form=projected" in line
