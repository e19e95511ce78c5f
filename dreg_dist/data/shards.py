"""``data.name=shards``: train and evaluate from a folder written by ``dreg-shards``.

Same sampling contract as every path (global batch t and each sample's augmentation
depend only on (seed, epoch, t, sample index)), same hold-out split and exact eval
sharding, because this is a :class:`~dreg_dist.data.loader.DecodedDataModule` like
``imagefolder``: only the reader differs. Sample i is image i of the source ImageFolder
(unless the conversion skipped bad files), with the same crop and flip as on the
``imagefolder`` path; with ``data.decoder=pil`` the tensors are bit-identical.

Reading: a shard file is opened once per process and kept open; a micro-batch's samples
are read with positional reads sorted by (shard, offset), neighbours closer than
``GAP`` bytes merged into one read. Evaluation reads consecutive samples, so it reads each
shard in a few large sequential reads; training reads what a uniform shuffle asks for
(the contract fixes the order), one read per sample but no open, stat or directory lookup.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dreg_dist.data import crops, sampling
from dreg_dist.data.decoders import BadImage, CpuDecoder, check_complete, cuda_decode, resolve_decoder
from dreg_dist.data.errors import DataError
from dreg_dist.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from dreg_dist.data.loader import DecodedDataModule, Fetched, Key, empty_images, stack_images
from dreg_dist.data.shard_index import SplitIndex, check_shard_files, load_index

GAP = 64 * 1024
"""Merge two reads of one shard when at most this many unneeded bytes lie between them:
one larger read beats two seeks on disks and network filesystems."""
MAX_READ = 64 * 2**20
MAX_OPEN = 128
"""Open shard files kept per process (ImageNet at 256 MB per shard is ~550 files)."""


class ShardFiles:
    """Positional reads from a split's shards; file descriptors are per process."""

    def __init__(self, split: SplitIndex) -> None:
        self.split = split
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        return {"split": self.split, "_fds": OrderedDict(), "_pid": -1}

    def __del__(self) -> None:
        if getattr(self, "_pid", -1) == os.getpid():
            for fd in self._fds.values():
                os.close(fd)

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked worker: the parent's descriptors stay the parent's
            self._fds, self._pid = OrderedDict(), os.getpid()
        fd = self._fds.get(shard)
        if fd is not None:
            self._fds.move_to_end(shard)
            return fd
        path = self.split.shard_paths[shard]
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise DataError(f"cannot open shard '{path}' ({exc.strerror}): restore it or re-run dreg-shards") from None
        self._fds[shard] = fd
        if len(self._fds) > MAX_OPEN:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def read(self, ids: np.ndarray) -> list[bytes]:
        """The stored JPEG bytes of samples ``ids``, in the order of ``ids``."""
        s = self.split
        shard, offset, size = s.shard[ids], s.offset[ids], s.size[ids]
        order = np.lexsort((offset, shard))
        out: list[bytes] = [b""] * len(ids)
        i = 0
        while i < len(order):
            first = order[i]
            start, end, j = int(offset[first]), int(offset[first] + size[first]), i + 1
            while j < len(order):
                k = order[j]
                if shard[k] != shard[first] or offset[k] - end > GAP or offset[k] + size[k] - start > MAX_READ:
                    break
                end = max(end, int(offset[k] + size[k]))
                j += 1
            path = s.shard_paths[int(shard[first])]
            try:
                buf = os.pread(self._fd(int(shard[first])), end - start, start)
            except OSError as exc:
                raise DataError(f"cannot read shard '{path}' ({exc.strerror}): restore it or re-run dreg-shards") from None
            if len(buf) != end - start:
                raise DataError(f"shard '{path}' ends before byte {end} that index.json expects (truncated copy?): "
                                "restore it or re-run dreg-shards")
            for k in order[i:j]:
                at = int(offset[k]) - start
                out[k] = buf[at : at + int(size[k])]
            i = j
        return out


