"""The shard format: webdataset-layout tar files plus ``index.json``.

A converted dataset is a folder::

    OUT_DIR/index.json
    OUT_DIR/train-000000.tar  train-000001.tar ...
    OUT_DIR/val-000000.tar ...

Each tar holds, per sample, ``KEY.jpg`` (the encoded JPEG, ending at its EOI marker) and
``KEY.cls`` (the label as ASCII digits), consecutive, KEY = the sample index as 8 digits:
the layout the ``webdataset`` library reads (``.decode().to_tuple("jpg", "cls")``) and
plain ``tar`` lists. Samples are stored in index order, which is the order of
torchvision's ImageFolder over the source tree, so sample i is the same image on the
``imagefolder`` and ``shards`` paths.

``index.json`` makes every sample addressable without scanning a tar: per split, the
shard files (name, bytes, sample count) and, per sample as columns, its shard, the byte
offset and size of its JPEG payload inside that shard, its label and the stored image's
height and width (so crops are known before decoding). Columns rather than one record
per sample keep the file small and quick to parse at ImageNet scale (about 40 bytes per
sample), and are held as numpy arrays so forked DataLoader workers share them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dreg_dist.data.errors import DataError

FORMAT = "dreg-shards"
VERSION = 1
INDEX = "index.json"
SPLITS = ("train", "val")
COLUMNS = ("shard", "offset", "size", "label", "height", "width")


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def sample_key(index: int) -> str:
    return f"{index:08d}"


@dataclass
class SplitIndex:
    """One split's shards and per-sample columns (int64 numpy arrays)."""

    split: str
    shard_paths: list[Path]
    shard_bytes: list[int]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    label: np.ndarray
    height: np.ndarray
    width: np.ndarray

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def describe(self, index: int) -> str:
        shard = self.shard_paths[int(self.shard[index])]
        return f"{self.split} sample {index} ('{shard}' at byte {int(self.offset[index])})"


@dataclass
class ShardIndex:
    root: Path
    classes: list[str]
    splits: dict[str, SplitIndex]
    meta: dict[str, Any]


def _rerun(root: Path) -> str:
    return f"re-run dreg-shards IMAGEFOLDER_ROOT {root} (into an empty folder) or restore the files"


def load_index(root: str | Path) -> ShardIndex:
    """Parse and check ``root/index.json``; DataError (one line) when it is absent or broken."""
    root = Path(root)
    path = root / INDEX
    if not path.is_file():
        hint = " (it holds train/ and val/: that is data.name=imagefolder)" if (root / "train").is_dir() else ""
        raise DataError(
            f"data.root '{root}' has no {INDEX}{hint}: convert an ImageNet-layout tree first with "
            f"`dreg-shards IMAGEFOLDER_ROOT {root}` and point data.root at that folder"
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read '{path}' ({exc}): {_rerun(root)}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise DataError(f"'{path}' is not a {FORMAT} v{VERSION} index: {_rerun(root)}")
    classes = [str(c) for c in raw["classes"]]
    splits = {}
    for split in SPLITS:
        entry = raw["splits"][split]
        cols = {c: np.asarray(entry["samples"][c], dtype=np.int64) for c in COLUMNS}
        splits[split] = SplitIndex(
            split=split,
            shard_paths=[root / s["name"] for s in entry["shards"]],
            shard_bytes=[int(s["bytes"]) for s in entry["shards"]],
            **cols,
        )
    meta = {k: v for k, v in raw.items() if k != "splits"}
    index = ShardIndex(root=root, classes=classes, splits=splits, meta=meta)
    _check_consistent(index, path)
    return index


def _check_consistent(index: ShardIndex, path: Path) -> None:
    for split, s in index.splits.items():
        n = len(s)
        if any(getattr(s, c).shape != (n,) for c in COLUMNS):
            raise DataError(f"'{path}': the {split} columns differ in length: {_rerun(index.root)}")
        if n == 0:
            raise DataError(f"'{path}' holds no {split} samples: convert a tree with images in {split}/<class>/")
        if s.shard.min() < 0 or s.shard.max() >= len(s.shard_paths):
            raise DataError(f"'{path}': a {split} sample names a shard that is not listed: {_rerun(index.root)}")
        ends = s.offset + s.size
        limit = np.asarray(s.shard_bytes, dtype=np.int64)[s.shard]
        if (s.offset < 0).any() or (ends > limit).any():
            raise DataError(f"'{path}': a {split} sample lies outside its shard: {_rerun(index.root)}")
        if s.label.min() < 0 or s.label.max() >= len(index.classes):
            raise DataError(f"'{path}': a {split} label is not a class index: {_rerun(index.root)}")
    counts = np.bincount(index.splits["train"].label, minlength=len(index.classes))
    empty = [index.classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(
            f"'{path}': class(es) {', '.join(empty[:3])} have no training images: add images to their "
            "train/<class>/ folders and convert again"
        )


def check_shard_files(index: ShardIndex) -> None:
    """Every listed shard exists with the size the index expects (stat only, no reads)."""
    for split in index.splits.values():
        for shard, expected in zip(split.shard_paths, split.shard_bytes):
            try:
                actual = os.stat(shard).st_size
            except FileNotFoundError:
                raise DataError(
                    f"shard '{shard}' listed in {index.root / INDEX} is missing: {_rerun(index.root)}"
                ) from None
            if actual != expected:
                raise DataError(
                    f"shard '{shard}' has {actual} bytes, {INDEX} expects {expected} (truncated or "
                    f"replaced copy): {_rerun(index.root)}"
                )


def write_index(root: Path, classes: list[str], splits: dict[str, dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Write index.json last and atomically: its presence marks a complete conversion."""
    payload = {"format": FORMAT, "version": VERSION, "layout": "webdataset tar: KEY.jpg + KEY.cls per sample",
               "classes": classes, **meta, "splits": splits}
    path = root / INDEX
    tmp = root / (INDEX + ".tmp")
    tmp.write_text(json.dumps(payload, separators=(",", ":")))
    os.replace(tmp, path)
    return path
