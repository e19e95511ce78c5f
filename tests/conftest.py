"""Shared test fixtures: launch real training jobs as a user would."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator, Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """Each test ends with the environment variables it started with. Code under test writes
    variables no monkeypatch recorded (``launch_world`` sets MASTER_ADDR and WORLD_SIZE from
    Slurm's), and a later test's torchrun or webdataset would otherwise read another test's
    "cluster". Only what changed is put back, key by key (pytest's own PYTEST_CURRENT_TEST
    aside): the Slurm tests' driver threads read the environment while tests run."""
    saved = dict(os.environ)
    yield
    for key in [k for k in os.environ if k not in saved and k != "PYTEST_CURRENT_TEST"]:
        del os.environ[key]
    for key, value in saved.items():
        if key != "PYTEST_CURRENT_TEST" and os.environ.get(key) != value:
            os.environ[key] = value


# A small, fast job: synthetic data, tiny CNN, a few steps per epoch.
TINY = [
    "data.name=synthetic",
    "data.synthetic_train_size=320",
    "data.val_size=64",
    "data.synthetic_test_size=64",
    "data.synthetic_noise=4.0",
    "train.global_batch_size=64",
    "train.epochs=2",
    "log.every_steps=1",
    "log.tensorboard=false",
    "model.arch=cnn_small_gn",
    "optim.warmup_epochs=0",
]


def launch_script(script: str) -> ModuleType:
    """A ``launch/`` script loaded as a module, to call its functions in this process."""
    spec = importlib.util.spec_from_file_location(f"launch_{script[:-3]}", REPO / "launch" / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def launch(
    nproc: int, config: str, run_dir: Path, overrides: Sequence[str] = (), timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run launch/train.py with ``nproc`` workers (torchrun when > 1), as a user would."""
    train = [str(REPO / "launch" / "train.py"), "--config", str(REPO / config), "--run-dir", str(run_dir)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *train]
    else:
        cmd = [sys.executable, *train]
    return subprocess.run(
        [*cmd, *overrides], capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO
    )


def final_weights(run_dir: Path) -> dict:
    """The model state in a run's last.pt."""
    import torch

    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def assert_ok(done: subprocess.CompletedProcess[str]) -> None:
    # Plain text, not a repr: pytest shortens a long repr in the middle, which hid a worker's
    # abort message once (a SIGABRT under torchrun that did not recur in three reruns).
    if done.returncode != 0:
        pytest.fail(f"exit {done.returncode}\n--- stdout (tail) ---\n{done.stdout[-3000:]}\n"
                    f"--- stderr (tail) ---\n{done.stderr[-6000:]}", pytrace=False)


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


@pytest.fixture
def resolver_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep's config resolver answered in this process (which has torch already) instead of
    one ``python -m dreg_dist.config.resolve`` per grid: the same code, the same JSON both ways,
    a resolver failure the same GridError; the subprocess door itself is tested elsewhere
    (tests/unit/test_docs_and_configs.py, tests/unit/test_config.py, the sweep CLI runs)."""
    import json

    from dreg_dist.config import resolve as resolver
    from dreg_dist.errors import ConfigError
    from dreg_dist.sweep import resolve

    def ask(request: dict) -> dict:
        try:
            reply = resolver.answer(json.loads(json.dumps(request)))
        except (ConfigError, ValueError, TypeError, AttributeError) as err:
            raise resolve.GridError(f"resolving the cells' configs failed: error: {err}") from None
        return json.loads(json.dumps(reply))

    monkeypatch.setattr(resolve, "_ask", ask)
