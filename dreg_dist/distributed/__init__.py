"""Distributed plumbing: process groups, backend/device choice, Slurm mapping."""

from dreg_dist.distributed.env import (
    DistEnv,
    all_reduce_sum,
    any_rank,
    barrier,
    exit_process,
    init_distributed,
    launch_world,
    pick_device,
    shutdown,
)

__all__ = [
    "DistEnv",
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "exit_process",
    "init_distributed",
    "launch_world",
    "pick_device",
    "shutdown",
]
