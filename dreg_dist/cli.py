"""Console scripts installed with the package (``dreg-train``, ``dreg-export``, ``dreg-shards``)."""

from __future__ import annotations

import sys


def train_main() -> None:
    # Installed before the heavy imports, as in launch/train.py.
    from dreg_dist.train.preemption import PreemptionFlag

    flag = PreemptionFlag()
    flag.install()
    from dreg_dist.train.run import main

    sys.exit(main(preempt=flag))


def export_main() -> None:
    from dreg_dist.train.export_cli import main

    sys.exit(main())


def shards_main() -> None:
    from dreg_dist.data.shard_writer import main

    sys.exit(main())
