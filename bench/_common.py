"""Shared helpers of the benchmarks: interleaved timing, ratios, machine line, output.

Every benchmark compares variants on a machine whose cores other jobs also use, so a
variant is never timed in one block: ``interleave`` runs A, B, A, B, ... and the ratio
reported is the median of the per-round ratios (each round's A and B saw nearly the same
load), next to the medians of the raw figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def print_machine() -> None:
    m = machine()
    gpu = m["gpu"] or "no GPU"
    print(f"machine: nproc={m['nproc']} cpu='{m['cpu']}' torch={m['torch']} python={m['python']} "
          f"torch_threads={m['threads']} {gpu} loadavg_1m={m.get('loadavg_1m')}")


def print_load(label: str = "end") -> None:
    """The 1-minute load average: other jobs on the cores show up here."""
    try:
        print(f"loadavg_1m at {label}: {os.getloadavg()[0]:.2f} (nproc {os.cpu_count()})")
    except OSError:
        pass


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def interleave(
    variants: Mapping[str, Callable[[], Any]],
    rounds: int,
    warmup_rounds: int = 1,
) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of each variant, in rounds A, B, A, B, ...; warm-up rounds discarded.

    Returns ``{variant: {"wall": [...], "cpu": [...]}}``: wall-clock seconds and this
    process's CPU seconds (``time.process_time``, all its threads) per call. With one
    compute thread the CPU figure is the work done, nearly immune to other jobs taking
    the cores, which the wall figure is not.
    """
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in variants}
    for r in range(warmup_rounds + rounds):
        for name, fn in variants.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            w1, c1 = time.perf_counter(), time.process_time()
            if r >= warmup_rounds:
                times[name]["wall"].append(w1 - w0)
                times[name]["cpu"].append(c1 - c0)
    return times


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    """Median, min and max of num[i] / den[i] over rounds (same round = same load)."""
    ratios = [a / b for a, b in zip(num, den) if b > 0]
    return {"median": median(ratios), "min": min(ratios), "max": max(ratios), "rounds": len(ratios)}


def fmt_ratio(r: Mapping[str, float], digits: int = 3) -> str:
    return f"{r['median']:.{digits}f} (rounds {int(r['rounds'])}: min {r['min']:.{digits}f}, max {r['max']:.{digits}f})"


def write_json(path: Optional[str], payload: dict[str, Any]) -> None:
    if path:
        payload = dict(payload, machine=machine())
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def subprocess_env(threads: Optional[int] = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def autocast(device: Any, amp: Optional[str]) -> ContextManager[Any]:
    """``torch.autocast`` for ``amp`` in {bf16, fp16}; a no-op context for none/None."""
    if amp in (None, "none"):
        return contextlib.nullcontext()
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(torch.device(device).type, dtype=dtype)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc; empty where /proc is missing)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: "subprocess.Popen[Any]") -> None:
    """SIGKILL ``proc`` and everything it started.

    Killing the direct child alone is not enough: torchrun starts each worker in a session
    of its own, so a killed torchrun leaves its workers (and their GPU memory) behind.
    """
    pids = descendants(proc.pid)
    for pid in [proc.pid, *pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()


def run_command(cmd: Sequence[str], *, timeout: Optional[float], env: Optional[Mapping[str, str]] = None,
                cwd: Optional[Path] = None) -> "subprocess.CompletedProcess[str]":
    """``subprocess.run(cmd, capture_output=True, text=True)`` that kills the whole process tree
    on a timeout (raising ``subprocess.TimeoutExpired`` with the output so far) or when the
    caller is interrupted (an alarm, Ctrl-C)."""
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(env) if env is not None else None, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(list(cmd), timeout or 0.0, output=out, stderr=err) from None
    except BaseException:
        kill_tree(proc)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)
