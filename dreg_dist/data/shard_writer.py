"""``dreg-shards IMAGEFOLDER_ROOT OUT_DIR``: convert an ImageNet-layout tree into shards.

Samples are enumerated exactly as the ``imagefolder`` path enumerates them (torchvision's
ImageFolder: sorted classes, sorted files), checked, optionally shrunk, and appended in
that order to tar shards of about ``--shard-mb`` MB (format: :mod:`shard_index`).

Per image (in a process pool, results consumed in order): a JPEG in RGB or grayscale is
stored as its original bytes (cut after its end-of-image marker), so it decodes to the
very pixels ``imagefolder`` sees; anything else (PNG, CMYK, ...) is decoded and re-encoded
as RGB JPEG. ``--resize S`` shrinks images whose shorter side exceeds S. Unless
``--no-verify``, every stored JPEG is decoded once with the strict libjpeg-turbo decoder.
A file that fails stops the conversion with one line naming it, or with ``--skip-bad``
is left out and counted (labels are stored per sample, so skipping shifts nothing).

Nothing half-done is left behind: shards are written under temporary names, the index is
written last, and a failed conversion removes what it wrote.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image

from dreg_dist.data import shard_index
from dreg_dist.data.decoders import EOI, BadImage, decode_tensor
from dreg_dist.data.errors import DataError
from dreg_dist.data.imagefolder import DECODE_ERRORS, check_same_classes, missing_message, scan_split

DEFAULT_SHARD_MB = 256
DEFAULT_QUALITY = 90
WINDOW = 512
"""Images handed to the pool at a time: bounds the memory held by finished results."""


class Prepared(NamedTuple):
    data: bytes
    height: int
    width: int
    error: str


def _encode(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def prepare(path: str, resize: Optional[int], quality: int, verify: bool) -> Prepared:
    """The bytes to store for the image at ``path``, or the reason it cannot be stored."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        shrink = resize is not None and min(width, height) > resize
        if shrink or img.format != "JPEG" or img.mode not in ("RGB", "L"):
            if shrink:
                assert resize is not None
                scale = resize / min(width, height)
                width, height = max(1, round(width * scale)), max(1, round(height * scale))
                # As Image.thumbnail: DCT-scale decode to >= 2x the target, then an
                # antialiased resize; fast and visually the same as a full-size resize.
                img.draft("RGB", (2 * width, 2 * height))
                img = img.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
            else:
                img = img.convert("RGB")
            data = _encode(img, quality)
        else:
            end = data.rfind(EOI)
            if end < 0:
                raise BadImage("truncated JPEG (no end-of-image marker)")
            data = data[: end + 2]  # bytes after EOI are ignored by decoders; cut them
        if verify:
            decoded = decode_tensor(data)
            if tuple(decoded.shape[1:]) != (height, width):
                raise BadImage(f"decodes to {tuple(decoded.shape[1:])}, header says {(height, width)}")
        return Prepared(data, height, width, "")
    except (BadImage, *DECODE_ERRORS) as exc:
        return Prepared(b"", 0, 0, str(exc) or type(exc).__name__)


