"""What the README shows and what configs/ ships must work as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from dreg_dist.config import load_config
from dreg_dist.train.preflight import preflight

REPO = Path(__file__).resolve().parents[2]


def test_readme_method_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The method"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert sorted(os.listdir(tmp_path / "export")) == ["meta.json", "model.pt2", "model_state.pt"]


def test_readme_commands_match_ci() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    test_cmd = 'pip install -e ".[dev]" && python -m pytest -q'
    assert test_cmd in readme and test_cmd in ci
    assert "pip install -e . && torchrun --nproc_per_node=2 launch/train.py --config configs/quickstart.yaml" in readme


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name: str) -> None:
    overrides = ["data.download=true"] if "cifar" in name else []  # data may be absent here
    cfg = load_config(REPO / "configs" / name, overrides)
    preflight(cfg, world_size=2 if name == "quickstart.yaml" else 8)
    if name.endswith("_vanilla.yaml"):
        twin = load_config(REPO / "configs" / name.replace("_vanilla", "_dreg"), [*overrides, "method=vanilla"])
        assert twin == cfg, "a vanilla config must differ from its DReg twin only by 'method'"


@pytest.mark.parametrize("grid", sorted(p.name for p in (REPO / "configs" / "grids").glob("*.yaml")))
def test_shipped_grids_expand_to_valid_cells(grid: str) -> None:
    from dreg_dist.sweep.grid import check_cells, expand_grid, load_grid

    loaded = load_grid(REPO / "configs" / "grids" / grid)
    cells = expand_grid(loaded)
    assert cells and len({c.name for c in cells}) == len(cells)
    check_cells(loaded, cells)  # every cell's config loads: no typo in a key or value
