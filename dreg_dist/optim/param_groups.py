"""Parameter groups: weight decay (and layer-wise trust ratios) skip norm and bias.

Norm-layer weights and biases are excluded from weight decay by default (Goyal et al.
2017); LARS/LAMB also leave them out of the trust ratio. The split is by tensor rank:
every parameter with fewer than two dimensions is a bias or a norm affine weight in the
supported architectures, which keeps the rule independent of module types.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    seen: set[int] = set()
    for _, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (decay if param.ndim >= 2 or decay_norm_and_bias else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "exclude_from_trust": False}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "exclude_from_trust": True})
    return groups
