"""Name lookup: CIFAR forms first, then torchvision's classifiers.

A config names a model by one string (``model.arch``). The short CIFAR names
(``resnet18``) shadow torchvision's ImageNet models of the same name because the
paper's experiments are on CIFAR; ``torchvision.<name>`` reaches the ImageNet
form of any torchvision classifier explicitly.
"""

from __future__ import annotations

import difflib
import functools
import logging
from typing import Any

import torchvision
from torch import nn

from dreg_dist.models.cifar import CIFAR_BUILDERS, CIFAR_INPUT_SIZE
from dreg_dist.models.zero_init import zero_init_residual_norms

log = logging.getLogger(__name__)

TORCHVISION_PREFIX = "torchvision."
IMAGENET_INPUT_SIZE = 224

# Per-architecture deviations from torchvision's native input size.
_TORCHVISION_INPUT_SIZES = {"inception_v3": 299}

# Extra constructor arguments for torchvision classifiers whose defaults do not
# fit a training loop that expects a plain logits tensor. GoogLeNet and
# Inception-v3 return a namedtuple with auxiliary logits in training mode when
# ``aux_logits`` is on, and fx would bake that training-mode output into the
# traced graph. ``init_weights=True`` states today's default explicitly, which
# also silences torchvision's FutureWarning about it changing.
_TORCHVISION_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


class UnknownModelError(ValueError):
    """``model.arch`` names neither a CIFAR form nor a torchvision classifier."""


@functools.lru_cache(maxsize=1)
def torchvision_classifiers() -> tuple[str, ...]:
    """Names of torchvision's image classifiers (no detection/segmentation/video).

    Cached because ``list_models`` walks torchvision's registry on every call and
    the result cannot change within a process.
    """
    return tuple(torchvision.models.list_models(module=torchvision.models))


def _resolve(arch: str) -> tuple[str, str]:
    """Map ``arch`` to ``("cifar" | "torchvision", name)`` or raise UnknownModelError."""
    name = arch.strip().lower()
    if name.startswith(TORCHVISION_PREFIX):
        bare = name[len(TORCHVISION_PREFIX) :]
        if bare in torchvision_classifiers():
            return "torchvision", bare
    elif name in CIFAR_BUILDERS:
        return "cifar", name
    elif name in torchvision_classifiers():
        return "torchvision", name
    raise UnknownModelError(_unknown_message(arch))


def _unknown_message(arch: str) -> str:
    """One line: what was asked, the closest names, and what is valid.

    The torchvision list is long, so it is given in full only via
    ``available_models``/``list_models``; the suggestion searches it anyway, so a
    typo of a torchvision name still gets a useful hint.
    """
    name = arch.strip().lower()
    tv = torchvision_classifiers()
    if name.startswith(TORCHVISION_PREFIX):
        pool = [TORCHVISION_PREFIX + n for n in tv]
    else:
        pool = list(CIFAR_BUILDERS) + [n for n in tv if n not in CIFAR_BUILDERS]
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
    bare = name[len(TORCHVISION_PREFIX) :] if name.startswith(TORCHVISION_PREFIX) else ""
    if bare in CIFAR_BUILDERS:  # a CIFAR-only preset asked for in ImageNet form
        close = [bare]
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return (
        f"unknown model.arch {arch!r}; {hint}valid: {', '.join(CIFAR_BUILDERS)} (CIFAR forms) "
        f"or any of the {len(tv)} torchvision.models classifiers "
        f"(e.g. resnet50, mobilenet_v3_small; torchvision.<name> for the ImageNet form "
        f"of a CIFAR name)"
    )


def available_models() -> list[str]:
    """The CIFAR names, then one entry describing the torchvision fallback.

    The torchvision names are not expanded here because they depend on the
    installed torchvision version; the note says how to list them.
    """
    return list(CIFAR_BUILDERS) + [
        "any torchvision.models classifier by name, e.g. resnet50 "
        "(torchvision.models.list_models(module=torchvision.models)); "
        "prefix 'torchvision.' for the ImageNet form of a name above, e.g. torchvision.resnet18"
    ]


def input_size(arch: str) -> int:
    """Side length of the square images ``arch`` is designed for.

    The data pipeline uses it to pick crop sizes; a CIFAR form fed 224x224 images
    (or an ImageNet form fed 32x32) still runs but wastes compute or accuracy.
    """
    kind, name = _resolve(arch)
    if kind == "cifar":
        return CIFAR_INPUT_SIZE
    return _TORCHVISION_INPUT_SIZES.get(name, IMAGENET_INPUT_SIZE)


def build_model(arch: str, num_classes: int, *, zero_init_residual: bool = False) -> nn.Module:
    """Build an untrained classifier by registry name.

    torchvision models are always built with ``weights=None``: training runs must
    never download, and DReg experiments train from scratch.
    ``zero_init_residual`` is a no-op for models without residual blocks (VGG,
    the cnn_small presets); for a torchvision model that has residual blocks of a
    kind not recognised here it is logged rather than failing the run.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    kind, name = _resolve(arch)
    if kind == "cifar":
        model = CIFAR_BUILDERS[name](num_classes)
    else:
        kwargs = _TORCHVISION_KWARGS.get(name, {})
        model = torchvision.models.get_model(
            name, weights=None, num_classes=num_classes, **kwargs
        )
    if zero_init_residual:
        zeroed = zero_init_residual_norms(model)
        if not zeroed and kind == "torchvision":
            log.warning(
                "zero_init_residual: no recognised residual block in %s; "
                "weights left as initialised",
                arch,
            )
    return model
