"""Zero-initialising the last norm of each residual block (Goyal et al., 2017).

With the last BN gamma of a residual branch at zero, every block starts as the
identity, which makes the first steps of large-batch training (large learning
rates after warm-up) much better behaved. torchvision offers this only for its
ResNet family; doing it after construction gives one code path for the CIFAR
and the torchvision forms and extends it to the inverted-residual blocks of
MobileNetV2/V3 and EfficientNet.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


def _last_batch_norm(module: nn.Module) -> nn.BatchNorm2d | None:
    """The last BatchNorm2d registered under ``module``.

    torchvision registers the layers of a residual branch in forward order, so the
    last registered BN is the one whose output is added to the shortcut.
    """
    last = None
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            last = m
    return last


def zero_init_residual_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    """Zero the last BN weight of every residual block in ``model``; return those BNs.

    Recognised blocks: torchvision ``BasicBlock`` (``bn2``) and ``Bottleneck``
    (``bn3``), as torchvision's own ``zero_init_residual`` does, and any block with
    ``use_res_connect`` set (MobileNetV2/V3 inverted residuals, EfficientNet
    MBConv/FusedMBConv). Blocks without a shortcut are left alone, as zeroing them
    would cut the signal. An empty result means the model has no recognised
    residual block, which callers may report.
    """
    zeroed: list[nn.BatchNorm2d] = []
    for m in model.modules():
        bn: nn.BatchNorm2d | None = None
        if isinstance(m, Bottleneck):
            bn = m.bn3
        elif isinstance(m, BasicBlock):
            bn = m.bn2
        elif getattr(m, "use_res_connect", False):
            bn = _last_batch_norm(m)
        if bn is not None and bn.weight is not None:
            nn.init.zeros_(bn.weight)
            zeroed.append(bn)
    return zeroed
