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

    Handles the compressed forms Slurm prints (prefix, bracketed ranges and lists, zero
    padding, a suffix or several bracket groups as in ``rack[1-2]-n[07-08]``) without
    calling ``scontrol``, which may not exist inside containers.
    """
    nodelist = nodelist.strip()
    if not nodelist:
        raise ValueError("empty Slurm node list")
    match = re.match(r"(?:[^,\[\]]|\[[^\]]*\])+", nodelist)  # first entry: commas inside [] do not split
    if match is None:
        raise ValueError(f"cannot parse Slurm node list {nodelist!r}")
    entry = match.group(0)
    if nodelist[match.end():][:1] not in ("", ","):  # e.g. an unclosed bracket
        raise ValueError(f"cannot parse Slurm node list {nodelist!r}")
    host = re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0].strip(), entry)
    if not host or "[" in host or "]" in host:
        raise ValueError(f"cannot parse Slurm node list {nodelist!r}")
    return host


def master_port_for_job(job_id: str, base: int = 15000, span: int = 20000) -> int:
    """A port derived from the job id, so concurrent jobs on one node rarely collide."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return base + int(digits[-6:]) % span


def slurm_env_to_torch(env: MutableMapping[str, str]) -> None:
    """Fill RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT from SLURM_* in ``env``."""
    env.setdefault("RANK", env["SLURM_PROCID"])
    # The step's task count: inside a batch script SLURM_NTASKS is the whole job's.
    env.setdefault("WORLD_SIZE", env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS", "1"))
    env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
    env.setdefault("MASTER_ADDR", first_host(nodelist))
    env.setdefault("MASTER_PORT", str(master_port_for_job(env.get("SLURM_JOB_ID", "0"))))
