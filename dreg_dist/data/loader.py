"""DataLoader plumbing shared by the paths that decode image files (imagefolder, shards).

The sampling contract stays in :class:`~dreg_dist.data.module.DataModule`: this class
hands a ``DataLoader`` the list of this rank's micro-batches as its sampler, one *item*
per micro-batch (``batch_size=None``), so a reader sees a whole micro-batch at once and
can order its reads (the shard reader reads each shard's samples in offset order). Keys
are (sample index, epoch) pairs, epoch None meaning the deterministic eval transform;
with per-sample seeded augmentation (:mod:`dreg_dist.data.crops`) it does not matter
which worker process decodes what.

Readers never raise for bad data in a worker process (the DataLoader would wrap the error
in a multi-line traceback); they return what they could decode plus the description of
what they could not, and this process raises one :class:`DataError` line or, with
``data.skip_bad_samples``, drops the samples with their labels and counts them.
"""

from __future__ import annotations

import sys
from abc import abstractmethod
from typing import Iterator, NamedTuple, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dreg_dist.data.errors import DataError
from dreg_dist.data.module import DataModule
from dreg_dist.models.batch import Batch

Key = tuple[int, Optional[int]]
"""(sample index, epoch); epoch None selects the deterministic eval transform."""


class Fetched(NamedTuple):
    """One micro-batch as a reader returns it from a worker process."""

    x: Tensor | list[Tensor]
    """uint8 [n, 3, S, S]; or, for on-device decoding, the n encoded images (uint8 1-D)."""
    y: Tensor
    """int64 [n] labels of the samples in ``x``."""
    ids: Tensor
    """int64 [n] sample indices of the samples in ``x``."""
    crops: Optional[Tensor]
    """int64 [n, 5] (top, left, height, width, flip) for on-device decoding of train samples."""
    bad: list[str]
    """'what (why)' for each sample left out of ``x`` because it did not decode."""
    error: str = ""
    """A problem that is not one sample's (e.g. a missing shard): always fatal."""


def empty_images(size: int) -> Tensor:
    return torch.empty(0, 3, size, size, dtype=torch.uint8)


def stack_images(xs: list[Tensor], size: int) -> Tensor:
    """[n, 3, S, S] from n [3, S, S] images, channels-last when they all are (the tensor
    decoders' output): stacking them as HWC is a plain copy, repacking to NCHW is not, and
    a channels-last batch is what CUDA training wants anyway."""
    if not xs:
        return empty_images(size)
    if all(x.permute(1, 2, 0).is_contiguous() for x in xs):
        return torch.stack([x.permute(1, 2, 0) for x in xs]).permute(0, 3, 1, 2)
    return torch.stack(xs)


class DecodedDataModule(DataModule):
    """A DataModule whose samples are decoded by a reader :class:`Dataset` whose items are
    whole micro-batches (lists of keys) and whose values are :class:`Fetched`."""

    def __init__(self, *, num_workers: int, skip_bad_samples: bool, **kwargs) -> None:
        if num_workers < 0:
            raise DataError(f"data.num_workers must be >= 0, got {num_workers}")
        super().__init__(**kwargs)
        self.num_workers = num_workers
        self.skip_bad_samples = skip_bad_samples
        self.skipped_samples = 0
        """Samples this process left out so far (data.skip_bad_samples=true)."""
        self.pin_memory = self.device.type == "cuda"

    # Subclass hooks -------------------------------------------------------------------
    @abstractmethod
    def _reader(self, split: str) -> Dataset:
        """The reader of the training pool ('val' ids index it too) or of 'test'."""

    def _decode_on_device(self, fetched: Fetched) -> tuple[Tensor, list[int]]:
        """For readers that leave decoding to this process (GPU decoding): the decoded
        uint8 batch on the device and the positions in ``fetched`` that did not decode."""
        raise NotImplementedError

    def _describe(self, split: str, index: int) -> str:
        """Where sample ``index`` of ``split`` ('train' pool or 'test') comes from."""
        return f"{split} sample {index}"

    # Plumbing -------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, keys: list[list[Key]]) -> Iterator[Fetched]:
        if not keys:
            return iter(())
        loader = DataLoader(
            dataset,
            sampler=keys,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )
        return iter(loader)

    def _finish(self, fetched: Fetched, split: str, asked: Optional[Tensor] = None,
                positions: Optional[Tensor] = None) -> Batch:
        """The micro-batch of ``fetched``; with the ids ``asked`` and their ``positions`` in the global
        batch, the samples that decoded keep theirs (those that did not are left out)."""
        if fetched.error:
            raise DataError(fetched.error)
        bad = list(fetched.bad)
        x, y = fetched.x, fetched.y
        index = None
        if positions is not None and asked is not None:
            index = positions if len(fetched.ids) == len(asked) else positions[torch.isin(asked, fetched.ids)]
        non_blocking = self.device.type == "cuda"
        if isinstance(x, list):
            x, failed = self._decode_on_device(fetched)
            if failed:
                keep = torch.ones(len(y), dtype=torch.bool)
                keep[failed] = False
                y = y[keep]
                index = None if index is None else index[keep]
                pool = "test" if split == "test" else "train"
                bad += [f"{self._describe(pool, int(fetched.ids[p]))} (GPU decoder failed)" for p in failed]
        if bad:
            self._bad_samples(bad)
        if x.shape[0] == 0:
            raise DataError(
                f"no sample of a micro-batch decoded ({len(bad)} bad, e.g. {bad[0]}): the data is "
                "damaged beyond skipping; rebuild it (dreg-shards) or check data.root"
            )
        x = x.to(self.device, non_blocking=non_blocking)
        y = y.to(self.device, dtype=torch.int64, non_blocking=non_blocking)
        return Batch(self._normalize(x), y, index)

    def _bad_samples(self, bad: list[str]) -> None:
        if not self.skip_bad_samples:
            raise DataError(
                f"{bad[0]} does not decode: replace or remove it (for shards: re-run dreg-shards), "
                "or set data.skip_bad_samples=true to skip undecodable samples and count them"
            )
        self.skipped_samples += len(bad)
        # The trainer's own log is not reachable from here; stderr lands in the job log.
        print(
            f"data: skipped {len(bad)} undecodable sample(s), {self.skipped_samples} so far in this "
            f"worker (data.skip_bad_samples=true); first: {bad[0]}",
            file=sys.stderr,
            flush=True,
        )

    def _train_iter(self, epoch: int, ids: Tensor, positions: Tensor) -> Iterator[list[Batch]]:
        steps, accumulation, _ = ids.shape
        keys: list[list[Key]] = [[(i, epoch) for i in micro] for step in ids.tolist() for micro in step]
        batches = self._loader(self._reader("train"), keys)
        try:
            for t in range(steps):
                yield [self._finish(next(batches), "train", ids[t, i], positions[i]) for i in range(accumulation)]
        finally:
            # Stops the loader's worker processes now: a traceback keeps this frame alive,
            # and workers reaped only at interpreter exit delay the exit by seconds.
            del batches

    def _eval_iter(self, split: str, chunks: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        reader = self._reader("train" if split == "val" else "test")
        keys: list[list[Key]] = [[(i, None) for i in chunk.tolist()] for chunk in chunks]
        batches = self._loader(reader, keys)
        try:
            for fetched in batches:
                yield self._finish(fetched, split)
        finally:
            del batches
