"""What the README shows and what configs/ ships must work as written."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

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
    test_cmd = 'pip install -e ".[dev]" && python -m pytest -q -n 2 --dist loadfile'
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


GRIDS = sorted(p.name for p in (REPO / "configs" / "grids").glob("*.yaml"))


@pytest.fixture(scope="module")
def resolver_calls() -> Iterator[list[dict]]:
    """Every shipped grid's cells resolved up front (two resolver processes for all grids);
    yields the list of resolver requests made since, which the tests keep watching."""
    from dreg_dist.sweep import resolve
    from dreg_dist.sweep.prefetch import prefetch_grids

    calls: list[dict] = []
    ask = resolve._ask

    def counted(request: dict) -> dict:
        calls.append(request)
        return ask(request)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(resolve, "_ask", counted)
        prefetch_grids(REPO / "configs" / "grids" / g for g in GRIDS)
        assert len(calls) <= 2  # none when an earlier test resolved them all in this process
        calls.clear()
        yield calls


@pytest.mark.parametrize("grid", GRIDS)
def test_shipped_grids_expand_to_valid_cells(grid: str, resolver_calls: list[dict]) -> None:
    from dreg_dist.sweep.grid import check_cells, expand_grid, load_grid

    loaded = load_grid(REPO / "configs" / "grids" / grid)
    cells = expand_grid(loaded)
    assert cells and len({c.name for c in cells}) == len(cells)
    check_cells(loaded, cells)  # every cell's config loads: no typo in a key or value
    assert not resolver_calls, "prefetch_grids left cells for the resolver to ask about again"


# ------------------------------------------------------------------ links in the docs
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def _anchor(heading: str) -> str:
    """GitHub's id for a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text())
    return {_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *#*$", text, re.M)}


def _broken_links(doc: Path) -> list[str]:
    broken = []
    for match in _LINK.finditer(_FENCE.sub("", doc.read_text())):
        target = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in _anchors(path):
            broken.append(f"{target}: no heading '#{fragment}' in {path.name}")
    return broken


# The hand-written pages. Not the studies' folders (docs/results/<study>/): their report.md
# is generated from the records and a preface, and both are pinned byte for byte by
# tests/unit/test_committed_reports.py, so a link there changes only with a regenerated report.
_DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "docs" / "results" / "README.md"]


@pytest.mark.parametrize("doc", _DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    """Every relative link names an existing file, and its #fragment a heading there: moving
    a section between the README and docs/ must not leave a link behind."""
    broken = _broken_links(doc)
    assert not broken, f"{doc.relative_to(REPO)}:\n" + "\n".join(broken)


def test_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("## Sweeps, in `depth`\n")
    doc = tmp_path / "a.md"
    doc.write_text("# Title `x`\n\n[ok](#title-x) [ok](b.md#sweeps-in-depth) [gone](c.md) [bad](b.md#nope)\n"
                   "```\n[in a code block](d.md)\n```\n[web](https://example.org/x)\n")
    assert _broken_links(doc) == ["c.md: no such file", "b.md#nope: no heading '#nope' in b.md"]
