"""What a training method is: how it shapes the model and how it fills the gradients.

The trainer owns everything around a step (data, learning rate, gradient scaling and
clipping, the optimizer step, logging, checkpoints). A method owns one thing: given this
rank's micro-batches, leave the *all-reduced* gradient of its objective in ``.grad``
and return detached loss parts for logging. Methods that need two passes (SAM,
extragradient) or double backprop (gradient-norm penalties) override
:meth:`Method.compute_gradients`; the others only define :meth:`Method.loss`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from dreg_dist.config.schema import Config

Batch = tuple[Tensor, Tensor]


def logits_for_loss(outputs: Tensor) -> Tensor:
    """Half-precision logits go to float32 for the loss; float32/float64 stay as they are."""
    return outputs.float() if outputs.dtype in (torch.float16, torch.bfloat16) else outputs


@dataclass
class StepContext:
    """What a method may use during one optimizer step."""

    model: nn.Module
    """The model to call for training forwards (DDP-wrapped when distributed)."""
    module: nn.Module
    """The same model unwrapped (parameters, branch weights)."""
    autocast: Callable[[], ContextManager[Any]]
    scaler: torch.amp.GradScaler
    lr: Optional[float] = None
    """Learning rate this step's update uses (``optimizer.param_groups[0]["lr"]`` before
    the scheduler steps); None when the caller does not pass it. Extragradient uses it as
    its default extrapolation step."""
    step: Optional[int] = None
    """0-based index of this optimizer step over the whole run (the trainer's global step
    before it is incremented); None when unknown. Seeds per-step randomness (Fisher label
    sampling, GradientMix weights) so that it is identical on all ranks and across resumes."""

    def no_sync(self, last: bool) -> ContextManager[Any]:
        """Skip DDP's all-reduce on all but the last micro-batch of a step."""
        if isinstance(self.model, DDP) and not last:
            return self.model.no_sync()
        return nullcontext()


class Method:
    """Base class: plain accumulation of ``loss`` over micro-batches, one all-reduce."""

    name = "base"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.label_smoothing = cfg.train.label_smoothing

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Model surgery done once at start-up (before DDP wrapping)."""
        return model

    def configure_ddp(self, ddp_model: DDP) -> None:
        """Called once right after DDP wrapping, before the first forward (e.g. to register
        a communication hook). Not called for a single process."""

    def loss(self, outputs: Any, target: Tensor, module: nn.Module) -> tuple[Tensor, dict[str, Tensor]]:
        loss = F.cross_entropy(logits_for_loss(outputs), target, label_smoothing=self.label_smoothing)
        return loss, {}

    def compute_gradients(self, ctx: StepContext, batches: list[Batch]) -> dict[str, Tensor]:
        """Backward the mean loss over ``batches``; returns the mean of each logged part."""
        totals: dict[str, Tensor] = {}
        n = len(batches)
        for i, (x, y) in enumerate(batches):
            with ctx.no_sync(last=i == n - 1):
                with ctx.autocast():
                    outputs = ctx.model(x)
                loss, parts = self.loss(outputs, y, ctx.module)
                ctx.scaler.scale(loss / n).backward()
            for key, value in {"loss": loss.detach(), **parts}.items():
                totals[key] = totals.get(key, 0.0) + value.float() / n
        return totals

    def log_values(self, module: nn.Module) -> dict[str, float]:
        """Extra scalars for ``train/`` at logging steps (e.g. branch distance)."""
        return {}
