"""The same training on any number of workers K, in real multi-process runs (torchrun, gloo).

* ``cnn_small`` with ghost batch norm (``train.bn_group_size``) and a dropout model
  (``squeezenet1_1``: BN-free, dropout after the DReg layer, so it runs once per path) reach
  bitwise the same weights on 2 workers as on 1 worker with the same micro-batch size (two
  accumulation steps); with another micro-batch size they differ by summation order only,
  held to the spread of one-worker runs that differ only in micro-batch size (measured);
* SAM and extragradient, perturbing per chunk of m samples, reach bitwise the same weights on
  1 and 2 workers;
* a ghost-BN run with ``train.micro_batch_size`` resumed mid-epoch on 2 -> 1 (where it runs
  2 accumulation steps) -> 2 workers ends with bitwise the weights of the uninterrupted
  1-worker run, and says what is the same and what differs;
* an elastic job (two torchrun agents, ``--nnodes=1:2``, c10d rendezvous on 127.0.0.1) of the
  dropout model gains an agent (the running worker checkpoints at the step boundary, the
  group re-forms on 2 workers) and then loses it mid-epoch (SIGKILL; the survivor re-forms
  the group alone and resumes from the last checkpoint), and finishes with bitwise the
  uninterrupted run's weights.

Each configuration is 8 steps per epoch of a batch of 32; most of the time is start-up.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import pytest
import torch

from ..conftest import REPO, _env, final_weights
from .gloo_world import free_port
from .test_cluster_ops import TRAIN_SBATCH, Job, children, clean_env, records, slurm_env

QUICKSTART = "configs/quickstart.yaml"
BASE = [
    "data.name=synthetic", "data.synthetic_train_size=320", "data.val_size=64", "data.synthetic_test_size=64",
    "data.synthetic_noise=4.0", "train.global_batch_size=32", "log.every_steps=1", "log.tensorboard=false",
    "log.progress=lines", "optim.warmup_epochs=0",
]  # 256 training images: 8 steps per epoch
GHOST = BASE + ["model.arch=cnn_small", "train.bn_group_size=8", "train.epochs=1"]
DROPOUT = BASE + ["model.arch=squeezenet1_1", "train.epochs=2"]
M16 = ["train.micro_batch_size=16"]  # 1 worker x 2 accumulation steps, or 2 workers x 1
TIMEOUT = 240


def _command(nproc: int, run_dir: Path, overrides: Sequence[str]) -> list[str]:
    train = [str(REPO / "launch" / "train.py"), "--config", str(REPO / QUICKSTART), "--run-dir", str(run_dir)]
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                *train, *overrides]
    return [sys.executable, *train, *overrides]


def run_all(*launches: tuple[int, Path, Sequence[str]]) -> list[str]:
    """Run the launches side by side (at most 2 processes at a time); return their outputs."""
    outputs: list[str] = []
    pending = list(launches)
    while pending:
        batch, width = [], 0
        while pending and width + pending[0][0] <= 2:
            nproc, run_dir, overrides = pending.pop(0)
            batch.append(subprocess.Popen(_command(nproc, run_dir, overrides), stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO))
            width += nproc
        for proc in batch:
            try:
                out, _ = proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                pytest.fail(f"launch did not finish in {TIMEOUT} s:\n{out[-3000:]}")
            assert proc.returncode == 0, out[-3000:]
            outputs.append(out)
    return outputs


def differences(run_dir: Path, reference: Path) -> dict[str, float]:
    """Max |difference| per floating-point tensor of the two runs' final models (same keys)."""
    mine, ref = final_weights(run_dir), final_weights(reference)
    assert mine.keys() == ref.keys()
    return {k: (mine[k].double() - ref[k].double()).abs().max().item() for k in ref if ref[k].is_floating_point()}


def worst(run_dir: Path, reference: Path) -> tuple[str, float]:
    diff = differences(run_dir, reference)
    key = max(diff, key=diff.__getitem__)
    return key, diff[key]


def assert_identical(run_dir: Path, reference: Path) -> None:
    """Bitwise the same final weights and buffers: the same micro-batches summed in the same order."""
    key, value = worst(run_dir, reference)
    print(f"{run_dir.name} vs {reference.name}: max |diff| {value:.3g} ({key})")
    assert value == 0.0, f"{run_dir.name} vs {reference.name}: {key} differs by {value:.3g}"


