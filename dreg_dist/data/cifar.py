"""Readers for the CIFAR "python version" layout, parsed directly from the pickled batches.

Parsed by hand rather than through ``torchvision.datasets.CIFAR10`` because that class
insists on the official md5 sums, and the copies used here (and re-encoded mirrors in
general) have different ones. The result is one uint8 tensor [N, 3, 32, 32] per split,
which the in-memory path keeps resident (on the accelerator when asked) and augments
batched.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from dreg_dist.data.errors import DataError


@dataclass(frozen=True)
class CifarSpec:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    train_size: int
    url: str
    md5: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR_SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        num_classes=10,
        train_size=50000,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": CifarSpec(
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        num_classes=100,
        train_size=50000,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}


@dataclass
class CifarData:
    train_x: Tensor  # uint8 [N, 3, 32, 32]
    train_y: Tensor  # int64 [N]
    test_x: Tensor
    test_y: Tensor
    classes: list[str]


def missing_files(root: str | Path, name: str) -> list[str]:
    """Data files of ``name`` absent under ``root`` (the metadata file is optional)."""
    spec = CIFAR_SPECS[name]
    folder = Path(root) / spec.folder
    return [f for f in spec.train_files + spec.test_files if not (folder / f).is_file()]


def missing_message(root: str | Path, name: str) -> Optional[str]:
    """The one-line DataError text for a missing or incomplete CIFAR folder, else None."""
    spec = CIFAR_SPECS[name]
    root = Path(root)
    folder = root / spec.folder
    if not folder.is_dir():
        if (root / spec.train_files[0]).is_file():
            return (
                f"data.root '{root}' is the {spec.folder}/ folder itself: set data.root to the "
                f"folder that contains it ('{root.parent}')"
            )
        return (
            f"data.root '{root}' has no {spec.folder}/ folder: point data.root at the folder that "
            "contains it (as torchvision does), or set data.download=true when online"
        )
    missing = missing_files(root, name)
    if missing:
        return (
            f"'{folder}' lacks {', '.join(missing)}: restore the complete {spec.folder}/ folder "
            "(or delete it and set data.download=true when online)"
        )
    return None


def ensure_cifar(root: str | Path, name: str, download: bool) -> None:
    """Raise DataError unless the files are there, downloading them first when allowed.

    Every worker of a job may call this at once, so the download runs under an exclusive
    file lock and re-checks the files after acquiring it: one process fetches, the others
    wait and then find the files present.
    """
    message = missing_message(root, name)
    if message is None:
        return
    if not download:
        raise DataError(message)
    _download(Path(root), CIFAR_SPECS[name], name)


def _download(root: Path, spec: CifarSpec, name: str) -> None:
    import fcntl

    from torchvision.datasets.utils import download_and_extract_archive

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data.root '{root}' ({exc}): choose a writable data.root") from exc
    with open(root / f".{spec.folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if missing_message(root, name) is None:
                return
            try:
                download_and_extract_archive(spec.url, download_root=str(root), md5=spec.md5)
            except Exception as exc:  # network errors come in many types
                raise DataError(
                    f"downloading {spec.url} into '{root}' failed ({type(exc).__name__}: {exc}): "
                    f"place the extracted {spec.folder}/ folder under data.root instead"
                ) from exc
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    message = missing_message(root, name)
    if message is not None:
        raise DataError(message)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as exc:
        raise DataError(
            f"cannot read CIFAR batch '{path}' ({type(exc).__name__}: {exc}): replace the file "
            "with an intact copy"
        ) from exc


def read_batch(path: str | Path, label_key: bytes) -> tuple[Tensor, Tensor]:
    """One pickled batch -> (uint8 [N, 3, 32, 32], int64 [N]).

    Rows of b'data' are 3072 bytes, channel-major (1024 R, then G, then B), which is
    already NCHW once reshaped.
    """
    path = Path(path)
    entry = _unpickle(path)
    if b"data" not in entry or label_key not in entry:
        raise DataError(
            f"CIFAR batch '{path}' has no b'data' or {label_key!r} entry: check that data.name "
            "matches the dataset in data.root"
        )
    data = np.asarray(entry[b"data"], dtype=np.uint8)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DataError(
            f"CIFAR batch '{path}' has data of shape {data.shape} and {labels.shape[0]} labels, "
            "expected N x 3072 and N: replace the file with an intact copy"
        )
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels.copy())


def _read_split(folder: Path, files: tuple[str, ...], spec: CifarSpec) -> tuple[Tensor, Tensor]:
    parts = [read_batch(folder / f, spec.label_key) for f in files]
    x = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
        raise DataError(
            f"labels in '{folder}' fall outside 0..{spec.num_classes - 1}: check that data.name "
            "matches the dataset in data.root"
        )
    return x, y


def _class_names(folder: Path, spec: CifarSpec) -> list[str]:
    path = folder / spec.meta_file
    if path.is_file():
        names = _unpickle(path).get(spec.names_key)
        if names is not None and len(names) == spec.num_classes:
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return [str(i) for i in range(spec.num_classes)]


def read_cifar(root: str | Path, name: str) -> CifarData:
    """Read train and test splits of ``name`` ('cifar10' | 'cifar100') from ``root``."""
    spec = CIFAR_SPECS[name]
    message = missing_message(root, name)
    if message is not None:
        raise DataError(message)
    folder = Path(root) / spec.folder
    train_x, train_y = _read_split(folder, spec.train_files, spec)
    test_x, test_y = _read_split(folder, spec.test_files, spec)
    return CifarData(train_x, train_y, test_x, test_y, _class_names(folder, spec))
