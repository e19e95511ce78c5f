"""Faults of the filesystem under a run: a full disk while a checkpoint is written, and the
temporary files of writes that were killed.

The full disk is a real one: a small tmpfs mounted for the test (so root is needed, as for
the cluster tests) as the run folder. A 3 MB tmpfs holds the first checkpoints of the tiny
model (1.4 MB each): at step 6 a new ``last.pt`` no longer fits beside ``last.pt`` and the
step checkpoint ``step-2.pt`` (a hard link to an older ``last.pt``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from ..conftest import REPO
from .test_cluster_ops import clean_env

pytestmark = pytest.mark.distributed

TINY = ["data.name=synthetic", "data.synthetic_train_size=160", "data.val_size=32", "data.synthetic_test_size=32",
        "train.global_batch_size=16", "train.epochs=2", "model.arch=cnn_tiny", "log.every_steps=1",
        "log.tensorboard=false", "log.progress=lines", "checkpoint.every_steps=2", "checkpoint.keep_last=2"]


def launch(run_dir: Path, nproc: int, *overrides: str) -> subprocess.CompletedProcess[str]:
    train = ["launch/train.py", "--config", "configs/quickstart.yaml", "--run-dir", str(run_dir), *TINY, *overrides]
    cmd = [sys.executable, *train] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *train]
    return subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root (mounts a small tmpfs as a full disk)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("nproc", [1, 2])
def test_a_full_disk_during_a_checkpoint_is_one_error_line_and_the_checkpoint_stays(small_disk: Path,
                                                                                    nproc: int) -> None:
    run_dir = small_disk / "run"
    done = launch(run_dir, nproc)
    assert done.returncode == 1, (done.stdout[-3000:], done.stderr[-3000:])
    lines = (done.stdout + done.stderr).splitlines()
    errors = [ln for ln in lines if "error:" in ln]
    last = run_dir / "checkpoints" / "last.pt"
    assert len(errors) == 1, errors
    (err,) = errors
    assert err.startswith("error: no space left on the device of") and f"while writing '{last}'" in err, err
    assert "it needs about 1.4 MB (the size of the file it replaces)" in err, err
    assert f"the previous '{last}' is intact" in err and "launch the same command" in err, err
    # No worker's traceback (OSError, then torch's 'unexpected pos'), and no worker left waiting
    # for a lost peer: every rank stopped on the same step, rank 0 with the message.
    workers = [ln for ln in lines if ln.startswith("[rank")]
    assert not [ln for ln in workers if "Traceback" in ln or "unexpected pos" in ln], workers[-20:]
    assert "Errno 28" not in done.stderr and "Connection closed" not in done.stderr
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 4, "the checkpoint before the failed one"
    assert not [p.name for p in last.parent.iterdir() if ".tmp-" in p.name]

    # Room made (the tmpfs grown), the same command resumes from that checkpoint and finishes.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = launch(run_dir, nproc)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {last} at epoch 1, step 4" in again.stdout + again.stderr
    assert torch.load(last, weights_only=True)["global_step"] == 16


WRITER = """
import sys, time
from dreg_dist.io import atomic_write

def write(f):
    f.write(b"x" * 1_000_000)
    f.flush()
    print("writing", flush=True)
    time.sleep(600)

atomic_write(sys.argv[1], write)
"""


def killed_write(target: Path) -> Path:
    """The temporary file of a real atomic_write whose process was SIGKILLed in the middle."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=REPO, env=clean_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    tmp = target.with_name(f".{target.name}.tmp-{proc.pid}")
    assert tmp.is_file() and tmp.stat().st_size == 1_000_000
    return tmp


def test_stale_temporary_files_are_told_apart_from_writes_in_progress(tmp_path: Path) -> None:
    from dreg_dist.io import remove_stale_temp_files

    started = time.time()
    dead = killed_write(tmp_path / "last.pt")  # its process is gone: stale, however new
    live_new = tmp_path / f".best.pt.tmp-{os.getpid()}"  # a live writer, since the start: kept
    live_new.write_bytes(b"y")
    live_old = tmp_path / f".summary.json.tmp-{os.getpid()}"  # older than the start: stale
    live_old.write_bytes(b"z")
    os.utime(live_old, (started - 60, started - 60))
    others = [tmp_path / "last.pt.tmp-1", tmp_path / ".hidden", tmp_path / ".x.tmp-abc"]
    for path in others:
        path.write_bytes(b"")
    removed = remove_stale_temp_files([tmp_path, tmp_path / "missing"], started)
    assert sorted(removed) == sorted([dead, live_old])
    assert live_new.exists() and all(p.exists() for p in others)


def test_a_run_removes_the_temporary_files_of_killed_writes_at_start_up(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    stale = [killed_write(run_dir / "checkpoints" / "last.pt"), killed_write(run_dir / "summary.json")]
    done = launch(run_dir, 1, "train.stop_after_steps=1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"note: removed 2 temporary file(s) of interrupted writes in {run_dir}" in done.stderr, done.stderr
    assert not any(p.exists() for p in stale)
