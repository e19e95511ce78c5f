"""Pad-4 random crop + horizontal flip for in-memory uint8 images, batched on any device.

Two design points:

* Parameters belong to samples, not to batches. :func:`crop_flip_params` draws the crop
  offset and flip of *every* sample of the pool once per epoch from a generator seeded by
  (seed, epoch); a batch then looks its samples' parameters up by sample id. How a sample
  is augmented is thus independent of which worker, micro-batch or position it lands in.
* No Python loop over samples: the whole batch is zero-padded once and every output pixel
  is fetched with one ``gather`` on flattened spatial indices, which works unchanged on
  CPU and CUDA (and keeps the data uint8 until the final normalization).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dreg_dist.data.sampling import cpu_generator

PAD = 4
"""Zero padding of the random crop (the standard CIFAR recipe)."""


def crop_flip_params(n: int, seed: int, epoch: int, pad: int = PAD) -> tuple[Tensor, Tensor]:
    """Crop offsets [n, 2] (row, col in 0..2*pad) and flip flags [n] for samples 0..n-1 of
    ``epoch``, on the CPU. Indexed by sample id, they are the same however batches are cut."""
    g = cpu_generator(seed, "crop_flip", epoch, pad)
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
    flips = torch.randint(0, 2, (n,), generator=g).bool()
    return offsets, flips


def crop_flip(x: Tensor, offsets: Tensor, flips: Tensor, pad: int = PAD) -> Tensor:
    """Crop each image of ``x`` [b, C, H, W] at ``offsets`` in its ``pad``-zero-padded
    version, then mirror it horizontally where ``flips``. Output has x's shape and dtype.

    offset (pad, pad) without flip is the identity.
    """
    b, c, h, w = x.shape
    if b == 0:
        return x
    wp = w + 2 * pad
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = offsets.to(x.device)
    flips = flips.to(x.device)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = offsets[:, :1] + ar_h  # [b, h]
    cols = offsets[:, 1:] + torch.where(flips[:, None], (w - 1) - ar_w, ar_w)  # [b, w]
    flat = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, flat).view(b, c, h, w)


class Normalizer:
    """uint8 [0, 255] -> float32 (x/255 - mean) / std, with the constants cached per device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __call__(self, x: Tensor) -> Tensor:
        if x.device not in self._cache:
            shift = torch.tensor(self.mean, device=x.device).mul(255.0).view(1, -1, 1, 1)
            scale = torch.tensor(self.std, device=x.device).mul(255.0).reciprocal().view(1, -1, 1, 1)
            self._cache[x.device] = (shift, scale)
        shift, scale = self._cache[x.device]
        return x.to(torch.float32).sub_(shift).mul_(scale)
