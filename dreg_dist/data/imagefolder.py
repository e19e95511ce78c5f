"""ImageNet-layout folders (``root/train/<class>/*``, ``root/val/<class>/*``) via DataLoader.

JPEG decoding needs worker processes, so unlike the in-memory path this one goes through
a ``DataLoader`` (:mod:`dreg_dist.data.loader`). The sampling contract is kept by handing
the loader this rank's micro-batches computed by
:func:`dreg_dist.data.sampling.rank_train_ids`, and by making each sample's random
transform a function of (seed, epoch, index): :func:`dreg_dist.data.crops.train_crop`
draws the RandomResizedCrop box and flip from a generator seeded by their hash. Which
worker process decodes a sample, and in which batch, then no longer matters.

Images are decoded with PIL and transformed with torchvision's PIL functions, so the
``shards`` path with ``data.decoder=pil`` reproduces this path bit for bit.

Workers return uint8 tensors; conversion to float and normalization happen on the
target device, which quarters host-to-device traffic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from dreg_dist.data import crops, sampling
from dreg_dist.data.errors import DataError
from dreg_dist.data.loader import DecodedDataModule, Fetched, Key, stack_images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What PIL raises for files that are not (complete) images."""

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageFolderDataModule", "Key", "missing_message", "scan_split"]


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


def _empty_classes(folder: Path) -> list[str]:
    empty = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not any(has_file_allowed_extension(f.name, IMG_EXTENSIONS) for f in class_dir.rglob("*") if f.is_file()):
            empty.append(class_dir.name)
    return empty


def scan_split(folder: Path) -> ImageFolder:
    """Index one split folder (sorted classes, sorted files: torchvision's order).

    An empty class folder is refused by name rather than skipped: skipping it would renumber
    every later class, silently shifting labels against a model or another split.
    """
    try:
        return ImageFolder(str(folder))
    except FileNotFoundError as exc:
        empty = _empty_classes(folder) if folder.is_dir() else []
        if empty:
            shown = ", ".join(f"'{folder / name}'" for name in empty[:3]) + (" ..." if len(empty) > 3 else "")
            raise DataError(
                f"class folder(s) {shown} hold no images ({', '.join(IMG_EXTENSIONS)}): add images or "
                "remove the folder from train/ and val/ alike"
            ) from None
        raise DataError(f"cannot index '{folder}' ({exc}): put images in {folder}/<class>/ folders") from None
    except OSError as exc:
        raise DataError(f"cannot index '{folder}' ({exc}): put images in {folder}/<class>/ folders") from None


def check_same_classes(root: Path, train: ImageFolder, test: ImageFolder) -> None:
    if test.classes != train.classes:
        raise DataError(
            f"class folders of '{root / 'val'}' differ from those of '{root / 'train'}': "
            "both must hold the same <class>/ folder names"
        )


class ImageFolderReader(Dataset):
    """Items are micro-batches: a list of keys -> :class:`Fetched` (decoded with PIL)."""

    def __init__(self, folder: ImageFolder, image_size: int, augment: bool, seed: int) -> None:
        self.folder = folder
        self.image_size = image_size
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, keys: list[Key]) -> Fetched:
        xs, ys, ids, bad = [], [], [], []
        for index, epoch in keys:
            path, label = self.folder.samples[index]
            try:
                img = self.folder.loader(path)
            except DECODE_ERRORS as exc:
                bad.append(f"'{path}' ({exc})")
                continue
            if epoch is None or not self.augment:
                xs.append(crops.pil_eval(img, self.image_size))
            else:
                crop = crops.train_crop(self.seed, epoch, index, img.height, img.width)
                xs.append(crops.pil_train(img, crop, self.image_size))
            ys.append(label)
            ids.append(index)
        x = stack_images(xs, self.image_size)
        return Fetched(x, torch.tensor(ys, dtype=torch.int64), torch.tensor(ids, dtype=torch.int64), None, bad)


class ImageFolderDataModule(DecodedDataModule):
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
        skip_bad_samples: bool = False,
    ) -> None:
        message = missing_message(root)
        if message is not None:
            raise DataError(message)
        if image_size <= 0:
            raise DataError(f"data.image_size must be positive, got {image_size}")
        root = Path(root)
        train_folder = scan_split(root / "train")
        test_folder = scan_split(root / "val")
        check_same_classes(root, train_folder, test_folder)
        train_ids, val_ids = sampling.split_train_val(len(train_folder), val_size, seed)
        super().__init__(
            num_workers=num_workers,
            skip_bad_samples=skip_bad_samples,
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
        self.augment = augment
        self._pool = ImageFolderReader(train_folder, image_size, augment, seed)
        self._test = ImageFolderReader(test_folder, image_size, augment, seed)

    def _reader(self, split: str) -> Dataset:
        return self._pool if split == "train" else self._test
