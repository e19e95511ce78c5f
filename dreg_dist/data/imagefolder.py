"""ImageNet-layout folders (``root/train/<class>/*``, ``root/val/<class>/*``) via DataLoader.

JPEG decoding needs worker processes, so unlike the in-memory path this one goes through
a ``DataLoader``. The sampling contract is kept by handing the loader a *batch sampler*
that is simply the list of this rank's micro-batches computed by
:func:`dreg_dist.data.sampling.rank_train_ids`, and by making each sample's random
transform a function of (seed, epoch, index): ``__getitem__`` receives an (index, epoch)
key and re-seeds a forked torch RNG from its hash before RandomResizedCrop + flip run.
Which worker process decodes a sample, and in which batch, then no longer matters.

Workers return uint8 tensors; conversion to float and normalization happen on the
target device, which quarters host-to-device traffic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from dreg_dist.data import sampling
from dreg_dist.data.errors import DataError
from dreg_dist.data.module import Batch, DataModule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Key = tuple[int, Optional[int]]
"""(sample index, epoch); epoch None selects the deterministic eval transform."""


def missing_message(root: str | Path) -> Optional[str]:
    """The one-line DataError text when ``root`` lacks train/ or val/ class folders."""
    root = Path(root)
    for sub in ("train", "val"):
        folder = root / sub
        if not folder.is_dir():
            return (
                f"data.root '{root}' has no {sub}/ folder: point data.root at an ImageNet-layout "
                "tree with train/<class>/ and val/<class>/ image folders"
            )
        if not any(p.is_dir() for p in folder.iterdir()):
            return f"'{folder}' has no class sub-folders: put the images in {sub}/<class>/ folders"
    return None


def _scan(folder: Path) -> ImageFolder:
    try:
        return ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"cannot index '{folder}' ({exc}): put images in {folder}/<class>/ folders") from exc


class SeededImageFolder(Dataset):
    """An ImageFolder whose items are keyed by (index, epoch) for reproducible augmentation."""

    def __init__(self, folder: ImageFolder, train_tf: transforms.Compose, eval_tf: transforms.Compose, seed: int) -> None:
        self.folder = folder
        self.train_tf = train_tf
        self.eval_tf = eval_tf
        self.seed = seed

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: Key) -> tuple[Tensor, int]:
        index, epoch = key
        image, label = self.folder[index]
        if epoch is None:
            return self.eval_tf(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sampling.derive_seed(self.seed, "imagefolder_aug", epoch, index))
            return self.train_tf(image), label


class ImageFolderDataModule(DataModule):
    """Train/val/test from an ImageNet-layout tree; val is held out of train/, test is val/."""

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
    ) -> None:
        message = missing_message(root)
        if message is not None:
            raise DataError(message)
        if image_size <= 0:
            raise DataError(f"data.image_size must be positive, got {image_size}")
        if num_workers < 0:
            raise DataError(f"data.num_workers must be >= 0, got {num_workers}")
        root = Path(root)
        train_folder = _scan(root / "train")
        test_folder = _scan(root / "val")
        if test_folder.classes != train_folder.classes:
            raise DataError(
                f"class folders of '{root / 'val'}' differ from those of '{root / 'train'}': "
                "both must hold the same <class>/ folder names"
            )
        eval_tf = transforms.Compose(
            [
                transforms.Resize(int(image_size * 256 / 224), antialias=True),
                transforms.CenterCrop(image_size),
                transforms.PILToTensor(),
            ]
        )
        if augment:
            train_tf = transforms.Compose(
                [
                    transforms.RandomResizedCrop(image_size, antialias=True),
                    transforms.RandomHorizontalFlip(),
                    transforms.PILToTensor(),
                ]
            )
        else:
            train_tf = eval_tf
        train_ids, val_ids = sampling.split_train_val(len(train_folder), val_size, seed)
        super().__init__(
            seed=seed,
            device=device,
            classes=train_folder.classes,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            input_shape=(3, image_size, image_size),
            train_ids=train_ids,
            val_ids=val_ids,
            test_size=len(test_folder),
        )
        self.num_workers = num_workers
        self._pool = SeededImageFolder(train_folder, train_tf, eval_tf, seed)
        self._test = SeededImageFolder(test_folder, train_tf, eval_tf, seed)

    def _loader(self, dataset: Dataset, keys: list[list[Key]]) -> Iterator[tuple[Tensor, Tensor]]:
        if not keys:
            return iter(())
        loader = DataLoader(
            dataset,
            batch_sampler=keys,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        return iter(loader)

    def _finish(self, batch: tuple[Tensor, Tensor]) -> Batch:
        x, y = batch
        non_blocking = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=non_blocking)
        y = y.to(self.device, dtype=torch.int64, non_blocking=non_blocking)
        return self._normalize(x), y

    def _train_iter(self, epoch: int, ids: Tensor) -> Iterator[list[Batch]]:
        steps, accumulation, _ = ids.shape
        keys = [[(i, epoch) for i in micro] for step in ids.tolist() for micro in step]
        batches = self._loader(self._pool, keys)
        for _ in range(steps):
            yield [self._finish(next(batches)) for _ in range(accumulation)]

    def _eval_iter(self, split: str, chunks: list[Tensor]) -> Iterator[Batch]:
        dataset = self._pool if split == "val" else self._test
        keys: list[list[Key]] = [[(i, None) for i in chunk.tolist()] for chunk in chunks]
        for batch in self._loader(dataset, keys):
            yield self._finish(batch)
