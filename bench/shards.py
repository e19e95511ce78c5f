#!/usr/bin/env python
"""Images/s per CPU core of the JPEG paths: today's imagefolder against the shards.

Data: made here, nothing downloaded. N training JPEGs of about 400x350 px (each side
jittered +-10%), quality 90, 4:2:0, from CIFAR-10 images (``/work/shared/data`` when
present, else smooth random colour fields) upscaled bicubically plus Gaussian grain, so
that the files have the size of camera photos of that resolution rather than of smooth
upscales; in an ImageFolder tree of 10 classes. It is converted twice with the real
converter: ``dreg-shards`` as is, and with ``--resize 256``.

Variants: ``build_data(...).train_batches(epoch, B, 0, 1)`` of the real DataModules at
``image_size`` 224 with RandomResizedCrop + flip, ``num_workers=0`` (decoding in this
process, so the process's CPU time is the work of one core), ``torch.set_num_threads(1)``:
imagefolder (PIL), shards with each CPU decoder, resized shards with each CPU decoder.
Rounds interleave the variants (A, B, C, ..., A, B, C, ...); a variant's figure is
images per CPU-second (``time.process_time``), the ratio to imagefolder the median of the
per-round ratios. All files sit in the page cache: the cost of opening millions of files
on a shared filesystem, which shards remove, is *not* in the imagefolder figure.

Cores per GPU: a published ResNet-50 training rate per GPU over each variant's images/s
per core (NVIDIA DeepLearningExamples, PyTorch ResNet50 v1.5 README, "Training
performance: NVIDIA DGX A100 (8x A100 80GB)": 2470 img/s on 1 GPU with mixed precision;
"NVIDIA DGX-1 16GB (8x V100 16GB)": 1200 img/s).

    PYTHONPATH=. python bench/shards.py            # 3000 images, 5 rounds (~3 min on 2 cores)
    PYTHONPATH=. python bench/shards.py --quick    # 600 images, 2 rounds (< 1 min)
    PYTHONPATH=. python bench/shards.py --device cuda   # + the nvjpeg path (wall clock, GPU)
"""

from __future__ import annotations

import argparse
import io
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import _common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import torch
from PIL import Image

from _common import fmt_ratio, interleave, median, paired_ratio, print_load, print_machine, write_json
from dreg_dist.config.schema import DataConfig
from dreg_dist.data import build_data
from dreg_dist.data.augment import Normalizer
from dreg_dist.data.sampling import rank_train_ids
from dreg_dist.data.shard_writer import convert

TARGET = 3.0
LEGACY = "imagefolder before shards (per-sample items)"
REF = "imagefolder (PIL)"
CIFAR = Path("/work/shared/data/cifar-10-batches-py/data_batch_1")
PUBLISHED = {"A100 (AMP)": 2470.0, "V100 (AMP)": 1200.0}
"""ResNet-50 v1.5 training img/s on one GPU, NVIDIA DeepLearningExamples (see docstring)."""


def sources(n: int, rng: np.random.Generator) -> np.ndarray:
    """n small RGB images [n, 32, 32, 3] uint8 to upscale: CIFAR-10 when present."""
    if CIFAR.is_file():
        with open(CIFAR, "rb") as f:
            data = pickle.load(f, encoding="bytes")[b"data"]
        return data[np.arange(n) % len(data)].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    low = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(x).resize((32, 32), Image.Resampling.BICUBIC)) for x in low])


def make_tree(root: Path, n_train: int, n_val: int, size: tuple[int, int], grain: float) -> dict[str, float]:
    rng = np.random.default_rng(0)
    small = sources(n_train + n_val, rng)
    nbytes, pixels = [], []
    for i, img in enumerate(small):
        split, j = ("train", i) if i < n_train else ("val", i - n_train)
        w = int(size[0] * rng.uniform(0.9, 1.1))
        h = int(size[1] * rng.uniform(0.9, 1.1))
        big = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
        big = big + rng.normal(0.0, grain, size=big.shape)
        buf = io.BytesIO()
        Image.fromarray(big.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        folder = root / split / f"class{j % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{j:06d}.jpg").write_bytes(buf.getvalue())
        nbytes.append(len(buf.getvalue()))
        pixels.append(w * h)
    return {"mean_kb": float(np.mean(nbytes)) / 1e3, "mean_mpix": float(np.mean(pixels)) / 1e6}


