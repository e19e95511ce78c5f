"""Randomness inside the forward, keyed by sample instead of by rank.

Data-parallel training is the same training on any number of workers K only if nothing a
sample sees depends on which worker computes it. The data side (which images form global
batch t, their augmentation) is keyed by (seed, epoch, step, sample) already
(:mod:`dreg_dist.data.sampling`). This module does the same for random ops *inside* the
forward:

* :class:`ForwardKeys` knows, for the current training forward, the optimizer step and the
  index in the global batch of the forward's first sample. The trainer registers each
  step's micro-batch inputs with it (:meth:`ForwardKeys.begin_step`); a forward pre-hook on
  the model (:meth:`ForwardKeys.attach`) recognises the input (or a slice of it along the
  batch dimension, as methods that cut micro-batches further take) by its storage.
* The dropout modules (``nn.Dropout``, ``Dropout1d/2d/3d``) and torchvision's
  ``StochasticDepth`` are swapped, once at start-up, for subclasses that draw their masks
  from a counter-based hash of (seed, step, module name, call index in the forward, global
  sample index, element index) (:func:`convert_keyed_random`). Sample g's mask therefore
  depends on nothing else: not on K, the accumulation steps or the micro-batch size, nor on
  the device (the hash is integer arithmetic). A method that runs several forwards of the
  same micro-batch in one step (two-pass methods) gets the same masks in each pass; a
  module called twice in one forward (a shared module in both DReg-style paths) gets a
  different mask per call. The modules keep their class's state_dict (they have none of
  their own) and act as the originals in eval mode, so exports are unchanged.
* Random ops this module cannot key (functional ``F.dropout`` in a model's forward,
  attention dropout inside ``nn.MultiheadAttention``, ``AlphaDropout``, ``RReLU``, ...)
  draw from torch's default generators (CPU, and the worker's CUDA device), which the
  pre-hook reseeds before every registered training forward from (seed, step, index of the
  forward's first sample). They thus differ
  between ranks and micro-batches, repeat exactly on resume, and are the same on any K
  *as long as each worker's micro-batch size is the same* (``train.micro_batch_size``).

A training forward of a tensor the trainer did not register (a method-made input, a probe)
has no key: keyed modules then behave exactly like the originals (global generator), and
nothing is reseeded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torchvision.ops import StochasticDepth

_M32 = 0xFFFFFFFF


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts``, the same in every process (a real hash, not ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _mul32(x: Tensor, c: int) -> Tensor:
    """``x * c mod 2**32`` for int64 tensors holding values in [0, 2**32), without overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer finalizer (lowbias32) on int64 tensors with values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def keyed_bits(key: int, samples: Tensor, features: int) -> Tensor:
    """Uniform 32-bit words, shape [len(samples), features], that depend only on (key, sample, j).

    ``key`` is a 63-bit stream key, ``samples`` int64 global sample indices (>= 0); word
    (i, j) is a hash of (key, samples[i], j), so row i is the same whichever rows it is
    computed with, on any device.
    """
    k1, k2 = key & _M32, (key >> 32) & _M32
    a = _mix32(_mix32((samples & _M32) ^ k1) ^ k2)
    b = _mix32(a ^ k1 ^ 0x9E3779B9)
    j = torch.arange(features, device=samples.device, dtype=torch.int64)
    return _mix32(_mix32(j.unsqueeze(0) ^ a.unsqueeze(1)) ^ b.unsqueeze(1))


def keep_mask(key: int, samples: Tensor, features: int, p: float) -> Tensor:
    """Bool [len(samples), features]: True with probability ``1 - p`` (to 2**-32), keyed as
    :func:`keyed_bits`."""
    threshold = min(int(round(p * 2.0**32)), 1 << 32)
    return keyed_bits(key, samples, features) >= threshold


@dataclass(frozen=True)
class ForwardKey:
    """What a training forward is keyed by."""

    step: int
    """0-based optimizer step over the whole run."""
    start: int
    """Index in the step's global batch of the forward's first sample."""


@dataclass
class _Registered:
    tensor: Tensor
    """Held (the trainer holds the step's batch anyway) so that its memory is not reused while registered."""
    storage: int
    offset: int
    stride: int
    size: int
    dtype: torch.dtype
    tail: tuple[int, ...]
    start: int


