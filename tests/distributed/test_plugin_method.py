"""A complete method defined in this one file, registered by one entry-point line, run end to end.

This is the README's "Adding a method" recipe as a test: the toy method below is not
known to any file of the package; an entry point (``toy = test_plugin_method:Toy`` in the
``dreg_dist.methods`` group, written into a throw-away ``.dist-info`` folder on
``PYTHONPATH``) is all that registers it. It then trains on 2 workers, is validated and
exported, runs as a 2-cell sweep over its own hyperparameter, and gets a report with its
own column.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch
import yaml
from torch import Tensor, nn

from dreg_dist.methods import Method, config_key

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@dataclass
class ToyConfig:
    scale: float = 1.0
    """Multiplies the cross-entropy (a stand-in for a method's own hyperparameter)."""


class Toy(Method):
    """Scaled cross-entropy; logs the unscaled one and reports the final weight norm."""

    name = "toy"
    Config = ToyConfig
    # Its description (what a description.yaml beside it would hold), copied into each run record.
    description = {"labels": {"scale": "scale"}, "report_columns": {"weight_norm": "weight norm"}}

    def check(self, module: Optional[nn.Module] = None) -> list[str]:
        from dreg_dist.errors import ConfigError

        if not self.hp.scale > 0:
            raise ConfigError(f"config key '{config_key(self, 'scale')}' must be > 0, got {self.hp.scale}")
        return []

    def loss(self, outputs: Tensor, target: Tensor, module: nn.Module) -> tuple[Tensor, dict[str, Tensor]]:
        ce, _ = super().loss(outputs, target, module)
        return ce * self.hp.scale, {"toy_ce": ce.detach()}

    def values(self, module: nn.Module, final: bool) -> dict[str, float]:
        if not final:  # only about the trained model, for summary.json
            return {}
        return {"weight_norm": float(torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in module.parameters()])))}


TINY = ["data.name=synthetic", "data.synthetic_train_size=256", "data.val_size=64", "data.synthetic_test_size=64",
        "train.global_batch_size=64", "train.epochs=2", "log.every_steps=1", "log.tensorboard=false",
        "model.arch=cnn_small_gn", "optim.warmup_epochs=0", "train.device=cpu"]


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which the entry point registers ``toy`` (the one registry line)."""
    dist_info = tmp_path / "site" / "toy_plugin-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[dreg_dist.methods]\ntoy = test_plugin_method:Toy\n")
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), str(HERE), str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return done


def test_a_method_in_one_file_trains_exports_sweeps_and_reports(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    run = tmp_path / "run"
    train = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(REPO / "launch" / "train.py"), "--config", str(REPO / "configs" / "quickstart.yaml"),
             "--run-dir", str(run), *TINY, "method=toy", "methods.toy.scale=0.5"]
    _run(train, plugin_env, tmp_path)

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"] == "toy" and config["methods"] == {"toy": {"scale": 0.5}} and "dreg" not in config
    record = json.loads((run / "record.json").read_text())
    assert record["method"] == "toy" and record["description"]["report_columns"] == {"weight_norm": "weight norm"}
    assert record["description"]["section"] == "methods.toy" and record["description"]["defaults"] == {"scale": 1.0}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "toy" and summary["world_size"] == 2 and summary["best"]["path"] is None
    assert summary["final_values"]["weight_norm"] > 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    # The optimized loss is scale x the cross-entropy the method logs besides it.
    assert all(r["loss"] == pytest.approx(0.5 * r["toy_ce"], rel=1e-5) for r in train_records)
    meta = json.loads((run / "export" / "meta.json").read_text())
    assert meta["method"] == "toy" and meta["path"] is None
    # The export is an ordinary model of the architecture, scored on test by the trainer.
    from dreg_dist.models import build_model

    plain = build_model("cnn_small_gn", 10)
    plain.load_state_dict(torch.load(run / "export" / "model_state.pt", weights_only=True), strict=True)

    # A typo in the method's own key fails before any worker starts, naming the key.
    bad = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "--config",
                          str(REPO / "configs" / "quickstart.yaml"), "--run-dir", str(tmp_path / "bad"), *TINY,
                          "method=toy", "methods.toy.scael=2"], capture_output=True, text=True, env=plugin_env,
                         cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "methods.toy.scael" in bad.stderr and "did you mean 'methods.toy.scale'" in bad.stderr
    assert not (tmp_path / "bad").exists()

    # The export CLI re-exports a checkpoint of the plug-in method.
    _run([sys.executable, str(REPO / "launch" / "export.py"), str(run / "checkpoints" / "best.pt"),
          "--out", str(tmp_path / "re-export")], plugin_env, tmp_path)
    assert json.loads((tmp_path / "re-export" / "meta.json").read_text())["path"] is None

    # A 2-cell sweep over the method's own key, then a report with the method's own column.
    grid = tmp_path / "toy_grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "toy_grid", "config": str(REPO / "configs" / "quickstart.yaml"),
        "overrides": [*TINY, "train.epochs=1"],
        "axes": {"method": ["vanilla", "toy"], "methods.toy.scale": [0.5]},
    }, sort_keys=False))
    done = _run([sys.executable, str(REPO / "launch" / "sweep.py"), "--grid", str(grid), "--runs-root",
                 str(tmp_path / "runs")], plugin_env, tmp_path)
    assert "2 cells" in done.stdout or "2/2 done" in done.stdout, done.stdout[-2000:]
    assert sorted(p.name for p in (tmp_path / "runs" / "toy_grid").iterdir() if p.is_dir()) == \
        ["toy_scale0.5", "vanilla"]
    _run([sys.executable, str(REPO / "launch" / "report.py"), str(tmp_path / "runs" / "toy_grid"),
          "--out", str(tmp_path / "report")], plugin_env, tmp_path)
    text = (tmp_path / "report" / "report.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| method |"))
    assert "| weight norm |" in header
    toy_row = next(line for line in text.splitlines() if line.startswith("| toy"))
    toy_norm = json.loads((tmp_path / "runs" / "toy_grid" / "toy_scale0.5" / "summary.json").read_text())
    assert f"{toy_norm['final_values']['weight_norm']:.4g}" in toy_row
