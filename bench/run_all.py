#!/usr/bin/env python
"""Run every benchmark in bench/ one after the other and collect their SUMMARY lines.

    PYTHONPATH=. python bench/run_all.py                 # default runs (each < 2 min on 2 CPU cores)
    PYTHONPATH=. python bench/run_all.py --quick         # smoke versions (each < 30 s)
    PYTHONPATH=. python bench/run_all.py --only scaling,memory --log-dir /tmp/bench-logs
    PYTHONPATH=. python bench/run_all.py --device cuda    # on GPUs (K=2 benchmarks need 2); skips fast_paths

Each script's full output streams to the console (and to LOG_DIR/<name>.log with
--log-dir, plus LOG_DIR/<name>.json with its figures); the exit status is non-zero if a
script failed. Targets not met do not fail the run: they are results.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["dreg_overhead", "trainer_overhead", "input_pipeline", "shards", "scaling", "memory", "fast_paths"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    p.add_argument("--log-dir", default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="passed to every benchmark; fast_paths (CPU kernels, CPU clock) is skipped on cuda")
    args = p.parse_args()
    names = BENCHMARKS if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    if args.device == "cuda":
        names = [n for n in names if n != "fast_paths"]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
    log_dir = Path(args.log_dir) if args.log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE.parent) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    summaries: list[str] = []
    failed: list[str] = []
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py")] + (["--quick"] if args.quick else [])
        if args.device != "cpu":
            cmd += ["--device", args.device]
        if log_dir:
            cmd += ["--json", str(log_dir / f"{name}.json")]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line)
        code = proc.wait()
        took = time.perf_counter() - t0
        print(f"=== {name}: exit {code} in {took:.0f}s", flush=True)
        if log_dir:
            (log_dir / f"{name}.log").write_text("".join(lines))
        summaries += [ln.rstrip() + f"  [{took:.0f}s]" for ln in lines if ln.startswith("SUMMARY:")]
        if code != 0:
            failed.append(name)
    print("\n=== summaries")
    for line in summaries:
        print(line)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
