"""Micro-batch Fisher-trace penalty (Novack et al., ICLR 2023), see README.md.

Same as :class:`~dreg_dist.methods.gradnorm.GradNorm`, except that the penalty's
cross-entropy uses labels sampled from the model's own (detached) softmax, so
||grad R_M||^2 is a one-sample estimate of the trace of the Fisher information on M.
Sampling is seeded by (train.seed, step, global position of the micro-batch), which makes
a step reproducible and, with the same micro-batch partition, independent of the number
of workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from dreg_dist.methods.gradnorm import GradNorm, GradNormConfig


def sample_labels(logits: Tensor, seed: int) -> Tensor:
    """One label per row drawn from softmax(logits) (detached) with a generator seeded by ``seed``."""
    probs = torch.softmax(logits.detach().float(), dim=1)
    gen = torch.Generator(device=probs.device)
    gen.manual_seed(seed)
    return torch.multinomial(probs, 1, generator=gen).squeeze(1)


@dataclass
class FisherConfig(GradNormConfig):
    """``lam`` weighs the micro-batch Fisher-trace penalty (labels sampled from the model)."""


class Fisher(GradNorm):
    name = "fisher"
    Config = FisherConfig

    def penalty_target(self, logits: Tensor, target: Tensor, seed: int) -> Optional[Tensor]:
        return sample_labels(logits, seed)


__all__ = ["Fisher", "FisherConfig", "sample_labels"]
