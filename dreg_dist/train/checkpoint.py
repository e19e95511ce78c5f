"""Checkpoints: full training state, written atomically, read with ``weights_only=True``.

A checkpoint holds everything needed to continue a run as if it had not stopped:
model (both branches), optimizer, LR schedule, grad scaler, position in the data
(epoch and step within it), the best result so far, every rank's RNG states and the
resolved config. It is written to a temporary file in the same folder, flushed to
disk and renamed over the target, so a crash while writing leaves the previous file
intact. ``load_checkpoint`` turns any unreadable or incomplete file into a
:class:`CheckpointError` with a message naming the file.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import torch

from dreg_dist.io import atomic_write, fsync_dir
from dreg_dist.run_layout import RunLayout

FORMAT = "dreg-dist-checkpoint/1"
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "epoch", "step_in_epoch", "global_step")
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")

PathLike = Union[str, os.PathLike[str]]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the file and what to do."""


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(state: dict[str, Any], path: PathLike) -> None:
    """Atomically write ``state`` to ``path`` (temp file, fsync, rename, fsync of the folder)."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load_checkpoint(
    path: PathLike, map_location: Union[str, torch.device] = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Read and sanity-check a checkpoint written by :func:`save_checkpoint`.

    ``mmap=True`` maps the tensors instead of reading them: a cheap check that the file is
    complete (a truncated file has lost the zip directory at its end).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint '{path}' is corrupt or truncated ({reason}); delete it or resume from "
            "another checkpoint"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a dreg-dist checkpoint ({FORMAT})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint '{path}' is incomplete (missing {missing})")
    return state


def all_finite(tree: Any) -> bool:
    """Whether every floating-point tensor in ``tree`` (nested dicts/lists/tuples) is finite."""
    if isinstance(tree, torch.Tensor):
        return not tree.is_floating_point() or bool(torch.isfinite(tree).all())
    if isinstance(tree, dict):
        return all(all_finite(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(all_finite(v) for v in tree)
    return True


def link_or_copy(src: PathLike, dst: PathLike) -> None:
    """Make ``dst`` hold ``src``'s bytes atomically (a hard link when the filesystem allows)."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links here: a copy, written like any other file (a full disk reported)
        with open(src, "rb") as source:
            atomic_write(dst, lambda f: shutil.copyfileobj(source, f))
        return
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


def step_checkpoints(folder: PathLike) -> list[Path]:
    """``step-N.pt`` files in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_step_checkpoints(folder: PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints."""
    files = step_checkpoints(folder)
    for old in files[: max(0, len(files) - keep)]:
        old.unlink(missing_ok=True)


def resume_candidates(folder: PathLike) -> list[Path]:
    """Checkpoints to try when resuming, newest first: last.pt, then step checkpoints."""
    folder = Path(folder)
    ordered = [folder / RunLayout.LAST_CHECKPOINT] + list(reversed(step_checkpoints(folder)))
    return [p for p in ordered if p.is_file()]


def find_resumable(folder: PathLike, log: Optional[Any] = None) -> Optional[dict[str, Any]]:
    """The newest readable checkpoint in ``folder`` (skipping corrupt ones), or None.

    When ``last.pt`` is damaged, the newest step checkpoint is used and ``log`` (a
    callable taking a string) is told which file was skipped and why.
    """
    newest_first = resume_candidates(folder)
    for path in newest_first:
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            if log is not None:
                log(f"warning: {err}; trying an older checkpoint")
            continue
        state["_path"] = str(path)
        return state
    return None
