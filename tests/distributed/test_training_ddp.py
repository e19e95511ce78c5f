"""Real multi-process training runs (torchrun, gloo): K-independence, export, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dreg_dist
from dreg_dist.config import load_config
from dreg_dist.data import build_data
from dreg_dist.models import build_model
from dreg_dist.train.evaluate import evaluate

from ..conftest import REPO, assert_ok, final_weights, launch

pytestmark = pytest.mark.distributed

QUICKSTART = "configs/quickstart.yaml"




def test_two_workers_reach_the_weights_of_one(tmp_path: Path, tiny: list[str]) -> None:
    # BN-free model (GroupNorm), so the split of the batch cannot matter. (With BN the
    # same holds with train.sync_bn, which PyTorch supports on CUDA only.) A large
    # contrast (lambda 1, branches initialised far apart) makes adding its gradient K
    # times or 1/K times move the branch weights far beyond the tolerance.
    overrides = tiny + [
        "model.arch=cnn_small_gn", "train.epochs=1", "dreg.lam=1.0", "dreg.init_scale=0.5", "optim.lr=0.4",
        "dreg.form=literal",
    ]
    one = launch(1, QUICKSTART, tmp_path / "k1", overrides)
    assert_ok(one)
    two = launch(2, QUICKSTART, tmp_path / "k2", overrides)
    assert_ok(two)
    w1, w2 = final_weights(tmp_path / "k1"), final_weights(tmp_path / "k2")
    assert w1.keys() == w2.keys()
    for key in w1:
        if w1[key].is_floating_point():
            assert torch.allclose(w1[key], w2[key], atol=1e-4, rtol=0), key
    # The branches did move apart, so the check above covered the contrast gradient.
    assert not torch.allclose(w1["net.conv4.weight"], w1["branch_L.weight"], atol=1e-2)


def test_quickstart_end_to_end_export_matches_meta(tmp_path: Path) -> None:
    run_dir = tmp_path / "quick"
    done = launch(2, QUICKSTART, run_dir, ["train.epochs=2", "data.synthetic_train_size=2048", "data.val_size=256",
                                          "data.synthetic_noise=3.0", "optim.warmup_epochs=0", "log.every_steps=1"])
    assert_ok(done)
    assert "resumed" not in done.stdout
    assert "val acc: R" in done.stdout and "img/s" in done.stdout

    meta = json.loads((run_dir / "export" / "meta.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert meta["path"] in ("R", "L") and meta["path"] == summary["best"]["path"]
    assert meta["dreg_layer"] == "conv4"

    cfg = load_config(run_dir / "config.yaml")
    plain = build_model(meta["arch"], meta["num_classes"])
    plain.load_state_dict(torch.load(run_dir / "export" / "model_state.pt", weights_only=True), strict=True)
    data = build_data(cfg.data, seed=cfg.train.seed, device=torch.device("cpu"), num_classes=cfg.model.num_classes)
    val = evaluate(plain, data.eval_batches("val", 0, 1, 256), torch.device("cpu"))["model"]
    assert val["count"] == cfg.data.val_size
    assert val["acc"] == pytest.approx(meta["val_acc"][meta["path"]], abs=0.5 / cfg.data.val_size)
    test = evaluate(plain, data.eval_batches("test", 0, 1, 256), torch.device("cpu"))["model"]
    assert test["acc"] == pytest.approx(summary["test"]["acc"], abs=0.5 / test["count"])
    assert summary["test"]["acc"] > 0.2  # learned something (10 classes)

    # launch/export.py on the best checkpoint: auto reproduces the run's choice, an explicit path is honoured.
    best = run_dir / "checkpoints" / "best.pt"
    for path in ("auto", "L"):
        out = tmp_path / f"export-{path}"
        done = subprocess.run([sys.executable, str(REPO / "launch" / "export.py"), str(best), "--path", path,
                               "--out", str(out)], capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 0, done.stderr
        got = json.loads((out / "meta.json").read_text())
        assert got["path"] == (meta["path"] if path == "auto" else path)
        assert got["val_acc"] == meta["val_acc"]
    same = torch.load(tmp_path / "export-auto" / "model_state.pt", weights_only=True)
    for key, value in torch.load(run_dir / "export" / "model_state.pt", weights_only=True).items():
        assert torch.equal(value, same[key]), key

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert {"loss_R", "loss_L", "contrast", "branch_distance", "lr", "images_per_sec"} <= train[-1].keys()
    # The start record names what follow-up grids match step counts from: 2048 - 256 training images.
    (start,) = [r for r in records if r["kind"] == "start"]
    assert start["train_size"] == 2048 - 256 and start["steps_per_epoch"] == start["train_size"] // summary[
        "global_batch_size"]
    # ...and the code it ran: this checkout's commit (None only where the checkout is not a git one).
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert start["code"]["version"] == dreg_dist.__version__
    assert start["code"]["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert [r["epoch"] for r in records if r["kind"] == "val"] == [1, 2]
    assert 0 < train[0]["epoch"] < 1 and train[-1]["epoch"] == 2

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in (run_dir / "tb").glob("events.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    expected = {"train/loss_R", "train/loss_L", "train/contrast", "train/branch_distance", "train/lr",
                "train/images_per_sec", "val/acc_R", "val/acc_L", "val/best_acc",
                "train/noise_scale", "train/grad_sq_norm", "train/grad_trace_cov"}
    assert expected <= tags, expected - tags


def test_resume_from_last_gives_the_uninterrupted_weights(tmp_path: Path, tiny: list[str]) -> None:
    overrides = tiny + ["train.epochs=2"]  # 4 steps per epoch
    full = launch(2, QUICKSTART, tmp_path / "full", overrides)
    assert_ok(full)
    first = launch(2, QUICKSTART, tmp_path / "split", overrides + ["train.stop_after_steps=3"])
    assert_ok(first)
    assert "stopped (stop_after_steps) at global step 3" in first.stdout
    assert not (tmp_path / "split" / "summary.json").exists()
    second = launch(2, QUICKSTART, tmp_path / "split", overrides)
    assert_ok(second)
    assert "resumed from" in second.stdout and "global step 3" in second.stdout
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "split")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert summary["global_steps"] == 8


def test_imagefolder_tree_trains_on_two_workers(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 8)):  # val/ is the test split
        for c in range(2):
            folder = tmp_path / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (40, 40, 3)) + (150 if c else 0)
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    run_dir = tmp_path / "run"
    done = launch(2, QUICKSTART, run_dir, [
        "data.name=imagefolder", f"data.root={tmp_path / 'data'}", "data.val_size=8", "data.image_size=32",
        "data.num_workers=0", "model.num_classes=2", "train.global_batch_size=8", "train.epochs=2",
        "log.tensorboard=false",
    ])
    assert_ok(done)
    summary = json.loads((run_dir / "summary.json").read_text())
    meta = json.loads((run_dir / "export" / "meta.json").read_text())
    assert summary["test"]["count"] == 16 and summary["test"]["acc"] > 0.9  # two easy classes
    assert meta["input_shape"] == [3, 32, 32] and meta["normalization"]["mean"] == [0.485, 0.456, 0.406]


def _as_earlier_release(config: dict) -> dict:
    """A resolved config as releases before method plug-ins wrote it: ``method: auto`` with
    ``dreg.enabled``, and every method's keys flat under ``methods``."""
    old = {k: v for k, v in config.items() if k != "method"}
    old["dreg"] = {"enabled": config["method"] == "dreg", **config.get("dreg", {})}
    old["methods"] = {"gradnorm_lam": 0.01, "fisher_lam": 0.01, "penalty_micro_batch_size": 128, "sam_rho": 0.05,
                      "extragradient_gamma": None, "gradientmix_strength": 1.0, "gradientmix_alpha": 1.0,
                      "gradientmix_seed": None}
    old["method"] = "auto"
    for key in ("decoder", "skip_bad_samples"):  # data keys added since
        old["data"].pop(key, None)
    return old