def worker_reader(cfg: DataConfig, batch: int, batches: int) -> Callable[[], None]:
    """What one DataLoader worker process runs: the reader's item for each of the next
    ``batches`` micro-batches of the epoch order (read, decode, crop, flip, stack; uint8)."""
    data = build_data(cfg, seed=0, device=torch.device("cpu"))
    reader = data._reader("train")  # the Dataset the DataLoader workers index
    state: dict[str, Any] = {"epoch": 0}

    def keys() -> Iterator[list[tuple[int, int]]]:
        while True:
            ids = rank_train_ids(data._train_ids, 0, state["epoch"], batch, 0, 1)
            for step in ids.tolist():
                yield [(i, state["epoch"]) for i in step[0]]
            state["epoch"] += 1

    it = keys()

    def read() -> None:
        for _ in range(batches):
            fetched = reader[next(it)]
            assert fetched.x.shape == (batch, 3, cfg.image_size, cfg.image_size) and not fetched.bad

    return read


def legacy_imagefolder_reader(root: Path, size: int, batch: int, batches: int) -> Callable[[], None]:
    """The imagefolder path as it was before the shards (one DataLoader item per sample:
    torchvision ImageFolder, a RandomResizedCrop + flip Compose under a forked, reseeded
    global RNG, then default_collate), over the same sample order; a faithful copy kept
    here only to measure "today's" path after the shared code replaced it."""
    from torch.utils.data import default_collate
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    from dreg_dist.data.sampling import derive_seed

    folder = ImageFolder(str(root / "train"))
    tf = transforms.Compose([transforms.RandomResizedCrop(size, antialias=True), transforms.RandomHorizontalFlip(),
                             transforms.PILToTensor()])
    train_ids = build_data(DataConfig(name="imagefolder", root=str(root), val_size=10), seed=0, device="cpu")._train_ids
    state: dict[str, Any] = {"epoch": 0}

    def item(index: int, epoch: int) -> tuple[torch.Tensor, int]:
        image, label = folder[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(0, "imagefolder_aug", epoch, index))
            return tf(image), label

    def keys() -> Iterator[list[tuple[int, int]]]:
        while True:
            for step in rank_train_ids(train_ids, 0, state["epoch"], batch, 0, 1).tolist():
                yield [(i, state["epoch"]) for i in step[0]]
            state["epoch"] += 1

    it = keys()

    def read() -> None:
        for _ in range(batches):
            x, _ = default_collate([item(i, e) for i, e in next(it)])
            assert x.shape == (batch, 3, size, size)

    return read


def device_reader(cfg: DataConfig, batch: int, batches: int, device: str) -> Callable[[], None]:
    """The whole train_batches path on ``device`` (for the nvjpeg variant)."""
    data = build_data(cfg, seed=0, device=torch.device(device))
    state: dict[str, Any] = {"epoch": 0}

    def stream() -> Iterator[Any]:
        while True:
            yield from data.train_batches(state["epoch"], batch, 0, 1)
            state["epoch"] += 1

    it = stream()

    def read() -> None:
        for _ in range(batches):
            x, _ = next(it)[0]
            assert x.shape == (batch, 3, cfg.image_size, cfg.image_size)
        if device == "cuda":
            torch.cuda.synchronize()

    return read


