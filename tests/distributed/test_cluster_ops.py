"""Cluster operations and fault tolerance, exercised for real on CPU, without Slurm.

The Slurm scripts run on real Slurm daemons in ``tests/cluster`` (sbatch, srun, scancel,
requeue, time limits, job arrays, a lost node). What stays here:

* ``launch/slurm/*.sbatch`` with ``DREG_DRY_RUN=1`` under a fake ``scontrol``
  (``tests/fixtures/fake_slurm``): the command they build from the knobs and from node lists
  (``gpu[007-009,012]``) that the 2-node test cluster does not have, and their refusals;
* the torchrun agent that train.sbatch runs, ``dreg_dist.distributed.agent``, on one machine;
* preemption: a signal to torchrun makes the workers checkpoint at the next step boundary and
  the next launch resumes; ``torchrun --max-restarts``: a SIGKILLed worker's group restarts from
  the last checkpoint; resumed runs end with bitwise the same weights as an uninterrupted one;
* non-finite losses, and corrupt checkpoints.

What torchrun does with signals, as these tests observe it (PyTorch 2.14): its
workers run in their own sessions, so a signal to torchrun's process group reaches only the
agent; the agent forwards it (SIGTERM by default, SIGUSR1 when listed in
``PET_SIGNALS_TO_HANDLE``) to every worker, gives them ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``
(30 s) before SIGKILL, and then exits with status 1 (it re-raises the signal as an
exception), not with the workers' 75. Rank 0 therefore also writes ``preempted.json``.

Multi-process tests are marked ``distributed``; each launch is a few seconds of training
(8 steps x 2 epochs of a small CNN); most of the time is interpreter start-up.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

from .gloo_world import free_port

REPO = Path(__file__).resolve().parents[2]
FAKE_SLURM = REPO / "tests" / "fixtures" / "fake_slurm"
TRAIN_SBATCH = REPO / "launch" / "slurm" / "train.sbatch"
SWEEP_SBATCH = REPO / "launch" / "slurm" / "sweep.sbatch"
CONFIG = "configs/quickstart.yaml"
TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")

STEPS_PER_EPOCH = 8  # (160 - 32 validation images) / 16
EPOCHS = 2
TINY = [
    "data.name=synthetic",
    "data.synthetic_train_size=160",
    "data.val_size=32",
    "data.synthetic_test_size=32",
    "train.global_batch_size=16",
    f"train.epochs={EPOCHS}",
    "model.arch=cnn_small_gn",
    "log.every_steps=1",
    "log.tensorboard=false",
    "log.progress=lines",
    "checkpoint.every_steps=2",
]
TIMEOUT = 240  # seconds for one launch; a loaded 2-core machine needs ~20


# ---------------------------------------------------------------------------- helpers
def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any launcher's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PET_", "TORCHELASTIC_", "DREG_", "TORCH_ELASTIC_")) and k not in TORCH_VARS}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # this torch's torchrun
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def fake_slurm_bin(folder: Path) -> Path:
    """A PATH folder with the fake scontrol (node-list expansion), executable."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FAKE_SLURM / "scontrol", folder / "scontrol")
    script = folder / "scontrol"
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def slurm_env(root: Path, job_id: int, **extra: str) -> dict[str, str]:
    """The batch environment of job ``job_id`` for a dry run: 1 node (localhost), 2 workers."""
    bin_dir = fake_slurm_bin(root / "bin")
    env = clean_env(
        SLURM_JOB_ID=str(job_id),
        SLURM_JOB_NAME="dreg-train",
        SLURM_JOB_NODELIST="localhost",
        SLURM_NNODES="1",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NTASKS="1",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_SUBMIT_DIR=str(REPO),
        DREG_NPROC_PER_NODE="2",
        DREG_RDZV_PORT=str(free_port()),
        DREG_RUNS_DIR=str(root / "runs"),
    )
    env["PATH"] = str(bin_dir) + os.pathsep + env["PATH"]
    env.update(extra)
    return env