def summation_floor(*k1_runs: Path) -> float:
    """The largest difference among runs on one worker that differ only in how each step's batch
    is cut into micro-batches (so in floating-point summation order): the floor a K-independence
    check of runs with other micro-batch sizes is held to, measured on this CPU."""
    return max(worst(a, b)[1] for i, a in enumerate(k1_runs) for b in k1_runs[i + 1:])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uninterrupted runs: ghost BN and dropout on 1 worker (micro-batches of 32, 16, and 8 for
    ghost BN) and on 2 workers (16 each); SAM and extragradient per chunk of 16 on 1 and 2 workers,
    and vanilla SGD at micro-batches of 16 to tell them from."""
    root = tmp_path_factory.mktemp("any_k")
    plan = {
        "ghost_k1": (1, GHOST), "ghost_k1_m16": (1, GHOST + M16),
        "ghost_k1_m8": (1, GHOST + ["train.micro_batch_size=8"]), "ghost_k2": (2, GHOST),
        "dropout_k1": (1, DROPOUT), "dropout_k1_m16": (1, DROPOUT + M16), "dropout_k2": (2, DROPOUT),
    }
    plan["vanilla_k1_m16"] = (1, GHOST + M16 + ["method=vanilla"])  # the quickstart's method is DReg
    for name in ("sam", "extragradient"):
        for k in (1, 2):
            plan[f"{name}_k{k}"] = (k, GHOST + M16 + [f"method={name}", f"methods.{name}.micro_batch_size=16"])
    dirs = {name: root / name for name in plan}
    run_all(*((k, dirs[name], overrides) for name, (k, overrides) in plan.items()))
    return dirs


@pytest.mark.distributed
def test_one_and_two_workers_with_the_same_micro_batch_reach_bitwise_the_same_weights(runs: dict[str, Path]) -> None:
    """Two workers of 16 and one worker with two accumulation steps of 16: the same forwards, the
    same gradients summed in the same order, so the same weights bit for bit (ghost BN; a
    dropout model keyed by sample)."""
    assert_identical(runs["ghost_k2"], runs["ghost_k1_m16"])
    assert_identical(runs["dropout_k2"], runs["dropout_k1_m16"])
    # Ghost BN's running statistics moved once per optimizer step, and the exports agree.
    for name in ("ghost_k1_m16", "ghost_k2"):
        assert int(final_weights(runs[name])["net.bn1.num_batches_tracked"]) == 8, name
    exports = [torch.load(runs[name] / "export" / "model_state.pt", weights_only=True)
               for name in ("ghost_k1_m16", "ghost_k2")]
    assert exports[0].keys() == exports[1].keys() and "bn1.running_mean" in exports[0]
    for key, value in exports[0].items():
        assert torch.equal(value, exports[1][key]), key


@pytest.mark.distributed
def test_other_micro_batch_sizes_differ_by_summation_order_only(runs: dict[str, Path]) -> None:
    """1 worker of 32 against 2 workers of 16: not bitwise, but within the spread of one-worker
    runs that differ only in their micro-batch size, measured here (a CPU with other kernels
    measures its own floor instead of crossing a constant)."""
    floor = summation_floor(runs["ghost_k1"], runs["ghost_k1_m16"], runs["ghost_k1_m8"])
    key, value = worst(runs["ghost_k2"], runs["ghost_k1"])
    print(f"ghost_k2 vs ghost_k1: {value:.3g} ({key}); summation-order floor {floor:.3g}")
    assert value <= floor
    assert floor < 1e-2  # rounding amplified over 8 steps: far below a difference in what is trained
    dropout_floor = worst(runs["dropout_k1_m16"], runs["dropout_k1"])[1]
    assert worst(runs["dropout_k2"], runs["dropout_k1"])[1] <= dropout_floor < 1e-2


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["sam", "extragradient"])
def test_perturbation_methods_are_the_same_on_one_and_two_workers(runs: dict[str, Path], name: str) -> None:
    """SAM's ascent and extragradient's extrapolation per chunk of m = 16 samples: the chunks are
    the same on any K, so 1 and 2 workers reach bitwise the same weights (chunks smaller than a
    worker's micro-batch add only summation order: tests/distributed/test_methods_ddp.py)."""
    assert_identical(runs[f"{name}_k2"], runs[f"{name}_k1"])
    assert worst(runs[f"{name}_k1"], runs["vanilla_k1_m16"])[1] > 1e-4  # really another training than vanilla


@pytest.mark.distributed
def test_resume_on_two_then_one_then_two_workers(tmp_path: Path, runs: dict[str, Path]) -> None:
    run_dir = tmp_path / "chain"
    ghost = GHOST + M16  # 2 workers x 1 or 1 worker x 2 accumulation steps
    first, = run_all((2, run_dir, ghost + ["train.stop_after_steps=3"]))
    assert "stopped (stop_after_steps) at global step 3" in first
    second, = run_all((1, run_dir, ghost + ["train.stop_after_steps=6"]))
    assert "resumed from" in second and "(global step 3)" in second
    assert "warning: checkpoint was written by 2 workers, now 1; unchanged: the data order and augmentation, " \
           "dropout and stochastic-depth masks (keyed by sample), BatchNorm (groups of train.bn_group_size=8)" in second
    third, = run_all((2, run_dir, ghost))
    assert "(global step 6)" in third and "written by 1 worker, now 2" in third
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_steps"] == 8 and summary["world_size"] == 2
    assert int(final_weights(run_dir)["net.bn1.num_batches_tracked"]) == 8  # not once per micro-batch
    assert_identical(run_dir, runs["ghost_k1_m16"])


def _worker_pid(agent: Job) -> int:
    """The training worker torchrun's agent runs (the child with RANK in its environment)."""
    for pid in children(agent.proc.pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_text().split("\0")
        except OSError:
            continue
        if any(item.startswith("RANK=") for item in environ):
            return pid
    raise AssertionError(f"no worker under agent {agent.proc.pid}")


def _sigterm_pending(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return False
    bit = 1 << (signal.SIGTERM - 1)
    return any(line.startswith(("ShdPnd:", "SigPnd:")) and int(line.split()[1], 16) & bit for line in status)


def _checkpointed_on(run_dir: Path, world_size: int) -> Callable[[], bool]:
    """Whether the newest worker group has world_size workers and has written a checkpoint."""
    def check() -> bool:
        recs = records(run_dir)
        starts = [i for i, r in enumerate(recs) if r["kind"] == "start"]
        return bool(starts) and recs[starts[-1]]["world_size"] == world_size and any(
            r["kind"] == "checkpoint" for r in recs[starts[-1]:])
    return check


@pytest.mark.distributed
def test_elastic_job_gains_and_loses_an_agent_and_finishes_the_same_run(tmp_path: Path,
                                                                        runs: dict[str, Path]) -> None:
    run_dir = tmp_path / "run"
    port = free_port()

    def agent(host: bool) -> list[str]:
        # For a quick test: a lone agent starts after 3 s; keep-alives every second, a node is
        # dead after 5 s without one (a heartbeat can come ~2 intervals apart: 2 would be too few).
        conf = f"is_host={str(host).lower()},last_call_timeout=3,keep_alive_interval=1,keep_alive_max_attempt=5"
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1:2", "--nproc_per_node=1",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=elastic-test",
                f"--rdzv-conf={conf}", "--local-addr=127.0.0.1", "--max-restarts=3", "--monitor-interval=0.2",
                "launch/train.py", "--config", QUICKSTART, "--run-dir", str(run_dir), *DROPOUT,
                "train.micro_batch_size=16", "checkpoint.every_steps=2"]

    env = clean_env(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    survivor = Job(agent(host=True), env, tmp_path / "survivor.log")  # hosts the rendezvous store
    joiner: Optional[Job] = None
    try:
        # 1 worker. Its worker is paused (SIGSTOP) so that the run is still mid-epoch when the
        # second agent has started; it resumes once its agent has asked it to stop (SIGTERM).
        survivor.wait_for("a checkpoint of 1 worker", _checkpointed_on(run_dir, 1))
        worker = _worker_pid(survivor)
        os.kill(worker, signal.SIGSTOP)
        joiner = Job(agent(host=False), env, tmp_path / "joiner.log")
        try:
            survivor.wait_for("the agent's SIGTERM to its worker", lambda: _sigterm_pending(worker))
        finally:
            os.kill(worker, signal.SIGCONT)
        # 2 workers; then the second agent is lost with its worker (SIGKILL), mid-epoch.
        survivor.wait_for("a checkpoint of 2 workers", _checkpointed_on(run_dir, 2))
        joiner.kill()
        killed_at = max(r["step"] for r in records(run_dir) if r["kind"] == "train")
        assert survivor.wait() == 0, survivor.output[-4000:]
    finally:
        survivor.kill()
        if joiner is not None:
            joiner.kill()
    out = survivor.output
    assert killed_at < 16, "the run finished before the agent was lost"
    assert "stopped (signal SIGTERM)" in out, out[-4000:]
    # Rank 0 of the 2-worker round, which prints the warning, is either agent's worker: the
    # rendezvous does not keep the host agent's rank.
    assert joiner is not None
    both = out + joiner.output
    assert "warning: checkpoint was written by 1 worker, now 2" in both, both[-4000:]
    assert "warning: checkpoint was written by 2 workers, now 1" in out, out[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 1 and summary["global_steps"] == 16
    assert [r["world_size"] for r in records(run_dir) if r["kind"] == "start"] == [1, 2, 1]
    assert not (run_dir / "preempted.json").exists()  # the membership change was not a preemption
    assert_identical(run_dir, runs["dropout_k1_m16"])


def test_sbatch_elastic_knob(tmp_path: Path) -> None:
    env = slurm_env(tmp_path, 555123, DREG_DRY_RUN="1", SLURM_NNODES="4", SLURM_JOB_NUM_NODES="4",
                    SLURM_JOB_NODELIST="gpu[007-010]", SLURM_GPUS_ON_NODE="8", DREG_MIN_NODES="2")
    done = subprocess.run(["bash", str(TRAIN_SBATCH), QUICKSTART, "train.micro_batch_size=128"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    cmd = shlex.split(done.stdout.strip().splitlines()[-1])
    assert "--kill-on-bad-exit=0" in cmd and "--nnodes=2:4" in cmd and "--max-restarts=3" in cmd
    env["DREG_MIN_NODES"] = "5"
    bad = subprocess.run(["bash", str(TRAIN_SBATCH), QUICKSTART], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "DREG_MIN_NODES=5" in bad.stderr
    del env["DREG_MIN_NODES"]
    plain = subprocess.run(["bash", str(TRAIN_SBATCH), QUICKSTART], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60)
    cmd = shlex.split(plain.stdout.strip().splitlines()[-1])
    assert "--kill-on-bad-exit=1" in cmd and "--nnodes=4" in cmd and "--max-restarts=0" in cmd
