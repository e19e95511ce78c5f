"""RandomResizedCrop + flip for decoded images, as per-sample parameters and their application.

The parameters of a sample are a function of (seed, epoch, sample index, image size) only:
:func:`train_crop` seeds a generator from their hash and draws exactly what torchvision's
``RandomResizedCrop`` followed by ``RandomHorizontalFlip`` would draw. Drawing them apart
from the pixels lets every image path (``imagefolder`` and ``shards`` with any decoder, on
CPU or CUDA) apply the *same* crop and flip to a sample, and lets a decoder that decodes
at reduced size (PIL draft) or on the GPU know the crop before it decodes.

Appliers: :func:`pil_train` / :func:`pil_eval` on PIL images (bit-exact with the
torchvision transforms the ``imagefolder`` path has always used), :func:`draft_train` /
:func:`draft_eval` for JPEG bytes decoded at 1/2, 1/4 or 1/8 scale where the output allows,
and :func:`tensor_train` / :func:`tensor_eval` on uint8 [3, H, W] tensors on any device.
"""

from __future__ import annotations

import io
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision import transforms
from torchvision.transforms import functional as TF
from torchvision.transforms.v2 import functional as TF2

from dreg_dist.data.sampling import derive_seed

AUG_STREAM = "imagefolder_aug"
"""Seed purpose of the per-sample augmentation. Named after the first path that used it;
renaming it would change the augmentation of every existing imagefolder run."""
SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)


class Crop(NamedTuple):
    """A crop box in source pixels (as torchvision's get_params returns it) and a flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def train_crop(seed: int, epoch: int, index: int, height: int, width: int) -> Crop:
    """The RandomResizedCrop box and flip of sample ``index`` (a ``height`` x ``width``
    image) in ``epoch``; the same values torchvision draws under the same seed."""
    return train_crops(seed, epoch, [index], [height], [width])[0]


def train_crops(seed: int, epoch: int, indices: Sequence[int], heights: Sequence[int], widths: Sequence[int]) -> list[Crop]:
    """:func:`train_crop` for several samples, saving and restoring the RNG state once.

    Only the CPU default generator is reseeded (and restored): ``torch.manual_seed`` would
    also reseed CUDA generators when this runs in a process that trains on CUDA.
    """
    out = []
    with torch.random.fork_rng(devices=[]):
        for index, height, width in zip(indices, heights, widths):
            torch.default_generator.manual_seed(derive_seed(seed, AUG_STREAM, epoch, index))
            # get_params reads only the shape: a stride-0 view stands in for the image.
            shape_only = torch.empty(1, 1, 1).expand(3, height, width)
            top, left, h, w = transforms.RandomResizedCrop.get_params(shape_only, list(SCALE), list(RATIO))
            out.append(Crop(top, left, h, w, bool(torch.rand(1) < 0.5)))
    return out


def eval_resize(image_size: int) -> int:
    """Shorter side before the center crop (the usual 256 -> 224 ratio)."""
    return int(image_size * 256 / 224)


def _resized_shape(height: int, width: int, short: int) -> tuple[int, int]:
    """(h, w) after scaling the shorter side to ``short``, rounded as torchvision does."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


# --------------------------------------------------------------------------- PIL
def pil_train(img: Image.Image, crop: Crop, size: int) -> Tensor:
    """Apply ``crop`` to a decoded RGB image; uint8 [3, size, size]."""
    out = TF.resized_crop(img, crop.top, crop.left, crop.height, crop.width, [size, size], antialias=True)
    if crop.flip:
        out = TF.hflip(out)
    return TF.pil_to_tensor(out)


def pil_eval(img: Image.Image, size: int) -> Tensor:
    """Resize the shorter side to ``eval_resize(size)`` and center-crop ``size``."""
    out = TF.center_crop(TF.resize(img, eval_resize(size), antialias=True), [size, size])
    return TF.pil_to_tensor(out)


def _reduction(src_h: float, src_w: float, out_h: int, out_w: int) -> int:
    """Largest JPEG DCT scale 1/s (s in 8, 4, 2, 1) that still leaves >= the output's pixels."""
    for s in (8, 4, 2):
        if src_h / s >= out_h and src_w / s >= out_w:
            return s
    return 1


def _open_draft(data: bytes, height: int, width: int, s: int) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    if s > 1:
        # PIL picks the largest scale whose image is at least the requested size; asking for
        # (W // s, H // s) makes that exactly s (W // (W // s) < 2s).
        img.draft("RGB", (max(1, width // s), max(1, height // s)))
    return img.convert("RGB")


def draft_train(data: bytes, height: int, width: int, crop: Crop, size: int) -> Tensor:
    """Decode JPEG ``data`` at the smallest DCT scale that keeps >= ``size`` pixels across
    the crop, then crop + resize in one PIL call with a sub-pixel box."""
    s = _reduction(crop.height, crop.width, size, size)
    img = _open_draft(data, height, width, s)
    box = (crop.left / s, crop.top / s, (crop.left + crop.width) / s, (crop.top + crop.height) / s)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if crop.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _pil_to_chw(out)


def draft_eval(data: bytes, height: int, width: int, size: int) -> Tensor:
    short = eval_resize(size)
    out_h, out_w = _resized_shape(height, width, short)
    img = _open_draft(data, height, width, _reduction(height, width, out_h, out_w))
    out = TF.center_crop(img.resize((out_w, out_h), Image.Resampling.BILINEAR), [size, size])
    return _pil_to_chw(out)


def _pil_to_chw(img: Image.Image) -> Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------- tensors
def _resize_uint8(x: Tensor, height: int, width: int) -> Tensor:
    """Antialiased bilinear resize of uint8 [1, 3, h, w] to [1, 3, height, width].

    On CPU, torch's uint8 kernel works on interleaved (channels-last) pixels, which is how
    decode_jpeg lays out its output: feeding it a channels-last input and keeping its
    channels-last output skips two repacks (about 40% of the resize time at 224 px). On
    other devices torchvision's resize casts to float and back as those kernels need.
    """
    if x.device.type != "cpu":
        return TF2.resize(x, [height, width], antialias=True)
    x = x.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def tensor_train(img: Tensor, crop: Crop, size: int) -> Tensor:
    """Apply ``crop`` to a uint8 [3, H, W] tensor on any device; uint8 [3, size, size]
    (channels-last strides on CPU)."""
    x = img[None, :, crop.top : crop.top + crop.height, crop.left : crop.left + crop.width]
    out = _resize_uint8(x, size, size)
    return (out.flip(-1) if crop.flip else out)[0]


def tensor_eval(img: Tensor, size: int) -> Tensor:
    height, width = _resized_shape(img.shape[-2], img.shape[-1], eval_resize(size))
    out = _resize_uint8(img[None], height, width)
    return TF2.center_crop(out, [size, size])[0]