def torchrun(run_dir: Path, *torchrun_args: str, overrides: tuple[str, ...] = (),
             launcher: tuple[str, ...] | list[str] = ("-m", "torch.distributed.run")) -> list[str]:
    return [sys.executable, *launcher, "--standalone", "--nproc_per_node=2", *torchrun_args,
            "launch/train.py", "--config", CONFIG, "--run-dir", str(run_dir), *TINY, *overrides]


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``: /proc/PID/task/*/children, else the ppid in /proc/*/stat."""
    listings = list(Path(f"/proc/{pid}/task").glob("*/children"))
    found: list[int] = []
    for listing in listings:
        try:
            found += [int(k) for k in listing.read_text().split()]
        except OSError:
            pass
    if listings:
        return found
    for stat_file in Path("/proc").glob("[0-9]*/stat"):  # kernels without CONFIG_PROC_CHILDREN
        try:
            ppid = int(stat_file.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(stat_file.parent.name))
    return found


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (torchrun's workers live in other sessions)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


class Job:
    """A launch in its own session, output to a file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"launch did not finish in {timeout} s; output:\n{self.output[-4000:]}")
        finally:
            self._out.close()

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"launch exited ({self.proc.returncode}) before {what}; output:\n{self.output[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"no {what} after {timeout} s; output:\n{self.output[-4000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            for pid in [self.proc.pid, *descendants(self.proc.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()


@pytest.fixture
def jobs() -> Iterator[list[Job]]:
    """Launched jobs; any still running when the test ends is killed with its workers."""
    started: list[Job] = []
    yield started
    for job in started:
        job.kill()


def records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_started(run_dir: Path) -> Callable[[], bool]:
    return lambda: any(r["kind"] == "train" for r in records(run_dir))


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(run_dir: Path, reference_dir: Path) -> None:
    """The final model of ``run_dir`` equals the uninterrupted reference's, bit for bit."""
    mine, ref = load(run_dir / "checkpoints" / "last.pt"), load(reference_dir / "checkpoints" / "last.pt")
    assert mine["global_step"] == ref["global_step"] == STEPS_PER_EPOCH * EPOCHS
    assert mine["model"].keys() == ref["model"].keys()
    differ = {k: (mine["model"][k].double() - ref["model"][k].double()).abs().max().item()
              for k in ref["model"] if not torch.equal(mine["model"][k], ref["model"][k])}
    assert not differ, f"weights differ from the uninterrupted run (max |diff| per tensor): {differ}"


def assert_finished(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["global_steps"] == STEPS_PER_EPOCH * EPOCHS
    return summary


# ------------------------------------------------------------------ the sbatch script
def sbatch_header(script: Path) -> list[str]:
    return [line.split(None, 1)[1].strip() for line in script.read_text().splitlines() if line.startswith("#SBATCH")]


@pytest.mark.parametrize("script", [TRAIN_SBATCH, SWEEP_SBATCH])
def test_sbatch_headers(script: Path) -> None:
    header = sbatch_header(script)
    for option in ("--ntasks-per-node=1", "--signal=USR1@120", "--requeue"):
        assert option in header, f"{script.name} lacks #SBATCH {option}"
    assert any(o.startswith("--nodes=") for o in header)
    assert any(o.startswith("--gpus-per-node=") for o in header)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "sbatch " in text  # header comments show how to submit
    if script is TRAIN_SBATCH:
        assert "--nodes=1" in text and "--nodes=4" in text


def dry_run(script: Path, args: list[str], root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = slurm_env(root, 424242, DREG_DRY_RUN="1")
    full.update(env)
    return subprocess.run(["bash", str(script), *args], cwd=root, env=full, capture_output=True, text=True, timeout=60)


def test_sbatch_builds_the_torchrun_command_for_four_nodes(tmp_path: Path) -> None:
    env = slurm_env(tmp_path, 555123, DREG_DRY_RUN="1", SLURM_NNODES="4", SLURM_JOB_NUM_NODES="4",
                    SLURM_JOB_NODELIST="gpu[007-009,012]", SLURM_GPUS_ON_NODE="8")
    for key in ("DREG_NPROC_PER_NODE", "DREG_RDZV_PORT", "DREG_RUNS_DIR"):
        del env[key]
    result = subprocess.run(["bash", str(TRAIN_SBATCH), CONFIG, "train.epochs=3", "optim.lr=0.2"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    cmd = shlex.split(result.stdout.strip().splitlines()[-1])
    assert cmd[0] == "srun" and "--ntasks-per-node=1" in cmd and "--nodes=4" in cmd
    tail = cmd[cmd.index("python"):]  # after the task's bash -c wrapper
    assert tail[:8] == ["python", "-m", "dreg_dist.distributed.agent", "--nnodes=4", "--nproc_per_node=8",
                        "--rdzv_backend=c10d", f"--rdzv_endpoint=gpu007:{20000 + 555123 % 20000}",
                        "--rdzv_id=555123"]
    script = tail.index("launch/train.py")
    assert tail[script:] == ["launch/train.py", "--config", CONFIG, "--run-dir", "runs/quickstart-555123",
                             "train.epochs=3", "optim.lr=0.2"]


def test_sbatch_refuses_without_config_or_gpu_count(tmp_path: Path) -> None:
    assert dry_run(TRAIN_SBATCH, [], tmp_path).returncode == 2
    missing = dry_run(TRAIN_SBATCH, ["configs/nope.yaml"], tmp_path)
    assert missing.returncode == 2 and "not found" in missing.stderr
    env = slurm_env(tmp_path, 1, DREG_DRY_RUN="1")
    del env["DREG_NPROC_PER_NODE"]
    no_gpus = subprocess.run(["bash", str(TRAIN_SBATCH), CONFIG], env=env, capture_output=True, text=True)
    assert no_gpus.returncode == 2 and "DREG_NPROC_PER_NODE" in no_gpus.stderr


def test_sweep_runs_the_array_tasks_line(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.txt"
    sweep.write_text("# learning rates\n"
                     f"--config {CONFIG} optim.lr=0.05\n"
                     "\n"
                     f"--config={CONFIG} optim.lr=0.1 dreg.lam=0.01\n")
    second = dry_run(SWEEP_SBATCH, [str(sweep)], tmp_path, SLURM_ARRAY_TASK_ID="2")
    assert second.returncode == 0, second.stderr
    cmd = shlex.split(second.stdout.strip().splitlines()[-1])
    assert cmd[cmd.index("launch/train.py"):][:5] == ["launch/train.py", "--config", CONFIG, "--run-dir",
                                                      f"{tmp_path}/runs/quickstart-424242"]
    assert cmd[-2:] == ["optim.lr=0.1", "dreg.lam=0.01"]
    first = dry_run(SWEEP_SBATCH, [str(sweep)], tmp_path, SLURM_ARRAY_TASK_ID="1")
    assert shlex.split(first.stdout.strip().splitlines()[-1])[-1] == "optim.lr=0.05"
    beyond = dry_run(SWEEP_SBATCH, [str(sweep)], tmp_path, SLURM_ARRAY_TASK_ID="3")
    assert beyond.returncode == 2 and "no entry 3" in beyond.stderr


def test_sweep_runs_the_array_tasks_grid_cell(tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"name: g\nconfig: {REPO / CONFIG}\noverrides: [train.epochs=1]\n"
                    "axes:\n  method: [vanilla, dreg]\n  train.seed: [0, 1]\n")
    listed = subprocess.run([sys.executable, str(REPO / "launch" / "sweep.py"), "--grid", str(grid), "--dry-run"],
                            cwd=REPO, capture_output=True, text=True)
    assert listed.stdout.strip().splitlines()[-1] == "4 cells"
    third = dry_run(SWEEP_SBATCH, [str(grid)], tmp_path, SLURM_ARRAY_TASK_ID="2")
    assert third.returncode == 0, third.stderr
    cmd = shlex.split(third.stdout.strip().splitlines()[-1])
    args = cmd[cmd.index("launch/train.py"):]
    assert args[:5] == ["launch/train.py", "--config", str(REPO / CONFIG), "--run-dir",
                        str(tmp_path / "runs" / "g" / "dreg_seed0")]
    assert args[5:] == ["train.epochs=1", "method=dreg", "train.seed=0"]
    beyond = dry_run(SWEEP_SBATCH, [str(grid)], tmp_path, SLURM_ARRAY_TASK_ID="4")
    assert beyond.returncode == 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-worker run (the weights every resumed run must match)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = subprocess.run(torchrun(run_dir), cwd=REPO, env=clean_env(), capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert_finished(run_dir)
    return run_dir


@pytest.mark.distributed
def test_the_agent_ends_a_preemption_signal_with_one_line_and_128_plus_n(tmp_path: Path, jobs: list[Job],
                                                                         reference: Path) -> None:
    """``dreg_dist.distributed.agent`` (what train.sbatch runs on each node) handles SIGUSR1 as
    torchrun does, forwarding it, but ends with 138 and one line instead of 1 and a traceback;
    the workers' checkpoint and marker are what train.sbatch requeues on (tested on real Slurm
    in tests/cluster)."""
    run_dir = tmp_path / "run"
    agent = ["-m", "dreg_dist.distributed.agent"]
    env = clean_env(PET_SIGNALS_TO_HANDLE="SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
    job = Job(torchrun(run_dir, launcher=agent), env, tmp_path / "first.log")
    jobs.append(job)
    job.wait_for("a train record", training_started(run_dir))
    os.kill(job.proc.pid, signal.SIGUSR1)  # the agent alone: it must forward the signal
    assert job.wait() == 128 + signal.SIGUSR1, job.output[-4000:]
    out = job.output
    assert f"agent on {socket.gethostname()}: stopped by SIGUSR1; its workers had up to" in out, out[-4000:]
    assert "stopped (signal SIGUSR1)" in out and "Traceback" not in out, out[-4000:]
    assert json.loads((run_dir / "preempted.json").read_text())["exit_code"] == 75
    stopped_at = load(run_dir / "checkpoints" / "last.pt")["global_step"]
    assert 0 < stopped_at < STEPS_PER_EPOCH * EPOCHS

    again = Job(torchrun(run_dir, launcher=agent), env, tmp_path / "second.log")
    jobs.append(again)
    assert again.wait() == 0, again.output[-4000:]
    assert f"(global step {stopped_at})" in again.output
    assert not (run_dir / "preempted.json").exists()
    assert_same_weights(run_dir, reference)


# ----------------------------------------------------------------- torchrun directly
@pytest.mark.distributed
def test_sigterm_checkpoints_at_the_step_boundary_and_relaunch_resumes(tmp_path: Path, jobs: list[Job],
                                                                       reference: Path) -> None:
    run_dir = tmp_path / "run"
    job = Job(torchrun(run_dir), clean_env(), tmp_path / "first.log")
    jobs.append(job)
    job.wait_for("a train record", training_started(run_dir))
    signalled = time.time()
    os.killpg(job.proc.pid, signal.SIGTERM)
    rc = job.wait()
    out = job.output
    # The workers exit with 75; torchrun's agent re-raises the SIGTERM it forwarded and exits 1.
    assert rc == 1, out[-4000:]
    assert "stopped (signal SIGTERM)" in out, out[-4000:]
    last = run_dir / "checkpoints" / "last.pt"
    state = load(last)
    assert 0 < state["global_step"] < STEPS_PER_EPOCH * EPOCHS
    assert last.stat().st_mtime >= signalled - 0.01  # written after the signal
    recs = records(run_dir)
    assert max(r["step"] for r in recs if r["kind"] == "train") == state["global_step"]  # no step after it
    assert [r for r in recs if r["kind"] == "checkpoint"][-1]["step"] == state["global_step"]
    marker = json.loads((run_dir / "preempted.json").read_text())
    assert marker == {**marker, "exit_code": 75, "global_step": state["global_step"], "reason": "signal SIGTERM"}

    again = Job(torchrun(run_dir), clean_env(), tmp_path / "second.log")
    jobs.append(again)
    assert again.wait() == 0, again.output[-4000:]
    assert f"resumed from {last} at" in again.output
    assert f"(global step {state['global_step']})" in again.output
    assert assert_finished(run_dir)["resumed_from"] == str(last)
    assert_same_weights(run_dir, reference)


@pytest.mark.distributed
def test_max_restarts_resumes_a_killed_worker_group_exactly(tmp_path: Path, jobs: list[Job],
                                                            reference: Path) -> None:
    run_dir = tmp_path / "run"
    # Without TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 the restarted workers read the dead
    # group's gloo addresses from the store torchrun shares with them and hang in
    # init_process_group (pytorch/pytorch#135712); train.sbatch sets it too.
    job = Job(torchrun(run_dir, "--max-restarts=1"), clean_env(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1"),
              tmp_path / "log.txt")
    jobs.append(job)
    job.wait_for("a step checkpoint", lambda: any((run_dir / "checkpoints").glob("step-*.pt")))
    workers = {}
    for pid in children(job.proc.pid):
        try:
            environ = dict(item.split("=", 1) for item in
                           Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if "RANK" in environ:
            workers[int(environ["RANK"])] = pid
    assert sorted(workers) == [0, 1], workers
    os.kill(workers[1], signal.SIGKILL)
    assert job.wait() == 0, job.output[-4000:]
    out = job.output
    assert "exitcode: -9" in out or "Signal 9" in out or "SIGKILL" in out, out[-4000:]
    assert f"resumed from {run_dir / 'checkpoints'}" in out, out[-4000:]
    summary = assert_finished(run_dir)
    assert summary["resumed_from"] is not None
    assert_same_weights(run_dir, reference)


# ------------------------------------------------- in-process, single-worker scenarios
@pytest.fixture
def no_launcher_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run ``main`` in this process as a world of one, whatever launched pytest, on one
    thread (as torchrun's workers: a busy small machine is much slower with more)."""
    for key in list(os.environ):
        if key.startswith(("SLURM_", "TORCHELASTIC_")) or key in TORCH_VARS:
            monkeypatch.delenv(key)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_main(run_dir: Path, *overrides: str) -> int:
    from dreg_dist.train.run import main

    # progress off: the console stream is bound when records.py is imported, maybe to a
    # capture stream an earlier test closed.
    return main(["--config", str(REPO / CONFIG), "--run-dir", str(run_dir), *TINY, "log.progress='off'", *overrides])


def test_check_validates_for_the_given_world_size_and_starts_nothing(tmp_path: Path, no_launcher_env: None,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from dreg_dist.train.run import main

    args = ["--check", "--config", str(REPO / CONFIG), "--run-dir", str(tmp_path / "run"), *TINY]
    assert main([*args, "--world-size", "2"]) == 0
    assert capsys.readouterr().err == ""
    assert main([*args, "--world-size", "3"]) == 2  # a batch of 16 on 3 workers
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith(
        "error: train.global_batch_size 16 is not divisible by world size 3"), err
    assert not (tmp_path / "run").exists()


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (the SigCgt mask in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_a_preemption_signal_during_start_up_is_kept(tmp_path: Path, jobs: list[Job]) -> None:
    """SIGUSR1 (Slurm's time-limit warning) while a worker is still importing torch: without a
    handler it would kill the worker; launch/train.py installs the flag first, so the worker
    trains one step, checkpoints and exits for a requeue."""
    run_dir = tmp_path / "run"
    job = Job([sys.executable, "launch/train.py", "--config", CONFIG, "--run-dir", str(run_dir), *TINY],
              clean_env(), tmp_path / "log.txt")
    jobs.append(job)
    job.wait_for("the preemption handler", lambda: _catches(job.proc.pid, signal.SIGUSR1), timeout=60)
    assert not (run_dir / "metrics.jsonl").exists()  # still starting: no record written yet
    os.kill(job.proc.pid, signal.SIGUSR1)
    assert job.wait() == 75, job.output[-4000:]
    assert "stopped (signal SIGUSR1) at global step 1" in job.output, job.output[-4000:]
    assert load(run_dir / "checkpoints" / "last.pt")["global_step"] == 1


def all_checkpoints_finite(run_dir: Path) -> bool:
    from dreg_dist.train.checkpoint import all_finite

    files = list((run_dir / "checkpoints").glob("*.pt"))
    return all(all_finite(load(f)["model"]) and all_finite(load(f)["optimizer"]) for f in files)


DIVERGE = ("optim.lr=1e6", "train.amp=none", "optim.warmup_epochs=0")  # peak 6e4 for a batch of 16


def test_nonfinite_loss_stops_with_a_clear_message(tmp_path: Path, no_launcher_env: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(tmp_path, *DIVERGE) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "not finite" in err, err
    losses = [r["loss"] for r in records(tmp_path) if r["kind"] == "train"]
    # It really diverged: a sane first step, then exploding losses, then NaN/Inf.
    assert len(losses) >= 2 and losses[0] < 10 and losses[-1] > 1e3 * losses[0], losses
    assert f"step {len(losses) + 1} " in err
    assert all_checkpoints_finite(tmp_path)
    (diverged,) = [r for r in records(tmp_path) if r["kind"] == "diverged"]  # for reports
    assert diverged["step"] == len(losses) and "not finite" in diverged["reason"]


def test_nonfinite_skip_skips_steps_and_finishes(tmp_path: Path, no_launcher_env: None) -> None:
    assert run_main(tmp_path, *DIVERGE, "train.on_nonfinite=skip") == 0
    summary = assert_finished(tmp_path)
    assert 0 < summary["skipped_steps"] < STEPS_PER_EPOCH * EPOCHS
    assert len([r for r in records(tmp_path) if r["kind"] == "train"]) > 0
    assert all_checkpoints_finite(tmp_path)
    assert load(tmp_path / "checkpoints" / "last.pt")["global_step"] == STEPS_PER_EPOCH * EPOCHS


def test_a_nonfinite_state_is_never_checkpointed(tmp_path: Path, no_launcher_env: None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # With BatchNorm the running variance overflows while the loss is still finite, so
    # skipping cannot save this run: it must stop rather than write inf to a checkpoint.
    rc = run_main(tmp_path, *DIVERGE, "model.arch=cnn_small", "train.on_nonfinite=skip", "checkpoint.every_steps=1")
    err = capsys.readouterr().err
    assert rc == 1 and "state is not finite" in err, err
    assert [r["kind"] for r in records(tmp_path)][-1] == "diverged"
    assert list((tmp_path / "checkpoints").glob("step-*.pt")), "expected the finite early steps' checkpoints"
    assert all_checkpoints_finite(tmp_path)


def _trainer(tmp_path: Path, *overrides: str) -> Any:
    from dreg_dist.config import load_config
    from dreg_dist.distributed import init_distributed
    from dreg_dist.train.trainer import Trainer

    cfg = load_config(str(REPO / CONFIG), [*TINY, "log.progress='off'", "train.resume=never", *overrides])
    (tmp_path / "checkpoints").mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, tmp_path, init_distributed("cpu"))


@pytest.mark.parametrize("guard", ["host", "device"])
def test_a_skipped_step_leaves_weights_and_bn_statistics_untouched(tmp_path: Path, no_launcher_env: None,
                                                                   guard: str) -> None:
    """``device`` undoes the update with tensor ops and learns of it later; ``host`` never applies it."""
    trainer = _trainer(tmp_path, "model.arch=cnn_small", "train.on_nonfinite=skip", f"train.step_guard={guard}")
    try:
        before = {k: v.clone() for k, v in trainer.module.state_dict().items()}
        (x, y), = next(iter(trainer.data.train_batches(0, 16, 0, 1)))
        x = x.clone()
        x[0] = float("nan")  # poisons the loss and the batch statistics of this step
        trainer.train_step([(x, y)])
        trainer.settle()  # device mode: the host learns of the skip here
        assert trainer.state.skipped_steps == 1
        after = trainer.module.state_dict()
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert not changed, changed
        assert all(p.grad is None for p in trainer.module.parameters())
        trainer.train_step(next(iter(trainer.data.train_batches(0, 16, 0, 1))))  # a finite step still trains
        trainer.settle()
        assert trainer.state.skipped_steps == 1 and trainer.state.global_step == 2
        assert not torch.equal(before["net.conv1.weight"], trainer.module.state_dict()["net.conv1.weight"])
    finally:
        trainer.close()


def test_save_refuses_a_nonfinite_state(tmp_path: Path, no_launcher_env: None) -> None:
    from dreg_dist.train.control import NonFiniteLossError

    trainer = _trainer(tmp_path)
    try:
        trainer.save("step")
        good = (tmp_path / "checkpoints" / "last.pt").read_bytes()
        with torch.no_grad():
            next(trainer.module.parameters())[0].fill_(float("inf"))
        with pytest.raises(NonFiniteLossError, match="not finite"):
            trainer.save("step")
        assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == good
    finally:
        trainer.close()


# ------------------------------------------------------------------ corrupt checkpoints
def test_truncated_last_checkpoint_falls_back_to_an_older_one(tmp_path: Path, no_launcher_env: None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    assert run_main(run_dir, "train.stop_after_steps=5") == 0
    ckpts = run_dir / "checkpoints"
    assert load(ckpts / "last.pt")["global_step"] == 5
    assert {p.name for p in ckpts.glob("step-*.pt")} == {"step-2.pt", "step-4.pt"}
    last = ckpts / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.pt"
    shutil.copy(last, corrupt)

    # A fresh process, as after a crash: it warns, resumes from step-4.pt and goes on.
    result = subprocess.run([sys.executable, "launch/train.py", "--config", CONFIG, "--run-dir", str(run_dir),
                             *TINY, "train.stop_after_steps=6"], cwd=REPO, env=clean_env(), capture_output=True,
                            text=True, timeout=TIMEOUT)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert f"warning: checkpoint '{last}' is corrupt or truncated" in out, out[-4000:]
    assert f"resumed from {ckpts / 'step-4.pt'} at epoch 1, step 4" in out, out[-4000:]
    assert load(last)["global_step"] == 6

    # Asking for the corrupt file explicitly, with nothing else to resume from: a config error.
    capsys.readouterr()
    assert run_main(tmp_path / "fresh", f"train.resume={corrupt}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupt or truncated" in err and str(corrupt) in err, err
    assert not (tmp_path / "fresh").exists()

    assert run_main(tmp_path / "fresh", f"train.resume={tmp_path / 'missing.pt'}") == 2
    assert "does not exist" in capsys.readouterr().err


def test_one_collective_and_no_host_read_per_step_in_device_mode(tmp_path: Path, no_launcher_env: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The non-finite check and the preemption flag share one all-reduce per step; with
    ``train.step_guard=device`` (the CUDA default) a step reads nothing back to the host, and
    a step that diverges (on_nonfinite=stop) is never applied and is reported STEP_FLAG_LAG
    steps later (in a loop of train_step alone: by the step after those, which acts on the
    flags of steps that old before its own update)."""
    import torch.distributed as dist

    from dreg_dist.train.control import NonFiniteLossError

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    calls = {"all_reduce": 0, "host_reads": 0}
    real_all_reduce, real_item, real_tolist = dist.all_reduce, torch.Tensor.item, torch.Tensor.tolist

    def counting_all_reduce(*args: Any, **kwargs: Any) -> Any:
        calls["all_reduce"] += 1
        return real_all_reduce(*args, **kwargs)

    def counting(real: Any) -> Any:
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            calls["host_reads"] += 1
            return real(self, *args, **kwargs)
        return read

    try:
        trainer = _trainer(tmp_path, "model.arch=cnn_small", "train.step_guard=device")
        batches = list(trainer.data.train_batches(0, 16, 0, 1))
        monkeypatch.setattr(dist, "all_reduce", counting_all_reduce)
        monkeypatch.setattr(torch.Tensor, "item", counting(real_item))
        monkeypatch.setattr(torch.Tensor, "tolist", counting(real_tolist))
        for step in range(3):
            trainer.train_step(batches[step])
        assert calls == {"all_reduce": 3, "host_reads": 0}
        monkeypatch.undo()
        before = {k: v.clone() for k, v in trainer.module.state_dict().items()}
        (x, y), = batches[3]
        x = x.clone()
        x[0] = float("nan")
        trainer.train_step([(x, y)])  # step 4 diverges: undone on the device, not yet known on the host
        assert all(torch.equal(before[k], v) for k, v in trainer.module.state_dict().items())
        trainer.train_step(batches[4])  # steps 5 and 6 act on the flags of steps 2 and 3
        trainer.train_step(batches[5])
        assert trainer.state.global_step == 6
        with pytest.raises(NonFiniteLossError, match="not finite at step 4"):
            trainer.train_step(batches[6])  # step 7 acts on step 4's flags
        trainer.close()
    finally:
        dist.destroy_process_group()
