"""``train.eval_every_steps``: validation inside epochs (what steps-to-accuracy studies read)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dreg_dist.config import ConfigError, load_config
from dreg_dist.train.preflight import preflight

from ..conftest import REPO, assert_ok, launch


def test_validation_every_n_steps_lands_mid_epoch_with_fractional_epochs(tmp_path: Path, tiny: list[str]) -> None:
    run = tmp_path / "run"
    # 320 images, 64 held out, at batch 64: 4 steps per epoch; validated at step 3 and at the epoch end.
    assert_ok(launch(1, "configs/quickstart.yaml", run, tiny + ["method=vanilla", "train.epochs=2",
                                                                  "train.eval_every_steps=3"]))
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if r["kind"] == "val"]
    assert [r["step"] for r in val] == [3, 4, 6, 8]
    assert [r["epoch"] for r in val] == [pytest.approx(0.75), 1, pytest.approx(1.5), 2]
    best = json.loads((run / "summary.json").read_text())["best"]
    assert best["val_acc"]["model"] == max(r["acc"] for r in val)


def test_a_non_positive_interval_is_one_line() -> None:
    with pytest.raises(ConfigError, match="train.eval_every_steps"):
        preflight(load_config(REPO / "configs/quickstart.yaml", ["train.eval_every_steps=0"]), 1)
