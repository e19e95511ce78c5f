#!/usr/bin/env python
"""Train: ``torchrun --nproc_per_node=K launch/train.py --config configs/NAME.yaml [k=v ...]``.

Also runs as a single process (``python launch/train.py ...``) and under Slurm with one
task per GPU. See the README for outputs and options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Before the heavy imports: a preemption signal that arrives while they run is kept (the
# worker checkpoints at its first step) instead of killing the worker (SIGUSR1's default).
from dreg_dist.train.preemption import PreemptionFlag  # noqa: E402

if __name__ == "__main__":
    flag = PreemptionFlag()
    flag.install()
    from dreg_dist.distributed import exit_process
    from dreg_dist.train.run import main

    exit_process(main(preempt=flag))
