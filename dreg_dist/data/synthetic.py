"""A synthetic 32x32 classification task that a small CNN learns in a few epochs.

Meant for smoke tests and for exercising the distributed machinery without a dataset on
disk. Each class owns a smooth, low-frequency colour template (a random 4x4 grid
upsampled bicubically); a sample is its class template shifted by up to +-2 pixels
(edge-replicated) plus i.i.d. Gaussian pixel noise of ``noise`` times the template's
amplitude, rescaled so the pixel spread does not grow with ``noise``. Templates are made left-right symmetric so the horizontal-flip augmentation
cannot turn one class into another, and are smooth so the +-4 pixel random crop keeps
them recognizable. Images are stored as uint8 exactly like CIFAR, so training takes the
very same augmentation and normalization path.

The content depends only on (num_classes, sizes, noise), not on the run's seed: like a
real dataset it is a fixed thing, and the seed varies only the validation hold-out,
order and augmentation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dreg_dist.data.sampling import cpu_generator

SIZE = 32
MAX_SHIFT = 2
CENTER = 128.0
SCALE = 40.0
"""uint8 value = CENTER + SCALE * (template + noise * N(0, 1)) / sqrt(1 + noise^2), templates
of unit RMS: the pixel std stays SCALE whatever the noise, so values rarely clip (3.2 sigma)
and the normalization constants below stay exact."""


def synthetic_std(noise: float) -> tuple[float, float, float]:
    """Per-channel std of the images in [0, 1] units (independent of ``noise`` by design)."""
    s = SCALE / 255.0
    return (s, s, s)


SYNTHETIC_MEAN = (CENTER / 255.0,) * 3


def class_templates(num_classes: int) -> Tensor:
    """Float [num_classes, 3, 32, 32], zero-mean, unit-RMS, left-right symmetric."""
    g = cpu_generator("synthetic_templates", num_classes)
    low = torch.randn(num_classes, 3, 4, 4, generator=g)
    t = F.interpolate(low, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    t = 0.5 * (t + t.flip(-1))
    t = t - t.mean(dim=(1, 2, 3), keepdim=True)
    return t / t.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)


def _shift(images: Tensor, shifts: Tensor) -> Tensor:
    """Translate each image by (dy, dx) with edge replication, vectorized via gather."""
    b, c, h, w = images.shape
    rows = (torch.arange(h) + shifts[:, :1]).clamp(0, h - 1)  # [b, h]
    cols = (torch.arange(w) + shifts[:, 1:]).clamp(0, w - 1)  # [b, w]
    flat = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return images.reshape(b, c, -1).gather(2, flat).view(b, c, h, w)


def make_split(templates: Tensor, size: int, noise: float, split: str) -> tuple[Tensor, Tensor]:
    """``size`` samples (uint8 [size, 3, 32, 32], int64 labels), classes balanced and shuffled."""
    num_classes = templates.shape[0]
    g = cpu_generator("synthetic_samples", num_classes, size, float(noise), split)
    labels = (torch.arange(size) % num_classes)[torch.randperm(size, generator=g)]
    shifts = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (size, 2), generator=g)
    x = _shift(templates[labels], shifts)
    x.add_(torch.randn(x.shape, generator=g), alpha=noise)
    x = x.mul_(SCALE / math.sqrt(1.0 + noise * noise)).add_(CENTER).round_().clamp_(0, 255).to(torch.uint8)
    return x, labels


def make_synthetic(num_classes: int, train_size: int, test_size: int, noise: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train_x, train_y, test_x, test_y) of the synthetic task."""
    templates = class_templates(num_classes)
    train_x, train_y = make_split(templates, train_size, noise, "train")
    test_x, test_y = make_split(templates, test_size, noise, "test")
    return train_x, train_y, test_x, test_y
