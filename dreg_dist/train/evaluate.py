"""Exact distributed evaluation of one or both paths.

Every sample of the split is evaluated by exactly one rank (the data module shards
without padding), and the per-rank sums of correct predictions, losses and counts are
all-reduced, so accuracy is exact for any world size. A dual-path model is evaluated
in one pass per batch: the trunk runs once and both heads are scored.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreg_dist.distributed import all_reduce_sum
from dreg_dist.dreg import DualPathModel


def _outputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    if isinstance(model, DualPathModel):
        logits_r, logits_l = model(x)
        return {"R": logits_r, "L": logits_l}
    return {"model": model(x)}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
    autocast: ContextManager[Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Path name ("R"/"L", or "model" for a plain network) -> {acc, acc5, loss, count}.

    Accuracies are fractions in [0, 1]. Collective: every rank must call it.
    """
    was_training = model.training
    model.eval()
    names = ["R", "L"] if isinstance(model, DualPathModel) else ["model"]
    # Per path: correct@1, correct@5, summed loss; plus the shared count.
    sums = torch.zeros(len(names), 3, dtype=torch.float64, device=device)
    count = torch.zeros(1, dtype=torch.float64, device=device)
    try:
        for x, y in batches:
            with autocast or nullcontext():
                outs = _outputs(model, x)
            count += y.numel()
            for i, name in enumerate(names):
                logits = outs[name].float()
                k = min(5, logits.shape[1])
                top = logits.topk(k, dim=1).indices
                hits = top.eq(y[:, None])
                sums[i, 0] += hits[:, 0].sum()
                sums[i, 1] += hits.any(dim=1).sum()
                sums[i, 2] += F.cross_entropy(logits, y, reduction="sum")
    finally:
        model.train(was_training)
    all_reduce_sum(sums)
    all_reduce_sum(count)
    n = max(count.item(), 1.0)
    return {
        name: {
            "acc": sums[i, 0].item() / n,
            "acc5": sums[i, 1].item() / n,
            "loss": sums[i, 2].item() / n,
            "count": int(count.item()),
        }
        for i, name in enumerate(names)
    }
