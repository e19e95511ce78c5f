"""Process-group set-up: who am I, which device, which backend.

Launch modes, in the order they are recognised:

* ``torchrun`` (or any launcher that sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and
  ``MASTER_ADDR``/``MASTER_PORT``);
* Slurm starting one task per GPU without torchrun: ``SLURM_PROCID``, ``SLURM_LOCALID``,
  ``SLURM_NTASKS`` give rank, local rank and world size; the master address is the first
  host of ``SLURM_JOB_NODELIST`` and the port is derived from the job id (see
  :mod:`dreg_dist.distributed.slurm`);
* a plain ``python`` process: world size 1, no process group needed.

The backend follows the device: NCCL on CUDA (one GPU per local rank), gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Literal, NoReturn, Optional

import torch
import torch.distributed as dist

from dreg_dist.distributed.slurm import slurm_env_to_torch


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: Optional[str]
    """None when running as a single process without a process group."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def pick_device(preference: Literal["auto", "cpu", "cuda"], local_rank: int) -> torch.device:
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=auto")
    count = torch.cuda.device_count()
    if count == 1:
        # One visible GPU: either a one-GPU node, or a launcher (Slurm --gpus-per-task=1)
        # that already restricted this process to its own GPU.
        return torch.device("cuda", 0)
    if local_rank >= count:
        raise RuntimeError(
            f"local rank {local_rank} has no GPU ({count} visible): start at most {count} "
            "processes per node (--nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


def launch_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the environment, without touching any backend."""
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ:
        slurm_env_to_torch(os.environ)
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return rank, world_size, local_rank


def init_distributed(
    device: Literal["auto", "cpu", "cuda"] = "auto", timeout_s: float = 1800.0
) -> DistEnv:
    """Initialise the default process group when there is more than one process."""
    rank, world_size, local_rank = launch_world()
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size == 1:
        return DistEnv(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    global _in_a_group
    _in_a_group = True
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            **kwargs,
        )
    return DistEnv(rank, world_size, local_rank, dev, backend)


_in_a_group = False
"""Whether :func:`init_distributed` put this process in a process group (see :func:`exit_process`)."""


def shutdown(together: bool = False) -> None:
    """Destroy the process group; ``together`` (a run that ended normally on every rank) first
    waits for all ranks, since a rank that tears down its gloo connections while another still
    has its own open can abort at exit after the work is done."""
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End a worker with ``code``; one that was in a process group skips the interpreter's teardown.

    gloo's worker threads drop the tensors of a finished collective after the caller's wait has
    returned, and dropping a tensor that Python made takes the GIL. A thread that asks for the GIL
    while the interpreter finalizes is ended by CPython inside that C++ destructor, which aborts
    the process (SIGABRT, "terminate called without an active exception") after all its work is
    done; torchrun then reports the run failed. A core dump of a two-rank gloo script that only
    all-reduces, barriers and destroys its group shows exactly that (4 of 147 such runs aborted under
    load). By the time this is called every file of the run is closed; only the standard streams
    still hold output.
    """
    if not _in_a_group:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to save
            pass
    os._exit(code)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
