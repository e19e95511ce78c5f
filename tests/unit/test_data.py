"""Data package: CIFAR readers, errors, K-independent batching, augmentation, sharding.

All data is made here: tiny fake CIFAR batch files in tmp_path whose images carry their
own index in the first two pixel values (so a sample can be identified after
normalization), tiny synthetic sets, and a few PNG files for imagefolder.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dreg_dist.config.schema import DataConfig
from dreg_dist.data import DataError, build_data, check_data_available
from dreg_dist.data.augment import crop_flip, crop_flip_params
from dreg_dist.data.cifar import read_batch, read_cifar
from dreg_dist.data.sampling import split_train_val

CPU = torch.device("cpu")


# --------------------------------------------------------------------------- helpers
def fake_images(n: int, start: int, rng: np.random.Generator) -> np.ndarray:
    """n x 3072 uint8 rows; row i encodes its global index start+i in bytes 0 and 1."""
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    ids = np.arange(start, start + n)
    data[:, 0] = ids % 256
    data[:, 1] = ids // 256
    return data


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root: Path, per_batch: int = 12, test: int = 10) -> dict[str, np.ndarray]:
    """Fake cifar-10-batches-py under root; returns the expected arrays."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for b in range(5):
        x = fake_images(per_batch, b * per_batch, rng)
        y = [(b * per_batch + i) % 10 for i in range(per_batch)]
        _dump(folder / f"data_batch_{b + 1}", {b"data": x, b"labels": y, b"batch_label": b"x", b"filenames": []})
        xs.append(x)
        ys += y
    tx = fake_images(test, 0, rng)
    ty = [(3 * i) % 10 for i in range(test)]
    _dump(folder / "test_batch", {b"data": tx, b"labels": ty})
    names = [f"c{i}".encode() for i in range(10)]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch})
    return {"train_x": np.concatenate(xs), "train_y": np.array(ys), "test_x": tx, "test_y": np.array(ty)}