def test_a_run_of_an_earlier_release_resumes_and_exports(tmp_path: Path, tiny: list[str]) -> None:
    """Its config.yaml and checkpoint hold the old keys; resuming continues the same run
    (same final weights as uninterrupted) and the export CLI reads its checkpoint."""
    import yaml

    overrides = tiny + ["train.epochs=2"]
    full = launch(1, QUICKSTART, tmp_path / "full", overrides)
    assert_ok(full)
    first = launch(1, QUICKSTART, tmp_path / "old", overrides + ["train.stop_after_steps=3"])
    assert_ok(first)
    run = tmp_path / "old"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(_as_earlier_release(saved), sort_keys=False))
    (run / "record.json").unlink()  # earlier releases wrote no record: the config alone says what ran
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["config"] = _as_earlier_release(state["config"])
    torch.save(state, run / "checkpoints" / "last.pt")

    second = launch(1, QUICKSTART, run, overrides)
    assert_ok(second)
    assert "resumed from" in second.stdout
    a, b = final_weights(tmp_path / "full"), final_weights(run)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    state["config"] = _as_earlier_release(state["config"])
    torch.save(state, run / "checkpoints" / "old-best.pt")
    done = subprocess.run([sys.executable, str(REPO / "launch" / "export.py"), str(run / "checkpoints" / "old-best.pt"),
                           "--out", str(tmp_path / "export")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "export" / "meta.json").read_text())["path"] in ("R", "L")