class ForwardKeys:
    """The key of the current training forward, for keyed random ops and group statistics.

    One per trainer; keyed modules hold a reference to it (a deep copy of a model shares it).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.step: Optional[int] = None
        self.current: Optional[ForwardKey] = None
        """Key of the forward in progress; None outside a registered training forward."""
        self.forward_id = 0
        """Counts training forwards of the root module (calls are numbered per forward)."""
        self._registered: list[_Registered] = []
        self._calls: dict[str, int] = {}
        self._on_step: list[Callable[[], None]] = []
        self.unkeyed_forwards = 0
        """Training forwards whose input was not a registered micro-batch (no key)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> "ForwardKeys":
        return self  # a process-wide context, not model state

    # -------------------------------------------------------------- registration
    def begin_step(self, step: int, micro_batches: Sequence[tuple[Tensor, int]]) -> None:
        """Register step ``step``'s inputs: (x, index in the global batch of x's first sample).

        Drops the previous step's registrations and tells listeners (pending group
        statistics of a step that was never applied are discarded).
        """
        self.step = int(step)
        self._registered = [
            _Registered(x, x.untyped_storage().data_ptr(), x.storage_offset(),
                        x.stride(0) if x.dim() else 0, int(x.shape[0]) if x.dim() else 0, x.dtype, tuple(x.shape[1:]),
                        int(start))
            for x, start in micro_batches
        ]
        for callback in self._on_step:
            callback()

    def end_step(self) -> None:
        """Forget the step's inputs (after the optimizer step)."""
        self._registered = []

    def on_begin_step(self, callback: Callable[[], None]) -> None:
        self._on_step.append(callback)

    def lookup(self, x: Tensor) -> Optional[int]:
        """Global index of ``x``'s first sample if ``x`` is a registered input or a slice of one
        along the batch dimension; else None."""
        if not self._registered or x.dim() == 0 or x.shape[0] == 0:
            return None
        try:
            storage = x.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # tensors without a plain storage
            return None
        for reg in self._registered:
            if reg.storage != storage or reg.dtype != x.dtype or reg.tail != tuple(x.shape[1:]):
                continue
            if x.shape[0] > 1 and x.stride(0) != reg.stride:
                continue  # not a slice along the batch dimension
            delta = x.storage_offset() - reg.offset
            if reg.stride == 0 or delta % reg.stride:
                if delta:
                    continue
                index = 0
            else:
                index = delta // reg.stride
            if 0 <= index and index + x.shape[0] <= reg.size:
                return reg.start + index
        return None

    # -------------------------------------------------------------- forward side
    def attach(self, root: nn.Module) -> RemovableHandle:
        """Key every forward of ``root`` (the unwrapped model, called by DDP and by methods)."""
        return root.register_forward_pre_hook(self._pre_forward)

    @torch.compiler.disable
    def _pre_forward(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._calls = {}
        if not module.training:
            self.current = None
            return
        self.forward_id += 1
        x = args[0] if args and isinstance(args[0], Tensor) else None
        start = self.lookup(x) if x is not None else None
        if start is None or self.step is None:
            self.current = None
            self.unkeyed_forwards += 1
            return
        self.current = ForwardKey(self.step, start)
        seed = stable_seed(self.seed, "forward-rng", self.step, start)
        assert x is not None
        # The generators this forward can draw from (torch.manual_seed would visit every backend: ~100 us).
        torch.default_generator.manual_seed(seed)
        if x.device.type == "cuda":
            torch.cuda.manual_seed(seed)  # the current device, the worker's own
        elif x.device.type != "cpu":
            torch.manual_seed(seed)

    def call_index(self, name: str) -> int:
        """How many times module ``name`` ran before in the current forward (0 the first time)."""
        index = self._calls.get(name, 0)
        self._calls[name] = index + 1
        return index

    def stream_key(self, name: str, call: int) -> int:
        """The hash key of module ``name``'s ``call``-th call in the current forward."""
        assert self.current is not None
        return stable_seed(self.seed, "keyed-random", self.current.step, name, call)

    @torch.compiler.disable
    def masks(self, name: str, n: int, features: int, p: float, device: torch.device,
              per_sample: bool = True) -> Optional[Tensor]:
        """Keep-mask [n, features] for the current forward's samples, or None without a key.

        ``per_sample=False`` gives one row ([1, features]) that depends on the step only.
        """
        if self.current is None:
            return None
        key = self.stream_key(name, self.call_index(name))
        if per_sample:
            samples = torch.arange(self.current.start, self.current.start + n, device=device, dtype=torch.int64)
        else:
            samples = torch.zeros(1, device=device, dtype=torch.int64)
        return keep_mask(key, samples, features, p)


# ------------------------------------------------------------------ keyed modules
class _Keyed:
    """Attributes set by :func:`convert_keyed_random`."""

    _forward_keys: ForwardKeys
    _keyed_name: str


def _scaled(x: Tensor, keep: Tensor, p: float, inplace: bool) -> Tensor:
    scale = keep.to(x.dtype) * (0.0 if p >= 1 else 1.0 / (1.0 - p))
    return x.mul_(scale) if inplace else x * scale


class KeyedDropout(_Keyed, nn.Dropout):
    """``nn.Dropout`` whose mask for sample g depends only on (seed, step, module, call, g)."""

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or self.p == 0 or input.dim() == 0:
            return super().forward(input)
        n = int(input.shape[0])
        keep = self._forward_keys.masks(self._keyed_name, n, input[0].numel() if n else 0, self.p, input.device)
        if keep is None:
            return super().forward(input)
        return _scaled(input, keep.view(input.shape), self.p, self.inplace)


class _KeyedFeatureDropout(_Keyed):
    """Channel dropout (one decision per sample and channel) for batched inputs."""

    batched_dim: int
    p: float
    inplace: bool
    training: bool

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or self.p == 0 or input.dim() != self.batched_dim:
            return super().forward(input)  # type: ignore[misc]
        n, c = int(input.shape[0]), int(input.shape[1])
        keep = self._forward_keys.masks(self._keyed_name, n, c, self.p, input.device)
        if keep is None:
            return super().forward(input)  # type: ignore[misc]
        return _scaled(input, keep.view(n, c, *([1] * (input.dim() - 2))), self.p, self.inplace)


class KeyedDropout1d(_KeyedFeatureDropout, nn.Dropout1d):
    batched_dim = 3


class KeyedDropout2d(_KeyedFeatureDropout, nn.Dropout2d):
    batched_dim = 4


class KeyedDropout3d(_KeyedFeatureDropout, nn.Dropout3d):
    batched_dim = 5


class KeyedStochasticDepth(_Keyed, StochasticDepth):
    """torchvision's StochasticDepth: ``row`` mode keyed per sample; ``batch`` mode (one
    decision for the whole batch) keyed by the step alone, so every micro-batch of a step
    makes the decision the whole global batch would."""

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return input
        per_sample = self.mode == "row"
        n = int(input.shape[0]) if per_sample else 1
        keep = self._forward_keys.masks(self._keyed_name, n, 1, self.p, input.device, per_sample=per_sample)
        if keep is None:
            return super().forward(input)
        shape = [n] + [1] * (input.dim() - 1) if per_sample else [1] * input.dim()
        return _scaled(input, keep.view(shape), self.p, inplace=False)


KEYED_CLASSES: dict[type, type] = {
    nn.Dropout: KeyedDropout,
    nn.Dropout1d: KeyedDropout1d,
    nn.Dropout2d: KeyedDropout2d,
    nn.Dropout3d: KeyedDropout3d,
    StochasticDepth: KeyedStochasticDepth,
}
"""Exact class -> keyed subclass (subclasses of these are left alone: their forward may differ)."""


def convert_keyed_random(model: nn.Module, keys: ForwardKeys) -> list[str]:
    """Swap, in place, every module of a class in :data:`KEYED_CLASSES` for its keyed form.

    The class is swapped on the existing object (parameters, hooks and module paths stay),
    and the keyed forms add no state, so ``state_dict`` keys are unchanged. Returns the
    names of the converted modules.
    """
    converted = []
    for name, module in model.named_modules():
        keyed = KEYED_CLASSES.get(type(module))
        if keyed is None:
            continue
        module.__class__ = keyed
        module._forward_keys = keys  # type: ignore[assignment]
        module._keyed_name = name  # type: ignore[assignment]
        converted.append(name)
    return converted


__all__ = [
    "ForwardKey",
    "ForwardKeys",
    "KEYED_CLASSES",
    "KeyedDropout",
    "KeyedDropout1d",
    "KeyedDropout2d",
    "KeyedDropout3d",
    "KeyedStochasticDepth",
    "convert_keyed_random",
    "keep_mask",
    "keyed_bits",
    "stable_seed",
]
