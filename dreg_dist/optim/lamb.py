"""LAMB: Adam with a layer-wise trust ratio (You et al., ICLR 2020, "Large Batch
Optimization for Deep Learning: Training BERT in 76 minutes").

Adam's per-coordinate normalisation alone does not keep the size of a layer's update
in proportion to the layer's weights, which becomes the limiting factor at very large
batches. LAMB rescales the (decoupled-weight-decay) Adam direction of every parameter
tensor so that its norm matches the weight norm (paper, Algorithm 2 with
``phi(x) = x``; also ``large_batch_methods.md``)::

    m     = beta1 * m + (1 - beta1) * grad
    v     = beta2 * v + (1 - beta2) * grad**2
    m_hat = m / (1 - beta1**t),   v_hat = v / (1 - beta2**t)
    r     = m_hat / (sqrt(v_hat) + eps)
    u     = r + wd * w
    ratio = ||w|| / ||u||   if ||w|| > 0 and ||u|| > 0, else 1
    w     = w - lr * ratio * u

Norm-layer weights and biases are marked ``exclude_from_trust`` in their parameter
group (see :mod:`dreg_dist.optim.param_groups`): for them ``ratio = 1``, i.e. AdamW.

The trust ratio is computed with tensor operations (``torch.where``), never ``.item()``,
so a step does not synchronise the host with the GPU.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

ParamsT = Union[Iterable[Tensor], Iterable[dict[str, Any]]]


class LAMB(Optimizer):
    """Layer-wise Adaptive Moments optimizer for Batch training.

    Per-group options: ``lr``, ``betas``, ``eps`` (1e-6 in the paper), ``weight_decay``
    and ``exclude_from_trust`` (skip the trust ratio for this group: ``ratio = 1``).
    The state holds plain tensors per parameter (``step``, a CPU float scalar as in
    :class:`torch.optim.Adam`, ``exp_avg`` and ``exp_avg_sq``), so checkpoints load with
    ``torch.load(weights_only=True)``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        exclude_from_trust: bool = False,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"LAMB lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"LAMB betas must lie in [0, 1), got {betas}")
        if eps < 0.0:
            raise ValueError(f"LAMB eps must be >= 0, got {eps}")
        if weight_decay < 0.0:
            raise ValueError(f"LAMB weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            exclude_from_trust=exclude_from_trust,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """One LAMB update of every parameter with a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr: float = group["lr"]
            beta1, beta2 = group["betas"]
            eps: float = group["eps"]
            wd: float = group["weight_decay"]
            excluded: bool = group["exclude_from_trust"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                step_t: Tensor = state["step"]
                exp_avg: Tensor = state["exp_avg"]
                exp_avg_sq: Tensor = state["exp_avg_sq"]
                step_t += 1
                t = int(step_t.item())  # CPU scalar: no device synchronisation
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias1 = 1 - beta1**t
                bias2 = 1 - beta2**t
                denom = (exp_avg_sq / bias2).sqrt_().add_(eps)
                update = (exp_avg / bias1).div_(denom)
                if wd != 0:
                    update.add_(p, alpha=wd)
                if excluded:
                    p.add_(update, alpha=-lr)
                    continue
                w_norm = torch.linalg.vector_norm(p)
                u_norm = torch.linalg.vector_norm(update)
                ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.sub_(update.mul_(ratio * lr))
        return loss

