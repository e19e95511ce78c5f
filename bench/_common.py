"""Shared helpers of the benchmarks: interleaved timing, ratios, machine line, output.

Every benchmark compares variants on a machine whose cores other jobs also use, so a
variant is never timed in one block: ``interleave`` runs A, B, A, B, ... and the ratio
reported is the median of the per-round ratios (each round's A and B saw nearly the same
load), next to the medians of the raw figures.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

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
