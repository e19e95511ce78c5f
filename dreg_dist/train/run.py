"""Entry point shared by ``launch/train.py`` and the ``dreg-train`` console script.

Order matters: the config is loaded and validated, and the run directory checked,
*before* the process group is created, so a typo fails in well under a second with one
line on stderr and exit status 2 instead of a hung rendezvous or K tracebacks.
``--check`` stops there: ``launch/slurm/train.sbatch`` runs it once on the batch host,
so that a bad config ends a multi-node job before any node starts a worker.

The preemption flag is installed first of all (by the caller, before the heavy imports,
where it can): a SIGTERM or SIGUSR1 that reaches a worker while it is still starting is
kept, and the worker checkpoints at its first step boundary instead of dying of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import yaml

from dreg_dist import methods
from dreg_dist.config import (
    Config,
    ConfigError,
    changes_results,
    config_from_record,
    config_to_dict,
    flatten,
    load_config,
    run_record,
    save_config,
)
from dreg_dist.distributed import init_distributed, launch_world, shutdown
from dreg_dist.io import DiskFullError, remove_stale_temp_files
from dreg_dist.records import write_record
from dreg_dist.run_layout import RunLayout
from dreg_dist.train.checkpoint import CheckpointError, load_checkpoint, resume_candidates
from dreg_dist.train.preemption import REQUEUE_EXIT_CODE, PreemptionFlag
from dreg_dist.train.preflight import preflight

CONFIG_ERROR_EXIT_CODE = 2


def _resolved(saved: dict, layout: RunLayout) -> dict:
    """A run folder's saved config, every key spelled out: as saved when the folder has a
    ``record.json`` (this release wrote it complete), else upgraded from its release by
    ``config_from_record`` (a checkpoint of an earlier release still resumes)."""
    if layout.record.is_file():
        return flatten(saved)
    try:
        return flatten(config_to_dict(config_from_record(saved)))
    except ConfigError:
        return flatten(saved)


def prepare_run_dir(cfg: Config, run_dir: Path) -> None:
    """Refuse to mix two different runs in one directory; never delete anything."""
    layout = RunLayout(run_dir)
    has_checkpoint = bool(resume_candidates(layout.checkpoints))
    if not has_checkpoint or not layout.config.is_file():
        return
    if cfg.train.resume == "never":
        raise ConfigError(
            f"run dir '{run_dir}' already holds checkpoints; pass a new --run-dir or set train.resume=auto"
        )
    before = _resolved(yaml.safe_load(layout.config.read_text()) or {}, layout)
    now = flatten(config_to_dict(cfg))
    # The schedule's length may grow on resume; keys that change no result may differ freely.
    changed = [k for k in sorted(set(before) | set(now))
               if before.get(k) != now.get(k) and changes_results(k) and k != "train.epochs"]
    if changed and cfg.train.resume == "auto":
        raise ConfigError(
            f"run dir '{run_dir}' holds a run with a different config (differs in {', '.join(changed[:5])}); "
            "pass a new --run-dir to start another run"
        )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=f"Train an image classifier with a large-batch method ({', '.join(methods.registry())}; "
                    f"default {methods.DEFAULT}) on 1..K workers.",
        epilog="Overrides use dotted keys, e.g. train.epochs=3 optim.lr=0.2 method=NAME; a method's own keys "
               "are under its config section (see the README's method table)",
    )
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("--run-dir", default=None, help="output folder (default: runs/<config name>)")
    parser.add_argument("--check", action="store_true",
                        help="only check the config, data, method and run folder, then exit (0, or 2 with one "
                             "error: line); starts no worker")
    parser.add_argument("--world-size", type=int, default=None,
                        help="with --check: the number of workers to check for (default: this launch's)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_args(argv)
    if args.world_size is not None and (not args.check or args.world_size < 1):
        parser.error("--world-size needs --check and a positive number")
    return args


def resolve(args: argparse.Namespace) -> tuple[Config, Path]:
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir or cfg.run_dir or Path("runs") / Path(args.config).stem)
    cfg.run_dir = str(run_dir)
    world_size = args.world_size if args.world_size is not None else launch_world()[1]
    preflight(cfg, world_size)
    if cfg.train.resume not in ("auto", "never"):
        load_checkpoint(cfg.train.resume, mmap=True)  # missing/truncated: exit 2 now, not a traceback later
    prepare_run_dir(cfg, run_dir)
    return cfg, run_dir


def _remove_stale_temp_files(layout: RunLayout, started: float) -> None:
    removed = remove_stale_temp_files([layout.root, layout.checkpoints, layout.export], started)
    if removed:
        names = ", ".join(p.name for p in removed[:3]) + (", ..." if len(removed) > 3 else "")
        print(f"note: removed {len(removed)} temporary file(s) of interrupted writes in {layout.root} ({names})",
              file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None, preempt: Optional[PreemptionFlag] = None) -> int:
    """Train (or ``--check``) as the command line says; returns the exit status.

    ``preempt``: a flag the caller installed before importing this module; without one, a
    flag is installed here and removed again on return.
    """
    started = time.time()
    flag = preempt if preempt is not None else PreemptionFlag()
    if preempt is None:
        flag.install()
    try:
        return _main(argv, flag, started)
    finally:
        if preempt is None:
            flag.uninstall()


def _main(argv: Optional[Sequence[str]], preempt: PreemptionFlag, started: float) -> int:
    args = parse_args(argv)
    rank, _, _ = launch_world()
    try:
        cfg, run_dir = resolve(args)
    except (ConfigError, CheckpointError) as err:
        if rank == 0:
            print(f"error: {err}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    if args.check:
        return 0

    from dreg_dist.data import DataError
    from dreg_dist.train.control import NonFiniteLossError
    from dreg_dist.train.trainer import Trainer
    from dreg_dist.train.writer import CheckpointWriteError

    env = init_distributed(cfg.train.device)
    trainer = None
    summary = None
    all_stopped = False  # every rank reached the same error at the same point
    try:
        if env.is_main:
            layout = RunLayout(run_dir)
            layout.checkpoints.mkdir(parents=True, exist_ok=True)
            _remove_stale_temp_files(layout, started)
            save_config(cfg, layout.config)
            write_record(layout.root, run_record(cfg))  # what sweeps and reports read: no method code
        trainer = Trainer(cfg, run_dir, env, preempt=preempt)
        summary = trainer.fit()
    except DataError as err:  # found only once the data is read (e.g. batch > training split)
        if env.is_main:
            print(f"error: {err}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    except NonFiniteLossError as err:
        if trainer is not None:  # so that reports can tell a diverged run from an interrupted one
            trainer.recorder.event("diverged", step=trainer.state.global_step, epoch=trainer.state.epoch,
                                   reason=str(err))
        if env.is_main:
            print(f"error: {err}", file=sys.stderr)
        return 1
    except (CheckpointWriteError, DiskFullError) as err:
        all_stopped = isinstance(err, CheckpointWriteError)
        if env.is_main:
            print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if trainer is not None:
            trainer.close()
        shutdown(together=summary is not None or all_stopped)
    if summary.get("status") == "stopped" and summary.get("preempted"):
        return REQUEUE_EXIT_CODE  # the trainer left the requeue marker too: torchrun exits 1 or 128+N, not 75
    if env.is_main and summary.get("status") == "finished":
        # An elastic torchrun stops its workers with SIGTERM when an agent joins or leaves, and the
        # group it starts next finishes the run: that stop is not this job's preemption.
        RunLayout(run_dir).requeue_marker.unlink(missing_ok=True)
    return 0
