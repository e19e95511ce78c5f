"""What the second path costs: extra parameters and FLOPs relative to the plain model.

FLOPs are counted by running the models under ``torch.utils.flop_counter.FlopCounterMode``
(matmuls and convolutions, forward and backward), so the figure follows the real
graph, including the duplicated downstream part, rather than a hand-written formula.
This is the floor the benchmarks compare the measured step-time overhead against.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dreg_dist.dreg.dual_path import DualPathModel


@dataclass(frozen=True)
class CostReport:
    plain_params: int
    dual_params: int
    plain_forward_flops: int
    dual_forward_flops: int
    plain_train_flops: int
    """Forward + backward of one training step, per sample."""
    dual_train_flops: int

    @property
    def extra_params_pct(self) -> float:
        return 100.0 * (self.dual_params - self.plain_params) / self.plain_params

    @property
    def extra_forward_pct(self) -> float:
        return 100.0 * (self.dual_forward_flops - self.plain_forward_flops) / self.plain_forward_flops

    @property
    def extra_train_pct(self) -> float:
        return 100.0 * (self.dual_train_flops - self.plain_train_flops) / self.plain_train_flops

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = dict(asdict(self))
        out.update(
            extra_params_pct=self.extra_params_pct,
            extra_forward_pct=self.extra_forward_pct,
            extra_train_pct=self.extra_train_pct,
        )
        return out

    def summary(self) -> str:
        return (
            f"params +{self.extra_params_pct:.2f}% "
            f"({self.dual_params - self.plain_params:,}), forward FLOPs "
            f"+{self.extra_forward_pct:.2f}%, train-step FLOPs +{self.extra_train_pct:.2f}%"
        )


def _count(model: nn.Module, x: torch.Tensor, backward: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if backward:
            outs = out if isinstance(out, tuple) else (out,)
            sum(o.float().sum() for o in outs).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def cost_report(model: DualPathModel, input_shape: tuple[int, int, int] = (3, 32, 32)) -> CostReport:
    """Per-sample FLOPs and parameter counts of ``model`` (dual) versus its plain network."""
    # A copy: train-mode forwards would otherwise move the caller's BN running statistics.
    probe = copy.deepcopy(model).train()
    x = torch.randn(2, *input_shape, device=next(probe.parameters()).device)
    plain_fwd = _count(probe.net, x, backward=False) // 2
    dual_fwd = _count(probe, x, backward=False) // 2
    plain_train = _count(probe.net, x, backward=True) // 2
    dual_train = _count(probe, x, backward=True) // 2
    return CostReport(
        plain_params=sum(p.numel() for p in model.net.parameters()),
        dual_params=sum(p.numel() for p in model.parameters()),
        plain_forward_flops=plain_fwd,
        dual_forward_flops=dual_fwd,
        plain_train_flops=plain_train,
        dual_train_flops=dual_train,
    )
