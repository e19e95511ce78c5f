"""The Dockerfile, checked without a Docker engine: what it copies exists, it installs this
package, its base image is pinned and its entrypoint is torchrun."""

from __future__ import annotations

import configparser
import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        logical.append(current)
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    out = []
    for line in logical:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def arguments(rest: str) -> list[str]:
    """Exec (JSON) or shell form arguments of an instruction."""
    if rest.startswith("["):
        return json.loads(rest)
    return shlex.split(rest)


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY/ADD from the build context."""
    found = []
    for word, rest in instructions():
        if word not in ("COPY", "ADD"):
            continue
        args = arguments(rest)
        if any(a.startswith("--from") for a in args):
            continue  # from another stage, not the repository
        args = [a for a in args if not a.startswith("--")]
        assert len(args) >= 2, f"{word} {rest}: needs a source and a destination"
        found.append((args[:-1], args[-1]))
    return found


def test_dockerfile_exists() -> None:
    assert DOCKERFILE.is_file()


def test_base_image_is_pinned() -> None:
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert froms, "no FROM"
    image = arguments(froms[0])[0]
    assert "@sha256:" in image or re.search(r":[^/]*\d", image), f"base image {image!r} has no version tag"
    assert not image.endswith(":latest")


def test_every_copy_source_exists_in_the_repository() -> None:
    assert copies(), "the Dockerfile copies nothing"
    for sources, _ in copies():
        for src in sources:
            assert not Path(src).is_absolute(), src
            matches = list(REPO.glob(src)) if any(c in src for c in "*?[") else [REPO / src]
            assert matches and all(m.exists() for m in matches), f"COPY source '{src}' is not in the repository"


def test_copies_what_installing_and_training_need() -> None:
    copied = {Path(src).as_posix().rstrip("/") for sources, _ in copies() for src in sources}
    # setup.cfg reads README.md (long_description); launch/ and configs/ are what torchrun runs.
    for needed in ("setup.cfg", "pyproject.toml", "README.md", "dreg_dist", "launch", "configs"):
        assert needed in copied, f"the Dockerfile does not copy {needed}"


def test_installs_the_package_defined_by_setup_cfg() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg["metadata"]["name"] == "dreg-dist"
    assert "dreg_dist" in cfg["options.packages.find"]["include"]
    steps = [rest for word, rest in instructions() if word == "RUN"]
    install = re.compile(r"\bpip3?\s+install\b[^&;|]*?\s(-e\s+)?\.(\s|$)")
    assert any(install.search(step + " ") for step in steps), "no `pip install .` (or -e .) step"
    # ... run from the folder setup.cfg was copied to.
    workdirs = [rest for word, rest in instructions() if word == "WORKDIR"]
    assert workdirs, "no WORKDIR: pip install . would run in /"
    setup_dest = next(dest for sources, dest in copies() if "setup.cfg" in sources)
    assert setup_dest in ("./", ".", workdirs[-1], workdirs[-1] + "/")


def test_entrypoint_is_torchrun() -> None:
    entry = [rest for word, rest in instructions() if word == "ENTRYPOINT"]
    assert len(entry) == 1
    args = arguments(entry[0])
    assert entry[0].startswith("["), "use the exec form so signals reach torchrun (PID 1)"
    assert args[0] == "torchrun"


def test_default_command_is_a_valid_training_launch() -> None:
    cmds = [arguments(rest) for word, rest in instructions() if word == "CMD"]
    if not cmds:
        pytest.skip("no default CMD")
    args = cmds[-1]
    script = next(a for a in args if a.endswith(".py"))
    assert (REPO / script).is_file()
    if "--config" in args:
        assert (REPO / args[args.index("--config") + 1]).is_file()


def ignore_patterns() -> list[str]:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()]
    return [ln.rstrip("/") for ln in lines if ln and not ln.startswith("#")]


def test_dockerignore_keeps_outputs_data_and_history_out() -> None:
    patterns = ignore_patterns()
    for name in ("runs", ".git", "data"):
        assert name in patterns, f".dockerignore does not exclude {name}"


def test_dockerignore_does_not_hide_a_copy_source() -> None:
    patterns = [p for p in ignore_patterns() if not p.startswith("!")]
    for sources, _ in copies():
        for src in sources:
            src = Path(src).as_posix().rstrip("/")
            hidden = [p for p in patterns if fnmatch.fnmatch(src, p) or src.startswith(p + "/")]
            assert not hidden, f"COPY source '{src}' is excluded by .dockerignore {hidden}"
