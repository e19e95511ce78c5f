"""Console scripts installed with the package (``dreg-train``, ``dreg-export``, ``dreg-shards``)."""

from __future__ import annotations

import sys


def train_main() -> None:
    from dreg_dist.train.run import main

    sys.exit(main())


def export_main() -> None:
    from dreg_dist.train.export_cli import main

    sys.exit(main())


def shards_main() -> None:
    from dreg_dist.data.shard_writer import main

    sys.exit(main())
