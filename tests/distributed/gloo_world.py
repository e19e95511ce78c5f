"""What a test needs to start its own gloo workers without torchrun: a free port and the
environment variables ``init_distributed`` reads."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it; a race with another process is possible
    but has not been seen, and would fail the test loudly, not silently)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """The rendezvous variables of one rank of a single-host group of ``world`` processes."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
