"""Run a grid's cells one after another on this machine, skipping finished ones.

Each cell is one ``launch/train.py`` subprocess (``python -m torch.distributed.run
--standalone --nproc_per_node=K`` for K > 1) with ``--run-dir RUNS_ROOT/NAME/CELL``. A cell
whose ``summary.json`` says ``finished`` (for the epochs the grid asks for) is skipped, and so
is one whose trainer stopped on a non-finite value (``diverged``: resuming it replays the same
steps into the same overflow; ``retry_diverged`` launches it anyway); any other cell is
launched, and the trainer resumes it from ``checkpoints/last.pt`` when there is one. ``RUNS_ROOT/NAME/sweep.json`` lists every cell, its overrides and its status; it is
rewritten after each cell (atomically; statuses are re-read from the run folders, so
parallel ``--cell-index`` jobs of a Slurm array do not lose each other's results). A cell another
sweep is running (it holds the run folder's lock, :mod:`dreg_dist.sweep.cell_lock`) is never
launched beside it: it waits until the others have run, then until that sweep lets go, and is
launched only if that sweep did not finish it.

Exit status: 0 when every launched cell ended without error (a diverged cell is a result,
not an error), 1 when one failed (the
others still ran), 2 for a grid or config error (nothing runs), 75 when a cell stopped for
SIGTERM/SIGUSR1 (preemption: launch the same command to resume), 130 after Ctrl-C.

Signals: a terminal's Ctrl-C reaches the cell itself (same process group). SIGTERM and
SIGUSR1 sent to the sweep alone are forwarded once to the running cell, which checkpoints
at the next step boundary and exits; under Slurm (``SLURM_JOB_ID`` set) they are not
forwarded, because Slurm signals every process of the job step itself. Either way no
further cell starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional, Sequence

from dreg_dist.io import atomic_write_text
from dreg_dist.run_layout import RunLayout
from dreg_dist.stop_signals import REQUEUE_EXIT_CODE, PreemptionFlag
from dreg_dist.sweep.cell_lock import CellLock
from dreg_dist.sweep.grid import REPO, Cell, Grid

SWEEP_FILE = "sweep.json"
TRAIN_SCRIPT = REPO / "launch" / "train.py"
_CARRIED = ("failed", "preempted", "stopped")
DONE = ("finished", "diverged")
"""Statuses a sweep does not launch again (``diverged`` unless asked to)."""


def fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _last_record(path: Path) -> Optional[dict[str, Any]]:
    """The last complete line of a JSON-lines file, parsed (None when there is none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 65536))
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            data = json.loads(line)
        except ValueError:
            continue  # a torn last line (killed mid-write) or the cut first one
        return data if isinstance(data, dict) else None
    return None


def disk_status(run_dir: Path, epochs: Optional[int]) -> str:
    """finished | diverged | partial | pending, from what the run folder holds."""
    layout = RunLayout(run_dir)
    summary = _read_json(layout.summary)
    if summary is not None and summary.get("status") == "finished" and (
            epochs is None or summary.get("epochs") in (None, epochs)):
        return "finished"
    last = _last_record(layout.metrics) if summary is None else None
    if last is not None and last.get("kind") == "diverged":
        return "diverged"
    if summary is not None or layout.last.is_file() or layout.metrics.is_file():
        return "partial"
    return "pending"


def train_command(cell: Cell, grid: Grid, run_dir: Path, nproc: int,
                  script: Path = TRAIN_SCRIPT) -> list[str]:
    train = [str(script), "--config", grid.config, "--run-dir", str(run_dir)]
    if nproc > 1:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    else:
        head = [sys.executable]
    return [*head, *train, *cell.overrides]


@dataclass
class CellState:
    cell: Cell
    run_dir: Path
    epochs: Optional[int]
    status: str = "pending"
    outcome: Optional[str] = None
    """How the cell ended when this invocation ran it."""
    returncode: Optional[int] = None
    wall_s: Optional[float] = None
    command: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        c = self.cell
        out: dict[str, Any] = {"index": c.index, "name": c.name, "run_dir": str(self.run_dir), "method": c.method,
                               "values": c.values, "overrides": c.overrides, "status": self.status}
        if self.returncode is not None:
            out["returncode"] = self.returncode
        if self.wall_s is not None:
            out["wall_s"] = round(self.wall_s, 2)
        if self.command:
            out["command"] = self.command
        return out


class _Signals(PreemptionFlag):
    """A stop request (SIGTERM/SIGUSR1/SIGINT); the first SIGTERM/SIGUSR1 also goes to the
    running cell, unless Slurm already signals every process of the job itself."""

    def __init__(self) -> None:
        super().__init__((signal.SIGTERM, signal.SIGUSR1, signal.SIGINT))
        self.child: Optional[subprocess.Popen[bytes]] = None
        self.forward = "SLURM_JOB_ID" not in os.environ
        self._forwarded = False

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        super()._handle(signum, frame)
        if signum == signal.SIGINT:  # the terminal delivers it to the whole foreground group
            return
        child = self.child
        if self.forward and not self._forwarded and child is not None and child.poll() is None:
            self._forwarded = True
            child.send_signal(signum)

    @property
    def exit_code(self) -> int:
        return 130 if self.signum == signal.SIGINT else REQUEUE_EXIT_CODE


