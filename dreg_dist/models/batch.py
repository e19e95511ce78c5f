"""A training micro-batch and where its samples sit in the step's global batch.

"Same training on any K" needs every sample's position in its step's global batch: random
ops in the forward are keyed by it (:mod:`dreg_dist.models.forward_keys`), ghost batch norm
and the per-chunk methods (gradnorm, fisher, SAM, extragradient) identify their work by it.
That position is data the micro-batch carries (:attr:`Batch.index`), from the sampler to the
forward, so it survives whatever a method does to the input tensor (a copy, a cast, another
memory format) and a slice of the batch keeps its samples' positions
(:meth:`Batch.narrow`).

:func:`rank_positions` is the one statement of the layout (rank-major, then accumulation
step, then sample); the sampler lays the global batch out with it and code that is handed
micro-batches without positions derives them with it (:func:`with_positions`).

This module sits with the models (the lowest layer) because the forward and the methods,
which may not import the data layer, read it.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor


def rank_positions(rank: int, sizes: Sequence[int]) -> list[Tensor]:
    """Positions in the step's global batch of rank ``rank``'s micro-batches of ``sizes`` samples.

    Every rank holds the same number of samples, as one contiguous block, in rank order, and
    its micro-batches cut that block in order: sample j of micro-batch i of rank r of K, with
    A micro-batches of m samples each, is at (r * A + i) * m + j. Concatenating all ranks'
    micro-batches in rank order therefore gives the single-worker batch in its own order.
    Returns one int64 CPU tensor per micro-batch.
    """
    if rank < 0 or any(int(s) < 0 for s in sizes):
        raise ValueError(f"rank {rank} and micro-batch sizes {list(sizes)} must be >= 0")
    start = rank * sum(int(s) for s in sizes)
    out = []
    for size in sizes:
        out.append(torch.arange(start, start + int(size), dtype=torch.int64))
        start += int(size)
    return out


def _index_tensor(index: Union[Tensor, Sequence[int]], n: int) -> Tensor:
    t = torch.as_tensor(index, dtype=torch.int64)
    if t.device.type != "cpu":
        t = t.cpu()  # read on the host (seeds, keys); a copy once per micro-batch, not per forward
    if t.dim() != 1 or int(t.shape[0]) != n:
        raise ValueError(f"a micro-batch of {n} samples needs {n} sample positions, got shape {tuple(t.shape)}")
    return t


class Batch(tuple):
    """A micro-batch: the pair ``(x, y)`` (it unpacks and indexes as one) and ``index``.

    ``index`` holds, for each of the ``n`` samples, its position in the step's global batch
    (int64 [n], on the CPU); None for a batch whose positions are unknown (evaluation, a
    hand-made batch). Derived batches keep it: :meth:`with_x` (another input tensor for the
    same samples, such as ``x.float()``) and :meth:`narrow` (a slice of the samples).
    """

    index: Optional[Tensor]

    def __new__(cls, x: Tensor, y: Tensor, index: Union[Tensor, Sequence[int], None] = None) -> "Batch":
        self = super().__new__(cls, (x, y))
        self.index = None if index is None else _index_tensor(index, int(y.shape[0]))
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:  # type: ignore[override]
        return (self[0], self[1], self.index)

    @property
    def x(self) -> Tensor:
        return self[0]

    @property
    def y(self) -> Tensor:
        return self[1]

    @property
    def size(self) -> int:
        """Number of samples."""
        return int(self[1].shape[0])

    def with_x(self, x: Tensor) -> "Batch":
        """The same samples (targets, positions) with input ``x``."""
        if x.dim() == 0 or int(x.shape[0]) != self.size:
            raise ValueError(f"with_x: an input for {self.size} samples must have them along dim 0, got {tuple(x.shape)}")
        return Batch(x, self[1], self.index)

    def narrow(self, start: int, stop: int) -> "Batch":
        """Samples [start, stop) with their positions."""
        index = None if self.index is None else self.index[start:stop]
        return Batch(self[0][start:stop], self[1][start:stop], index)

    def __repr__(self) -> str:
        if self.index is None:
            where = "no positions"
        else:
            shown = self.index.tolist()
            where = f"positions {shown[:4]}" + ("..." if len(shown) > 4 else "")
        return f"Batch(x={tuple(self[0].shape)}, y={tuple(self[1].shape)}, {where})"


def as_batch(item: Union[Batch, tuple[Tensor, Tensor]]) -> Batch:
    """``item`` as a :class:`Batch` (a plain ``(x, y)`` pair gets no positions)."""
    if isinstance(item, Batch):
        return item
    x, y = item
    return Batch(x, y)


def with_positions(batches: Sequence[Union[Batch, tuple[Tensor, Tensor]]], rank: int) -> list[Batch]:
    """``batches`` (one rank's micro-batches of a step) with positions; those that lack them get
    the layout's (:func:`rank_positions`), as the sampler would have given them."""
    out = [as_batch(b) for b in batches]
    if all(b.index is not None for b in out):
        return out
    derived = rank_positions(rank, [b.size for b in out])
    return [b if b.index is not None else Batch(b.x, b.y, p) for b, p in zip(out, derived)]


__all__ = ["Batch", "as_batch", "rank_positions", "with_positions"]
