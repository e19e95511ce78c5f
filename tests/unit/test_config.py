"""Config loading and validation: one clear line and exit status 2 for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from dreg_dist.config import ConfigError, load_config, parse_overrides
from dreg_dist.config.validate import validate_config
from dreg_dist.train.run import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_and_overrides() -> None:
    cfg = load_config(QUICKSTART, ["train.epochs=3", "optim.lr=1e-3", "dreg.layer=R2", "train.grad_clip_norm=null"])
    assert cfg.train.epochs == 3
    assert cfg.optim.lr == pytest.approx(1e-3)  # PyYAML reads 1e-3 as a string; still a float here
    assert cfg.dreg.layer == "R2"
    assert cfg.train.grad_clip_norm is None
    assert cfg.model.arch == "cnn_small"


def test_required_keys_exist() -> None:
    cfg = load_config(QUICKSTART)
    for dotted in ["model.arch", "model.num_classes", "data.name", "data.root", "data.val_size", "train.epochs",
                   "train.global_batch_size", "train.seed", "optim.lr", "optim.momentum", "optim.weight_decay",
                   "dreg.enabled", "dreg.layer", "dreg.lam"]:
        section, key = dotted.split(".")
        assert hasattr(getattr(cfg, section), key), dotted


@pytest.mark.parametrize(
    "text,message",
    [
        ("train:\n  epocs: 3\n", "unknown config key 'train.epocs' (did you mean 'epochs'?)"),
        ("trian:\n  epochs: 3\n", "unknown config key 'trian' (did you mean 'train'?)"),
        ("train:\n  epochs: three\n", "config key 'train.epochs' must be int, got 'three'"),
        ("train:\n  epochs: 2.5\n", "config key 'train.epochs' must be int"),
        ("dreg:\n  enabled: 1\n", "config key 'dreg.enabled' must be bool"),
        ("dreg:\n  norm: per-path\n", "did you mean 'per_path'?"),
        ("train: 5\n", "section 'train' must be a mapping"),
        ("train: [\n", "is not valid YAML at line"),
    ],
)
def test_bad_yaml_gives_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_booleans_map_back_to_words() -> None:
    cfg = load_config(QUICKSTART, ["log.progress=off"])  # YAML 1.1 reads 'off' as false
    assert cfg.log.progress == "off"
    with pytest.raises(ConfigError, match="must be one of"):
        load_config(QUICKSTART, ["log.progress=yes"])


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        load_config(QUICKSTART, ["optim.lrr=0.1"])


@pytest.mark.parametrize(
    "overrides,world,message",
    [
        (["train.global_batch_size=100"], 8, "not divisible by world size 8 x train.accumulation_steps 1: use a multiple of 8"),
        (["train.global_batch_size=64", "train.accumulation_steps=3"], 1, "use a multiple of 3"),
        (["dreg.lam=-0.1"], 1, "'dreg.lam' must be >= 0"),
        (["dreg.layer=conv9"], 1, "dreg.layer 'conv9' is not a module of this model; valid choices: R1=conv4"),
        (["dreg.layer=R7"], 1, "levels R1..R4"),
        (["model.arch=resnet19"], 1, "did you mean 'resnet18'"),
        (["data.name=cifar10", "data.root=/nonexistent"], 1, "cifar-10-batches-py"),
        (["method=sma"], 1, "must be one of auto"),
        (["data.val_size=0"], 1, "'data.val_size' must be > 0"),
        (["train.sync_bn=true", "train.device=cpu"], 2, "train.sync_bn needs CUDA"),
        (["train.amp=fp16", "train.device=cpu"], 1, "train.amp=fp16 needs CUDA"),
    ],
)
def test_validation_errors(overrides: list[str], world: int, message: str) -> None:
    cfg = load_config(QUICKSTART, overrides)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, world)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_launcher_exits_2_with_one_line_and_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    code = main(["--config", QUICKSTART, "--run-dir", str(run_dir), "train.epocs=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: unknown config key 'train.epocs' (did you mean 'epochs'?)"]
    assert not run_dir.exists()


def test_batch_larger_than_training_split_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--config", QUICKSTART, "--run-dir", str(tmp_path / "run"), "data.synthetic_train_size=640",
                 "log.tensorboard=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: train.global_batch_size=256 exceeds the 128 training images (no full batch per epoch): "
                   "lower train.global_batch_size or data.val_size"]


def test_run_dir_of_another_run_is_protected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"previous run")
    from dreg_dist.config import save_config

    save_config(load_config(QUICKSTART, [f"run_dir={run_dir}"]), run_dir / "config.yaml")
    code = main(["--config", QUICKSTART, "--run-dir", str(run_dir), "optim.lr=0.5"])
    assert code == 2
    assert "holds a run with a different config (differs in optim.lr)" in capsys.readouterr().err
    code = main(["--config", QUICKSTART, "--run-dir", str(run_dir), "train.resume=never"])
    assert code == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == b"previous run"