class SweepRunner:
    def __init__(self, grid: Grid, cells: Sequence[Cell], runs_root: Path, nproc: int = 1,
                 say: Callable[[str], None] = print, script: Path = TRAIN_SCRIPT,
                 argv: Optional[Sequence[str]] = None) -> None:
        self.grid = grid
        self.cells = list(cells)
        self.sweep_dir = Path(runs_root) / grid.name
        self.runs_root = Path(runs_root)
        self.nproc = nproc
        self.script = script
        self.argv = list(argv) if argv is not None else None
        self._say = say
        self.states = [CellState(c, c.run_dir(self.sweep_dir), self._epochs(c)) for c in self.cells]
        self.refresh()

    def say(self, text: str) -> None:
        self._say(f"sweep {self.grid.name}: {text}")
        sys.stdout.flush()

    def _epochs(self, cell: Cell) -> Optional[int]:
        return cell.epochs

    # ------------------------------------------------------------ status
    def refresh(self, keep: Optional[CellState] = None) -> None:
        """Statuses from the run folders, plus failures recorded by earlier invocations."""
        previous = {c.get("name"): c for c in (_read_json(self.sweep_dir / SWEEP_FILE) or {}).get("cells", [])
                    if isinstance(c, dict)}
        for st in self.states:
            if st is keep:
                continue
            old = previous.get(st.cell.name, {})
            st.status = disk_status(st.run_dir, st.epochs)
            if st.status in DONE:
                pass
            elif st.outcome is not None:  # ran in this invocation
                st.status = st.outcome
            elif old.get("status") in _CARRIED:
                st.status = old["status"]
            if st.outcome is None:  # run by an earlier invocation (or none): keep how that one ran it
                if st.returncode is None and old.get("returncode") is not None:
                    st.returncode = old["returncode"]
                if not st.command and isinstance(old.get("command"), list):
                    st.command = list(old["command"])
                if st.wall_s is None and old.get("wall_s") is not None:
                    st.wall_s = old["wall_s"]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {"total": len(self.states)}
        for st in self.states:
            out[st.status] = out.get(st.status, 0) + 1
        return out

    def write(self, current: Optional[CellState] = None) -> Path:
        self.refresh(keep=current)
        data = {
            "name": self.grid.name,
            "description": self.grid.description,
            "grid": self.grid.to_dict(),
            "runs_root": str(self.runs_root),
            "sweep_dir": str(self.sweep_dir),
            "nproc_per_node": self.nproc,
            "command": self.argv,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "counts": self.counts(),
            "cells": [st.record() for st in self.states],
        }
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        path = self.sweep_dir / SWEEP_FILE
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
        return path

    # ------------------------------------------------------------ listing
    def dry_run(self, only: Optional[int] = None) -> None:
        width = max((len(c.name) for c in self.cells), default=4)
        print(f"grid {self.grid.name}: base config {self.grid.config}; runs under {self.sweep_dir}")
        for st in self.states:
            if only is not None and st.cell.index != only:
                continue
            print(f"{st.cell.index:4d}  {st.status:9s}  {st.cell.name:{width}s}  {st.cell.describe()}")
            if only is not None:
                print("      " + " ".join(train_command(st.cell, self.grid, st.run_dir, self.nproc, self.script)))
        print(f"{len(self.cells)} cells")

    # ------------------------------------------------------------ running
    def run(self, only: Optional[int] = None, shard: Optional[tuple[int, int]] = None,
            retry_diverged: bool = False) -> int:
        """Run the selected cells one after another: all, only cell ``only``, or with
        ``shard=(i, n)`` the cells whose index is i modulo n (n sweeps side by side)."""
        todo = [st for st in self.states if (only is None or st.cell.index == only)
                and (shard is None or st.cell.index % shard[1] == shard[0])]
        total = len(self.states)
        done_states = ("finished",) if retry_diverged else DONE
        to_run = [st for st in todo if st.status not in done_states]
        skipped = [st for st in todo if st.status in done_states]
        self.say(f"{total} cells, {self.counts().get('finished', 0)} finished, {len(to_run)} to run"
                 + (f" (only cell {only})" if only is not None else "")
                 + (f" (shard {shard[0]}/{shard[1]})" if shard is not None else "")
                 + f"; {self.nproc} worker(s) per cell; runs in {self.sweep_dir}")
        for st in skipped:
            self.say(f"cell {st.cell.index} {st.cell.name}: {st.status} already, skipped"
                     + (" (--retry-diverged runs it again)" if st.status == "diverged" else ""))
        self.write()
        if not to_run:
            self.say(f"nothing to run: all {len(todo)} selected cell(s) finished or diverged")
            return 0

        signals = _Signals()
        signals.install()
        start = time.monotonic()
        durations: list[float] = []
        failed = 0
        preempted = False
        queue, busy = list(to_run), set()
        try:
            while queue and signals.signum is None:
                st = queue.pop(0)
                lock = CellLock(st.run_dir)
                if st.cell.index not in busy and not lock.acquire():
                    self.say(f"cell {st.cell.index} {st.cell.name}: another sweep is running it ({lock.holder()}); "
                             "back to it at the end")
                    busy.add(st.cell.index)
                    queue.append(st)
                    continue
                try:
                    if st.cell.index in busy:  # what the other sweep left decides
                        if not self._wait_for(st, lock, signals):
                            break
                        st.status = disk_status(st.run_dir, st.epochs)
                        if st.status in done_states:
                            self.say(f"cell {st.cell.index} {st.cell.name}: {st.status} by the other sweep")
                            self.write()
                            continue
                    done = self.counts().get("finished", 0)
                    self.say(f"cell {st.cell.index} {st.cell.name} ({st.cell.describe()}): "
                             f"{'resuming' if st.status in ('partial', 'preempted', 'stopped', 'failed') else 'starting'}"
                             f" | {done}/{total} done | elapsed {fmt_duration(time.monotonic() - start)}"
                             f" | ETA {fmt_duration(self._eta(durations, len(queue) + 1))}")
                    t0 = time.monotonic()
                    self._run_cell(st, signals)
                finally:
                    lock.release()
                st.wall_s = time.monotonic() - t0
                if st.status == "finished":
                    durations.append(st.wall_s)
                elif st.status == "failed":
                    failed += 1
                self.write(current=st)
                done = self.counts().get("finished", 0)
                self.say(f"cell {st.cell.index} {st.cell.name}: {st.status}"
                         + (f" (exit {st.returncode})" if st.returncode else "")
                         + f" in {fmt_duration(st.wall_s)} | {done}/{total} done"
                         f" | elapsed {fmt_duration(time.monotonic() - start)}"
                         f" | ETA {fmt_duration(self._eta(durations, len(queue)))}")
                if st.status == "preempted":
                    preempted = True  # the machine is going away: start nothing else
                    break
        finally:
            signals.uninstall()
        self.write()
        counts = self.counts()
        summary = ", ".join(f"{counts[k]} {k}" for k in sorted(counts) if k != "total")
        self.say(f"{summary} of {total} cells (elapsed {fmt_duration(time.monotonic() - start)}); "
                 f"status in {self.sweep_dir / SWEEP_FILE}")
        if signals.signum is not None:
            self.say(f"stopped for {signal.Signals(signals.signum).name}; launch the same command to resume")
            return signals.exit_code
        if preempted:
            self.say("a cell was preempted; launch the same command to resume")
            return REQUEUE_EXIT_CODE
        return 1 if failed else 0

    def _wait_for(self, st: CellState, lock: CellLock, signals: _Signals, poll_s: float = 5.0) -> bool:
        """Wait until the sweep running ``st`` lets go of it; False when a signal stops this one."""
        if not lock.acquire():
            self.say(f"cell {st.cell.index} {st.cell.name}: waiting for the other sweep ({lock.holder()}) to end it")
        while not lock.acquire():
            if signals.signum is not None:
                return False
            time.sleep(poll_s)
        return True

    @staticmethod
    def _eta(durations: list[float], remaining: int) -> Optional[float]:
        if remaining <= 0:
            return 0.0
        if not durations:
            return None
        return sum(durations) / len(durations) * remaining

    def _run_cell(self, st: CellState, signals: _Signals) -> None:
        st.run_dir.mkdir(parents=True, exist_ok=True)
        marker = RunLayout(st.run_dir).requeue_marker
        marker.unlink(missing_ok=True)
        st.command = train_command(st.cell, self.grid, st.run_dir, self.nproc, self.script)
        st.status, st.returncode = "running", None
        self.write(current=st)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if self.nproc > 1:
            env.setdefault("PET_SIGNALS_TO_HANDLE", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            child = subprocess.Popen(st.command, env=env)
        except OSError as err:
            self.say(f"cell {st.cell.index} {st.cell.name}: cannot start: {err}")
            st.status = st.outcome = "failed"
            st.returncode = 127
            return
        signals.child = child
        try:
            rc = child.wait()  # retried across our signal handlers (PEP 475)
        finally:
            signals.child = None
        st.returncode = rc
        on_disk = disk_status(st.run_dir, st.epochs)
        if on_disk == "finished" and rc == 0:
            st.status = "finished"
        elif on_disk == "diverged":
            st.status = "diverged"
        elif rc == REQUEUE_EXIT_CODE or marker.is_file():
            st.status = "preempted"
        elif rc == 0:
            st.status = "stopped"  # e.g. train.stop_after_steps: resumes next time
        else:
            st.status = "failed"
        st.outcome = st.status
