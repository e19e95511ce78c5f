#!/usr/bin/env python
"""Train: ``torchrun --nproc_per_node=K launch/train.py --config configs/NAME.yaml [k=v ...]``.

Also runs as a single process (``python launch/train.py ...``) and under Slurm with one
task per GPU. See the README for outputs and options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreg_dist.train.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
