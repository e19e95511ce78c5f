"""launch/slurm/*.sbatch against real Slurm daemons: a controller and 10 nodes on this machine.

``launch/slurm/local_cluster.sh`` brings up slurmctld and one slurmd per node, each node a
network namespace with its own address and hostname (1 CPU each), and tears it all down
at the end, also after a failure. Every case is a real job: real sbatch, srun, scancel,
requeue, time limit, job array and a node whose processes are all killed.

The cases are independent jobs, so they run side by side on the one cluster: a module
fixture starts each case's driver (a thread that submits, signals and waits) as soon as the
module starts, and each test checks what its driver saw. Runs are compared with an
uninterrupted job on the same cluster, bitwise, with one thread per worker in both.

What a requeued job looks like here (Slurm 22.05): the same job id, ``Restarts`` (and the
next attempt's ``SLURM_RESTART_COUNT``) one higher, and held for about two minutes
(``EligibleTime`` = requeue + 2 min); the drivers note that hold and then release the job
with ``scontrol update StartTime=now``, a few seconds after the requeue (see
``Cluster.release``). The time-limit signal (``--signal=USR1@120``) is
sent by slurmctld's periodic check, every 30 s, so the time-limit case trains long enough
to be running when it comes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
import yaml

from .local_slurm import SKIP_REASON, Cluster, make_checkout, missing, parse_time, tail, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(missing(), reason=SKIP_REASON)]

NODES = 10
SBATCH = ["--nodes=2", "--cpus-per-task=1", "--gpus-per-node=0"]  # the README's local cluster: no GPUs
CONFIG = "configs/quickstart.yaml"
TIMEOUT = 420  # seconds for one job to end, on 2 busy cores shared by every case

# The quickstart, smaller: 20 steps per epoch x 2 epochs, a model with ghost batch norm and a
# fixed micro-batch, so that the training is the same on 1 and 2 workers (the node-loss case).
SHORT_STEPS = 40
COMMON = ["data.val_size=32", "data.synthetic_test_size=32", "train.global_batch_size=32",
          "train.micro_batch_size=16", "train.bn_group_size=8", "model.arch=cnn_tiny", "train.epochs=2",
          "log.progress=lines", "log.every_steps=1", "log.tensorboard=false"]
SHORT = [*COMMON, "data.synthetic_train_size=672", "checkpoint.every_steps=2"]
# The time-limit case must still be training up to ~31 s after it asks for the signal.
LONG_STEPS = 600
LONG = [*COMMON, "data.synthetic_train_size=9632", "checkpoint.every_steps=10", "log.every_steps=10"]


# ----------------------------------------------------------------------------- the cluster
@dataclass
class Site:
    cluster: Cluster
    checkout: Path
    drivers: dict[str, Future[dict[str, Any]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def run_dir(self, job_id: int) -> Path:
        return self.checkout / "runs" / f"quickstart-{job_id}"

    def output(self, job_id: int, name: str = "dreg-train") -> Path:
        return self.checkout / f"slurm-{name}-{job_id}.out"  # #SBATCH --output=slurm-%x-%j.out

    def train(self, overrides: list[str], *sbatch: str, **env: str) -> int:
        return self.cluster.sbatch([*SBATCH, *sbatch, "launch/slurm/train.sbatch", CONFIG, *overrides],
                                   self.checkout, **env)

    def diagnose(self, job_id: int) -> Callable[[], str]:
        return lambda: f"--- output:\n{tail(self.output(job_id))}\n--- slurmctld:\n{self.cluster.log_tail()}"

    def ended(self, job_id: int) -> dict[str, str]:
        return self.cluster.wait_ended(job_id, TIMEOUT, self.diagnose(job_id))

    def training(self, job_id: int, min_step: int = 1) -> None:
        """Wait until job_id's run has logged a training step >= min_step."""
        run_dir = self.run_dir(job_id)
        wait_until(f"training step {min_step} of job {job_id}",
                   lambda: any(r["kind"] == "train" and r["step"] >= min_step for r in records(run_dir)),
                   TIMEOUT, poll=0.2, diagnose=self.diagnose(job_id))

    def requeued(self, job_id: int, restarts: int) -> dict[str, Any]:
        """Wait for the requeue, note Slurm's hold, then release the job at once."""
        held = self.cluster.wait_job(job_id, "requeue", lambda j: j["JobState"] == "PENDING"
                                     and int(j["Restarts"]) == restarts, TIMEOUT, self.diagnose(job_id))
        return {"held": held, "seen_at": time.time()}


