"""Config loading and validation: one clear line and exit status 2 for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from dreg_dist.config import ConfigError, load_config, parse_overrides
from dreg_dist.train.preflight import preflight
from dreg_dist.train.run import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
CIFAR_TINY = str(REPO / "configs" / "cifar10_cnn_tiny.yaml")


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_and_overrides() -> None:
    cfg = load_config(QUICKSTART, ["train.epochs=3", "optim.lr=1e-3", "dreg.layer=R2", "train.grad_clip_norm=null"])
    assert cfg.train.epochs == 3
    assert cfg.optim.lr == pytest.approx(1e-3)  # PyYAML reads 1e-3 as a string; still a float here
    assert cfg.method == "dreg" and cfg.method_config.layer == "R2"
    assert cfg.train.grad_clip_norm is None
    assert cfg.model.arch == "cnn_small"


def test_required_keys_exist() -> None:
    cfg = load_config(QUICKSTART)
    for dotted in ["model.arch", "model.num_classes", "data.name", "data.root", "data.val_size", "train.epochs",
                   "train.global_batch_size", "train.seed", "optim.lr", "optim.momentum", "optim.weight_decay",
                   "dreg.layer", "dreg.lam"]:
        section, key = dotted.split(".")
        assert hasattr(cfg.method_config if section == "dreg" else getattr(cfg, section), key), dotted


@pytest.mark.parametrize(
    "text,message",
    [
        ("train:\n  epocs: 3\n", "unknown config key 'train.epocs' (did you mean 'train.epochs'?)"),
        ("trian:\n  epochs: 3\n", "unknown config key 'trian' (did you mean 'train'?)"),
        ("train:\n  epochs: three\n", "config key 'train.epochs' must be int, got 'three'"),
        ("train:\n  epochs: 2.5\n", "config key 'train.epochs' must be int"),
        ("dreg:\n  lam: high\n", "config key 'dreg.lam' must be float"),
        ("methods:\n  sam:\n    rho: .nan\n", "config key 'methods.sam.rho' must be a finite number"),
        ("methods:\n  sma:\n    rho: 0.1\n", "unknown config key 'methods.sma': no method owns it (did you mean 'sam'?)"),
        ("optim:\n  lr: .inf\n", "config key 'optim.lr' must be a finite number"),
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
        (["method=sma"], 1, "(did you mean 'sam'?)"),
        (["data.val_size=0"], 1, "'data.val_size' must be > 0"),
        (["train.sync_bn=true", "train.device=cpu"], 2, "train.sync_bn needs CUDA"),
        (["train.amp=fp16", "train.device=cpu"], 1, "train.amp=fp16 needs CUDA"),
    ],
)
def test_validation_errors(overrides: list[str], world: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        preflight(load_config(QUICKSTART, overrides), world)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_launcher_exits_2_with_one_line_and_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    code = main(["--config", QUICKSTART, "--run-dir", str(run_dir), "train.epocs=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: unknown config key 'train.epocs' (did you mean 'train.epochs'?)"]
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


@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-.inf"])
def test_non_finite_numbers_fail_at_load_with_exit_2(tmp_path: Path, value: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--config", QUICKSTART, "--run-dir", str(tmp_path / "run"), f"optim.lr={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'optim.lr' must be a finite number" in err[0]
    assert not (tmp_path / "run").exists()


def test_configs_of_earlier_releases_load_with_one_deprecation_line_each(tmp_path: Path) -> None:
    """``dreg.enabled`` / ``method: auto`` and the flat ``methods.<name>_<key>`` keys still load."""
    notes: list[str] = []
    cfg = load_config(_write(tmp_path, "dreg:\n  enabled: false\n  lam: 0.5\n"), warn=notes.append)
    assert cfg.method == "vanilla" and notes == ["'dreg.enabled: false' is deprecated: write 'method: vanilla'"]
    notes.clear()
    cfg = load_config(QUICKSTART, ["dreg.enabled=false"], warn=notes.append)  # an explicit method wins, as before
    assert cfg.method == "dreg" and notes == ["'dreg.enabled' is deprecated and ignored when 'method' is set "
                                              "(method: dreg)"]
    notes.clear()
    cfg = load_config(None, ["method=sam", "methods.sam_rho=0.2", "methods.penalty_micro_batch_size=64"],
                      warn=notes.append)
    assert cfg.method_config.rho == 0.2
    assert "config key 'methods.sam_rho' is deprecated: write 'methods.sam.rho'" in notes
    cfg = load_config(None, ["method=fisher", "methods.fisher_lam=0.3", "methods.penalty_micro_batch_size=64"],
                      warn=None)
    assert (cfg.method_config.lam, cfg.method_config.micro_batch_size) == (0.3, 64)
    cfg = load_config(None, ["method=auto"], warn=notes.append)
    assert cfg.method == "dreg"


def test_resolved_config_holds_only_the_selected_methods_section(tmp_path: Path) -> None:
    from dreg_dist.config import config_to_dict, flatten

    flat = flatten(config_to_dict(load_config(QUICKSTART, ["method=sam"])))
    assert flat["methods.sam.rho"] == 0.05 and not any(k.startswith("dreg.") for k in flat)
    flat = flatten(config_to_dict(load_config(QUICKSTART)))
    assert flat["dreg.lam"] == 0.1 and not any(k.startswith("methods.") for k in flat)
    assert not any(k.startswith("dreg.") for k in flatten(config_to_dict(load_config(QUICKSTART, ["method=vanilla"]))))


def test_the_resolver_answers_one_config_or_several(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import json

    from dreg_dist.config import resolve

    def ask(request: dict) -> dict:
        monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(request)))
        assert resolve.main([]) == 0
        return json.loads(capsys.readouterr().out)

    cells = [["train.epochs=3"], ["train.no_such_key=1"]]
    one = ask({"config": QUICKSTART, "cells": cells})
    assert one["cells"][0]["config"]["train"]["epochs"] == 3 and "error" in one["cells"][1]
    many = ask({"requests": [{"config": QUICKSTART, "cells": cells}, {"config": CIFAR_TINY, "cells": [[]]}]})
    assert many["methods"] == one["methods"] and many["replies"][0]["cells"] == one["cells"]
    assert many["replies"][1]["cells"] == [{"method": load_config(CIFAR_TINY).method,
                                            "config": resolve.config_to_dict(load_config(CIFAR_TINY))}]
