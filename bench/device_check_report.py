"""The JSON document and running one section under its deadline: part of ``bench/device_check.py``.

``device_check.json`` and ``device_check.md`` are rewritten after every section and every
item, through ``dreg_dist.io.atomic_write_text``: a run killed mid-write (the section alarm,
a lost machine) leaves the previous complete files, never a torn one.
"""

from __future__ import annotations

import gc
import json
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from device_check_markdown import render_markdown
from device_check_plan import OUT_OF_TIME, SECTIONS, SectionTimeout
from dreg_dist.io import atomic_write_text


class Report:
    """The JSON document and its Markdown rendering, rewritten after every section."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {"meta": meta, "sections": {s: {"status": "pending"} for s in SECTIONS}}

    def section(self, name: str) -> dict[str, Any]:
        return self.data["sections"][name]

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.data["meta"]["written_at_s"] = round(time.monotonic() - self.data["meta"]["_t0"], 1)
        doc = {**self.data, "meta": {k: v for k, v in self.data["meta"].items() if not k.startswith("_")}}
        atomic_write_text(self.out / "device_check.json", json.dumps(doc, indent=2, default=str) + "\n")
        atomic_write_text(self.out / "device_check.md", render_markdown(doc))



def one_line(err: BaseException) -> str:
    """The error in one line: a trainer's ``error: ...`` line if there is one, else the first
    line of the message and, for a message with output in it, its last line (the exception)."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    line = next((ln for ln in reversed(lines) if ln.startswith("error:")), None)
    if line is None:
        line = lines[0] if lines else ""
        if len(lines) > 1:
            line += " ... " + lines[-1]
    return f"{type(err).__name__}: {line}"[:500]


def stderr_error(stdout: str, stderr: str) -> str:
    """The line that says what went wrong in a failed trainer's output."""
    lines = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
    for prefix in ("error:", "Error", "RuntimeError", "ValueError", "AssertionError", "torch."):
        hits = [ln for ln in lines if ln.startswith(prefix) or (prefix != "error:" and f"{prefix}:" in ln)]
        if hits:
            return hits[-1][:500]
    return lines[-1][:500] if lines else "(no output)"



class Section:
    """What a section function gets: its deadline, its items and a way to save progress."""

    def __init__(self, name: str, record: dict[str, Any], deadline: float, report: Report) -> None:
        self.name = name
        self.record = record
        self.deadline = deadline
        self.report = report
        self.record.setdefault("items", [])
        self.record.setdefault("notes", [])

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def plan(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Register the items up front (status pending) so that a cut-off leaves them named."""
        for item in items:
            item.setdefault("status", "pending")
            self.record["items"].append(item)
        self.save()
        return list(self.record["items"])

    def save(self) -> None:
        self.report.write()


def _alarm(signum: int, frame: Any) -> None:
    raise SectionTimeout()


def run_section(name: str, fn: Callable[[Section], None], report: Report, end: float,
                fraction: float, min_s: float) -> None:
    """Run one section under its deadline (``fraction`` of the time left before ``end``);
    record ok / error / partial / cut off / skipped."""
    record = report.section(name)
    now = time.monotonic()
    deadline = now + fraction * max(0.0, end - now)
    record.clear()
    record.update(status="running", budget_s=round(deadline - now, 1))
    if deadline - now < min_s:
        record.update(status="skipped", reason=f"{OUT_OF_TIME} (its part of the {max(0.0, end - now):.0f} s left is "
                                             f"{max(0.0, deadline - now):.0f} s; it needs at least {min_s:.0f} s)")
        report.write()
        print(f"=== {name}: {record['reason']}", flush=True)
        return
    print(f"=== {name}: up to {deadline - now:.0f} s", flush=True)
    sec = Section(name, record, deadline, report)
    report.write()
    # The alarm fires a little after the deadline: items check the time themselves first
    # and skip cleanly; the alarm is for an item that overruns (a slow compile, a hang).
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, deadline - now + 1.0))
    interrupted: Optional[str] = None
    try:
        try:
            fn(sec)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except SectionTimeout:
        interrupted = "out of time: interrupted at the section's deadline"
        record["status"] = "cut off"
        record["reason"] = interrupted
    except Exception as err:  # noqa: BLE001  (any failure is a result; the next section still runs)
        interrupted = one_line(err)
        record["status"] = "error"
        record["error"] = interrupted
        record["traceback"] = traceback.format_exc()[-3000:]
    else:
        errors = [i for i in record["items"] if i.get("status") == "error"]
        if errors:
            record["status"] = "error"
            record["error"] = f"{len(errors)} of {len(record['items'])} item(s) failed; first: " \
                              f"{errors[0].get('name')}: {errors[0].get('error')}"
        elif record["items"] and all(str(i.get("status", "")).startswith("skipped") for i in record["items"]):
            record["status"] = "skipped"
            record.setdefault("reason", record["items"][0]["status"])
        elif any(i.get("status") in ("cut off", OUT_OF_TIME) for i in record["items"]):
            record["status"] = "partial"
            record.setdefault("reason", "some items did not fit in the section's time (see their status)")
        else:
            record["status"] = "ok"
    finally:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    for item in record["items"]:
        if item.get("status") == "running":
            if record["status"] == "error":
                item.update(status="error", error=interrupted)
            else:
                item.update(status="cut off", reason=interrupted)
        elif item.get("status") == "pending":
            item.update(status=OUT_OF_TIME if record["status"] == "cut off" else "skipped: an earlier item failed")
    record["elapsed_s"] = round(time.monotonic() - now, 1)
    release_memory()
    report.write()
    print(f"=== {name}: {record['status']} in {record['elapsed_s']:.0f} s"
          + (f" ({record.get('error') or record.get('reason')})" if record["status"] != "ok" else ""), flush=True)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()