def records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return out


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load(run_dir / "checkpoints" / "last.pt")["model"]


def assert_same_weights(run_dir: Path, reference: Path, steps: int) -> None:
    mine, ref = load(run_dir / "checkpoints" / "last.pt"), load(reference / "checkpoints" / "last.pt")
    assert mine["global_step"] == ref["global_step"] == steps
    differ = {k: (mine["model"][k].double() - ref["model"][k].double()).abs().max().item()
              for k in ref["model"] if not torch.equal(mine["model"][k], ref["model"][k])}
    assert not differ, f"weights differ from the uninterrupted job (max |diff| per tensor): {differ}"


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error:" in line]


# ----------------------------------------------------------------------------- the cases
def reference(site: Site, overrides: list[str]) -> dict[str, Any]:
    job_id = site.train(overrides)
    return {"job": job_id, "end": site.ended(job_id)}


def preempted_by(site: Site, signal_args: list[str]) -> dict[str, Any]:
    job_id = site.train(SHORT)
    site.training(job_id)
    site.cluster.run("scancel", *signal_args, str(job_id))
    requeue = site.requeued(job_id, 1)
    site.cluster.release(job_id, requeued_at=requeue["seen_at"])
    return {"job": job_id, **requeue, "end": site.ended(job_id)}


def _seconds(run_time: str) -> int:
    """``scontrol``'s ``[D-]HH:MM:SS`` in seconds."""
    days, _, clock = run_time.rpartition("-")
    h, m, sec = (int(x) for x in clock.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + sec


def time_limit(site: Site) -> dict[str, Any]:
    # A 10-minute limit and the header's --signal=USR1@120 until training runs; then a limit that
    # leaves 80-140 s, so Slurm's next check (every 30 s) sends SIGUSR1 with time left to checkpoint.
    # The limit counts from the job's start in whole minutes, so it is set from the time already
    # run: a loaded machine's rendezvous can take 90 s, and a flat 2 minutes then left none.
    job_id = site.train(LONG, "--time=10")
    site.training(job_id)
    minutes = -(-(_seconds(site.cluster.job(job_id)["RunTime"]) + 80) // 60)
    site.cluster.run("scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes}")
    limited_at = time.time()
    requeue = site.requeued(job_id, 1)
    site.cluster.release(job_id, "TimeLimit=10", requeued_at=requeue["seen_at"])  # the next attempt must not be signalled at once
    return {"job": job_id, "limited_at": limited_at, "minutes": minutes, **requeue, "end": site.ended(job_id)}


def cancelled(site: Site) -> dict[str, Any]:
    job_id = site.train(SHORT)
    site.training(job_id)
    site.cluster.run("scancel", str(job_id))
    end = site.ended(job_id)
    time.sleep(3)  # a requeue would show by now
    after = site.cluster.job(job_id)
    last = site.run_dir(job_id) / "checkpoints" / "last.pt"
    state = load(last)
    left = sorted(p.name for p in last.parent.iterdir() if ".tmp-" in p.name)
    # The way back the script prints: submit again with DREG_RUN_DIR.
    again = site.train(SHORT, DREG_RUN_DIR=str(site.run_dir(job_id)))
    return {"job": job_id, "end": end, "after": after, "step": state["global_step"], "temp_files": left,
            "again": again, "again_end": site.ended(again)}


def node_lost(site: Site) -> dict[str, Any]:
    job_id = site.train(SHORT, "--no-kill", DREG_MIN_NODES="1")
    run_dir = site.run_dir(job_id)
    site.training(job_id, min_step=4)
    wait_until("a step checkpoint", lambda: list((run_dir / "checkpoints").glob("step-*.pt")), TIMEOUT)
    first, second = site.cluster.hostnames(site.cluster.job(job_id)["NodeList"])
    step = max(r["step"] for r in records(run_dir) if r["kind"] == "train")
    site.cluster.script("kill-node", second)
    killed_at = time.time()
    # Keep the other cases' jobs off the dead node (Slurm has not noticed it yet); a drain
    # does nothing to a running job.
    site.cluster.run("scontrol", "update", f"NodeName={second}", "State=DRAIN", "Reason=killed_by_the_test")
    end = site.ended(job_id)
    node_at_end = site.cluster.node(second)
    site.cluster.script("start-node", second)
    wait_until(f"{second} back", lambda: "NOT_RESPONDING" not in site.cluster.node(second)["State"], 120)
    site.cluster.run("scontrol", "update", f"NodeName={second}", "State=RESUME")
    return {"job": job_id, "nodes": (first, second), "killed_at": killed_at, "killed_at_step": step,
            "end": end, "node_at_end": node_at_end}


SWEEP_GRID = {
    "name": "tiny",
    "config": CONFIG,
    "overrides": [o for o in COMMON if not o.startswith("train.micro")] + ["data.synthetic_train_size=192"],
    "axes": {"method": ["vanilla", "dreg"]},
}


def sweep(site: Site) -> dict[str, Any]:
    grid = site.checkout / "tiny_grid.yaml"
    grid.write_text(yaml.safe_dump(SWEEP_GRID, sort_keys=False))
    listed = subprocess.run([sys.executable, "launch/sweep.py", "--grid", str(grid), "--dry-run"],
                            cwd=site.checkout, env=site.cluster.job_env(), capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    cells = int(listed.stdout.strip().splitlines()[-1].split()[0])
    job_id = site.cluster.sbatch(["--array", f"0-{cells - 1}", "--cpus-per-task=1", "--gpus-per-node=0",
                                  "launch/slurm/sweep.sbatch", str(grid)], site.checkout)
    tasks = wait_until(f"the end of array job {job_id}",
                       lambda: (lambda js: js if js and all(j["JobState"] in {"COMPLETED", "FAILED", "CANCELLED"}
                                                            for j in js) else None)(site.cluster.jobs(job_id)),
                       TIMEOUT, poll=1.0, diagnose=site.cluster.log_tail)
    report_dir = site.checkout / "tiny_report"
    report = subprocess.run([sys.executable, "launch/report.py", "runs/tiny", "--out", str(report_dir)],
                            cwd=site.checkout, env=site.cluster.job_env(), capture_output=True, text=True,
                            timeout=180)
    return {"job": job_id, "cells": cells, "listed": listed.stdout, "tasks": tasks, "report": report,
            "report_dir": report_dir}


def invalid_config(site: Site) -> dict[str, Any]:
    job_id = site.train([*SHORT, "train.micro_batch_size=null", "train.global_batch_size=33"])
    return {"job": job_id, "end": site.ended(job_id)}


def crashed_with_a_stale_marker(site: Site) -> dict[str, Any]:
    # A run folder left by an earlier, preempted attempt (its marker still there) and a run
    # that diverges: a failure, which must not be requeued on the old marker.
    run_dir = site.checkout / "runs" / "diverging"
    run_dir.mkdir(parents=True)
    (run_dir / "preempted.json").write_text('{"exit_code": 75}\n')
    job_id = site.train([*SHORT, "optim.lr=1e6", "optim.warmup_epochs=0"], DREG_RUN_DIR=str(run_dir))
    end = site.ended(job_id)
    time.sleep(3)
    return {"job": job_id, "end": end, "after": site.cluster.job(job_id), "run_dir": run_dir}


CASES: dict[str, tuple[Callable[[Site], dict[str, Any]], tuple[str, ...]]] = {
    # name: (driver, cases whose result its test also reads); the longest first
    "long_reference": (lambda site: reference(site, LONG), ()),
    "time_limit": (time_limit, ("long_reference",)),
    "reference": (lambda site: reference(site, SHORT), ()),
    "node_lost": (node_lost, ("reference",)),
    "usr1": (lambda site: preempted_by(site, ["--signal=USR1", "--full"]), ("reference",)),
    "sigterm": (lambda site: preempted_by(site, ["--signal=TERM"]), ("reference",)),
    "cancel": (cancelled, ("reference",)),
    "sweep": (sweep, ()),
    "invalid_config": (invalid_config, ()),
    "crash": (crashed_with_a_stale_marker, ()),
}


TESTS = {  # test -> the cases it reads (a parametrized test names its case in "case")
    "test_reference_trains_the_quickstart_on_two_nodes": ("reference",),
    "test_time_limit_signal_requeues_and_the_job_resumes_exactly": ("time_limit",),
    "test_cancel_ends_the_job_without_requeue_and_keeps_the_checkpoint": ("cancel",),
    "test_node_lost_in_an_elastic_job_training_finishes_and_the_job_ends": ("node_lost",),
    "test_sweep_array_runs_two_cells_and_the_report_reads_them": ("sweep",),
    "test_invalid_config_fails_before_any_worker_starts": ("invalid_config",),
    "test_a_crash_is_not_requeued_even_with_an_old_preemption_marker": ("crash",),
}


def _selected_cases(session: pytest.Session) -> set[str]:
    """The cases the selected tests of this module read, so that ``-k`` runs only those jobs."""
    cases: set[str] = set()
    for item in session.items:
        if Path(str(item.fspath)) != Path(__file__):
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        cases |= {params["case"]} if "case" in params else set(TESTS.get(getattr(item, "originalname", ""), ()))
    return cases | {dep for name in cases for dep in CASES[name][1]}


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    root = Path(tempfile.mkdtemp(prefix="dreg-cluster-test-"))
    cluster = Cluster(root / "slurm", NODES)
    site = Site(cluster, make_checkout(root / "checkout"))
    started = time.monotonic()
    up_s = 0.0
    pool = ThreadPoolExecutor(max_workers=len(CASES))
    lock = threading.Lock()

    def timed(name: str) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            return CASES[name][0](site)
        finally:
            with lock:
                site.seconds[name] = time.monotonic() - t0

    try:
        cluster.up()
        up_s = time.monotonic() - started
        cases = _selected_cases(request.session)
        for name in CASES:  # in this order, so that the longest start first
            if name in cases:
                site.drivers[name] = pool.submit(timed, name)
        yield site
        pool.shutdown(wait=True)
    finally:
        failed = [n for n, f in site.drivers.items() if f.done() and f.exception() is not None]
        # A case whose job ran but whose test failed keeps the jobs' output too (session count).
        failed += ["a test"] * bool(request.session.testsfailed and not failed)
        if failed:  # the daemons' logs, before down removes them with the cluster's folder
            shutil.copytree(cluster.state_dir, root / "slurm-logs", ignore=shutil.ignore_patterns("*.socket*", "spool"),
                            dirs_exist_ok=True)
        down = cluster.down()  # also after a failure: daemons, namespaces, bridge, /etc/hosts lines
        times = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(site.seconds.items(), key=lambda kv: -kv[1]))
        reporter = request.config.pluginmanager.getplugin("terminalreporter")
        capture = request.config.pluginmanager.getplugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():  # the case times, on the terminal even when all pass
                reporter.write_line(f"\ncluster: up {up_s:.0f} s; cases: {times}; "
                                    f"all {time.monotonic() - started:.0f} s; {down.stderr.strip()}")
                if failed:
                    reporter.write_line(f"cluster: {', '.join(failed)} failed; jobs' output and logs kept in {root}")
        if not failed:
            shutil.rmtree(root, ignore_errors=True)


def result(site: Site, name: str) -> dict[str, Any]:
    try:
        return site.drivers[name].result(timeout=2 * TIMEOUT)
    except Exception as err:  # say where the logs stay: under xdist the fixture's terminal line is the worker's
        pytest.fail(f"{name}: {type(err).__name__}: {err}\njobs' output and logs kept in {site.checkout.parent}")


# ----------------------------------------------------------------------------- the tests
def test_reference_trains_the_quickstart_on_two_nodes(site: Site) -> None:
    job_id = result(site, "reference")["job"]
    end = site.cluster.job(job_id)
    assert (end["JobState"], end["ExitCode"], end["Restarts"]) == ("COMPLETED", "0:0", "0")
    first, second = site.cluster.hostnames(end["NodeList"])
    out = site.output(job_id).read_text()  # slurm-%x-%j.out in the folder sbatch ran in
    assert f"train.sbatch: job {job_id} (attempt 1), 2 node(s) x 1 workers, rendezvous {first}:" in out, out
    assert "world size 2 on cpu" in out and "done: best val" in out
    assert not error_lines(out) and "Traceback" not in out, out[-4000:]
    run_dir = site.run_dir(job_id)  # runs/<config name>-<job id>
    assert summary(run_dir)["status"] == "finished" and summary(run_dir)["world_size"] == 2
    assert {p.name for p in (run_dir / "export").iterdir()} >= {"model_state.pt", "model.pt2", "meta.json"}
    assert load(run_dir / "checkpoints" / "last.pt")["global_step"] == SHORT_STEPS
    assert not (run_dir / "preempted.json").exists()
    assert not list(site.checkout.glob("slurm_job_*_resize*"))


@pytest.mark.parametrize("case, signal", [("usr1", "SIGUSR1"), ("sigterm", "SIGTERM")])
def test_preemption_signal_requeues_and_the_job_resumes_exactly(site: Site, case: str, signal: str) -> None:
    got = result(site, case)
    job_id, end = got["job"], got["end"]
    assert (end["JobState"], end["ExitCode"]) == ("COMPLETED", "0:0")
    assert end["JobId"] == str(job_id) and end["Restarts"] == "1"
    # Requeued with the same id, and held by Slurm before it starts again.
    held = got["held"]
    assert parse_time(held["EligibleTime"]) - got["seen_at"] > 60, held
    out = site.output(job_id).read_text()
    first, second = out.split(f"train.sbatch: job {job_id} (attempt 2)")  # SLURM_RESTART_COUNT=1
    assert f"train.sbatch: job {job_id} (attempt 1)" in first
    assert f"stopped (signal {signal})" in first
    agents = re.findall(rf"^agent on (\S+): stopped by {signal}; its workers had up to 100 s", first, re.M)
    assert len(set(agents)) == 2, first[-4000:]  # each node's agent: one line, and 128 + the signal's number
    code = 138 if signal == "SIGUSR1" else 143
    assert f"training stopped for preemption (exit {code}); requeueing job {job_id}" in first
    assert "Traceback" not in out, out[-4000:]
    run_dir = site.run_dir(job_id)
    stopped = [r for r in records(run_dir) if r["kind"] == "checkpoint" and r["reason"] == "stop"]
    assert len(stopped) == 1 and 0 < stopped[0]["step"] < SHORT_STEPS
    last = f"runs/quickstart-{job_id}/checkpoints/last.pt"  # as train.sbatch names it, from the submit folder
    assert f"resumed from {last}" in second and f"(global step {stopped[0]['step']})" in second
    assert summary(run_dir)["resumed_from"] == last
    assert not (run_dir / "preempted.json").exists()
    assert_same_weights(run_dir, site.run_dir(result(site, "reference")["job"]), SHORT_STEPS)


def test_time_limit_signal_requeues_and_the_job_resumes_exactly(site: Site) -> None:
    got = result(site, "time_limit")
    job_id, end = got["job"], got["end"]
    assert (end["JobState"], end["ExitCode"], end["Restarts"]) == ("COMPLETED", "0:0", "1")
    assert got["held"]["TimeLimit"] == f"00:{got['minutes']:02d}:00"
    out = site.output(job_id).read_text()
    first, second = out.split(f"train.sbatch: job {job_id} (attempt 2)")
    assert "stopped (signal SIGUSR1)" in first  # nothing but --signal=USR1@120 sent one
    run_dir = site.run_dir(job_id)
    (stop,) = [r for r in records(run_dir) if r["kind"] == "checkpoint" and r["reason"] == "stop"]
    assert 0 < stop["step"] < LONG_STEPS
    assert stop["time"] - got["limited_at"] < 45  # Slurm's check runs every 30 s
    assert "stopped (signal" not in second and f"(global step {stop['step']})" in second
    assert_same_weights(run_dir, site.run_dir(result(site, "long_reference")["job"]), LONG_STEPS)


def test_cancel_ends_the_job_without_requeue_and_keeps_the_checkpoint(site: Site) -> None:
    got = result(site, "cancel")
    job_id, end, after = got["job"], got["end"], got["after"]
    assert (end["JobState"], end["Restarts"]) == ("CANCELLED", "0")
    assert (after["JobState"], after["Restarts"]) == ("CANCELLED", "0")  # and it stays so
    out = site.output(job_id).read_text()
    assert "Slurm is ending this job, so it is not requeued here" in out, out[-4000:]
    assert "requeueing" not in out
    assert 0 < got["step"] < SHORT_STEPS and got["temp_files"] == []
    # The checkpoint is whole: a new job on the same run folder resumes from it and ends
    # with the uninterrupted job's weights.
    again, again_end = got["again"], got["again_end"]
    assert (again_end["JobState"], again_end["ExitCode"]) == ("COMPLETED", "0:0")
    run_dir = site.run_dir(job_id)
    again_out = site.output(again).read_text()
    assert f"resumed from {run_dir / 'checkpoints' / 'last.pt'}" in again_out  # DREG_RUN_DIR, absolute
    assert f"(global step {got['step']})" in again_out
    assert_same_weights(run_dir, site.run_dir(result(site, "reference")["job"]), SHORT_STEPS)


def test_node_lost_in_an_elastic_job_training_finishes_and_the_job_ends(site: Site) -> None:
    got = result(site, "node_lost")
    job_id, end = got["job"], got["end"]
    first, second = got["nodes"]
    assert (end["JobState"], end["ExitCode"]) == ("COMPLETED", "0:0"), end
    run_dir = site.run_dir(job_id)
    out = site.output(job_id).read_text()
    starts = [r["world_size"] for r in records(run_dir) if r["kind"] == "start"]
    assert starts == [2, 1], starts  # re-formed on the surviving node
    assert 4 <= got["killed_at_step"] < SHORT_STEPS, got
    resumed = re.search(r"resumed from \S+ at epoch \d+, step (\d+) ", out)
    assert resumed and int(resumed.group(1)) > 0, out[-4000:]  # lost mid-epoch, resumed mid-epoch
    assert "warning: checkpoint was written by 2 workers, now 1" in out
    assert summary(run_dir)["status"] == "finished"
    # The job ended with its training, long before Slurm would have declared the node down
    # (SlurmdTimeout 300 s); the script released the lost node and ended srun.
    ended_at = parse_time(end["EndTime"])
    trained_at = (run_dir / "summary.json").stat().st_mtime
    assert ended_at - trained_at < 30 + 20, (ended_at, trained_at)
    assert ended_at - got["killed_at"] < 250
    assert "DOWN" not in got["node_at_end"]["State"], got["node_at_end"]
    assert f"the agent on {first} ended (exit 0)" in out and "releasing them from the job" in out
    assert end["NodeList"] == first
    # The same training on 1 worker as on 2 (ghost batch norm, fixed micro-batch).
    mine, ref = weights(run_dir), weights(site.run_dir(result(site, "reference")["job"]))
    worst = max((mine[k].double() - ref[k].double()).abs().max().item() for k in ref)
    assert worst <= 1e-6, worst


def test_sweep_array_runs_two_cells_and_the_report_reads_them(site: Site) -> None:
    got = result(site, "sweep")
    assert got["cells"] == 2
    tasks = got["tasks"]
    assert sorted(int(t["ArrayTaskId"]) for t in tasks) == [0, 1]
    assert all((t["JobState"], t["ExitCode"]) == ("COMPLETED", "0:0") for t in tasks), tasks
    names = []
    for task in (0, 1):
        out = site.checkout / f"slurm-dreg-sweep-{got['job']}_{task}.out"  # --output=slurm-%x-%A_%a.out
        text = out.read_text()
        line = next(ln for ln in text.splitlines() if ln.startswith(f"sweep.sbatch: task {task}: grid"))
        names.append(Path(line.rsplit(" cell ", 1)[1]).name)
        assert "done: best val" in text, text[-3000:]
    assert len(set(names)) == 2 and all(n in got["listed"] for n in names)
    report = got["report"]
    assert report.returncode == 0, report.stderr[-3000:]
    text = (got["report_dir"] / "report.md").read_text()
    for name in names:
        cell = summary(site.checkout / "runs" / "tiny" / name)
        assert cell["status"] == "finished"
        best = max(cell["best"]["val_acc"].values())
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| {cell['method']} "))
        assert f"| {100 * best:.2f} |" in row, (row, best)


def test_invalid_config_fails_before_any_worker_starts(site: Site) -> None:
    got = result(site, "invalid_config")
    job_id, end = got["job"], got["end"]
    assert (end["JobState"], end["ExitCode"]) == ("FAILED", "2:0")
    out = site.output(job_id).read_text()
    errors = error_lines(out)
    assert errors == [errors[0]] and errors[0].startswith(
        "error: train.global_batch_size 33 is not divisible by world size 2"), out
    assert "srun" not in out and "agent" not in out and "world size 2 on" not in out, out
    assert not site.run_dir(job_id).exists()


def test_a_crash_is_not_requeued_even_with_an_old_preemption_marker(site: Site) -> None:
    got = result(site, "crash")
    end, after = got["end"], got["after"]
    assert (end["JobState"], end["ExitCode"]) == ("FAILED", "1:0"), end
    assert (after["JobState"], after["Restarts"]) == ("FAILED", "0")
    out = site.output(got["job"]).read_text()
    assert "not finite" in out and "training failed (exit 1)" in out, out[-4000:]
    assert "requeueing" not in out and not (got["run_dir"] / "preempted.json").exists()
