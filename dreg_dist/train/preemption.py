"""Preemption signals only set a flag; the trainer acts on it at a step boundary.

Slurm sends SIGTERM to every process of a job at preemption or time limit (SIGKILL
follows after the grace period, ``KillWait``) and, when asked with ``--signal=USR1@120``,
SIGUSR1 as an early warning. Checkpointing *inside* a signal handler fails intermittently
(the handler can interrupt a collective or a half-written tensor), so the handler records
the signal and returns; at the next step boundary all ranks agree through an all-reduce
of the flag, rank 0 writes ``last.pt``, and the job exits with :data:`REQUEUE_EXIT_CODE`
so the launcher can requeue it.

Under ``torchrun`` (as observed with PyTorch 2.15):

* the workers run in their own sessions, so a signal sent to torchrun's process group
  reaches only the agent; the agent forwards the signals it handles (SIGTERM, SIGINT,
  SIGHUP, SIGQUIT by default; SIGUSR1 too when ``PET_SIGNALS_TO_HANDLE`` or
  ``--signals-to-handle`` lists it, PyTorch >= 2.9) to every worker, waits
  ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds (default 30) and then SIGKILLs them. A
  signal the agent does not handle kills the agent itself (SIGUSR1's default action);
* the agent then re-raises the signal as an exception and torchrun exits with status 1,
  not the workers' 75 (``dreg_dist.distributed.agent``, which train.sbatch runs, exits with
  128 + the signal's number instead, with one line). Rank 0 therefore also writes
  ``RunLayout.requeue_marker`` into the run folder, which ``launch/slurm/train.sbatch``
  looks for. It writes it once the checkpoint is written and before any rank may exit
  (:meth:`dreg_dist.train.writer.CheckpointWriter.requeue_marker`): on a multi-node job the first node whose workers
  exit ends its srun task, after which Slurm may end the step's other processes.

A signal that arrives while a worker still starts up is kept: ``launch/train.py`` installs a
:class:`PreemptionFlag` before its heavy imports and hands it to the trainer.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Union

from dreg_dist.io import atomic_write_text
from dreg_dist.run_layout import RunLayout
from dreg_dist.stop_signals import REQUEUE_EXIT_CODE, SIGNALS, PreemptionFlag

def write_requeue_marker(run_dir: Union[str, "os.PathLike[str]"], summary: dict[str, Any]) -> Path:
    """Record in ``run_dir`` that the run stopped for a signal and wants to be requeued.

    The file is replaced atomically; the launcher deletes it before it starts the next
    attempt, so its presence after the training exits means 'this attempt was preempted'.
    """
    path = RunLayout(run_dir).requeue_marker
    record = {
        "reason": summary.get("reason"),
        "global_step": summary.get("global_step"),
        "exit_code": REQUEUE_EXIT_CODE,
        "time": time.time(),
    }
    atomic_write_text(path, json.dumps(record) + "\n")
    return path


__all__ = ["REQUEUE_EXIT_CODE", "SIGNALS", "PreemptionFlag", "write_requeue_marker"]
