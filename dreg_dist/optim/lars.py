"""LARS: momentum SGD with a layer-wise trust ratio (You, Gitman, Ginsburg 2017).

Large global batches need large peak learning rates, and at those rates a single global
rate destabilises the layers whose update is large relative to their weights. LARS
rescales the step of every parameter tensor ``l`` by a local rate proportional to
``||w_l|| / ||grad_l||``, so that each layer moves by roughly the same relative amount
(paper, Algorithm 1; also ``large_batch_methods.md``)::

    g       = grad + wd * w
    local   = eta * ||w|| / (||grad|| + wd * ||w|| + eps)   if ||w|| > 0 and ||grad|| > 0
            = 1                                              otherwise
    v       = momentum * v + lr * local * g                  (v = lr * local * g at step 1)
    w       = w - v                                          (Nesterov: w - (momentum * v + lr * local * g))

Norm-layer weights and biases are marked ``exclude_from_trust`` in their parameter
group (see :mod:`dreg_dist.optim.param_groups`): for them ``local = 1``, which with
``weight_decay = 0`` is plain momentum SGD, as in the paper's public TPU reference.

The trust ratio is computed with tensor operations (``torch.where``), never ``.item()``,
so a step does not synchronise the host with the GPU.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

ParamsT = Union[Iterable[Tensor], Iterable[dict[str, Any]]]


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling on top of (Nesterov) momentum SGD.

    Per-group options: ``lr``, ``momentum``, ``weight_decay``, ``trust_coefficient``
    (``eta``, about 0.001 in the paper), ``eps``, ``nesterov`` and
    ``exclude_from_trust`` (skip the trust ratio for this group: ``local = 1``).
    The state holds one tensor per parameter, ``momentum_buffer``, so checkpoints load
    with ``torch.load(weights_only=True)``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        nesterov: bool = False,
        exclude_from_trust: bool = False,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"LARS lr must be >= 0, got {lr}")
        if momentum < 0.0:
            raise ValueError(f"LARS momentum must be >= 0, got {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"LARS weight_decay must be >= 0, got {weight_decay}")
        if trust_coefficient <= 0.0:
            raise ValueError(f"LARS trust_coefficient must be > 0, got {trust_coefficient}")
        if eps < 0.0:
            raise ValueError(f"LARS eps must be >= 0, got {eps}")
        if nesterov and momentum <= 0.0:
            raise ValueError("LARS nesterov needs momentum > 0")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            nesterov=nesterov,
            exclude_from_trust=exclude_from_trust,
        )
        super().__init__(params, defaults)

    @staticmethod
    def _local_rate(w: Tensor, grad: Tensor, wd: float, eta: float, eps: float) -> Tensor:
        """``eta * ||w|| / (||grad|| + wd * ||w|| + eps)``, or 1 when a norm is zero.

        The zero-norm fallback keeps freshly zero-initialised tensors (e.g. zero-init
        residual BN weights when decayed) and tensors without signal from being frozen
        (``||w|| = 0``) or blown up (``||grad|| = 0``).
        """
        w_norm = torch.linalg.vector_norm(w)
        g_norm = torch.linalg.vector_norm(grad)
        ratio = eta * w_norm / (g_norm + wd * w_norm + eps)
        return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """One LARS update of every parameter with a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr: float = group["lr"]
            momentum: float = group["momentum"]
            wd: float = group["weight_decay"]
            eta: float = group["trust_coefficient"]
            eps: float = group["eps"]
            nesterov: bool = group["nesterov"]
            excluded: bool = group["exclude_from_trust"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                g = grad.add(p, alpha=wd) if wd != 0 else grad.clone()
                if excluded:
                    scaled = g.mul_(lr)
                else:
                    scaled = g.mul_(self._local_rate(p, grad, wd, eta, eps) * lr)
                if momentum == 0.0:
                    p.sub_(scaled)
                    continue
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = scaled.clone()
                    state["momentum_buffer"] = buf
                else:
                    buf.mul_(momentum).add_(scaled)
                if nesterov:
                    p.sub_(scaled.add_(buf, alpha=momentum))
                else:
                    p.sub_(buf)
        return loss
