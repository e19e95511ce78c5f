"""Load run folders (``config.yaml``, ``metrics.jsonl``, ``summary.json``) into :class:`Run`.

Only the files the trainer writes are read (where: :class:`dreg_dist.run_layout.RunLayout`);
what a method logs and how to read it comes from the method's description in the run's record
(:func:`dreg_dist.records.read_record`), never from method code.

Validation accuracy of a run with several outputs (a method that scores several paths)
at an epoch is the best of them (``max(acc_<output>)``): that is the quantity the
trainer's best (epoch, output) is chosen on, so the best of the curve is the run's best
validation accuracy. A resumed run may have logged an epoch or step twice
(``metrics.jsonl`` is appended to); the last record wins. Configs written by earlier
releases are read as the release that wrote them resolved them (:mod:`dreg_dist.records.compat`).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

from dreg_dist.dotted import flatten
from dreg_dist.records import Catalog, Description, RunRecord, read_record
from dreg_dist.run_layout import RunLayout


def _finite(x: Any) -> Optional[float]:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], Optional[str]]:
    """All records of a metrics.jsonl, a torn last line (a killed run) skipped, and the sha256
    of its bytes (None when it cannot be read): a run copied into two folders has the same."""
    records: list[dict[str, Any]] = []
    try:
        data = path.read_bytes()
    except OSError:
        return records, None
    for line in data.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records, hashlib.sha256(data).hexdigest()


def val_accuracy(record: dict[str, Any]) -> Optional[float]:
    """A val record's accuracy: ``acc`` (one model) or the best of its outputs' ``acc_<output>``."""
    if "acc" in record:
        return _finite(record["acc"])
    paths = [_finite(v) for k, v in record.items() if k.startswith("acc_")]
    paths = [v for v in paths if v is not None]
    return max(paths) if paths else None


def train_loss(record: dict[str, Any], ce_keys: tuple[str, ...] = ("loss",)) -> Optional[float]:
    """Training cross-entropy of a train record: the mean of the method's ``train_ce_keys``
    (a method's ``loss`` may include terms that are not a cross-entropy)."""
    values = [_finite(record.get(k)) for k in ce_keys]
    if values and all(v is not None for v in values):
        return sum(values) / len(values)  # type: ignore[arg-type]
    return _finite(record.get("loss"))


def catalog_of(runs: Iterable["Run"]) -> Catalog:
    """The descriptions of the runs' methods (each as its first run's record has it)."""
    return Catalog(r.description for r in runs)


@dataclass
class Run:
    name: str
    path: Path
    config: dict[str, Any]
    flat: dict[str, Any]
    method: str
    record: RunRecord
    summary: Optional[dict[str, Any]] = None
    val: list[dict[str, Any]] = field(default_factory=list)
    """One record per validated epoch: epoch, acc (see the module doc), and the raw tags."""
    train: list[dict[str, Any]] = field(default_factory=list)
    """One record per logged step: step, epoch (fractional), loss (see train_loss), raw tags."""
    diverged_step: Optional[int] = None
    """Step of the trainer's last ``diverged`` record (it stopped on a non-finite value)."""
    started_workers: Optional[int] = None
    """World size of the trainer's last ``start`` record (a run that never wrote summary.json)."""
    start: dict[str, Any] = field(default_factory=dict)
    """The trainer's last ``start`` record: the peak learning rate it scaled to (``lr``), its
    ``steps_per_epoch`` and (newer records) ``train_size``."""
    log_digest: Optional[str] = None
    """sha256 of the run's metrics.jsonl as loaded (None when it had none)."""
    step_cost: Optional[float] = None
    """Cost of one optimizer step of this run's configuration over the baseline's, measured by a
    benchmark (:func:`read_step_costs`); None when not measured."""

    # ----------------------------------------------------------- config
    @property
    def description(self) -> Description:
        return self.record.description

    @property
    def batch_size(self) -> int:
        return int(self.flat.get("train.global_batch_size", 0))

    @property
    def seed(self) -> int:
        return int(self.flat.get("train.seed", 0))

    @property
    def lr(self) -> Optional[float]:
        return _finite(self.flat.get("optim.lr"))

    @property
    def workers(self) -> Optional[int]:
        """Worker processes the run trained on (summary.json, else its last start record)."""
        value = _finite((self.summary or {}).get("world_size"))
        if value is None and self.started_workers is not None:
            value = float(self.started_workers)
        return int(value) if value is not None else None

    @property
    def run_id(self) -> str:
        """``<sweep folder>/<run folder>``: how a benchmark's step-cost file names the run."""
        return f"{self.path.parent.name}/{self.path.name}"

    @property
    def finished(self) -> bool:
        return bool(self.summary) and self.summary.get("status") == "finished"

    @property
    def diverged_at(self) -> Optional[int]:
        """Where the run stopped on a non-finite value: the trainer's ``diverged`` record, or
        (runs logged before it wrote one) the first step with a logged value that is not finite."""
        if self.finished:
            return None
        if self.diverged_step is not None:
            return self.diverged_step
        for rec in self.train:
            for value in rec.values():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
                    return int(rec["step"])
        return None

    @property
    def status(self) -> str:
        """summary.json's status; else 'diverged at step N' or 'unfinished'."""
        if self.summary and self.summary.get("status"):
            return str(self.summary["status"])
        step = self.diverged_at
        return f"diverged at step {step}" if step is not None else "unfinished"

    # ----------------------------------------------------------- results
    @property
    def curve(self) -> list[tuple[float, float]]:
        """(epoch, validation accuracy) pairs in epoch order."""
        return [(r["epoch"], r["acc"]) for r in self.val if r.get("acc") is not None]

    @property
    def best_val_acc(self) -> Optional[float]:
        """From summary.json when finished (what the export was chosen on), else the curve's best."""
        if self.finished:
            val_acc = (self.summary.get("best") or {}).get("val_acc") or {}
            values = [v for v in (_finite(x) for x in val_acc.values()) if v is not None]
            if values:
                return max(values)
        accs = [a for _, a in self.curve]
        return max(accs) if accs else None

    @property
    def test_acc(self) -> Optional[float]:
        return _finite(((self.summary or {}).get("test") or {}).get("acc")) if self.finished else None

    @property
    def global_steps(self) -> Optional[int]:
        """Optimizer steps the run took: summary.json's count, else its last logged training
        step (where a diverged or unfinished run stopped, to within the logging interval)."""
        value = _finite((self.summary or {}).get("global_steps"))
        if value is None and self.train:
            value = _finite(self.train[-1].get("step"))
        return int(value) if value is not None else None

    @property
    def peak_lr(self) -> Optional[float]:
        """The peak learning rate the run trained at: ``optim.lr`` scaled to its batch by its rule."""
        return _finite(self.start.get("lr"))

    @property
    def steps_per_epoch(self) -> Optional[int]:
        value = _finite(self.start.get("steps_per_epoch"))
        return int(value) if value is not None else None

    @property
    def images_per_sec(self) -> Optional[float]:
        value = _finite((self.summary or {}).get("images_per_sec")) if self.finished else None
        if value is None:
            ips = [v for v in (_finite(r.get("images_per_sec")) for r in self.train) if v is not None]
            value = sum(ips) / len(ips) if ips else None
        return value

    @property
    def seconds_per_epoch(self) -> Optional[float]:
        """Wall-clock per epoch of a finished run, validation included: the median over its
        epochs of the time from one validation record to the next. A run paused for a while (its
        machine lent to other work) or stopped and resumed has a few epochs that took minutes
        or hours more; the median leaves them out, where the summary's wall time (the last
        launch only) would count them or the time before a resume not at all. Records without
        times: the summary's wall time over its epochs, for a run launched once."""
        if not self.finished:
            return None
        ends = sorted((t, e) for t, e in ((_finite(r.get("time")), _finite(r.get("epoch"))) for r in self.val)
                      if t is not None and e is not None)
        per_epoch = [(t1 - t0) / (e1 - e0) for (t0, e0), (t1, e1) in zip(ends, ends[1:]) if e1 > e0]
        if per_epoch:
            return statistics.median(per_epoch)
        summary = self.summary or {}
        if summary.get("resumed_from"):
            return None
        wall, epochs = _finite(summary.get("wall_time_s")), _finite(summary.get("epochs"))
        return wall / epochs if wall is not None and epochs else None

    def final_value(self, key: str) -> Optional[float]:
        """A method's value about the trained model (its ``report_columns``): from
        summary.json, else the last logged training value of that name."""
        summary = self.summary or {}
        stats = summary.get("final_values") or summary.get("final_branch_stats") or {}
        value = _finite(stats.get(key))
        if value is None:
            values = [v for v in (_finite(r.get(key)) for r in self.train) if v is not None]
            value = values[-1] if values else None
        return value


def load_run(path: Union[str, Path]) -> Optional[Run]:
    """A Run from a run folder, or None when it holds no config.yaml."""
    path = Path(path)
    layout = RunLayout(path)
    if not layout.config.is_file():
        return None
    record = read_record(path)
    if record is None:
        return None
    config = record.config
    flat = flatten(config)
    summary: Optional[dict[str, Any]] = None
    try:
        loaded = json.loads(layout.summary.read_text())
        summary = loaded if isinstance(loaded, dict) else None
    except (OSError, ValueError):
        pass
    ce_keys = record.description.train_ce_keys
    val: dict[Any, dict[str, Any]] = {}
    train: dict[Any, dict[str, Any]] = {}
    diverged: Optional[int] = None
    workers: Optional[int] = None
    start: dict[str, Any] = {}
    records, digest = read_metrics(layout.metrics)
    for rec in records:
        kind = rec.get("kind")
        if kind == "diverged" and isinstance(rec.get("step"), int):
            diverged = rec["step"]
        if kind == "start":
            start = rec
            if isinstance(rec.get("world_size"), int):
                workers = rec["world_size"]
        if kind == "val" and rec.get("epoch") is not None:
            val[rec["epoch"]] = dict(rec, acc=val_accuracy(rec))
        elif kind == "train" and rec.get("step") is not None:
            train[rec["step"]] = dict(rec, loss=train_loss(rec, ce_keys), raw_loss=rec.get("loss"))
    return Run(name=path.name, path=path, config=config, flat=flat, method=record.method, record=record,
               summary=summary,
               val=[val[k] for k in sorted(val)], train=[train[k] for k in sorted(train)], diverged_step=diverged,
               started_workers=workers, start=start, log_digest=digest)


def load_runs(root: Union[str, Path]) -> list[Run]:
    """Every run folder directly under ``root`` (a sweep folder), sorted by name; ``root``
    itself when it is a run folder."""
    root = Path(root)
    single = load_run(root)
    if single is not None:
        return [single]
    runs = [load_run(p) for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []
    return [r for r in runs if r is not None]


def drop_copies(runs: Iterable[Run], say: Callable[[str], None] = print) -> list[Run]:
    """``runs`` with each run copied into two sweep folders (its config the same but for its
    folder, its log byte for byte: a stage's cell reused as a later stage's) kept once, the first,
    or its seed would count twice."""
    seen: dict[tuple[str, str], Run] = {}
    out: list[Run] = []
    for run in runs:
        config = json.dumps({k: v for k, v in run.flat.items() if k != "run_dir"}, sort_keys=True, default=str)
        key = (config, run.log_digest or str(run.path))
        if key in seen:
            say(f"report: {run.path} is a copy of {seen[key].path}: counted once")
            continue
        seen[key] = run
        out.append(run)
    return out


def copy_records(root: Union[str, Path], dest: Union[str, Path]) -> list[Path]:
    """Copy the small records (config.yaml, record.json, metrics.jsonl, summary.json) of every run under
    ``root`` that is over (finished, or diverged: stopped on a non-finite value) to
    ``dest/<run name>/``, and the sweep's sweep.json, so that a report regenerates from what is
    committed (checkpoints and exports are never copied)."""
    import shutil

    root, dest = Path(root), Path(dest)
    copied = []
    for run in load_runs(root):
        if not run.finished and run.diverged_at is None:
            continue
        src, out = RunLayout(run.path), RunLayout(dest / run.name)
        out.root.mkdir(parents=True, exist_ok=True)
        for a, b in ((src.config, out.config), (src.record, out.record), (src.metrics, out.metrics),
                     (src.summary, out.summary)):
            if a.is_file():
                shutil.copyfile(a, b)
        copied.append(out.root)
    # A sweep with nothing over yet leaves no folder: committed, a sweep.json with no runs beside it
    # would be a sweep folder that no report or follow-up can read.
    if (root / "sweep.json").is_file() and (copied or dest.is_dir()):
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "sweep.json", dest / "sweep.json")
    return copied


def read_sweep(root: Union[str, Path]) -> Optional[dict[str, Any]]:
    try:
        data = json.loads((Path(root) / "sweep.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def tuned_keys(roots: Iterable[Union[str, Path]]) -> list[str]:
    """The method keys the sweeps' grids tune with the learning rate (their ``tune`` lists)."""
    out: list[str] = []
    for root in roots:
        grid = (read_sweep(root) or {}).get("grid") or {}
        out += [k for k in grid.get("tune") or [] if isinstance(k, str) and k not in out]
    return out


def iter_finite(values: Iterable[Any]) -> list[float]:
    return [v for v in (_finite(x) for x in values) if v is not None]