class ShardWriter:
    """Appends samples to ``{split}-NNNNNN.tar`` files of at most about ``max_bytes``."""

    def __init__(self, out: Path, split: str, max_bytes: int) -> None:
        self.out, self.split, self.max_bytes = out, split, max_bytes
        self.shards: list[dict] = []
        self.written: list[Path] = []
        self._tar: Optional[tarfile.TarFile] = None
        self._count = 0

    def _open(self) -> tarfile.TarFile:
        path = self.out / (shard_index.shard_name(self.split, len(self.shards)) + ".tmp")
        self.written.append(path)
        self._count = 0
        return tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)

    def _member(self, tar: tarfile.TarFile, name: str, payload: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(payload), 0o444, 0  # fixed: same tree -> same bytes
        offset = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
        tar.addfile(info, io.BytesIO(payload))
        return offset

    def add(self, key: str, data: bytes, label: int) -> tuple[int, int]:
        """Store one sample; returns (shard number, byte offset of the JPEG payload)."""
        if self._tar is not None and self._count and self._tar.offset + len(data) + 2048 > self.max_bytes:
            self._close_current()
        if self._tar is None:
            self._tar = self._open()
        offset = self._member(self._tar, f"{key}.jpg", data)
        self._member(self._tar, f"{key}.cls", str(label).encode())
        self._count += 1
        return len(self.shards), offset

    def _close_current(self) -> None:
        assert self._tar is not None
        tmp = Path(self._tar.name)  # type: ignore[arg-type]
        self._tar.close()
        final = tmp.with_suffix("")  # drop .tmp
        os.replace(tmp, final)
        self.written[-1] = final
        self.shards.append({"name": final.name, "bytes": final.stat().st_size, "samples": self._count})
        self._tar = None

    def close(self) -> list[dict]:
        if self._tar is not None:
            self._close_current()
        return self.shards


def _prepared(paths: Sequence[str], resize: Optional[int], quality: int, verify: bool, workers: int) -> Iterator[Prepared]:
    if workers <= 1:
        for path in paths:
            yield prepare(path, resize, quality, verify)
        return
    n = len(paths)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for start in range(0, n, WINDOW):
            window = paths[start : start + WINDOW]
            yield from pool.map(
                prepare, window, [resize] * len(window), [quality] * len(window), [verify] * len(window),
                chunksize=max(1, len(window) // (4 * workers)),
            )


def convert(
    src: str | Path,
    out: str | Path,
    *,
    resize: Optional[int] = None,
    quality: int = DEFAULT_QUALITY,
    shard_mb: float = DEFAULT_SHARD_MB,
    workers: int = 1,
    skip_bad: bool = False,
    verify: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Convert ``src`` (train/<class>/, val/<class>/) into shards in ``out``; returns the
    summary written into index.json. Raises :class:`DataError` (one line) on bad input."""
    src, out = Path(src), Path(out)
    message = missing_message(src)
    if message is not None:
        raise DataError(message.replace("data.root", "IMAGEFOLDER_ROOT"))
    if resize is not None and resize <= 0:
        raise DataError(f"--resize must be a positive number of pixels, got {resize}")
    if not 1 <= quality <= 100:
        raise DataError(f"--quality must be in 1..100, got {quality}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"OUT_DIR '{out}' is not an empty folder: choose a new one (conversions never overwrite)")
    folders = {split: scan_split(src / split) for split in shard_index.SPLITS}
    check_same_classes(src, folders["train"], folders["val"])
    out.mkdir(parents=True, exist_ok=True)
    writers: list[ShardWriter] = []
    try:
        splits, skipped = {}, []
        for split in shard_index.SPLITS:
            writer = ShardWriter(out, split, int(shard_mb * 2**20))
            writers.append(writer)
            splits[split] = _convert_split(folders[split].samples, split, writer, resize, quality, workers,
                                           skip_bad, verify, skipped, log)
        labels = np.asarray(splits["train"]["samples"]["label"], dtype=np.int64)
        counts = np.bincount(labels, minlength=len(folders["train"].classes))
        if (counts == 0).any():
            empty = [folders["train"].classes[i] for i in np.flatnonzero(counts == 0)]
            raise DataError(f"no usable training image left in class(es) {', '.join(empty[:3])} after skipping bad files")
        meta = {"source": str(src.resolve()), "resize": resize, "quality": quality, "skipped": skipped}
        shard_index.write_index(out, folders["train"].classes, splits, meta)
    except BaseException:
        for writer in writers:
            if writer._tar is not None:
                writer._tar.close()
            for path in writer.written:
                path.unlink(missing_ok=True)
        raise
    return {"splits": {s: {"images": len(v["samples"]["label"]), "shards": len(v["shards"]),
                           "bytes": sum(x["bytes"] for x in v["shards"])} for s, v in splits.items()},
            "skipped": skipped}


def _convert_split(
    samples: Sequence[tuple[str, int]], split: str, writer: ShardWriter, resize: Optional[int], quality: int,
    workers: int, skip_bad: bool, verify: bool, skipped: list, log: Callable[[str], None],
) -> dict:
    cols: dict[str, list[int]] = {c: [] for c in shard_index.COLUMNS}
    start = last = time.perf_counter()
    results = _prepared([p for p, _ in samples], resize, quality, verify, workers)
    for n, ((path, label), prep) in enumerate(zip(samples, results), 1):
        if prep.error:
            if not skip_bad:
                raise DataError(f"'{path}' is not a usable image ({prep.error}): replace or delete it, "
                                "or pass --skip-bad to leave such files out (they are counted)")
            skipped.append({"split": split, "path": path, "reason": prep.error})
            continue
        shard, offset = writer.add(shard_index.sample_key(len(cols["label"])), prep.data, label)
        for col, value in zip(shard_index.COLUMNS, (shard, offset, len(prep.data), label, prep.height, prep.width)):
            cols[col].append(value)
        if time.perf_counter() - last > 30:
            last = time.perf_counter()
            log(f"{split}: {n}/{len(samples)} images, {n / (last - start):.0f} img/s")
    return {"shards": writer.close(), "samples": cols}


def main(argv: Optional[Iterable[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="dreg-shards",
        description="Convert an ImageNet-layout tree (train/<class>/, val/<class>/) into tar shards "
                    "for data.name=shards.")
    p.add_argument("imagefolder_root")
    p.add_argument("out_dir", help="new or empty folder for the shards and index.json")
    p.add_argument("--resize", type=int, default=None, metavar="S",
                   help="shrink images whose shorter side exceeds S pixels (re-encoded at --quality)")
    p.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality of re-encoded images")
    p.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_MB, help="target shard size in MB")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes that read and check images")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out files that do not decode (counted and listed in index.json) instead of stopping")
    p.add_argument("--no-verify", action="store_true", help="do not test-decode every stored JPEG")
    args = p.parse_args(list(argv) if argv is not None else None)
    t0 = time.perf_counter()
    try:
        summary = convert(args.imagefolder_root, args.out_dir, resize=args.resize, quality=args.quality,
                          shard_mb=args.shard_mb, workers=args.workers, skip_bad=args.skip_bad,
                          verify=not args.no_verify)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parts = [f"{v['images']} {s} images in {v['shards']} shards ({v['bytes'] / 1e9:.2f} GB)"
             for s, v in summary["splits"].items()]
    print(f"wrote {' and '.join(parts)} to {args.out_dir} in {time.perf_counter() - t0:.0f}s; "
          f"skipped {len(summary['skipped'])} bad image(s)"
          + (" (listed in index.json)" if summary["skipped"] else ""))
    print(f"train on them with: data.name=shards data.root={args.out_dir}")
    return 0
