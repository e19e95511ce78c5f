"""What rank 0 writes while training: TensorBoard events, metrics.jsonl, console progress.

Every logged event goes to both TensorBoard (``RUN_DIR/tb``) and one JSON line in
``RUN_DIR/metrics.jsonl`` (``{"kind": "train"|"val"|..., "step": ..., "epoch": ...,
<tag>: value}``), so scripts never need to parse event files. The console shows a live
progress line on a TTY and plain log lines otherwise (Slurm logs, CI).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, TextIO

from dreg_dist.run_layout import RunLayout


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ConsoleProgress:
    """A one-line live display on a TTY; plain lines elsewhere."""

    def __init__(self, mode: str = "auto", stream: Optional[TextIO] = None) -> None:
        # Resolved now, not at import: tests and notebooks swap sys.stdout.
        self.stream = stream if stream is not None else sys.stdout
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "lines"
        self.mode = mode
        self._live = False

    def update(self, epoch: int, epochs: int, step: int, steps: int, values: Mapping[str, float], eta_s: float) -> None:
        if self.mode == "off":
            return
        shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        text = f"epoch {epoch + 1}/{epochs} step {step}/{steps} {shown} eta {_fmt_eta(eta_s)}"
        if self.mode == "bar":
            width = 20
            filled = int(width * step / max(1, steps))
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] {text}\033[K")
            self._live = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """Always shown (``off`` silences the progress updates, not the run's messages)."""
        if self._live:
            self.stream.write("\n")
            self._live = False
        self.stream.write(text + "\n")
        self.stream.flush()


class RunRecorder:
    """Rank 0's sink for scalars; a no-op instance serves the other ranks."""

    def __init__(self, run_dir: Optional[Path], *, tensorboard: bool = True, progress: str = "auto") -> None:
        self.enabled = run_dir is not None
        self.console = ConsoleProgress(progress if self.enabled else "off")
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        assert run_dir is not None
        layout = RunLayout(run_dir)
        self._jsonl = open(layout.metrics, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(layout.tensorboard))

    def scalars(self, kind: str, values: Mapping[str, float], *, step: int, epoch: float) -> None:
        """Log ``values`` (tag suffix -> number) under ``kind/`` at ``step``.

        ``epoch`` counts epochs of training done (fractional within an epoch), so train
        and validation records share one x axis.
        """
        if not self.enabled:
            return
        record: dict[str, Any] = {"kind": kind, "step": step, "epoch": epoch, "time": time.time()}
        for key, value in values.items():
            record[key] = float(value)
            if self._tb is not None:
                self._tb.add_scalar(f"{kind}/{key}", float(value), step)
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(record) + "\n")

    def event(self, kind: str, **fields: Any) -> None:
        """A non-scalar record in metrics.jsonl (run start, checkpoint, export, ...)."""
        if self.enabled and self._jsonl is not None:
            self._jsonl.write(json.dumps({"kind": kind, "time": time.time(), **fields}) + "\n")

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        if self._tb is None:
            return
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        self._tb.add_hparams(clean, {f"hparam/{k}": float(v) for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
