"""Shards: the converter, the index, equality with imagefolder, resume, bad data.

Every tree is made here: a few small JPEGs per class whose content is a smooth random
colour field (so reduced-size decoding stays close to full decoding) of varying sizes.
Equality with imagefolder is asserted bit for bit for ``data.decoder=pil`` (same bytes,
same decoder, same transforms); the other CPU decoders must give the same samples,
labels, crops and flips, with pixels within 1 level (torchvision) or close (pil_draft).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreg_dist.config import load_config
from dreg_dist.config.schema import DataConfig
from dreg_dist.data import DataError, build_data, check_data_available
from dreg_dist.data import shards as shards_module
from dreg_dist.data.shard_index import load_index
from dreg_dist.data.shard_writer import convert, main as shards_main

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


# --------------------------------------------------------------------------- helpers
def jpeg_bytes(rng: np.random.Generator, width: int, height: int) -> bytes:
    low = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_jpeg_tree(root: Path, classes: int = 3, train: int = 8, val: int = 3, seed: int = 0) -> Path:
    """root/train/class{c}/{i}.jpg and root/val/..., sizes 24..63 px per side."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(24, 64, size=2))
                (folder / f"{i:03d}.jpg").write_bytes(jpeg_bytes(rng, w, h))
    return root


def cfg(name: str, root: Path, **kw) -> DataConfig:
    base = dict(name=name, root=str(root), val_size=6, image_size=16, num_workers=0)
    base.update(kw)
    return DataConfig(**base)


def collect_step(dm, epoch: int, B: int, K: int, A: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' micro-batches of global step ``step``, concatenated in rank order."""
    xs, ys = [], []
    for rank in range(K):
        micro = next(iter(dm.train_batches(epoch, B, rank, K, A, start_step=step)))
        assert len(micro) == A
        for x, y in micro:
            assert x.shape[0] == B // (K * A)
            xs.append(x)
            ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def to_uint8(dm, x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(dm.std).view(1, 3, 1, 1) * 255
    return (x * std + mean).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("shards")
    tree = write_jpeg_tree(base / "tree")
    # A tiny shard size forces several shards per split, so reads cross shard boundaries.
    convert(tree, base / "out", shard_mb=0.01, workers=1)
    return tree, base / "out"


# --------------------------------------------------------------------------- format
def test_shards_are_webdataset_tars_and_index_addresses_every_sample(converted):
    tree, out = converted
    index = load_index(out)
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(tree / "train"))
    train = index.splits["train"]
    assert index.classes == folder.classes and len(train) == len(folder) == 24
    assert len(train.shard_paths) > 2  # several shards
    for i, (path, label) in enumerate(folder.samples):
        shard = train.shard_paths[int(train.shard[i])]
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            jpg, cls = members[f"{i:08d}.jpg"], members[f"{i:08d}.cls"]
            assert jpg.offset_data == int(train.offset[i]) and jpg.size == int(train.size[i])
            assert tar.extractfile(jpg).read() == Path(path).read_bytes()  # original bytes, untouched
            assert tar.extractfile(cls).read() == str(label).encode() and int(train.label[i]) == label
        with Image.open(path) as img:
            assert (int(train.width[i]), int(train.height[i])) == img.size
    # webdataset groups a sample's files by consecutive members sharing a key
    with tarfile.open(train.shard_paths[0]) as tar:
        names = tar.getnames()
    assert names[:4] == ["00000000.jpg", "00000000.cls", "00000001.jpg", "00000001.cls"]


def test_webdataset_library_reads_the_shards(converted):
    wds = pytest.importorskip("webdataset")
    _, out = converted
    index = load_index(out)
    urls = [str(p) for p in index.splits["val"].shard_paths]
    got = [(key, int(cls)) for key, cls in wds.WebDataset(urls, shardshuffle=False).to_tuple("__key__", "cls")]
    assert got == [(f"{i:08d}", int(label)) for i, label in enumerate(index.splits["val"].label)]


# --------------------------------------------------------------------------- contract
@pytest.mark.parametrize("K,A", [(1, 1), (2, 1), (2, 2)])
def test_same_image_label_pairs_per_global_batch_as_imagefolder(converted, K, A):
    tree, out = converted
    folder = build_data(cfg("imagefolder", tree), seed=5, device=CPU)
    shard = build_data(cfg("shards", out, decoder="pil"), seed=5, device=CPU)
    assert (shard.train_size, shard.val_size, shard.test_size, shard.classes) == (
        folder.train_size, folder.val_size, folder.test_size, folder.classes)
    B = 4
    steps = shard.steps_per_epoch(B)
    assert steps == 4
    for epoch in (0, 1):
        for t in range(steps):
            xf, yf = collect_step(folder, epoch, B, 1, 1, t)  # the single-worker imagefolder batch
            xs, ys = collect_step(shard, epoch, B, K, A, t)
            assert torch.equal(xs, xf) and torch.equal(ys, yf)  # bit-identical images, same labels
    assert not torch.equal(collect_step(shard, 0, B, K, A, 0)[0], collect_step(shard, 1, B, K, A, 0)[0])
    for split in ("val", "test"):
        ref = [(x, y) for x, y in folder.eval_batches(split, 0, 1, 4)]
        parts = [(x, y) for r in range(K + 1) for x, y in shard.eval_batches(split, r, K + 1, 2)]
        assert torch.equal(torch.cat([x for x, _ in parts]), torch.cat([x for x, _ in ref]))
        assert torch.equal(torch.cat([y for _, y in parts]), torch.cat([y for _, y in ref]))


def test_loader_workers_deliver_the_same_batches(converted):
    _, out = converted
    inline = build_data(cfg("shards", out, decoder="pil"), seed=2, device=CPU)
    workers = build_data(cfg("shards", out, decoder="pil", num_workers=2), seed=2, device=CPU)
    a = [xy for step in inline.train_batches(3, 6, 1, 2) for xy in step]
    b = [xy for step in workers.train_batches(3, 6, 1, 2) for xy in step]
    assert len(a) == len(b) == 3
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))


