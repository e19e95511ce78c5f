#!/usr/bin/env python
"""Convert an ImageNet-layout tree into shards: ``python launch/shards.py IMAGEFOLDER_ROOT OUT_DIR [--resize S]``.

Same as the ``dreg-shards`` console script; train on the result with
``data.name=shards data.root=OUT_DIR``. See the README's data section.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreg_dist.data.shard_writer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