def test_export_of_a_mid_epoch_checkpoint_re_evaluates_its_own_weights(tmp_path: Path, tiny: list[str]) -> None:
    """A mid-epoch last.pt holds the previous epoch's validation of other weights; the export CLI
    chooses the path on a fresh validation of the checkpoint's weights unless --no-evaluate."""
    from dreg_dist.config import build_method, config_from_dict

    run = tmp_path / "run"
    assert_ok(launch(1, QUICKSTART, run, tiny + ["train.epochs=2", "train.stop_after_steps=6"]))  # 4 steps/epoch
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step_in_epoch"] == 2 and state["last_val"]
    cfg = config_from_dict(state["config"], warn=None)
    method = build_method(cfg)
    model = method.prepare_model(build_model(cfg.model.arch, cfg.model.num_classes))
    model.load_state_dict(state["model"])
    data = build_data(cfg.data, seed=cfg.train.seed, device=torch.device("cpu"), num_classes=cfg.model.num_classes)
    fresh = evaluate(model, data.eval_batches("val", 0, 1, 64), torch.device("cpu"),
                     outputs=method.eval_outputs, names=method.traits.outputs)
    for flag, expected in (([], fresh), (["--no-evaluate"], state["last_val"])):
        out = tmp_path / f"export{len(flag)}"
        done = subprocess.run([sys.executable, str(REPO / "launch" / "export.py"), str(run / "checkpoints" / "last.pt"),
                               "--out", str(out), *flag], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert done.returncode == 0, done.stderr
        meta = json.loads((out / "meta.json").read_text())
        assert meta["val_acc"] == pytest.approx({p: r["acc"] for p, r in expected.items()})


def test_validation_and_test_scores_use_the_same_precision(tmp_path: Path, tiny: list[str]) -> None:
    """With train.amp=bf16 the test score in summary.json is the export scored under the same
    autocast as validation (which chose it), not in float32."""
    from dreg_dist.config import config_from_dict

    run = tmp_path / "run"
    assert_ok(launch(1, QUICKSTART, run, tiny + ["train.epochs=1", "train.amp=bf16", "train.device=cpu"]))
    summary = json.loads((run / "summary.json").read_text())
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    cfg = config_from_dict(state["config"], warn=None)
    model = build_model(cfg.model.arch, cfg.model.num_classes)
    model.load_state_dict(torch.load(run / "export" / "model_state.pt", weights_only=True))
    data = build_data(cfg.data, seed=cfg.train.seed, device=torch.device("cpu"), num_classes=cfg.model.num_classes)
    scores = {}
    for name, autocast in (("bf16", torch.autocast("cpu", dtype=torch.bfloat16)), ("fp32", None)):
        result = evaluate(model, data.eval_batches("test", 0, 1, 64), torch.device("cpu"), autocast)
        scores[name] = result["model"]["loss"]
    assert summary["test"]["loss"] == pytest.approx(scores["bf16"], rel=1e-6)
    assert scores["bf16"] != scores["fp32"]  # the two precisions are told apart by this check