@pytest.mark.parametrize("decoder,largest,mean", [("torchvision", 1, 0.5), ("pil_draft", 32, 2.0)])
def test_fast_decoders_same_samples_crops_and_flips(converted, decoder, largest, mean):
    """torchvision: the same decode, a resize that rounds differently (<= 1 level). pil_draft:
    a reduced-size decode, close on average (these images are smooth) but not per pixel."""
    tree, out = converted
    ref = build_data(cfg("imagefolder", tree), seed=1, device=CPU)
    fast = build_data(cfg("shards", out, decoder=decoder), seed=1, device=CPU)
    pairs = [(r, f) for (r,), (f,) in zip(ref.train_batches(0, 6, 0, 1), fast.train_batches(0, 6, 0, 1))]
    xr = torch.cat([x for x, _ in ref.eval_batches("test", 0, 1, 5)])
    xf = torch.cat([x for x, _ in fast.eval_batches("test", 0, 1, 5)])
    pairs.append(((xr, torch.zeros(0)), (xf, torch.zeros(0))))
    assert len(pairs) == 4
    for r, f in pairs:
        assert torch.equal(r[1], f[1])
        a, b = to_uint8(ref, r[0]).float(), to_uint8(fast, f[0]).float()
        assert (a - b).abs().max() <= largest and (a - b).abs().mean() <= mean
        # a wrong flip (or crop) would be far off
        assert (a - b.flip(-1)).abs().mean() > 4 * mean


def test_mid_epoch_resume_gives_the_uninterrupted_batches(converted):
    _, out = converted
    config = cfg("shards", out, decoder="torchvision")
    whole = {r: list(build_data(config, seed=9, device=CPU).train_batches(2, 6, r, 2)) for r in range(2)}
    for rank in range(2):
        resumed = list(build_data(config, seed=9, device=CPU).train_batches(2, 6, rank, 2, start_step=1))
        assert len(resumed) == len(whole[rank]) - 1 == 2
        for got, want in zip(resumed, whole[rank][1:]):
            assert torch.equal(got[0][0], want[0][0]) and torch.equal(got[0][1], want[0][1])


def test_eval_reads_each_shard_in_few_reads(converted, monkeypatch):
    _, out = converted
    dm = build_data(cfg("shards", out), seed=0, device=CPU)
    calls = []
    real = os.pread
    monkeypatch.setattr(shards_module.os, "pread", lambda fd, n, off: calls.append(n) or real(fd, n, off))
    xs = [x for x, _ in dm.eval_batches("test", 0, 1, 9)]
    assert sum(x.shape[0] for x in xs) == 9
    assert len(calls) == len(dm.index.splits["val"].shard_paths)  # one sequential read per shard


