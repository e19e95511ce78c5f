"""CIFAR forms of the paper's architectures (32x32 inputs).

ImageNet stems (7x7 stride-2 conv plus max-pool, or a stride-2 stem in MobileNetV2)
shrink a 32x32 image to 8x8 before the first stage, which wastes most of the
network on CIFAR. The usual CIFAR forms keep the body and change only the stem
(and, for MobileNetV2, one early stride). They are built from torchvision's own
classes so that module paths match torchvision's (``layer4.1.conv2``,
``features.17.conv.1.0``): DReg layers are named by those paths in configs.

Every model here is plain ``nn.Module`` code with no data-dependent Python
control flow, so ``torch.fx.symbolic_trace`` (used by the DReg layer surgery)
traces it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import MobileNetV2
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vgg import cfgs, make_layers

CIFAR_INPUT_SIZE = 32


def _kaiming_init(module: nn.Module) -> None:
    """Initialise like torchvision's ResNet/VGG: He-normal (fan_out) convs, unit norms.

    Applied to every model built here so that a CIFAR form starts from the same
    distribution as its torchvision counterpart; only the replaced layers differ.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def cifar_resnet18(num_classes: int) -> ResNet:
    """torchvision ResNet-18 with a 3x3 stride-1 stem and no stem max-pool.

    The stem is swapped after construction rather than subclassing ``ResNet`` so
    that every other module (and its path) is exactly torchvision's.
    """
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


class CifarVGG(nn.Module):
    """VGG feature stack with the single-linear head common in CIFAR work.

    After five 2x2 max-pools a 32x32 input is 1x1x512, so torchvision's
    7x7-adaptive-pool plus three 4096-wide FC layers (~120M parameters) would
    only add capacity that CIFAR results in the literature do not use.
    """

    def __init__(self, features: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(512, num_classes)
        _kaiming_init(self)
        # torchvision VGG's linear init; a small std keeps initial logits near zero.
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def cifar_vgg16(num_classes: int) -> CifarVGG:
    """VGG-16 with batch norm (torchvision config "D") and a 512->classes head."""
    return CifarVGG(make_layers(cfgs["D"], batch_norm=True), num_classes)


# torchvision's MobileNetV2 setting (t, c, n, s) with the 24-channel stage at
# stride 1: together with a stride-1 stem, a 32x32 input reaches the last stage
# at 4x4 instead of 1x1.
CIFAR_MOBILENET_V2_SETTING: list[list[int]] = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def cifar_mobilenet_v2(num_classes: int) -> MobileNetV2:
    """torchvision MobileNetV2 with a stride-1 stem and stride-1 second stage.

    The stem stride is patched on the existing conv (``features.0.0``) because
    MobileNetV2 has no constructor option for it; patching keeps its module path.
    """
    model = MobileNetV2(
        num_classes=num_classes, inverted_residual_setting=CIFAR_MOBILENET_V2_SETTING
    )
    stem = model.features[0][0]
    assert isinstance(stem, nn.Conv2d) and tuple(stem.kernel_size) == (3, 3)
    stem.stride = (1, 1)
    return model


class CnnSmall(nn.Module):
    """Four 3x3 convs, two max-pools, global average pool, one linear layer.

    A preset for CPU experiments and tests: large enough to have several DReg
    candidate layers (``conv4`` is ``R1``), small enough to train in seconds.
    ``norm`` picks the normalisation; the module names stay ``bn1..bn4`` for
    every preset so layer paths are interchangeable between ``cnn_small``,
    ``cnn_small_gn`` and ``cnn_tiny``. ``widths`` and ``stem_stride`` size the
    network: ``cnn_tiny`` halves the widths and downsamples in the first conv,
    which makes a step about 12x cheaper (the CPU sweeps of docs/results/).
    """

    def __init__(self, num_classes: int, norm: Callable[[int], nn.Module],
                 widths: tuple[int, int, int, int] = (32, 64, 128, 256), stem_stride: int = 1) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.conv1 = nn.Conv2d(3, w1, kernel_size=3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = norm(w1)
        self.conv2 = nn.Conv2d(w1, w2, kernel_size=3, padding=1, bias=False)
        self.bn2 = norm(w2)
        self.conv3 = nn.Conv2d(w2, w3, kernel_size=3, padding=1, bias=False)
        self.bn3 = norm(w3)
        self.conv4 = nn.Conv2d(w3, w4, kernel_size=3, padding=1, bias=False)
        self.bn4 = norm(w4)
        self.fc = nn.Linear(w4, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        x = F.relu(self.bn4(self.conv4(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


GN_GROUPS = 8


def cnn_small(num_classes: int) -> CnnSmall:
    """``CnnSmall`` with BatchNorm."""
    return CnnSmall(num_classes, nn.BatchNorm2d)


def cnn_small_gn(num_classes: int) -> CnnSmall:
    """``CnnSmall`` with GroupNorm: outputs do not depend on the other samples in a batch.

    With no batch statistics, a global batch split across any number of workers
    (or accumulation steps) computes exactly the same per-sample forward pass,
    which lets tests compare distributed runs with a single-process reference.
    """
    return CnnSmall(num_classes, lambda channels: nn.GroupNorm(GN_GROUPS, channels))


def cnn_tiny(num_classes: int) -> CnnSmall:
    """``CnnSmall`` at half width (16-32-64-128) with a stride-2 first conv, with BatchNorm.

    The preset of the CPU result sweeps: ~2.5M multiply-adds per 32x32 image instead of
    ~57M, so a 45k-image CIFAR-10 epoch takes well under a minute on one CPU core.
    """
    return CnnSmall(num_classes, nn.BatchNorm2d, widths=(16, 32, 64, 128), stem_stride=2)


def cnn_base(num_classes: int) -> CnnSmall:
    """``cnn_tiny`` at twice the width (32-64-128-256, ``cnn_small``'s widths) with its stride-2 stem.

    The larger architecture of the second head-to-head: four times every inner conv's weights
    (391k parameters against 99k; the stem and the classifier grow twice) at about four times
    the step cost, where ``cnn_small``'s stride-1 stem costs about 23 times ``cnn_tiny``'s.
    """
    return CnnSmall(num_classes, nn.BatchNorm2d, widths=(32, 64, 128, 256), stem_stride=2)


CIFAR_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "resnet18": cifar_resnet18,
    "vgg16": cifar_vgg16,
    "mobilenet_v2": cifar_mobilenet_v2,
    "cnn_small": cnn_small,
    "cnn_small_gn": cnn_small_gn,
    "cnn_tiny": cnn_tiny,
    "cnn_base": cnn_base,
}
"""CIFAR-form builders by registry name, in the order ``available_models`` lists them."""
