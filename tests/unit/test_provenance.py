"""The code a launch ran, as its start record names it (``dreg_dist/provenance.py``), with real git."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import dreg_dist
from dreg_dist.provenance import code_version

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_a_checkout_gives_its_commit_and_whether_tracked_files_changed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git(repo, "add", "a.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = git(repo, "rev-parse", "HEAD")
    assert code_version(repo) == {"version": dreg_dist.__version__, "commit": head, "dirty": False}
    (repo / "notes.txt").write_text("untracked: a run's records before they are committed\n")
    assert code_version(repo)["dirty"] is False
    (repo / "a.py").write_text("x = 2\n")
    assert code_version(repo) == {"version": dreg_dist.__version__, "commit": head, "dirty": True}
    # A package installed in a folder inside some repository (a virtual environment's) is not that
    # repository's code: no commit.
    inside = repo / "venv" / "site-packages"
    inside.mkdir(parents=True)
    assert code_version(inside) == {"version": dreg_dist.__version__, "commit": None, "dirty": None}
    assert code_version(tmp_path / "nowhere") == {"version": dreg_dist.__version__, "commit": None, "dirty": None}