# --------------------------------------------------------------------------- CLI and config
def test_cli_resize_and_config(tmp_path, capsys):
    tree = write_jpeg_tree(tmp_path / "tree", classes=2, train=4, val=2)
    out = tmp_path / "out"
    assert shards_main([str(tree), str(out), "--resize", "30", "--workers", "2"]) == 0
    assert "train on them with: data.name=shards" in capsys.readouterr().out
    index = load_index(out)
    heights, widths = index.splits["train"].height, index.splits["train"].width
    assert (np.minimum(heights, widths) <= 30).all() and json.loads((out / "index.json").read_text())["resize"] == 30
    config = load_config(REPO / "configs" / "quickstart.yaml",
                         ["data.name=shards", f"data.root={out}", "data.val_size=2", "data.decoder=pil_draft"])
    check_data_available(config.data)
    dm = build_data(config.data, seed=0, device=CPU)
    assert dm.num_classes == 2 and dm.train_size == 6
    with pytest.raises(DataError, match="data.decoder=cuda"):
        build_data(cfg("shards", out, decoder="cuda", val_size=2), seed=0, device=CPU)
    assert "dreg-shards = dreg_dist.cli:shards_main" in (REPO / "setup.cfg").read_text()
    # refuses to overwrite
    assert shards_main([str(tree), str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad data
def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_bad_jpeg_stops_conversion_or_is_skipped_and_counted(tmp_path, damage):
    tree = write_jpeg_tree(tmp_path / "tree")
    bad = tree / "train" / "class1" / "002.jpg"
    data = bad.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    else:  # garbage in the entropy-coded data, EOI intact: PIL only warns, the converter refuses
        bad.write_bytes(data[:400] + bytes(range(256)) * 2 + data[912:])
    with pytest.raises(DataError) as err:
        convert(tree, tmp_path / "out", workers=1)
    msg = one_line(err)
    assert str(bad) in msg and "--skip-bad" in msg
    assert not (tmp_path / "out" / "index.json").exists() and not list((tmp_path / "out").glob("*.tar*"))
    summary = convert(tree, tmp_path / "out", workers=1, skip_bad=True)
    assert len(summary["skipped"]) == 1 and summary["skipped"][0]["path"] == str(bad)
    index = load_index(tmp_path / "out")
    from torchvision.datasets import ImageFolder

    kept = [label for path, label in ImageFolder(str(tree / "train")).samples if path != str(bad)]
    assert index.splits["train"].label.tolist() == kept  # no label shift


def test_empty_class_folder_is_refused_by_name(tmp_path):
    tree = write_jpeg_tree(tmp_path / "tree", classes=2, train=2, val=1)
    (tree / "train" / "zebra").mkdir()
    (tree / "val" / "zebra").mkdir()
    with pytest.raises(DataError) as err:
        convert(tree, tmp_path / "out", workers=1)
    assert "zebra" in one_line(err) and "hold no images" in str(err.value)
    with pytest.raises(DataError, match="zebra"):
        build_data(cfg("imagefolder", tree, val_size=1), seed=0, device=CPU)


def test_missing_or_truncated_shard_fails_before_training(converted, tmp_path):
    _, out = converted
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in out.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    shard = sorted(copy.glob("train-*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[:-2000])
    with pytest.raises(DataError) as err:
        check_data_available(cfg("shards", copy))
    assert shard.name in one_line(err) and "expects" in str(err.value)
    shard.unlink()
    with pytest.raises(DataError) as err:
        check_data_available(cfg("shards", copy))
    assert shard.name in one_line(err) and "missing" in str(err.value)
    with pytest.raises(DataError) as err:
        check_data_available(cfg("shards", tmp_path / "nowhere"))
    assert "dreg-shards" in one_line(err) and "index.json" in str(err.value)


def test_shard_vanishing_during_training_is_one_error_not_a_hang(converted, tmp_path):
    _, out = converted
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in out.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    dm = build_data(cfg("shards", copy, num_workers=2), seed=0, device=CPU)
    for p in copy.glob("train-*.tar"):
        p.unlink()
    with pytest.raises(DataError) as err:
        list(dm.train_batches(0, 6, 0, 1))
    assert "cannot open shard" in one_line(err)


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_sample_damaged_after_conversion_errors_or_is_skipped(converted, tmp_path, capsys, decoder):
    _, out = converted
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in out.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    index = load_index(copy)
    train = index.splits["train"]
    victim = 7
    with open(train.shard_paths[int(train.shard[victim])], "r+b") as f:  # cut the JPEG short: no EOI
        f.seek(int(train.offset[victim] + train.size[victim]) - 2)
        f.write(b"\0\0")
    strict = build_data(cfg("shards", copy, decoder=decoder, val_size=1), seed=0, device=CPU)
    with pytest.raises(DataError) as err:
        list(strict.train_batches(0, 23, 0, 1))
    msg = one_line(err)
    assert f"train sample {victim}" in msg and "data.skip_bad_samples=true" in msg
    lenient = build_data(cfg("shards", copy, decoder=decoder, val_size=1, skip_bad_samples=True), seed=0, device=CPU)
    ref = build_data(cfg("shards", out, decoder=decoder, val_size=1), seed=0, device=CPU)
    (x, y), = next(iter(lenient.train_batches(0, 23, 0, 1)))
    (xr, yr), = next(iter(ref.train_batches(0, 23, 0, 1)))
    keep = [i for i, row in enumerate(xr) if not any(torch.equal(row, other) for other in x)]
    assert x.shape[0] == 22 and lenient.skipped_samples == 1 and len(keep) == 1
    assert torch.equal(y, torch.cat([yr[: keep[0]], yr[keep[0] + 1:]]))  # labels stay with their images
    assert "skipped 1 undecodable sample" in capsys.readouterr().err


def test_imagefolder_bad_file_is_one_error_or_skipped(tmp_path):
    tree = write_jpeg_tree(tmp_path / "tree", classes=2, train=4, val=2)
    bad = tree / "train" / "class0" / "001.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataError) as err:
        list(build_data(cfg("imagefolder", tree, val_size=1), seed=0, device=CPU).train_batches(0, 7, 0, 1))
    assert str(bad) in one_line(err)
    dm = build_data(cfg("imagefolder", tree, val_size=1, skip_bad_samples=True), seed=0, device=CPU)
    (x, y), = next(iter(dm.train_batches(0, 7, 0, 1)))
    assert x.shape[0] == 6 and dm.skipped_samples == 1


def test_gpu_decoding_path_run_with_the_cpu_decoder(converted, tmp_path, monkeypatch):
    """data.decoder=cuda minus nvjpeg: workers ship bytes and crop boxes, the training process
    decodes the micro-batch in one decode_jpeg call and crops it (here on the CPU, where the
    pixels must equal decoder=torchvision's); a sample the batched call chokes on is found,
    named and skipped. The nvjpeg kernels themselves need a GPU and are not run here."""
    _, out = converted
    monkeypatch.setattr(shards_module, "resolve_decoder", lambda name, device: name)
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in out.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    gpu_like = build_data(cfg("shards", copy, decoder="cuda"), seed=4, device=CPU)
    cpu = build_data(cfg("shards", copy, decoder="torchvision"), seed=4, device=CPU)
    assert gpu_like.pin_memory is False and isinstance(gpu_like._pool[[(0, 0), (1, 0)]].x, list)
    for g, c in zip(gpu_like.train_batches(1, 6, 1, 2, 3), cpu.train_batches(1, 6, 1, 2, 3)):
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(g, c))
    xg = torch.cat([x for x, _ in gpu_like.eval_batches("val", 0, 1, 4)])
    assert torch.equal(xg, torch.cat([x for x, _ in cpu.eval_batches("val", 0, 1, 4)]))
    train = load_index(copy).splits["train"]
    victim = 3
    with open(train.shard_paths[int(train.shard[victim])], "r+b") as f:  # garbage inside, markers intact
        f.seek(int(train.offset[victim]) + int(train.size[victim]) // 2)
        f.write(bytes(range(200)))
    strict = build_data(cfg("shards", copy, decoder="cuda"), seed=4, device=CPU)
    with pytest.raises(DataError) as err:
        list(strict.train_batches(0, 18, 0, 1))
    assert f"train sample {victim}" in one_line(err) and "GPU decoder failed" in str(err.value)
    lenient = build_data(cfg("shards", copy, decoder="cuda", skip_bad_samples=True), seed=4, device=CPU)
    (x, y), = next(iter(lenient.train_batches(0, 18, 0, 1)))
    assert x.shape[0] == 17 and y.shape[0] == 17 and lenient.skipped_samples == 1