def write_cifar100(root: Path, train: int = 30, test: int = 7) -> dict[str, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    x = fake_images(train, 0, rng)
    y = [(7 * i) % 100 for i in range(train)]
    _dump(folder / "train", {b"data": x, b"fine_labels": y, b"coarse_labels": [i % 20 for i in y]})
    tx = fake_images(test, 0, rng)
    ty = [99 - i for i in range(test)]
    _dump(folder / "test", {b"data": tx, b"fine_labels": ty, b"coarse_labels": [0] * test})
    _dump(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    return {"train_x": x, "train_y": np.array(y), "test_x": tx, "test_y": np.array(ty)}


def to_uint8(dm, x: torch.Tensor) -> torch.Tensor:
    """Undo the normalization (exact up to float rounding)."""
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(dm.std).view(1, 3, 1, 1) * 255
    return (x * std + mean).round().clamp(0, 255).to(torch.uint8)


def sample_ids(dm, x: torch.Tensor) -> list[int]:
    """Indices encoded by fake_images (valid for unaugmented images)."""
    u = to_uint8(dm, x).view(x.shape[0], -1).long()
    return (u[:, 0] + 256 * u[:, 1]).tolist()


def cifar_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(name="cifar10", root=str(root), **kw)


def synth_cfg(**kw) -> DataConfig:
    base = dict(name="synthetic", val_size=8, synthetic_train_size=72, synthetic_test_size=20)
    base.update(kw)
    return DataConfig(**base)


def collect_step(dm, epoch, B, K, A, step):
    """All ranks' micro-batches of global step `step`, concatenated in rank order."""
    xs, ys = [], []
    for rank in range(K):
        micro = list(dm.train_batches(epoch, B, rank, K, A, start_step=step))[0]
        assert len(micro) == A
        for x, y in micro:
            assert x.shape[0] == B // (K * A)
            xs.append(x)
            ys.append(y)
    return torch.cat(xs), torch.cat(ys)


# --------------------------------------------------------------------------- readers
def test_cifar10_reader_shapes_and_order(tmp_path):
    exp = write_cifar10(tmp_path)
    data = read_cifar(tmp_path, "cifar10")
    assert data.train_x.shape == (60, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.train_y.dtype == torch.int64 and data.test_x.shape == (10, 3, 32, 32)
    assert torch.equal(data.train_x.view(60, -1), torch.from_numpy(exp["train_x"]))
    assert data.train_y.tolist() == exp["train_y"].tolist()
    assert data.test_y.tolist() == exp["test_y"].tolist()
    assert torch.equal(data.test_x.view(10, -1), torch.from_numpy(exp["test_x"]))
    assert data.classes == [f"c{i}" for i in range(10)]
    # CHW row-major: first 1024 bytes are the red plane
    x, _ = read_batch(tmp_path / "cifar-10-batches-py" / "data_batch_1", b"labels")
    assert torch.equal(x[0, 1].flatten(), torch.from_numpy(exp["train_x"][0, 1024:2048]))


def test_cifar100_reader_uses_fine_labels(tmp_path):
    exp = write_cifar100(tmp_path)
    data = read_cifar(tmp_path, "cifar100")
    assert data.train_x.shape == (30, 3, 32, 32) and data.test_x.shape == (7, 3, 32, 32)
    assert data.train_y.tolist() == exp["train_y"].tolist()
    assert data.test_y.tolist() == exp["test_y"].tolist()
    assert len(data.classes) == 100 and data.classes[5] == "f5"
    dm = build_data(DataConfig(name="cifar100", root=str(tmp_path), val_size=5), seed=0, device=CPU)
    assert (dm.num_classes, dm.train_size, dm.val_size, dm.test_size) == (100, 25, 5, 7)
    assert dm.input_shape == (3, 32, 32)


# --------------------------------------------------------------------------- errors
def test_missing_root_names_folder_and_fix(tmp_path):
    cfg = cifar_cfg(tmp_path / "nowhere")
    for call in (lambda: check_data_available(cfg), lambda: build_data(cfg, seed=0, device=CPU)):
        with pytest.raises(DataError) as err:
            call()
        msg = str(err.value)
        assert "cifar-10-batches-py/" in msg and "data.root" in msg and "data.download=true" in msg
        assert "\n" not in msg
    with pytest.raises(DataError, match="cifar-100-python/"):
        check_data_available(DataConfig(name="cifar100", root=str(tmp_path)))
    with pytest.raises(DataError, match="no train/ folder"):
        check_data_available(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_root_pointing_into_folder_and_incomplete_folder(tmp_path):
    write_cifar10(tmp_path)
    inner = tmp_path / "cifar-10-batches-py"
    with pytest.raises(DataError, match="folder itself"):
        check_data_available(cifar_cfg(inner))
    (inner / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        check_data_available(cifar_cfg(tmp_path))
    # download=true defers the problem to build_data, which would fetch the archive
    check_data_available(cifar_cfg(tmp_path / "nowhere", download=True))


def test_val_size_errors(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(DataError, match="data.val_size"):
        build_data(cifar_cfg(tmp_path, val_size=60), seed=0, device=CPU)
    with pytest.raises(DataError, match="data.val_size"):
        check_data_available(synth_cfg(val_size=72))
    with pytest.raises(DataError, match="data.val_size"):
        check_data_available(cifar_cfg(tmp_path, val_size=-1))
    dm = build_data(cifar_cfg(tmp_path, val_size=0), seed=0, device=CPU)
    assert dm.val_size == 0 and list(dm.eval_batches("val", 0, 1, 8)) == []


def test_batch_divisibility_error():
    dm = build_data(synth_cfg(), seed=0, device=CPU, num_classes=4)
    with pytest.raises(DataError, match="not divisible"):
        dm.train_batches(0, 30, 0, 4)
    with pytest.raises(DataError, match="2 x 4 = 8"):
        dm.train_batches(0, 20, 0, 2, accumulation_steps=4)
    with pytest.raises(DataError, match="exceeds"):
        dm.steps_per_epoch(1024)
    with pytest.raises(DataError, match="split"):
        dm.eval_batches("train", 0, 1, 8)


# --------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("augment", [True, False])
def test_global_batch_independent_of_world_size(augment):
    dm = build_data(synth_cfg(augment=augment), seed=3, device=CPU, num_classes=4)
    B = 16
    steps = dm.steps_per_epoch(B)
    assert steps == 64 // 16
    for epoch in (0, 1):
        ref = [collect_step(dm, epoch, B, 1, 1, t) for t in range(steps)]
        for K in (1, 2, 4):
            for A in (1, 2):
                for t in (0, steps - 1):
                    x, y = collect_step(dm, epoch, B, K, A, t)
                    assert torch.equal(x, ref[t][0]) and torch.equal(y, ref[t][1])
    # full epoch iteration and start_step agree
    full = list(dm.train_batches(0, B, 1, 2, 2))
    resumed = list(dm.train_batches(0, B, 1, 2, 2, start_step=2))
    assert len(full) == steps and len(resumed) == steps - 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[2][0], resumed[0][0]))
    assert list(dm.train_batches(0, B, 0, 1, start_step=steps)) == []


def test_epochs_and_seeds(tmp_path):
    write_cifar10(tmp_path)
    cfg = cifar_cfg(tmp_path, val_size=12, augment=False)
    dm = build_data(cfg, seed=0, device=CPU)

    def epoch_ids(module, epoch):
        return [i for step in module.train_batches(epoch, 8, 0, 1) for x, _ in step for i in sample_ids(module, x)]

    e0, e1 = epoch_ids(dm, 0), epoch_ids(dm, 1)
    assert len(e0) == len(set(e0)) == 48 and e0 != e1 and set(e0) == set(e1)
    assert epoch_ids(build_data(cfg, seed=0, device=CPU), 0) == e0
    assert epoch_ids(build_data(cfg, seed=1, device=CPU), 0) != e0
    # same seed -> identical augmented tensors from a fresh module
    a = build_data(synth_cfg(), seed=5, device=CPU, num_classes=4)
    b = build_data(synth_cfg(), seed=5, device=CPU, num_classes=4)
    xa, ya = next(iter(a.train_batches(2, 16, 0, 1)))[0]
    xb, yb = next(iter(b.train_batches(2, 16, 0, 1)))[0]
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_val_split_disjoint_and_stable(tmp_path):
    exp = write_cifar10(tmp_path)
    train_ids, val_ids = split_train_val(100, 30, seed=7)
    assert len(set(train_ids.tolist()) | set(val_ids.tolist())) == 100
    assert not set(train_ids.tolist()) & set(val_ids.tolist())
    again = split_train_val(100, 30, seed=7)
    assert torch.equal(again[0], train_ids) and torch.equal(again[1], val_ids)
    assert not torch.equal(split_train_val(100, 30, seed=8)[1], val_ids)

    dm = build_data(cifar_cfg(tmp_path, val_size=12, augment=False), seed=0, device=CPU)
    val = [i for x, _ in dm.eval_batches("val", 0, 1, 5) for i in sample_ids(dm, x)]
    train = [i for step in dm.train_batches(0, 48, 0, 1) for x, _ in step for i in sample_ids(dm, x)]
    assert len(val) == 12 and not set(val) & set(train) and len(set(val) | set(train)) == 60
    # labels travel with their images
    val_y = torch.cat([y for _, y in dm.eval_batches("val", 0, 1, 5)])
    assert val_y.tolist() == exp["train_y"][val].tolist()


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_sharding_exact(tmp_path, split):
    exp = write_cifar10(tmp_path)
    dm = build_data(cifar_cfg(tmp_path, val_size=11), seed=0, device=CPU)  # augment on: eval must ignore it
    n = dm.val_size if split == "val" else dm.test_size
    assert n in (11, 10)
    ref = torch.cat([x for x, _ in dm.eval_batches(split, 0, 1, 4)])
    for K in (1, 2, 3):
        xs, ys = [], []
        for rank in range(K):
            for x, y in dm.eval_batches(split, rank, K, 3):
                assert 0 < x.shape[0] <= 3 and x.dtype == torch.float32 and y.dtype == torch.int64
                xs.append(x)
                ys.append(y)
        x = torch.cat(xs)
        ids = sample_ids(dm, x)
        assert len(ids) == n == len(set(ids))
        assert torch.equal(x, ref)
        if split == "test":
            assert ids == list(range(n))
            assert torch.cat(ys).tolist() == exp["test_y"].tolist()
            raw = torch.from_numpy(exp["test_x"]).view(-1, 3, 32, 32)
            assert torch.equal(to_uint8(dm, x), raw)
    # more ranks than samples: some ranks get nothing, still exact
    got = [i for r in range(n + 2) for x, _ in dm.eval_batches(split, r, n + 2, 8) for i in sample_ids(dm, x)]
    assert sorted(got) == sorted(sample_ids(dm, ref))


# --------------------------------------------------------------------------- augmentation
def reference_crop_flip(img: torch.Tensor, oy: int, ox: int, flip: bool) -> torch.Tensor:
    out = F.pad(img, (4, 4, 4, 4))[:, oy : oy + 32, ox : ox + 32]
    return out.flip(-1) if flip else out


def test_crop_flip_matches_per_sample_reference():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    offsets, flips = crop_flip_params(64, seed=1, epoch=0)
    out = crop_flip(x, offsets, flips)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for i in range(64):
        ref = reference_crop_flip(x[i], int(offsets[i, 0]), int(offsets[i, 1]), bool(flips[i]))
        assert torch.equal(out[i], ref)
    assert flips.any() and (~flips).any() and (offsets != 4).any()
    identity = crop_flip(x, torch.full((64, 2), 4), torch.zeros(64, dtype=torch.bool))
    assert torch.equal(identity, x)
    mirrored = crop_flip(x, torch.full((64, 2), 4), torch.ones(64, dtype=torch.bool))
    assert torch.equal(mirrored, x.flip(-1))


def test_crop_flip_params_deterministic():
    a = crop_flip_params(500, seed=3, epoch=2)
    b = crop_flip_params(500, seed=3, epoch=2)
    c = crop_flip_params(500, seed=3, epoch=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert set(a[0].unique().tolist()) == set(range(9))


def test_module_applies_augmentation_per_sample_id(tmp_path):
    exp = write_cifar10(tmp_path)
    raw = torch.from_numpy(exp["train_x"]).view(-1, 3, 32, 32)
    plain = build_data(cifar_cfg(tmp_path, val_size=12, augment=False), seed=4, device=CPU)
    aug = build_data(cifar_cfg(tmp_path, val_size=12), seed=4, device=CPU)
    epoch = 1
    offsets, flips = crop_flip_params(60, seed=4, epoch=epoch)
    differs = 0
    for step_plain, step_aug in zip(plain.train_batches(epoch, 16, 0, 1), aug.train_batches(epoch, 16, 0, 1)):
        (xp, yp), (xa, ya) = step_plain[0], step_aug[0]
        assert torch.equal(yp, ya)
        ids = sample_ids(plain, xp)
        assert torch.equal(to_uint8(plain, xp), raw[ids])
        got = to_uint8(aug, xa)
        for j, i in enumerate(ids):
            ref = reference_crop_flip(raw[i], int(offsets[i, 0]), int(offsets[i, 1]), bool(flips[i]))
            assert torch.equal(got[j], ref)
        differs += int((got != raw[ids]).flatten(1).any(1).sum())
    assert differs > 40


# --------------------------------------------------------------------------- synthetic
def test_synthetic_is_learnable():
    cfg = synth_cfg(val_size=128, synthetic_train_size=1152, synthetic_test_size=400)
    dm = build_data(cfg, seed=0, device=CPU, num_classes=10)
    assert (dm.num_classes, dm.train_size, dm.val_size, dm.test_size) == (10, 1024, 128, 400)
    x0, _ = next(iter(dm.eval_batches("test", 0, 1, 400)))
    assert abs(float(x0.mean())) < 0.2 and 0.7 < float(x0.std()) < 1.3
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    steps = 0
    for epoch in range(20):
        for step in dm.train_batches(epoch, 64, 0, 1):
            x, y = step[0]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        if steps >= 160:
            break
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in dm.eval_batches("test", 0, 1, 200))
    assert correct / dm.test_size > 0.6, correct / dm.test_size  # chance is 0.1


def test_synthetic_content_fixed_and_split_seeded():
    a = build_data(synth_cfg(), seed=0, device=CPU, num_classes=4)
    b = build_data(synth_cfg(), seed=1, device=CPU, num_classes=4)
    ta = torch.cat([x for x, _ in a.eval_batches("test", 0, 1, 64)])
    tb = torch.cat([x for x, _ in b.eval_batches("test", 0, 1, 64)])
    assert torch.equal(ta, tb)
    va = torch.cat([x for x, _ in a.eval_batches("val", 0, 1, 64)])
    vb = torch.cat([x for x, _ in b.eval_batches("val", 0, 1, 64)])
    assert not torch.equal(va, vb)

def test_micro_batches_carry_their_positions_in_the_global_batch():
    """Each micro-batch says where its samples sit in the step's global batch (rank-major, then
    accumulation step): the same positions for the same samples on any K and A."""
    dm = build_data(synth_cfg(), seed=3, device=CPU, num_classes=4)
    B = 16
    whole = next(iter(dm.train_batches(1, B, 0, 1)))[0]
    assert torch.equal(whole.index, torch.arange(B))
    for K, A in ((2, 1), (2, 2), (4, 2)):
        for rank in range(K):
            for i, b in enumerate(next(iter(dm.train_batches(1, B, rank, K, A)))):
                start = (rank * A + i) * (B // (K * A))
                assert b.index.tolist() == list(range(start, start + B // (K * A)))
                assert torch.equal(b.x, whole.x[b.index])


# --------------------------------------------------------------------------- imagefolder
def write_imagefolder(root: Path, per_class: int = 6, classes: int = 2) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 3)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.png")


def test_imagefolder_world_size_independent_and_exact_eval(tmp_path):
    write_imagefolder(tmp_path)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), val_size=4, image_size=8, num_workers=0)
    check_data_available(cfg)
    dm = build_data(cfg, seed=0, device=CPU)
    assert (dm.num_classes, dm.train_size, dm.val_size, dm.test_size) == (2, 8, 4, 6)
    assert dm.input_shape == (3, 8, 8) and dm.mean == (0.485, 0.456, 0.406)
    ref = collect_step(dm, 0, 4, 1, 1, 1)
    assert ref[0].shape == (4, 3, 8, 8) and ref[0].dtype == torch.float32
    x, y = collect_step(dm, 0, 4, 2, 2, 1)
    assert torch.equal(x, ref[0]) and torch.equal(y, ref[1])
    assert not torch.equal(collect_step(dm, 1, 4, 1, 1, 1)[0], ref[0])
    whole = torch.cat([x for x, _ in dm.eval_batches("test", 0, 1, 6)])
    parts = torch.cat([x for r in range(4) for x, _ in dm.eval_batches("test", r, 4, 1)])
    assert whole.shape[0] == 6 and torch.equal(whole, parts)


def test_imagefolder_augmentation_independent_of_loader_workers(tmp_path):
    write_imagefolder(tmp_path)
    base = dict(name="imagefolder", root=str(tmp_path), val_size=4, image_size=8)
    inline = build_data(DataConfig(**base, num_workers=0), seed=1, device=CPU)
    workers = build_data(DataConfig(**base, num_workers=2), seed=1, device=CPU)
    a = [x for step in inline.train_batches(3, 4, 0, 1) for x, _ in step]
    b = [x for step in workers.train_batches(3, 4, 0, 1) for x, _ in step]
    assert len(a) == 2 and all(torch.equal(p, q) for p, q in zip(a, b))


def test_a_skipped_sample_leaves_the_others_their_positions(tmp_path):
    write_imagefolder(tmp_path)
    base = dict(name="imagefolder", root=str(tmp_path), val_size=4, image_size=8, num_workers=0)
    ref = next(iter(build_data(DataConfig(**base), seed=0, device=CPU).train_batches(0, 8, 0, 1)))[0]
    assert ref.index.tolist() == list(range(8))
    victim = (tmp_path / "train" / "class0" / "2.png")
    victim.write_bytes(victim.read_bytes()[:40])
    dm = build_data(DataConfig(**base, skip_bad_samples=True), seed=0, device=CPU)
    (x, y), = batches = next(iter(dm.train_batches(0, 8, 0, 1)))
    kept = batches[0].index
    assert x.shape[0] == 7 and dm.skipped_samples == 1 and len(kept) == 7
    assert torch.equal(x, ref.x[kept]) and torch.equal(y, ref.y[kept])  # each image keeps its position


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("on_device", [True, False])
def test_cuda_batches_equal_cpu_batches(on_device):
    cpu = build_data(synth_cfg(), seed=2, device=CPU, num_classes=4)
    gpu = build_data(synth_cfg(on_device=on_device), seed=2, device=torch.device("cuda"), num_classes=4)
    for sc, sg in zip(cpu.train_batches(1, 16, 1, 2, 2), gpu.train_batches(1, 16, 1, 2, 2)):
        for (xc, yc), (xg, yg) in zip(sc, sg):
            assert xg.is_cuda and yg.is_cuda
            assert torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())
    for (xc, _), (xg, _) in zip(cpu.eval_batches("val", 0, 1, 5), gpu.eval_batches("val", 0, 1, 5)):
        assert torch.equal(xc, xg.cpu())
