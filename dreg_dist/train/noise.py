"""The live gradient noise scale of a run (formulas and advice: ``dreg_dist/noise_scale.py``).

Every step holds the gradient at two batch sizes. The small one is read where it exists
anyway, on the device, without a host sync:

- **several workers** (``hook`` mode): a DDP communication hook sums the squares of each
  gradient bucket before handing it to the all-reduce (or to the gradient compression hook),
  so the small batch is one worker's B / K;
- **one worker, or a method that does its own all-reduce** (``block`` mode): the squared
  norm of ``.grad`` right after the step's first accumulation block (an accumulation
  micro-batch, or a SAM/extragradient/penalty chunk), when that block is not the step's
  last; each block adds its mean-loss gradient times its share of the worker's samples.

The global gradient is the all-reduced ``.grad`` the optimizer steps on. Each step's
unbiased |G|^2 and tr(Sigma) go into an exponential moving average each (bias-corrected,
skipped steps left out); at logging steps the ranks' averages are averaged in the loss
window's own all-reduce, and B_simple is their ratio. Cost: one squared norm over the
gradients per step plus one per bucket or block (``bench/noise_scale_cost.py``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dreg_dist.noise_scale import STEADY_RULE, estimates, simple_noise_scale, steady_noise_scale

Hook = Callable[[Any, dist.GradBucket], torch.futures.Future[Tensor]]

KEYS = ("grad_sq_norm", "grad_trace_cov")
"""The per-rank averages the loss window all-reduces (``train/`` scalars); ``noise_scale`` is their ratio."""


def _sq_norm(tensors: list[Tensor]) -> Tensor:
    """Sum of squares of all entries, in a few fused kernels (fp32 accumulation)."""
    norms = torch._foreach_norm([t.detach() for t in tensors], 2, dtype=torch.float32)
    return torch.stack(norms).square().sum()


class NoiseScaleMeter:
    """Per-step estimates of |G|^2 and tr(Sigma), their moving averages, and their history.

    ``mode`` is ``hook``, ``block`` or ``off`` (:meth:`why_off` says why, once).
    """

    def __init__(self, module: nn.Module, device: torch.device, global_batch: int, world_size: int,
                 *, decay: float, enabled: bool, hookable: bool,
                 scale: Callable[[], Optional[Tensor]]) -> None:
        self.module, self.device = module, device
        self.global_batch, self.world_size = global_batch, world_size
        self.decay = decay
        self._scale = scale  # the grad scaler's scale (fp16), or None: gradients are in true units
        self.local_batch = global_batch // world_size
        self.small_batch: Optional[int] = None
        """The small batch of the last measured step (B / K in hook mode, a block's samples in block mode)."""
        self._said = False
        self.off_reason: Optional[str] = None
        if not enabled:
            self.mode = "off"
        elif world_size > 1 and hookable:
            self.mode = "hook"
        elif world_size > 1:
            # The method's own all-reduce (GradientMix mixes workers with random weights) makes the
            # "global" gradient something other than the mean over B examples: the estimators assume it.
            self.mode, self.off_reason = "off", ("the method replaces the gradient all-reduce, so the global "
                                                 "gradient is not the mean over the global batch")
        else:
            self.mode = "block"
        self._zero = torch.zeros((), device=device)
        self._ema = {k: self._zero.clone() for k in KEYS}
        self._weight = self._zero.clone()  # the EMA's bias correction: sum of the weights given
        self._small: Optional[Tensor] = None
        self.measured = False
        """Whether any step gave a small-batch norm (``block`` mode needs a block that is not last)."""
        self.latest: dict[str, float] = {}
        """The last logged values (``noise_scale`` included when defined)."""
        self.history: list[dict[str, float]] = []
        """One entry per evaluation: step, epoch and the values then."""

    # ------------------------------------------------------------ small batch
    def wrap(self, inner: Hook) -> Hook:
        """A DDP communication hook: the bucket's squared norm, then ``inner`` (the all-reduce)."""
        # No annotations: DDP refuses a hook whose annotations are strings (postponed evaluation).
        def hook(state, bucket):  # type: ignore[no-untyped-def]
            part = torch.linalg.vector_norm(bucket.buffer().detach(), dtype=torch.float32).square()
            # Bucket 0 comes first in every synced backward: only the step's last one counts (a
            # compiled DDP model may all-reduce every micro-batch).
            self._small = part if self._small is None or bucket.index() == 0 else self._small + part
            self.small_batch = self.local_batch
            return inner(state, bucket)
        return hook

    def first_block(self) -> Optional[Callable[[int], None]]:
        """The callback a step context runs after the step's first accumulation block (block mode)."""
        return self._after_block if self.mode == "block" else None

    def _after_block(self, samples: int) -> None:
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if not grads or samples >= self.global_batch:
            return
        share = samples / self.local_batch  # the block's gradient is its mean-loss gradient times this
        self._small = _sq_norm(grads) / share ** 2
        self.small_batch = samples

    # ------------------------------------------------------------ per step
    def step(self, grads: list[Tensor], skipped: Tensor) -> None:
        """After the method's gradients (``grads``: the all-reduced ``.grad``); ``skipped``: the
        step's agreed 0-d flag (tensor ops only, no host read)."""
        small, self._small = self._small, None
        if self.mode == "off" or small is None or not grads:
            return
        self.measured = True
        big = _sq_norm(grads)
        scale = self._scale()
        if scale is not None:
            small, big = small / scale.float() ** 2, big / scale.float() ** 2
        g_sq, trace = estimates(small, big, self.small_batch, self.global_batch)
        keep = torch.logical_not(skipped) & torch.isfinite(g_sq) & torch.isfinite(trace)
        d = self.decay
        for key, value in zip(KEYS, (g_sq, trace)):
            self._ema[key] = torch.where(keep, d * self._ema[key] + (1 - d) * value, self._ema[key])
        self._weight = torch.where(keep, d * self._weight + (1 - d), self._weight)

    # ------------------------------------------------------------ logging
    def rank_values(self) -> dict[str, Tensor]:
        """This rank's bias-corrected averages, for the loss window to average over ranks."""
        if not self.measured:
            return {}
        w = torch.clamp(self._weight, min=1e-12)
        return {k: self._ema[k] / w for k in KEYS}

    def logged(self, means: dict[str, float]) -> dict[str, float]:
        """The ``train/`` scalars from the ranks' means of :meth:`rank_values`."""
        if not all(k in means for k in KEYS):
            return {}
        out = {k: means[k] for k in KEYS}
        b = simple_noise_scale(out["grad_sq_norm"], out["grad_trace_cov"])
        if b is not None:
            out["noise_scale"] = b
        self.latest = out
        return out

    def record(self, step: int, epoch: float, lr: float) -> Optional[str]:
        """Keep the latest values in the history (at an evaluation), with the learning rate they
        were measured at (the advice uses the values logged near the peak rate); the console line."""
        if not self.latest:
            return None
        self.history.append({"step": step, "epoch": epoch, "lr": lr, **self.latest})
        b = self.latest.get("noise_scale")
        shown = f"{b:.4g}" if b is not None else "undefined (an estimate is not yet positive)"
        return (f"noise scale B_simple {shown} (|G|^2 {self.latest['grad_sq_norm']:.3g}, tr(Sigma) "
                f"{self.latest['grad_trace_cov']:.3g}; global batch {self.global_batch})")

    def why_off(self) -> Optional[str]:
        """Once, at the first logging step that has no estimate: why the run has none."""
        if self._said or self.measured or (self.mode == "off" and self.off_reason is None):
            return None
        self._said = True
        if self.off_reason is not None:
            return f"note: the gradient noise scale is not measured: {self.off_reason}"
        return ("note: the gradient noise scale is not measured: this step has one batch size only (one "
                "worker, one accumulation micro-batch, no chunks); run two or more workers, or split the "
                "batch (train.accumulation_steps >= 2, or a train.micro_batch_size below the batch)")

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The averages, as the mean over ranks (a collective, like the checkpoint it is part of:
        the mean is all the logged value uses), and the history: a resumed run continues both."""
        vec = torch.stack([self._ema[k] for k in KEYS] + [self._weight]).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(vec)
            vec /= self.world_size
        values = vec.tolist()
        return {"ema": dict(zip(KEYS, values[:len(KEYS)])), "weight": values[-1], "history": list(self.history),
                "small_batch": self.small_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the averages and the history; whether this run measures is its own (a resume
        on another layout may not)."""
        if not state:  # a checkpoint of an earlier release
            return
        self._ema = {k: torch.tensor(float(state["ema"][k]), device=self.device) for k in KEYS}
        self._weight = torch.tensor(float(state["weight"]), device=self.device)
        self.history = list(state.get("history", []))
        self.small_batch = state.get("small_batch", self.small_batch)

    def summary(self) -> dict[str, Any]:
        """For ``summary.json``: the final values, their history, and how they were measured. A run
        resumed from its last checkpoint with no step left to train logs nothing itself: its final
        values are the last ones its history holds."""
        latest = self.latest or {k: v for k, v in (self.history[-1] if self.history else {}).items()
                                 if k not in ("step", "epoch", "lr")}
        if not latest:
            return {"measured": False}
        steady = steady_noise_scale((h.get("lr"), h.get("noise_scale")) for h in self.history)
        return {"measured": True, "final": dict(latest),
                **({"steady": steady, "steady_rule": STEADY_RULE} if steady is not None else {}),
                "history": list(self.history),
                "small_batch": self.small_batch, "global_batch": self.global_batch, "mode": self.mode,
                "ema_decay": self.decay}


__all__ = ["KEYS", "NoiseScaleMeter"]
