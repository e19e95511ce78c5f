"""LARS and LAMB: steps against hand computations, checkpoint round trip, build_optimizer groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from dreg_dist.config.schema import OptimConfig
from dreg_dist.optim import build_optimizer
from dreg_dist.optim.lamb import LAMB
from dreg_dist.optim.lars import LARS

DT = torch.float64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _norm(x: Tensor) -> Tensor:
    return x.pow(2).sum().sqrt()


def _params() -> tuple[nn.Parameter, nn.Parameter, nn.Parameter, nn.Parameter]:
    """Trusted weight, trusted zero-norm weight, excluded norm weight and excluded bias."""
    w = nn.Parameter(torch.randn(3, 4, dtype=DT))
    zero = nn.Parameter(torch.zeros(2, 3, dtype=DT))
    gamma = nn.Parameter(torch.randn(4, dtype=DT))
    bias = nn.Parameter(torch.randn(4, dtype=DT))
    return w, zero, gamma, bias


def _groups(ps: tuple[nn.Parameter, ...], wd: float) -> list[dict[str, Any]]:
    w, zero, gamma, bias = ps
    return [
        {"params": [w, zero], "weight_decay": wd, "exclude_from_trust": False},
        {"params": [gamma, bias], "weight_decay": 0.0, "exclude_from_trust": True},
    ]


def _set_grads(ps: tuple[nn.Parameter, ...], grads: list[Tensor]) -> None:
    for p, g in zip(ps, grads):
        p.grad = g.clone()


def _random_grads(ps: tuple[nn.Parameter, ...]) -> list[Tensor]:
    return [torch.randn_like(p) for p in ps]


# ----------------------------------------------------------------------------- LARS


def _lars_ref(
    w: Tensor, grad: Tensor, v: Tensor | None, lr: float, m: float, wd: float, eta: float, eps: float,
    excluded: bool, nesterov: bool,
) -> tuple[Tensor, Tensor]:
    """Hand LARS step for one tensor: returns (new w, new momentum buffer)."""
    g = grad + wd * w
    wn, gn = _norm(w), _norm(grad)
    local = eta * wn / (gn + wd * wn + eps) if (not excluded and wn > 0 and gn > 0) else 1.0
    step = lr * local * g
    v_new = step if v is None else m * v + step
    w_new = w - (m * v_new + step) if nesterov else w - v_new
    return w_new, v_new


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_two_steps_match_hand_computation(nesterov: bool) -> None:
    lr, m, wd, eta, eps = 0.5, 0.9, 0.01, 0.02, 1e-6
    ps = _params()
    excluded = [False, False, True, True]
    wds = [wd, wd, 0.0, 0.0]
    opt = LARS(_groups(ps, wd), lr=lr, momentum=m, trust_coefficient=eta, eps=eps, nesterov=nesterov)
    ws = [p.detach().clone() for p in ps]
    vs: list[Tensor | None] = [None] * 4
    for _ in range(2):
        grads = _random_grads(ps)
        _set_grads(ps, grads)
        opt.step()
        for i in range(4):
            ws[i], vs[i] = _lars_ref(ws[i], grads[i], vs[i], lr, m, wds[i], eta, eps, excluded[i], nesterov)
        for i, p in enumerate(ps):
            torch.testing.assert_close(p.detach(), ws[i])
            torch.testing.assert_close(opt.state[p]["momentum_buffer"], vs[i])
    # The trust ratio really acted on the trusted non-zero weight (eta * ||w|| / ||g|| << 1)
    # and the zero-norm weight moved with ratio 1 (it would not move at all otherwise).
    assert not torch.equal(ps[1].detach(), torch.zeros(2, 3, dtype=DT))


def test_lars_first_step_values_explicit() -> None:
    """One step written out without the helper: buffer starts at lr * local * g."""
    lr, m, wd, eta, eps = 0.1, 0.9, 0.05, 0.001, 1e-8
    w = nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=DT))  # ||w|| = 5
    opt = LARS([{"params": [w], "weight_decay": wd, "exclude_from_trust": False}], lr=lr, momentum=m,
               trust_coefficient=eta, eps=eps)
    w.grad = torch.tensor([[0.6, 0.8]], dtype=DT)  # ||grad|| = 1
    opt.step()
    local = eta * 5.0 / (1.0 + wd * 5.0 + eps)
    g = torch.tensor([[0.6 + wd * 3.0, 0.8 + wd * 4.0]], dtype=DT)
    expected = torch.tensor([[3.0, 4.0]], dtype=DT) - lr * local * g
    torch.testing.assert_close(w.detach(), expected)
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], lr * local * g)


def test_lars_zero_grad_uses_ratio_one() -> None:
    lr, wd = 0.1, 0.1
    w = nn.Parameter(torch.tensor([1.0, 2.0], dtype=DT))
    opt = LARS([{"params": [w], "weight_decay": wd, "exclude_from_trust": False}], lr=lr, momentum=0.9)
    w.grad = torch.zeros(2, dtype=DT)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, 2.0], dtype=DT) * (1 - lr * wd))


def test_lars_without_momentum_keeps_no_state() -> None:
    w = nn.Parameter(torch.randn(3, dtype=DT))
    w0 = w.detach().clone()
    opt = LARS([w], lr=0.1, momentum=0.0, exclude_from_trust=True)
    w.grad = torch.ones(3, dtype=DT)
    opt.step()
    torch.testing.assert_close(w.detach(), w0 - 0.1)
    assert len(opt.state) == 0


# ----------------------------------------------------------------------------- LAMB


def _lamb_ref(
    w: Tensor, grads: list[Tensor], lr: float, b1: float, b2: float, eps: float, wd: float, excluded: bool,
) -> list[Tensor]:
    """Hand LAMB steps for one tensor with the given gradient sequence; returns w after each."""
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    out = []
    for t, grad in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        r = m_hat / (v_hat.sqrt() + eps)
        u = r + wd * w
        wn, un = _norm(w), _norm(u)
        ratio = wn / un if (not excluded and wn > 0 and un > 0) else 1.0
        w = w - lr * ratio * u
        out.append(w)
    return out


def test_lamb_two_steps_match_hand_computation() -> None:
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.99, 1e-6, 0.1
    ps = _params()
    excluded = [False, False, True, True]
    wds = [wd, wd, 0.0, 0.0]
    w0 = [p.detach().clone() for p in ps]
    opt = LAMB(_groups(ps, wd), lr=lr, betas=(b1, b2), eps=eps)
    grads = [_random_grads(ps) for _ in range(2)]
    refs = [_lamb_ref(w0[i], [grads[0][i], grads[1][i]], lr, b1, b2, eps, wds[i], excluded[i]) for i in range(4)]
    for s in range(2):
        _set_grads(ps, grads[s])
        opt.step()
        for i, p in enumerate(ps):
            torch.testing.assert_close(p.detach(), refs[i][s])
    for p in ps:
        assert opt.state[p]["step"].item() == 2.0


def test_lamb_zero_update_uses_ratio_one() -> None:
    """Zero gradient and no decay at step 1: u = 0, ratio 1, weight unchanged (no NaN)."""
    w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=DT))
    opt = LAMB([{"params": [w], "weight_decay": 0.0, "exclude_from_trust": False}], lr=0.1)
    w.grad = torch.zeros(2, dtype=DT)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, -2.0], dtype=DT))


def test_lamb_trust_ratio_sets_update_norm() -> None:
    """With ratio ||w|| / ||u|| the step has norm lr * ||w|| whatever the gradient scale."""
    lr = 0.01
    w = nn.Parameter(torch.randn(5, 5, dtype=DT))
    w0 = w.detach().clone()
    opt = LAMB([w], lr=lr, weight_decay=0.01)
    w.grad = 1e3 * torch.randn(5, 5, dtype=DT)
    opt.step()
    torch.testing.assert_close(_norm(w.detach() - w0), lr * _norm(w0))


# ----------------------------------------------------------------------------- checkpoints


def _tiny_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))


def _make_opt(name: str, model: nn.Module) -> Optimizer:
    cfg = OptimConfig(name=name, weight_decay=1e-2, momentum=0.9, trust_coefficient=0.01)
    return build_optimizer(model, cfg, lr=0.05)


def _train(model: nn.Module, opt: Optimizer, batches: list[tuple[Tensor, Tensor]]) -> None:
    model.train()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_state_dict_round_trip_resumes_identically(name: str, tmp_path: Path) -> None:
    batches = [(torch.randn(6, 4), torch.randint(0, 3, (6,))) for _ in range(6)]
    init = _tiny_model()

    straight = _tiny_model()
    straight.load_state_dict(init.state_dict())
    opt = _make_opt(name, straight)
    _train(straight, opt, batches)

    first = _tiny_model()
    first.load_state_dict(init.state_dict())
    opt_first = _make_opt(name, first)
    _train(first, opt_first, batches[:3])
    path = tmp_path / "ckpt.pt"
    torch.save({"model": first.state_dict(), "optim": opt_first.state_dict()}, path)

    ckpt = torch.load(path, weights_only=True)
    resumed = _tiny_model()
    resumed.load_state_dict(ckpt["model"])
    opt_resumed = _make_opt(name, resumed)
    opt_resumed.load_state_dict(ckpt["optim"])
    assert opt_resumed.param_groups[1]["exclude_from_trust"] is True
    _train(resumed, opt_resumed, batches[3:])

    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- build_optimizer


@pytest.mark.parametrize("name, cls", [("lars", LARS), ("lamb", LAMB)])
def test_build_optimizer_excludes_norm_and_bias(name: str, cls: type) -> None:
    model = _tiny_model()
    cfg = OptimConfig(name=name, weight_decay=5e-4, trust_coefficient=0.002, eps=1e-7, betas=[0.8, 0.95])
    opt = build_optimizer(model, cfg, lr=0.3)
    assert isinstance(opt, cls)
    lin1, bn, lin2 = model[0], model[1], model[2]
    trusted, excluded = opt.param_groups
    assert {id(p) for p in trusted["params"]} == {id(lin1.weight), id(lin2.weight)}
    assert {id(p) for p in excluded["params"]} == {id(lin1.bias), id(bn.weight), id(bn.bias), id(lin2.bias)}
    assert trusted["exclude_from_trust"] is False and trusted["weight_decay"] == 5e-4
    assert excluded["exclude_from_trust"] is True and excluded["weight_decay"] == 0.0
    for group in opt.param_groups:
        assert group["lr"] == 0.3 and group["eps"] == 1e-7
        if name == "lars":
            assert group["trust_coefficient"] == 0.002 and group["momentum"] == cfg.momentum
        else:
            assert tuple(group["betas"]) == (0.8, 0.95)
    # and a step runs on real module gradients
    _train(model, opt, [(torch.randn(5, 4), torch.randint(0, 3, (5,)))])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_build_optimizer_decay_norm_and_bias_single_trusted_group() -> None:
    model = _tiny_model()
    opt = build_optimizer(model, OptimConfig(name="lars", decay_norm_and_bias=True), lr=0.1)
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0]["exclude_from_trust"] is False
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))