def normalize_cost(batch: int, size: int, rounds: int) -> float:
    """CPU seconds per image of the uint8 -> normalized float32 step that CPU training adds
    (on CUDA it runs on the GPU)."""
    norm = Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    times = []
    for _ in range(rounds + 1):
        c0 = time.process_time()
        norm(x)
        times.append(time.process_time() - c0)
    return median(times[1:]) / batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=3000, help="training JPEGs to generate")
    p.add_argument("--width", type=int, default=400)
    p.add_argument("--height", type=int, default=350)
    p.add_argument("--grain", type=float, default=26.0,
                   help="std of the Gaussian grain (pixel levels); 26 gives ~81 KB per 400x350 JPEG, ImageNet's ~0.6 bytes/pixel")
    p.add_argument("--resize", type=int, default=256, help="--resize of the pre-resized shards")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=4, help="batches per variant per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: add the nvjpeg variant (shards, data.decoder=cuda); the CPU variants stay on CPU")
    p.add_argument("--workdir", default=None, help="where to generate the data (default: a temp folder, removed)")
    p.add_argument("--quick", action="store_true", help="600 images, 2 rounds, 2 batches")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.quick:
        args.images, args.rounds, args.batches = 600, 2, 2
    torch.set_num_threads(args.threads)
    print_machine()
    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        run(args, tmp)
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    tree, plain, small = tmp / "tree", tmp / "shards", tmp / f"shards-{args.resize}"
    t0 = time.perf_counter()
    stats = make_tree(tree, args.images, max(20, args.images // 20), (args.width, args.height), args.grain)
    print(f"generated {args.images} train JPEGs ~{args.width}x{args.height} (+-10%), mean {stats['mean_kb']:.1f} KB, "
          f"{stats['mean_mpix']:.3f} Mpix, in {time.perf_counter() - t0:.0f}s")
    conversions = {}
    for out, resize in ((plain, None), (small, args.resize)):
        c0 = time.process_time()
        summary = convert(tree, out, resize=resize, workers=1, log=lambda s: None)
        cpu = time.process_time() - c0
        total = sum(v["images"] for v in summary["splits"].values())
        size = summary["splits"]["train"]["bytes"] / summary["splits"]["train"]["images"] / 1e3
        conversions[out.name] = {"images_per_cpu_s": total / cpu, "kb_per_image": size}
        print(f"dreg-shards {tree.name} {out.name}{' --resize ' + str(resize) if resize else ''}: "
              f"{total / cpu:.0f} images per CPU-second (verify on), {size:.1f} KB per stored image")
    base = dict(val_size=10, image_size=args.image_size, num_workers=0)
    variants: dict[str, Callable[[], None]] = {
        LEGACY: legacy_imagefolder_reader(tree, args.image_size, args.batch, args.batches),
        REF: worker_reader(DataConfig(name="imagefolder", root=str(tree), **base), args.batch, args.batches),
    }
    for label, root in (("shards", plain), (f"shards --resize {args.resize}", small)):
        for decoder in ("pil", "pil_draft", "torchvision"):
            cfg = DataConfig(name="shards", root=str(root), decoder=decoder, **base)
            variants[f"{label}, {decoder}"] = worker_reader(cfg, args.batch, args.batches)
    if args.device == "cuda":
        for label, root in (("shards", plain), (f"shards --resize {args.resize}", small)):
            cfg = DataConfig(name="shards", root=str(root), decoder="cuda", **base)
            variants[f"{label}, cuda (nvjpeg)"] = device_reader(cfg, args.batch, args.batches, "cuda")
    n = args.batch * args.batches
    print(f"variants read {args.batches} x {args.batch} images each per round, {args.rounds} rounds (+1 warm-up), "
          f"image_size {args.image_size}, RandomResizedCrop + flip, threads {args.threads}, in this process")
    times = interleave(variants, args.rounds, 1)
    norm = normalize_cost(args.batch, args.image_size, args.rounds)
    per_core = {k: [n / t for t in v["cpu"]] for k, v in times.items()}
    wall = {k: [n / t for t in v["wall"]] for k, v in times.items()}
    ref, legacy = per_core[REF], per_core[LEGACY]
    results: dict[str, Any] = {"data": stats, "conversion": conversions, "normalize_s_per_image": norm, "variants": {}}
    head = " | ".join(f"cores per {g}" for g in PUBLISHED)
    print(f"\n| variant | images/s per core | x imagefolder | x imagefolder before | + CPU normalization: "
          f"images/s, x imagefolder | {head} |")
    print("| --- | --- | --- | --- | --- |" + " --- |" * len(PUBLISHED))
    ref_norm = 1.0 / (1.0 / median(ref) + norm)
    for name in variants:
        ratio, ratio_legacy = paired_ratio(per_core[name], ref), paired_ratio(per_core[name], legacy)
        rate = median(per_core[name])
        with_norm = 1.0 / (1.0 / rate + norm)
        cores = {g: r / rate for g, r in PUBLISHED.items()}
        cells = " | ".join(f"{c:.1f}" for c in cores.values())
        print(f"| {name} | {rate:.0f} | {fmt_ratio(ratio, 2)} | {ratio_legacy['median']:.2f} | {with_norm:.0f}, "
              f"{with_norm / ref_norm:.2f} | {cells} |")
        results["variants"][name] = {"per_core": per_core[name], "wall": wall[name], "ratio": ratio,
                                     "ratio_before": ratio_legacy, "with_cpu_normalization": with_norm,
                                     "cores_per_gpu": cores}
    print(f"(normalization to float32 on the CPU: {norm * 1e3:.3f} ms per image, added in the 5th column; on CUDA "
          "it runs on the GPU. Cores per GPU = published ResNet-50 img/s per GPU / images/s per core.)")
    if args.device == "cuda":
        print("(cuda variants: the whole train_batches path; images/s per core counts this process's CPU time only)")
    best = max((k for k in variants if "imagefolder" not in k and "cuda" not in k),
               key=lambda k: results["variants"][k]["ratio"]["median"])
    r, rb = results["variants"][best]["ratio"]["median"], results["variants"][best]["ratio_before"]["median"]
    print_load()
    print(f"SUMMARY: shards best CPU variant '{best}' {r:.2f}x imagefolder, {rb:.2f}x imagefolder before shards, "
          f"images/s per core (target >= {TARGET:.0f}x {'met' if min(r, rb) >= TARGET else 'met vs before only' if rb >= TARGET else 'NOT met'}); "
          f"cores per A100: imagefolder {PUBLISHED['A100 (AMP)'] / median(ref):.1f}, best shards "
          f"{results['variants'][best]['cores_per_gpu']['A100 (AMP)']:.1f}")
    write_json(args.json, {"bench": "shards", "args": vars(args), **results})


if __name__ == "__main__":
    main()
