#!/usr/bin/env python
"""Export a checkpoint: ``python launch/export.py RUN_DIR/checkpoints/best.pt --path auto|R|L``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreg_dist.train.export_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
