"""A real Slurm cluster for the tests: ``launch/slurm/local_cluster.sh`` with names of its own.

The test cluster uses its own node names, namespace names, private /24 and controller
port, so that it never touches a cluster a user brought up with the script's defaults.
Jobs are submitted from a folder that looks like the repository root (``launch``,
``configs`` and ``dreg_dist`` linked to this checkout), so run folders and Slurm output
land where the README says, relative to it, and never in the checkout itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

REPO = Path(__file__).resolve().parents[2]
LOCAL_CLUSTER = REPO / "launch" / "slurm" / "local_cluster.sh"
NAME, NET, PORT = "dregtest", "10.231.87", "6871"
TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}

SKIP_REASON = ("needs root and Slurm's daemons (slurmctld, slurmd, munged: "
               "apt-get install -y slurm-wlm munge, as .ci/run does)")


def missing() -> bool:
    """Whether this machine cannot run the cluster: not root, or Slurm or munge not installed."""
    tools = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "scancel", "sinfo", "ip", "nsenter", "unshare")
    return os.geteuid() != 0 or any(shutil.which(t) is None for t in tools)


def parse_time(stamp: str) -> float:
    """A Slurm time stamp (local time, e.g. 2026-12-01T22:44:03) as a time.time() value."""
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))


def wait_until(what: str, condition: Callable[[], Any], timeout: float, poll: float = 0.3,
               diagnose: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f} s\n{diagnose()}")
        time.sleep(poll)


class Cluster:
    """The controller and ``nodes`` nodes; :meth:`up` and :meth:`down` run the repository's script."""

    def __init__(self, state_dir: Path, nodes: int) -> None:
        self.state_dir = state_dir
        self.nodes = nodes
        self.conf = state_dir / "slurm.conf"

    @property
    def script_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(DREG_CLUSTER_NAME=NAME, DREG_CLUSTER_NET=NET, DREG_CLUSTER_PORT=PORT,
                   DREG_CLUSTER_DIR=str(self.state_dir), SLURM_CONF=str(self.conf))
        return env

    def script(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["bash", str(LOCAL_CLUSTER), *args], env=self.script_env, capture_output=True,
                              text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"local_cluster.sh {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done

    def up(self) -> None:
        self.script("down", check=False)  # what a killed earlier test session may have left
        self.script("up", str(self.nodes))

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.script("down", check=False)

    # ------------------------------------------------------------------ clients
    def job_env(self, **extra: str) -> dict[str, str]:
        """A submitting user's environment: this Python and package, one thread, no launcher's variables."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "PET_", "TORCHELASTIC_", "DREG_", "TORCH_ELASTIC_"))
               and k not in TORCH_VARS}
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(SLURM_CONF=str(self.conf), OMP_NUM_THREADS="1", DREG_NPROC_PER_NODE="1")
        env.update(extra)
        return env

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(cmd), env=self.job_env(), capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def sbatch(self, args: Iterable[str], cwd: Path, **env: str) -> int:
        done = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=self.job_env(**env),
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"sbatch failed ({done.returncode}): {done.stderr.strip()}")
        return int(done.stdout.strip().split(";")[0])

    def jobs(self, job_id: int) -> list[dict[str, str]]:
        """``scontrol show job``'s records of ``job_id`` (one per array task), as key -> value."""
        out = self.run("scontrol", "-o", "show", "job", str(job_id)).stdout
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]

    def job(self, job_id: int) -> dict[str, str]:
        return self.jobs(job_id)[0]

    def node(self, name: str) -> dict[str, str]:
        return dict(re.findall(r"(\w+)=(\S*)", self.run("scontrol", "-o", "show", "node", name).stdout))

    def hostnames(self, nodelist: str) -> list[str]:
        return self.run("scontrol", "show", "hostnames", nodelist).stdout.split()

    def wait_job(self, job_id: int, what: str, condition: Callable[[dict[str, str]], bool], timeout: float,
                 diagnose: Callable[[], str] = lambda: "") -> dict[str, str]:
        return wait_until(f"{what} of job {job_id}", lambda: (lambda j: j if condition(j) else None)(
            self.job(job_id)), timeout, poll=0.5, diagnose=lambda: f"{self.job(job_id)}\n{diagnose()}")

    def wait_ended(self, job_id: int, timeout: float, diagnose: Callable[[], str] = lambda: "") -> dict[str, str]:
        return self.wait_job(job_id, "the end", lambda j: j["JobState"] in FINAL_STATES, timeout, diagnose)

    def release(self, job_id: int, *fields: str, requeued_at: float) -> None:
        """Start a requeued job now (Slurm holds it about 2 minutes), but not in its requeue's second.

        At the requeue, slurmd revokes the job id's credential and later compares a new
        credential with that revocation in whole seconds: an attempt allocated within the same
        second is refused ("Job 6 already killed, do not launch batch job"), and the job ends
        FAILED with exit 1. Slurm's own hold avoids it; a release at once hit it once in CI.
        """
        time.sleep(max(0.0, requeued_at + 3.0 - time.time()))
        self.run("scontrol", "update", f"JobId={job_id}", *fields, "StartTime=now")

    def log_tail(self, lines: int = 40) -> str:
        log = self.state_dir / "slurmctld.log"
        return "\n".join(log.read_text().splitlines()[-lines:]) if log.is_file() else ""


def make_checkout(root: Path) -> Path:
    """A folder to submit from that holds this checkout's code, and nothing else of it."""
    root.mkdir(parents=True, exist_ok=True)
    for part in ("launch", "configs", "dreg_dist"):
        (root / part).symlink_to(REPO / part)
    return root


def tail(path: Optional[Path], chars: int = 4000) -> str:
    return path.read_text()[-chars:] if path is not None and path.is_file() else f"({path} not written)"
