"""Entry points: a cheap availability check for launchers, and the DataModule factory.

``check_data_available`` only looks at paths and sizes known without reading data, so a
launcher can reject a bad ``data.*`` config with one clear line before spawning workers.
"""

from __future__ import annotations

import torch

from dreg_dist.config.schema import DataConfig
from dreg_dist.data import cifar, imagefolder, shard_index, shards, synthetic
from dreg_dist.data.decoders import DECODERS
from dreg_dist.data.errors import DataError
from dreg_dist.data.module import DataModule, InMemoryDataModule

NAMES = ("cifar10", "cifar100", "imagefolder", "shards", "synthetic")


def _check_sizes(cfg: DataConfig, train_size: int | None) -> None:
    if cfg.val_size < 0:
        raise DataError(f"data.val_size must be >= 0, got {cfg.val_size}")
    if train_size is not None and cfg.val_size >= train_size:
        raise DataError(
            f"data.val_size={cfg.val_size} must be smaller than the training set ({train_size} "
            "images): lower data.val_size"
        )


def check_data_available(cfg: DataConfig) -> None:
    """Raise :class:`DataError` if ``cfg`` cannot yield data; reads no image data.

    A missing CIFAR folder passes when ``data.download`` is true (build_data fetches it).
    """
    if cfg.name in cifar.CIFAR_SPECS:
        message = cifar.missing_message(cfg.root, cfg.name)
        if message is not None and not cfg.download:
            raise DataError(message)
        _check_sizes(cfg, cifar.CIFAR_SPECS[cfg.name].train_size)
    elif cfg.name == "synthetic":
        if cfg.synthetic_train_size <= 0 or cfg.synthetic_test_size <= 0:
            raise DataError(
                "data.synthetic_train_size and data.synthetic_test_size must be positive, got "
                f"{cfg.synthetic_train_size} and {cfg.synthetic_test_size}"
            )
        if cfg.synthetic_noise < 0:
            raise DataError(f"data.synthetic_noise must be >= 0, got {cfg.synthetic_noise}")
        _check_sizes(cfg, cfg.synthetic_train_size)
    elif cfg.name == "imagefolder":
        message = imagefolder.missing_message(cfg.root)
        if message is not None:
            raise DataError(message)
        if cfg.image_size <= 0:
            raise DataError(f"data.image_size must be positive, got {cfg.image_size}")
        _check_sizes(cfg, None)
    elif cfg.name == "shards":
        if cfg.image_size <= 0:
            raise DataError(f"data.image_size must be positive, got {cfg.image_size}")
        if cfg.decoder not in DECODERS:
            raise DataError(f"unknown data.decoder {cfg.decoder!r}: use one of {', '.join(DECODERS)}")
        # The index is metadata (no image is read); every shard is stat'ed, so a missing or
        # truncated file stops the launch before any worker starts.
        index = shard_index.load_index(cfg.root)
        shard_index.check_shard_files(index)
        _check_sizes(cfg, len(index.splits["train"]))
    else:
        raise DataError(f"unknown data.name {cfg.name!r}: use one of {', '.join(NAMES)}")


def storage_device(cfg: DataConfig, device: torch.device) -> torch.device:
    """Where in-memory data lives: ``device`` if data.on_device (default: when it is CUDA)."""
    on_device = cfg.on_device if cfg.on_device is not None else device.type == "cuda"
    return device if on_device else torch.device("cpu")


def build_data(cfg: DataConfig, *, seed: int, device: torch.device | str, num_classes: int = 10) -> DataModule:
    """The DataModule for ``cfg``. ``seed`` fixes the validation hold-out, the epoch orders
    and the augmentation; ``num_classes`` is used only by the synthetic dataset (pass the
    model's)."""
    device = torch.device(device)
    check_data_available(cfg)
    if cfg.name in ("imagefolder", "shards"):
        common = dict(root=cfg.root, image_size=cfg.image_size, val_size=cfg.val_size, augment=cfg.augment,
                      num_workers=cfg.num_workers, seed=seed, device=device, skip_bad_samples=cfg.skip_bad_samples)
        if cfg.name == "imagefolder":
            return imagefolder.ImageFolderDataModule(**common)
        return shards.ShardDataModule(decoder=cfg.decoder, **common)
    if cfg.name == "synthetic":
        if num_classes < 2:
            raise DataError(f"synthetic data needs num_classes >= 2 (model.num_classes), got {num_classes}")
        train_x, train_y, test_x, test_y = synthetic.make_synthetic(
            num_classes, cfg.synthetic_train_size, cfg.synthetic_test_size, cfg.synthetic_noise
        )
        classes = [f"class_{i}" for i in range(num_classes)]
        mean, std = synthetic.SYNTHETIC_MEAN, synthetic.synthetic_std(cfg.synthetic_noise)
    else:
        cifar.ensure_cifar(cfg.root, cfg.name, cfg.download)
        data = cifar.read_cifar(cfg.root, cfg.name)
        train_x, train_y, test_x, test_y, classes = data.train_x, data.train_y, data.test_x, data.test_y, data.classes
        spec = cifar.CIFAR_SPECS[cfg.name]
        mean, std = spec.mean, spec.std
        _check_sizes(cfg, int(train_x.shape[0]))
    return InMemoryDataModule(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        val_size=cfg.val_size,
        augment=cfg.augment,
        storage=storage_device(cfg, device),
        seed=seed,
        device=device,
        classes=classes,
        mean=mean,
        std=std,
    )
