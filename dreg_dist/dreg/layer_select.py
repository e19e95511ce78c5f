"""Choosing the DReg layer in a traced model.

The paper (Section 4.2) names candidate layers by *reverse topological level*
among the 3x3 convolutions: ``R1`` is the last 3x3 conv before the output (in
MobileNetV2 that is the last depthwise conv), ``R2`` the one before, and so on.
A layer can also be named by its module path (``layer4.1.conv2``); by path any
``nn.Conv2d`` or ``nn.Linear`` that is called exactly once is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch.fx as fx
from torch import nn

SUPPORTED_LAYER_TYPES = (nn.Conv2d, nn.Linear)
_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm2d,
)
_LEVEL = re.compile(r"^[Rr](\d+)$")


class DRegLayerError(ValueError):
    """The requested DReg layer does not exist or cannot be replicated."""


@dataclass(frozen=True)
class DRegSite:
    """Where the DReg layer sits in the traced graph."""

    layer_path: str
    """Module path of the replicated layer (W^R lives there; W^L is its copy)."""
    norm_path: Optional[str]
    """Module path of a norm layer that is the sole consumer of the layer's output, if any."""


def _is_3x3_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (3, 3)


def level_candidates(gm: fx.GraphModule) -> list[str]:
    """3x3 conv module paths in reverse topological order: index 0 is ``R1``."""
    modules = dict(gm.named_modules())
    seen: list[str] = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and _is_3x3_conv(modules[node.target]):
            if node.target not in seen:
                seen.append(node.target)
    return list(reversed(seen))


def _call_sites(gm: fx.GraphModule, path: str) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_module" and n.target == path]


def _candidates_message(gm: fx.GraphModule) -> str:
    levels = level_candidates(gm)
    shown = ", ".join(f"R{i + 1}={p}" for i, p in enumerate(levels[:6]))
    more = f", ... ({len(levels)} levels)" if len(levels) > 6 else ""
    return f"valid choices: {shown}{more}, or the path of any Conv2d/Linear module called once"


def resolve_layer(gm: fx.GraphModule, layer: str) -> DRegSite:
    """Map ``layer`` (``R<k>`` or a module path) to a :class:`DRegSite` in ``gm``."""
    modules = dict(gm.named_modules())
    match = _LEVEL.match(layer.strip())
    if match:
        level = int(match.group(1))
        levels = level_candidates(gm)
        if not levels:
            raise DRegLayerError(
                f"dreg.layer '{layer}': this model has no 3x3 conv; name a Conv2d/Linear "
                "module path instead"
            )
        if not 1 <= level <= len(levels):
            raise DRegLayerError(
                f"dreg.layer '{layer}' does not exist: the model has levels R1..R{len(levels)}; "
                + _candidates_message(gm)
            )
        path = levels[level - 1]
    else:
        path = layer.strip()
        if path not in modules or path == "":
            raise DRegLayerError(
                f"dreg.layer '{layer}' is not a module of this model; " + _candidates_message(gm)
            )
        if not isinstance(modules[path], SUPPORTED_LAYER_TYPES):
            kind = type(modules[path]).__name__
            raise DRegLayerError(
                f"dreg.layer '{layer}' is a {kind}; DReg replicates a Conv2d or Linear layer; "
                + _candidates_message(gm)
            )
    sites = _call_sites(gm, path)
    if len(sites) != 1:
        raise DRegLayerError(
            f"dreg.layer '{path}' is called {len(sites)} times in the forward pass; DReg needs a "
            "layer that is called exactly once; " + _candidates_message(gm)
        )
    (node,) = sites
    norm_path = None
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_module":
        if isinstance(modules[users[0].target], _NORM_TYPES) and len(
            _call_sites(gm, users[0].target)
        ) == 1:
            norm_path = users[0].target
    return DRegSite(layer_path=path, norm_path=norm_path)
