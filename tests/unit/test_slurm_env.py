"""Slurm one-task-per-GPU launches (no torchrun): SLURM_* -> RANK, WORLD_SIZE, MASTER_ADDR, ..."""

from __future__ import annotations

import os

import pytest

from dreg_dist.distributed import launch_world
from dreg_dist.distributed.slurm import first_host, master_port_for_job, slurm_env_to_torch

TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("gpu[003-005,009]", "gpu003"),
        ("gpu[003-005,009],cpu1", "gpu003"),
        ("gpu[009,003-005]", "gpu009"),  # Slurm's order, not the smallest number
        ("a1,b2", "a1"),
        ("node7", "node7"),
        ("n[10]", "n10"),
        ("node[1-2]-ib,login1", "node1-ib"),
        ("rack[1-2]-n[07-08]", "rack1-n07"),
        ("  gpu-a100-[01-16]  ", "gpu-a100-01"),
        ("localhost", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_first_host(nodelist: str, host: str) -> None:
    assert first_host(nodelist) == host


@pytest.mark.parametrize("nodelist", ["", "   ", "gpu[1-2", ",a1", "a]b"])
def test_first_host_rejects_malformed_lists(nodelist: str) -> None:
    with pytest.raises(ValueError, match="node list"):
        first_host(nodelist)


def test_master_port_is_stable_and_in_range() -> None:
    assert master_port_for_job("123456") == master_port_for_job("123456")
    assert master_port_for_job("123456") != master_port_for_job("123457")
    for job in ("0", "1", "999999", "4294967295", "123_4", "abc"):
        assert 15000 <= master_port_for_job(job) < 35000


def _slurm_task(procid: int, localid: int, **extra: str) -> dict[str, str]:
    """The environment srun gives task ``procid`` of a 2-node x 4-task step."""
    env = {
        "SLURM_JOB_ID": "778899",
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(localid),
        "SLURM_NTASKS": "8",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "gpu[003-004]",
        "SLURM_STEP_NODELIST": "gpu[003-004]",
    }
    env.update(extra)
    return env


def test_slurm_task_env_maps_to_torch_variables() -> None:
    env = _slurm_task(procid=5, localid=1)
    slurm_env_to_torch(env)
    assert env["RANK"] == "5"
    assert env["LOCAL_RANK"] == "1"
    assert env["WORLD_SIZE"] == "8"
    assert env["MASTER_ADDR"] == "gpu003"
    assert env["MASTER_PORT"] == str(master_port_for_job("778899"))


def test_all_tasks_of_a_job_agree_on_the_master() -> None:
    envs = [_slurm_task(procid=r, localid=r % 4) for r in range(8)]
    for env in envs:
        slurm_env_to_torch(env)
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"], e["WORLD_SIZE"]) for e in envs} == {
        ("gpu003", str(master_port_for_job("778899")), "8")
    }
    assert sorted(int(e["RANK"]) for e in envs) == list(range(8))


def test_step_task_count_wins_over_the_jobs() -> None:
    # A 1-task step inside an 8-task allocation is a world of one.
    env = _slurm_task(procid=0, localid=0, SLURM_STEP_NUM_TASKS="1")
    slurm_env_to_torch(env)
    assert env["WORLD_SIZE"] == "1"


def test_step_node_list_wins_over_the_jobs() -> None:
    env = _slurm_task(procid=0, localid=0, SLURM_STEP_NODELIST="gpu[004]")
    slurm_env_to_torch(env)
    assert env["MASTER_ADDR"] == "gpu004"


def test_minimal_slurm_env_defaults() -> None:
    env = {"SLURM_PROCID": "0"}
    slurm_env_to_torch(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("0", "1", "0", "127.0.0.1")


def test_existing_torch_variables_are_not_overridden() -> None:
    env = _slurm_task(procid=5, localid=1)
    mine = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "head", "MASTER_PORT": "29500"}
    env.update(mine)
    slurm_env_to_torch(env)
    assert {k: env[k] for k in TORCH_VARS} == mine


def test_partially_set_torch_variables_are_kept() -> None:
    env = _slurm_task(procid=3, localid=3, MASTER_PORT="29999")
    slurm_env_to_torch(env)
    assert env["MASTER_PORT"] == "29999"
    assert env["RANK"] == "3"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("SLURM_") or key in TORCH_VARS:
            monkeypatch.delenv(key)
    return monkeypatch


def test_launch_world_reads_slurm_without_torchrun(clean_env: pytest.MonkeyPatch) -> None:
    for key, value in _slurm_task(procid=6, localid=2).items():
        clean_env.setenv(key, value)
    assert launch_world() == (6, 8, 2)
    assert os.environ["MASTER_ADDR"] == "gpu003"


def test_launch_world_prefers_torchrun_variables(clean_env: pytest.MonkeyPatch) -> None:
    # torchrun inside an sbatch script: the Slurm task is the node's agent, not a worker.
    for key, value in _slurm_task(procid=0, localid=0).items():
        clean_env.setenv(key, value)
    for key, value in {"RANK": "3", "WORLD_SIZE": "16", "LOCAL_RANK": "3",
                       "MASTER_ADDR": "gpu004", "MASTER_PORT": "29400"}.items():
        clean_env.setenv(key, value)
    assert launch_world() == (3, 16, 3)
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("gpu004", "29400")


def test_launch_world_without_any_launcher(clean_env: pytest.MonkeyPatch) -> None:
    assert launch_world() == (0, 1, 0)
    assert "MASTER_ADDR" not in os.environ
