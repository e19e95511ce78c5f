"""The object the trainer talks to: sizes, normalization, and batch iterators.

:class:`DataModule` owns the sampling contract shared by every dataset (global batch
independent of the number of workers, exact eval sharding; see
:mod:`dreg_dist.data.sampling`); subclasses only turn sample ids into tensors.
:class:`InMemoryDataModule` serves CIFAR and synthetic data from one uint8 tensor per
split, optionally resident on the accelerator so that gathering, augmentation and
normalization never touch the host during training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor

from dreg_dist.data import sampling
from dreg_dist.data.augment import Normalizer, crop_flip, crop_flip_params
from dreg_dist.data.errors import DataError
from dreg_dist.models.batch import Batch


class DataModule(ABC):
    """Dataset-independent part: sizes, metadata and the sampling contract.

    Attributes: ``num_classes``, ``classes`` (names), ``train_size``/``val_size``/
    ``test_size``, ``mean``/``std`` (the input normalization, to be recorded with an
    exported model) and ``input_shape`` (3, H, W) of what the model sees.
    """

    def __init__(
        self,
        *,
        seed: int,
        device: torch.device,
        classes: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        input_shape: tuple[int, int, int],
        train_ids: Tensor,
        val_ids: Tensor,
        test_size: int,
    ) -> None:
        self.seed = int(seed)
        self.device = torch.device(device)
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.input_shape = input_shape
        self._train_ids = train_ids
        self._val_ids = val_ids
        self.train_size = int(train_ids.numel())
        self.val_size = int(val_ids.numel())
        self.test_size = int(test_size)
        self._normalize = Normalizer(self.mean, self.std)

    def steps_per_epoch(self, global_batch_size: int) -> int:
        """Full global batches per epoch (the partial last one is dropped)."""
        return sampling.steps_per_epoch(self.train_size, global_batch_size)

    def train_batches(
        self,
        epoch: int,
        global_batch_size: int,
        rank: int,
        world_size: int,
        accumulation_steps: int = 1,
        start_step: int = 0,
    ) -> Iterator[list[Batch]]:
        """For each step t in [start_step, steps_per_epoch): this rank's
        ``accumulation_steps`` micro-batches (x float32 normalized NCHW, y int64, on the
        device; ``index`` each sample's position in global batch t) of global batch t.
        Concatenated over ranks in rank order they equal the world-size-1 batch. Arguments
        are checked here, before the first step is asked for.
        """
        ids = sampling.rank_train_ids(
            self._train_ids, self.seed, epoch, global_batch_size, rank, world_size, accumulation_steps, start_step
        )
        positions = sampling.micro_batch_positions(rank, accumulation_steps, int(ids.shape[-1]))
        return self._train_iter(epoch, ids, positions)

    def eval_batches(self, split: str, rank: int, world_size: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Rank's exact share of ``split`` ('val' | 'test'), unaugmented, in batches of at most
        ``batch_size``. Shares may differ in size or be empty, so callers must not run a
        collective per batch; reduce the summed metrics once afterwards."""
        if split == "val":
            ids = self._val_ids
        elif split == "test":
            ids = torch.arange(self.test_size)
        else:
            raise DataError(f"unknown eval split {split!r}: use 'val' or 'test'")
        return self._eval_iter(split, sampling.eval_chunks(ids, rank, world_size, batch_size))

    # Subclass hooks -------------------------------------------------------------------
    @abstractmethod
    def _train_iter(self, epoch: int, ids: Tensor, positions: Tensor) -> Iterator[list[Batch]]:
        """Yield one list of micro-batches per row of ``ids`` [steps, accumulation, micro]; sample
        ``ids[t, i, j]`` is at position ``positions[i, j]`` of its global batch."""

    @abstractmethod
    def _eval_iter(self, split: str, chunks: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield one unaugmented batch per id chunk ('val' ids index the train pool)."""


class InMemoryDataModule(DataModule):
    """CIFAR / synthetic: uint8 images held in memory, augmented batched on their device.

    ``train_x``/``train_y`` are the whole training pool (validation ids index into it);
    ``storage`` is where they live. Ids and augmentation parameters are moved there once
    per epoch; a micro-batch is then an index_select, a crop/flip gather and a normalize,
    and only the selected uint8 images cross to ``device`` when storage is the host.
    """

    def __init__(
        self,
        *,
        train_x: Tensor,
        train_y: Tensor,
        test_x: Tensor,
        test_y: Tensor,
        val_size: int,
        augment: bool,
        storage: torch.device,
        seed: int,
        device: torch.device,
        classes: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        train_ids, val_ids = sampling.split_train_val(int(train_x.shape[0]), val_size, seed)
        super().__init__(
            seed=seed,
            device=device,
            classes=classes,
            mean=mean,
            std=std,
            input_shape=tuple(train_x.shape[1:]),  # type: ignore[arg-type]
            train_ids=train_ids,
            val_ids=val_ids,
            test_size=int(test_x.shape[0]),
        )
        self.storage = torch.device(storage)
        pin = self.storage.type == "cpu" and self.device.type == "cuda"
        self._pin = pin
        self._train_x = train_x.to(self.storage)
        self._train_y = train_y.to(self.storage)
        self._test_x = test_x.to(self.storage)
        self._test_y = test_y.to(self.storage)
        self.augment = augment
        self._aug_epoch: Optional[int] = None
        self._aug: Optional[tuple[Tensor, Tensor]] = None

    def _augment_params(self, epoch: int) -> tuple[Tensor, Tensor]:
        if self._aug_epoch != epoch or self._aug is None:
            offsets, flips = crop_flip_params(int(self._train_x.shape[0]), self.seed, epoch)
            self._aug = (offsets.to(self.storage), flips.to(self.storage))
            self._aug_epoch = epoch
        return self._aug

    def _to_device(self, t: Tensor) -> Tensor:
        if t.device == self.device:
            return t
        if self._pin:
            t = t.pin_memory()
        return t.to(self.device, non_blocking=self._pin)

    def _train_iter(self, epoch: int, ids: Tensor, positions: Tensor) -> Iterator[list[Batch]]:
        ids = ids.to(self.storage)
        aug = self._augment_params(epoch) if self.augment else None
        for step in ids:
            micro_batches = []
            for micro, index in zip(step, positions):
                x = self._to_device(self._train_x.index_select(0, micro))
                y = self._to_device(self._train_y.index_select(0, micro))
                if aug is not None:
                    offsets = self._to_device(aug[0].index_select(0, micro))
                    flips = self._to_device(aug[1].index_select(0, micro))
                    x = crop_flip(x, offsets, flips)
                micro_batches.append(Batch(self._normalize(x), y, index))
            yield micro_batches

    def _eval_iter(self, split: str, chunks: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        xs, ys = (self._train_x, self._train_y) if split == "val" else (self._test_x, self._test_y)
        for ids in chunks:
            ids = ids.to(self.storage)
            x = self._to_device(xs.index_select(0, ids))
            yield self._normalize(x), self._to_device(ys.index_select(0, ids))
