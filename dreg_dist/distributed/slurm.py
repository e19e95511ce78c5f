"""Mapping a Slurm task environment to torch.distributed's variables.

Used when Slurm starts one task per GPU itself (``srun --ntasks-per-node=G python ...``)
instead of one ``torchrun`` per node. Only variables that are not already set are
filled in, so torchrun's own values always win.
"""

from __future__ import annotations

import re
from typing import MutableMapping


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list: ``gpu[003-005,009],cpu1`` -> ``gpu003``.

    Handles the compressed forms Slurm prints (prefix, bracketed ranges and lists,
    zero padding) without calling ``scontrol``, which may not exist inside containers.
    """
    nodelist = nodelist.strip()
    if not nodelist:
        raise ValueError("empty Slurm node list")
    match = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if match is None:
        raise ValueError(f"cannot parse Slurm node list {nodelist!r}")
    prefix, _, ranges = match.groups()
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def master_port_for_job(job_id: str, base: int = 15000, span: int = 20000) -> int:
    """A port derived from the job id, so concurrent jobs on one node rarely collide."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return base + int(digits[-6:]) % span


def slurm_env_to_torch(env: MutableMapping[str, str]) -> None:
    """Fill RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT from SLURM_* in ``env``."""
    env.setdefault("RANK", env["SLURM_PROCID"])
    env.setdefault("WORLD_SIZE", env.get("SLURM_NTASKS", "1"))
    env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
    env.setdefault("MASTER_ADDR", first_host(nodelist))
    env.setdefault("MASTER_PORT", str(master_port_for_job(env.get("SLURM_JOB_ID", "0"))))
