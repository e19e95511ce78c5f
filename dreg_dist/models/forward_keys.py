"""Randomness inside the forward, keyed by sample instead of by rank.

Data-parallel training is the same training on any number of workers K only if nothing a
sample sees depends on which worker computes it. The data side (which images form global
batch t, their augmentation) is keyed by (seed, epoch, step, sample) already
(:mod:`dreg_dist.data.sampling`). This module does the same for random ops *inside* the
forward:

* :class:`ForwardKeys` knows the current optimizer step (the trainer sets it,
  :meth:`ForwardKeys.begin_step`); which samples a training forward computes is data the
  micro-batch carries (:attr:`dreg_dist.models.batch.Batch.index`, each sample's position in
  the step's global batch, from the sampler), handed to the forward by the :func:`keyed`
  block the method runs the model in. A forward pre-hook on the model
  (:meth:`ForwardKeys.attach`) reads it, so the tensor the model is called with may be any
  copy of the batch's input (``x.float()``, another memory format): keys belong to samples,
  not to storage.
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
  pre-hook reseeds before every keyed training forward from (seed, step, index of the
  forward's first sample). They thus differ
  between ranks and micro-batches, repeat exactly on resume, and are the same on any K
  *as long as each worker's micro-batch size is the same* (``train.micro_batch_size``).

A training forward outside a :func:`keyed` block of a batch with positions (a probe, a
hand-made pair) has no key: keyed modules then behave exactly like the originals (global
generator), and nothing is reseeded.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torchvision.ops import StochasticDepth

from dreg_dist.models.batch import Batch

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
    """Position in the step's global batch of the forward's first sample."""
    index: Optional[Tensor] = None
    """Every sample's position (int64 [n], CPU); None when they are start, start + 1, ..."""


_SAMPLES: ContextVar[Optional[Tensor]] = ContextVar("dreg_dist_forward_samples", default=None)
"""Positions of the samples that forwards in the current :func:`keyed` block compute."""


@contextmanager
def keyed(batch: Union[Batch, tuple[Tensor, Tensor]]) -> Iterator[None]:
    """Training forwards inside this block compute ``batch``'s samples and are keyed by their
    positions (:attr:`~dreg_dist.models.batch.Batch.index`), whatever tensor is passed to the
    model: a copy, a cast or another memory format of ``batch.x`` keeps the keys. A batch
    without positions (a plain pair) gives unkeyed forwards."""
    index = batch.index if isinstance(batch, Batch) else None
    token = _SAMPLES.set(index)
    try:
        yield
    finally:
        _SAMPLES.reset(token)


class ForwardKeys:
    """The key of the current training forward, for keyed random ops and group statistics.

    One per trainer; keyed modules hold a reference to it (a deep copy of a model shares it).
    The trainer sets the step (:meth:`begin_step`); which samples a forward computes comes
    from the :func:`keyed` block around it.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.step: Optional[int] = None
        self.current: Optional[ForwardKey] = None
        """Key of the forward in progress; None outside a keyed training forward."""
        self.forward_id = 0
        """Counts training forwards of the root module (calls are numbered per forward)."""
        self._calls: dict[str, int] = {}
        self._on_step: list[Callable[[], None]] = []
        self.unkeyed_forwards = 0
        """Training forwards outside a :func:`keyed` block of a batch with positions (no key)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> "ForwardKeys":
        return self  # a process-wide context, not model state

    # -------------------------------------------------------------- the step
    def begin_step(self, step: int) -> None:
        """Forwards from now on belong to optimizer step ``step``; tells listeners (pending group
        statistics of a step that was never applied are discarded)."""
        self.step = int(step)
        for callback in self._on_step:
            callback()

    def end_step(self) -> None:
        """The step's forwards are done (after the optimizer step): later forwards are unkeyed."""
        self.step = None

    def on_begin_step(self, callback: Callable[[], None]) -> None:
        self._on_step.append(callback)

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
        index = _SAMPLES.get()
        if index is None or self.step is None or x is None or x.dim() == 0:
            self.current = None
            self.unkeyed_forwards += 1
            return
        n = int(x.shape[0])
        if n != int(index.shape[0]):
            raise ValueError(f"a training forward of {n} samples inside keyed() of a batch of {int(index.shape[0])}: "
                             "key the slice the model computes (keyed(batch.narrow(start, stop)))")
        if n == 0:
            self.current = None
            return
        start = int(index[0])
        consecutive = bool((index == torch.arange(start, start + n, dtype=torch.int64)).all())
        self.current = ForwardKey(self.step, start, None if consecutive else index)
        seed = stable_seed(self.seed, "forward-rng", self.step, start)
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
        index = self.current.index
        if per_sample and index is not None and n == int(index.shape[0]):
            samples = index.to(device)
        elif per_sample:  # made on the device: no copy in the common case
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
    "keyed",
    "keyed_bits",
    "stable_seed",
]
