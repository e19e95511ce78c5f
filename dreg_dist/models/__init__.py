"""Model registry: CIFAR forms of the paper's networks plus any torchvision classifier.

Everything the trainer needs is re-exported here so callers depend on one import
path, not on how the registry is split into modules. Every model returned is
traceable by ``torch.fx.symbolic_trace``, which the DReg layer surgery relies on.
"""

from dreg_dist.models.registry import (
    UnknownModelError,
    available_models,
    build_model,
    input_size,
)

__all__ = ["UnknownModelError", "available_models", "build_model", "input_size"]
