"""torchrun, with a preemption signal as a documented way to stop: ``python -m dreg_dist.distributed.agent``.

Takes torchrun's arguments and runs torchrun's agent in this process. ``launch/slurm/train.sbatch``
starts it on every node. What differs from ``torchrun`` is only how a signal ends it.

Slurm signals every process of a job step (``scancel --signal``, ``--signal=USR1@N`` before
the time limit, SIGTERM at preemption): the agent as well as its workers. The agent has to
handle SIGUSR1 and SIGTERM itself (``PET_SIGNALS_TO_HANDLE``, PyTorch >= 2.9 for SIGUSR1):
otherwise the workers that stop after their checkpoint would look like failed workers, and
with ``--max-restarts`` (elastic jobs) the agent would start a new group that resumes and
trains on instead of stopping. A handled signal makes the agent forward it to its workers,
give them ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds to checkpoint, and stop; torch does that
by raising ``SignalException`` out of the agent, which torchrun leaves as a traceback and
exit status 1, the same status as a failed worker.

Here that path ends with one line and the shell's status for "ended by signal N",
``128 + N`` (138 for SIGUSR1, 143 for SIGTERM). The status says the agent was stopped,
not whether its workers checkpointed in time: rank 0 records that in the run folder
(``RunLayout.requeue_marker``), which is what ``train.sbatch`` requeues on. Everything else
(success, failed workers, rendezvous errors) ends exactly as under ``torchrun``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Optional, Sequence

SIGNAL_EXIT_BASE = 128
"""An agent stopped by signal N exits with 128 + N, as a shell reports a process killed by N."""


def signal_in(err: BaseException, kind: type) -> Optional[Any]:
    """The ``kind`` exception ``err`` is or was raised while handling, if any. torch's handler
    raises wherever the agent is: inside torch's metrics wrapper before it has read its clock, the
    wrapper's own ``finally`` then fails (UnboundLocalError) with the signal as its context."""
    seen: set[int] = set()
    at: Optional[BaseException] = err
    while at is not None and id(at) not in seen:
        if isinstance(at, kind):
            return at
        seen.add(id(at))
        at = at.__cause__ or at.__context__
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run torchrun's agent with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(list(argv) if argv is not None else None)
    except Exception as err:
        exc = signal_in(err, SignalException)
        if exc is None:
            raise
        name = signal.Signals(exc.sigval).name
        grace = os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "30")
        print(f"agent on {socket.gethostname()}: stopped by {name}; its workers had up to {grace} s to "
              "checkpoint", file=sys.stderr, flush=True)
        return SIGNAL_EXIT_BASE + int(exc.sigval)
    return 0


if __name__ == "__main__":
    status = main()
    if status > SIGNAL_EXIT_BASE:
        # Stopped by a signal, with torchrun's own shutdown done: end here. The interpreter's
        # teardown, with torch's store threads still alive, can abort (exit 134, not 128 + N: seen
        # once on the local Slurm cluster under SIGTERM, both agents having printed their line).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
