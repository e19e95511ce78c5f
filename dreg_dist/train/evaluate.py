"""Exact distributed evaluation of one or both paths.

Every sample of the split is evaluated by exactly one rank (the data module shards
without padding), and the per-rank sums of correct predictions, losses and counts are
all-reduced, so accuracy is exact for any world size. What is scored is the method's
business: ``outputs`` maps a batch to named logits (one model, or several paths of one
network scored from a single forward). With several outputs each one's ``disagreement`` is
the fraction of samples whose top-1 class differs from another output's (for two outputs,
the same number in both): how distinct the paths' predictions are.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreg_dist.distributed import all_reduce_sum

Outputs = Callable[[nn.Module, Tensor], dict[str, Tensor]]


def single_output(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    return {"model": model(x)}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
    autocast: ContextManager[Any] | None = None,
    outputs: Outputs = single_output,
    names: Sequence[str] = ("model",),
) -> dict[str, dict[str, float]]:
    """Output name (``names``, what ``outputs`` returns) -> {acc, acc5, loss, count}, plus
    ``disagreement`` with two or more outputs.

    Accuracies are fractions in [0, 1]. Collective: every rank must call it, with the same
    ``names`` (a rank without batches still takes part in the all-reduce).
    """
    was_training = model.training
    model.eval()
    names = list(names)
    # Per path: correct@1, correct@5, summed loss, top-1 differing from another output's; plus the count.
    sums = torch.zeros(len(names), 4, dtype=torch.float64, device=device)
    count = torch.zeros(1, dtype=torch.float64, device=device)
    try:
        for x, y in batches:
            with autocast or nullcontext():
                outs = outputs(model, x)
            count += y.numel()
            top1 = []
            for i, name in enumerate(names):
                logits = outs[name].float()
                k = min(5, logits.shape[1])
                top = logits.topk(k, dim=1).indices
                hits = top.eq(y[:, None])
                sums[i, 0] += hits[:, 0].sum()
                sums[i, 1] += hits.any(dim=1).sum()
                sums[i, 2] += F.cross_entropy(logits, y, reduction="sum")
                top1.append(top[:, 0])
            for i, mine in enumerate(top1):
                others = [t for j, t in enumerate(top1) if j != i]
                if others:
                    sums[i, 3] += torch.stack([mine.ne(t) for t in others]).any(dim=0).sum()
    finally:
        model.train(was_training)
    all_reduce_sum(sums)
    all_reduce_sum(count)
    n = max(count.item(), 1.0)
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(names):
        out[name] = {"acc": sums[i, 0].item() / n, "acc5": sums[i, 1].item() / n, "loss": sums[i, 2].item() / n,
                     "count": int(count.item())}
        if len(names) > 1:
            out[name]["disagreement"] = sums[i, 3].item() / n
    return out
