"""Checkpoint files: atomic writes, corrupt-file detection, step-checkpoint pruning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dreg_dist.train import checkpoint as ckpt


def _state(step: int) -> dict:
    return {"model": {"w": torch.full((3,), float(step))}, "optimizer": {}, "scheduler": {}, "epoch": 0,
            "step_in_epoch": step, "global_step": step}


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    ckpt.save_checkpoint({**_state(3), "rng": [ckpt.rng_state(torch.device("cpu"))]}, tmp_path / "last.pt")
    state = ckpt.load_checkpoint(tmp_path / "last.pt")
    assert state["global_step"] == 3 and torch.equal(state["model"]["w"], torch.full((3,), 3.0))
    ckpt.set_rng_state(state["rng"][0], torch.device("cpu"))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporaries left behind


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    ckpt.save_checkpoint(_state(1), target)
    with pytest.raises(Exception):
        ckpt.save_checkpoint({**_state(2), "bad": lambda: None}, target)  # not picklable
    assert ckpt.load_checkpoint(target)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_truncated_file_is_reported_and_skipped(tmp_path: Path) -> None:
    ckpt.save_checkpoint(_state(2), tmp_path / "step-2.pt")
    ckpt.save_checkpoint(_state(4), tmp_path / "last.pt")
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="is corrupt or truncated"):
        ckpt.load_checkpoint(tmp_path / "last.pt")
    messages: list[str] = []
    state = ckpt.find_resumable(tmp_path, log=messages.append)
    assert state is not None and state["global_step"] == 2
    assert "last.pt" in messages[0]


def test_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ckpt.CheckpointError, match="is not a dreg-dist checkpoint"):
        ckpt.load_checkpoint(tmp_path / "other.pt")


def test_prune_keeps_newest(tmp_path: Path) -> None:
    for step in (2, 10, 4, 8):
        ckpt.save_checkpoint(_state(step), tmp_path / f"step-{step}.pt")
    ckpt.prune_step_checkpoints(tmp_path, keep=2)
    assert [p.name for p in ckpt.step_checkpoints(tmp_path)] == ["step-8.pt", "step-10.pt"]


def test_checkpoint_write_fsyncs_the_file_and_then_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the rename the folder is fsynced too, so a power loss cannot undo the rename
    and bring back the previous checkpoint."""
    import os
    import stat

    from dreg_dist.train.checkpoint import save_checkpoint

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        synced.append("dir" if stat.S_ISDIR(mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    save_checkpoint({"model": {}, "optimizer": {}, "scheduler": {}, "epoch": 0, "step_in_epoch": 0,
                     "global_step": 0}, tmp_path / "ckpt" / "last.pt")
    assert synced == ["file", "dir"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.pt"]  # no temp file left
