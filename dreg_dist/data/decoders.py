"""JPEG decoders of the shard path: bytes + crop -> uint8 [3, S, S].

* ``pil``: full decode with PIL, then the torchvision PIL transforms. Bit-exact with the
  ``imagefolder`` path on the same JPEG bytes (same libjpeg-turbo decode, same resize).
* ``pil_draft``: PIL decoding at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling) whenever the
  crop leaves at least the output's pixels, then one PIL crop-resize. Pays off for images
  much larger than the crop; otherwise it is ``pil`` with a cheaper resize call.
* ``torchvision``: libjpeg-turbo through ``torchvision.io.decode_jpeg`` (same pixels as
  PIL's decode), crop and resize on the uint8 tensor (torch's vectorized uint8 kernel).
  Within 1 level of ``pil`` (rounding in the resize).
* ``cuda``: nvjpeg batched decode of the whole micro-batch on the GPU
  (``decode_jpeg(list, device="cuda")``), crop, resize and flip on the GPU; DataLoader
  workers then only read bytes. Different pixels from the CPU decoders (nvjpeg's IDCT
  and upsampling); the same crops and flips.

``auto`` is ``cuda`` on a CUDA device where nvjpeg works (probed once) and ``torchvision``
otherwise, the fastest CPU decoder measured in ``bench/shards.py``.

Decoders raise :class:`BadImage` for data that does not decode; callers turn it into an
error or a counted skip. torchvision's decoder is strict (a corrupt entropy segment is an
error), PIL only warns on some corruptions, so the converter verifies with torchvision.
"""

from __future__ import annotations

import io
import warnings
from typing import Optional, Sequence

import torch
from PIL import Image
from torch import Tensor

from dreg_dist.data import crops
from dreg_dist.data.crops import Crop
from dreg_dist.data.errors import DataError

DECODERS = ("auto", "pil", "pil_draft", "torchvision", "cuda")
CPU_DECODERS = ("pil", "pil_draft", "torchvision")
EOI = b"\xff\xd9"


class BadImage(Exception):
    """Bytes that are not a decodable JPEG; the message says why in a few words."""


def _tv_decode(data: Tensor | list[Tensor], device: str | torch.device = "cpu") -> Tensor | list[Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    # torchvision 0.29 deprecates its image codecs in favour of TorchCodec (not installed
    # here) and warns on every call; the decoder itself is unchanged.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def check_complete(data: bytes) -> None:
    """Cheap test for truncation: shards store every JPEG ending at its EOI marker."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise BadImage("not a JPEG (no start-of-image marker)")
    if data[-2:] != EOI:
        raise BadImage("truncated JPEG (no end-of-image marker)")


def decode_tensor(data: bytes) -> Tensor:
    """Strict CPU decode to uint8 [3, H, W] (RGB; grayscale is replicated)."""
    check_complete(data)
    try:
        return _tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8))  # type: ignore[return-value]
    except RuntimeError as exc:
        raise BadImage(str(exc).splitlines()[0].rsplit(", ", 1)[-1]) from None


def decode_pil(data: bytes) -> Image.Image:
    check_complete(data)
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImage(str(exc)) from None


class CpuDecoder:
    """One of the CPU decoders; picklable, so DataLoader workers can run it."""

    def __init__(self, name: str) -> None:
        if name not in CPU_DECODERS:
            raise DataError(f"data.decoder={name!r} is not a CPU decoder: use one of {', '.join(CPU_DECODERS)}")
        self.name = name

    def train(self, data: bytes, height: int, width: int, crop: Crop, size: int) -> Tensor:
        if self.name == "torchvision":
            return crops.tensor_train(decode_tensor(data), crop, size)
        if self.name == "pil":
            return crops.pil_train(decode_pil(data), crop, size)
        check_complete(data)
        try:
            return crops.draft_train(data, height, width, crop, size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise BadImage(str(exc)) from None

    def eval(self, data: bytes, height: int, width: int, size: int) -> Tensor:
        if self.name == "torchvision":
            return crops.tensor_eval(decode_tensor(data), size)
        if self.name == "pil":
            return crops.pil_eval(decode_pil(data), size)
        check_complete(data)
        try:
            return crops.draft_eval(data, height, width, size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise BadImage(str(exc)) from None


def cuda_decode(
    datas: Sequence[Tensor], crops_: Optional[Sequence[Crop]], size: int, device: torch.device
) -> tuple[Tensor, list[int]]:
    """Decode a micro-batch on the GPU with nvjpeg and crop/resize/flip it there.

    ``datas`` are CPU uint8 byte tensors; ``crops_`` the train crops (None: eval transform).
    Returns (uint8 [n_good, 3, size, size] on ``device``, positions that failed). nvjpeg's
    batched call fails as a whole on one bad image, so a failure is retried image by image
    to find it.  Not measured: no GPU was available when this was written.
    """
    try:
        images: list[Optional[Tensor]] = list(_tv_decode(list(datas), device))  # type: ignore[arg-type]
    except RuntimeError:
        images = []
        for data in datas:
            try:
                images.append(_tv_decode(data, device))  # type: ignore[arg-type]
            except RuntimeError:
                images.append(None)
    out, bad = [], []
    for i, img in enumerate(images):
        if img is None:
            bad.append(i)
            continue
        out.append(crops.tensor_train(img, crops_[i], size) if crops_ is not None else crops.tensor_eval(img, size))
    if not out:
        return torch.empty(0, 3, size, size, dtype=torch.uint8, device=device), bad
    return torch.stack(out), bad


def cuda_decode_problem(device: torch.device) -> Optional[str]:
    """Why nvjpeg decoding does not work on ``device`` (None when it does): a torchvision
    build without nvjpeg would otherwise report every image as bad."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, "JPEG")
    try:
        _tv_decode([torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8)], device)
    except (RuntimeError, ValueError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def resolve_decoder(name: str, device: torch.device) -> str:
    """The decoder ``data.decoder=name`` means on ``device``; refuses cuda where it cannot run.

    ``auto`` falls back to the CPU decoder when nvjpeg does not work on the GPU."""
    if name not in DECODERS:
        raise DataError(f"unknown data.decoder {name!r}: use one of {', '.join(DECODERS)}")
    if name in ("auto", "cuda") and device.type == "cuda":
        problem = cuda_decode_problem(device)
        if problem is None:
            return "cuda"
        if name == "cuda":
            raise DataError(f"data.decoder=cuda: torchvision cannot decode JPEG on {device} here ({problem}): "
                            "use data.decoder=auto or torchvision")
        return "torchvision"
    if name == "auto":
        return "torchvision"
    if name == "cuda":
        raise DataError(
            f"data.decoder=cuda decodes on the training GPU but the device is {device.type}: "
            "use data.decoder=auto (or a CPU decoder: pil, pil_draft, torchvision)"
        )
    return name
