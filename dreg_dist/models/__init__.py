"""Model registry: CIFAR forms of the paper's networks plus any torchvision classifier.

Everything the trainer needs is re-exported here so callers depend on one import
path, not on how the registry is split into modules. Every model returned is
traceable by ``torch.fx.symbolic_trace``, which the DReg layer surgery relies on.
"""

from dreg_dist.models.batch import Batch, as_batch, rank_positions, with_positions
from dreg_dist.models.forward_keys import ForwardKeys, convert_keyed_random, keyed
from dreg_dist.models.ghost_bn import convert_ghost_batch_norm, ghost_modules, install_running_stat_updates
from dreg_dist.models.registry import (
    UnknownModelError,
    available_models,
    build_model,
    input_size,
)

__all__ = [
    "Batch",
    "ForwardKeys",
    "UnknownModelError",
    "as_batch",
    "available_models",
    "build_model",
    "convert_ghost_batch_norm",
    "convert_keyed_random",
    "ghost_modules",
    "input_size",
    "install_running_stat_updates",
    "keyed",
    "rank_positions",
    "with_positions",
]