class ShardReader(Dataset):
    """Items are micro-batches: a list of keys -> :class:`Fetched`."""

    def __init__(self, split: SplitIndex, decoder: str, image_size: int, augment: bool, seed: int) -> None:
        self.split = split
        self.files = ShardFiles(split)
        self.decoder = decoder
        self.cpu = CpuDecoder(decoder) if decoder != "cuda" else None
        self.image_size = image_size
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, keys: list[Key]) -> Fetched:
        ids = np.fromiter((k[0] for k in keys), dtype=np.int64, count=len(keys))
        epoch = keys[0][1] if self.augment else None  # a micro-batch is one epoch's, or eval
        try:
            blobs = self.files.read(ids)
        except DataError as err:
            empty = torch.empty(0, dtype=torch.int64)
            return Fetched(empty_images(self.image_size), empty, empty, None, [], str(err))
        s, size = self.split, self.image_size
        heights, widths = s.height[ids].tolist(), s.width[ids].tolist()
        boxes_all = crops.train_crops(self.seed, epoch, ids.tolist(), heights, widths) if epoch is not None else None
        xs, good, bad, boxes = [], [], [], []
        for pos, (index, data) in enumerate(zip(ids.tolist(), blobs)):
            h, w = heights[pos], widths[pos]
            crop = boxes_all[pos] if boxes_all is not None else None
            try:
                if self.cpu is None:
                    check_complete(data)  # the rest is checked by nvjpeg in the training process
                    xs.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
                    boxes.append(crop)
                elif crop is None:
                    xs.append(self.cpu.eval(data, h, w, size))
                else:
                    xs.append(self.cpu.train(data, h, w, crop, size))
            except BadImage as exc:
                bad.append(f"{s.describe(index)} ({exc})")
                continue
            good.append(pos)
        kept = torch.from_numpy(ids[good])
        labels = torch.from_numpy(s.label[ids[good]])
        if self.cpu is None:
            table = torch.tensor([list(b) for b in boxes], dtype=torch.int64) if epoch is not None and boxes else None
            return Fetched(xs, labels, kept, table, bad)
        x = stack_images(xs, size)
        return Fetched(x, labels, kept, None, bad)


class ShardDataModule(DecodedDataModule):
    """Train/val/test from shards: val is held out of the train split, test is the val split."""

    def __init__(
        self,
        *,
        root: str | Path,
        image_size: int,
        val_size: int,
        augment: bool,
        num_workers: int,
        seed: int,
        device: torch.device,
        decoder: str = "auto",
        skip_bad_samples: bool = False,
    ) -> None:
        if image_size <= 0:
            raise DataError(f"data.image_size must be positive, got {image_size}")
        device = torch.device(device)
        index = load_index(root)
        check_shard_files(index)
        self.decoder = resolve_decoder(decoder, device)
        train, test = index.splits["train"], index.splits["val"]
        train_ids, val_ids = sampling.split_train_val(len(train), val_size, seed)
        super().__init__(
            num_workers=num_workers,
            skip_bad_samples=skip_bad_samples,
            seed=seed,
            device=device,
            classes=index.classes,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            input_shape=(3, image_size, image_size),
            train_ids=train_ids,
            val_ids=val_ids,
            test_size=len(test),
        )
        self.index = index
        self.image_size = image_size
        self.augment = augment
        # nvjpeg copies the encoded bytes itself; pinning thousands of small buffers costs more.
        self.pin_memory = self.pin_memory and self.decoder != "cuda"
        self._pool = ShardReader(train, self.decoder, image_size, augment, seed)
        self._test = ShardReader(test, self.decoder, image_size, augment, seed)

    def _reader(self, split: str) -> Dataset:
        return self._pool if split == "train" else self._test

    def _describe(self, split: str, index: int) -> str:
        return (self._pool if split == "train" else self._test).split.describe(index)

    def _decode_on_device(self, fetched: Fetched) -> tuple[torch.Tensor, list[int]]:
        boxes = None
        if fetched.crops is not None:
            boxes = [crops.Crop(t, l, h, w, bool(f)) for t, l, h, w, f in fetched.crops.tolist()]
        return cuda_decode(fetched.x, boxes, self.image_size, self.device)  # type: ignore[arg-type]
