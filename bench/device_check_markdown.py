"""``device_check.md``: one table per section, through the report's table writer
(``dreg_dist.report.mdtable``): part of ``bench/device_check.py``."""

from __future__ import annotations

import math
import statistics
from typing import Any

from device_check_plan import SECTIONS, TITLES
from dreg_dist.report.mdtable import table


def _fmt(v: Any, digits: int = 1, pct: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            return str(v)
        return f"{100 * v:.{digits}f}%" if pct else f"{v:,.{digits}f}"
    return str(v)


def _status(item: dict[str, Any]) -> str:
    s = str(item.get("status", "pending"))
    if s == "error":
        return f"**error**: {str(item.get('error', ''))[:160]}"
    if s == "cut off":
        return f"cut off ({item.get('reason', '')})"
    return s


def _md_smoke(items: list[dict[str, Any]]) -> str:
    def row(i: dict[str, Any]) -> list[str]:
        losses = ", ".join(f"{k} {v:.3g}" for k, v in (i.get("final_losses") or {}).items())
        return [i["name"], i["method"], i["amp"] + (" + scaler" if i["amp"] == "fp16" else ""),
                "yes" if i.get("compile") else "no", "yes" if i.get("sync_bn") else "no", _status(i),
                _fmt(i.get("images_per_sec"), 0), _fmt(i.get("losses_finite")) if i.get("train_records") else "-",
                losses or "-", _fmt(i.get("wall_s"), 0), i.get("note", "")]
    return table(["run", "method", "amp", "compile", "sync_bn", "status", "images/s", "losses finite",
                  "final losses", "wall s", "note"], [row(i) for i in items])


def _md_overhead(items: list[dict[str, Any]]) -> str:
    def row(i: dict[str, Any]) -> list[str]:
        ms = i.get("ms_per_step") or {}
        clock = i.get("clock", "wall")
        return [i["arch"], i["mode"], i.get("layer", "-"), _fmt(i.get("batch"), 0),
                _fmt((ms.get("vanilla") or {}).get(clock), 2), _fmt((ms.get("dreg") or {}).get(clock), 2),
                (f"{i['measured_pct']:+.1f}%" if "measured_pct" in i else "-"),
                (f"+{i['floor_pct']:.1f}%" if "floor_pct" in i else "-"),
                (f"{i['gap_pp']:+.1f}" if "gap_pp" in i else "-"), _fmt(i.get("rounds"), 0), _status(i)]
    return table(["arch", "mode", "DReg layer", "batch", "vanilla ms/step", "dreg ms/step", "overhead",
                  "FLOP floor", "gap pp (target <= 3)", "rounds", "status"], [row(i) for i in items])


def _md_trainer(items: list[dict[str, Any]]) -> str:
    def row(i: dict[str, Any]) -> list[str]:
        pairs = ", ".join(f"{p['ratio']:.3f}" for p in i.get("pairs", []))
        return [i["name"], _fmt(i.get("trainer_images_per_sec"), 0), _fmt(i.get("bare_images_per_sec"), 0),
                _fmt(i.get("ratio"), 3), pairs or "-", ">= 0.95", _status(i)]
    return table(["model x batch", "trainer images/s", "bare loop images/s", "trainer / bare", "pairs",
                  "target", "status"], [row(i) for i in items])


def _md_input(items: list[dict[str, Any]]) -> str:
    rows = []
    for i in items:
        data_ips = statistics.median(i["data_images_per_sec"]) if i.get("data_images_per_sec") else None
        models = i.get("models") or {}
        if not models:
            rows.append([i["name"], i.get("source", "-"), _fmt(data_ips, 0), "-", "-", "-", _status(i)])
        for arch, m in models.items():
            rows.append([i["name"], i.get("source", "-"), _fmt(data_ips, 0), arch,
                         _fmt(statistics.median(m["images_per_sec"]), 0), f"{m['ratio']['median']:,.1f}x",
                         _status(i)])
    return table(["check", "data", "data path images/s", "model", "model consumes images/s",
                  "data / model (target >= 5x)", "status"], rows)


def _md_memory(items: list[dict[str, Any]]) -> str:
    def row(i: dict[str, Any]) -> list[str]:
        peak = i.get("peak_mb") or {}
        extra = (peak["dreg"] - peak["vanilla"]) if "dreg" in peak and "vanilla" in peak else None
        return [i["arch"], _fmt(peak.get("vanilla")), _fmt(peak.get("dreg")),
                f"x{i['ratio']:.3f}" if "ratio" in i else "-", f"{extra:+.1f}" if extra is not None else "-",
                i.get("metric", "-"), _status(i)]
    return table(["arch", "vanilla MB", "dreg MB", "dreg / vanilla", "extra MB", "metric", "status"],
                  [row(i) for i in items])


def md_tta(items: list[dict[str, Any]], record: dict[str, Any]) -> str:
    target = record.get("target_acc")

    def row(i: dict[str, Any]) -> list[str]:
        return [i["name"], f"{i.get('epochs_done', 0)} / {i.get('epochs_planned', '-')}",
                _fmt(i.get("best_val_acc"), 2, pct=True), _fmt(i.get("test_acc"), 2, pct=True),
                _fmt(i.get("s_per_epoch"), 2), _fmt(i.get("first_epoch_s"), 2),
                _fmt(i.get("time_to_target_s"), 1), _fmt(i.get("wall_s"), 0), _status(i)]
    head = ["method", "epochs done / planned", "best val acc", "test acc", "s / epoch", "first epoch s",
            f"s to {_fmt(target, 2, pct=True)} val" if target is not None else "s to common acc", "wall s", "status"]
    return table(head, [row(i) for i in items])


RENDER = {"smoke": _md_smoke, "dreg_overhead": _md_overhead, "trainer_vs_bare": _md_trainer,
          "input_pipeline": _md_input, "memory": _md_memory}


def render_markdown(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    lines = ["# Device check", "",
             f"Machine: **{meta.get('device_name')}** ({meta.get('device')}); torch {meta.get('torch')}"
             + (f", CUDA {meta['cuda']}" if meta.get("cuda") else "")
             + (f", NCCL {meta['nccl']}" if meta.get("nccl") else "")
             + f", Python {meta.get('python')}; CPU {meta.get('cpu')} x {meta.get('nproc')}.",
             f"Profile `{meta.get('profile')}`, budget {meta.get('budget_s')} s, written at "
             f"{meta.get('written_at_s')} s; command: `{meta.get('command')}`.", ""]
    lines += [f"* {n}" for n in meta.get("notes", [])]
    for name in SECTIONS:
        rec = doc["sections"][name]
        lines += ["", f"## {TITLES[name]}", "",
                  f"Status: **{rec.get('status')}**" + (f" in {rec['elapsed_s']} s" if "elapsed_s" in rec else "")
                  + (f" (budget {rec['budget_s']} s)" if "budget_s" in rec else "")
                  + (f"; {rec['reason']}" if rec.get("reason") else "")
                  + (f"; error: {rec['error']}" if rec.get("error") else ""), ""]
        lines += [f"* {n}" for n in rec.get("notes", [])]
        if rec.get("notes"):
            lines.append("")
        items = rec.get("items") or []
        if items:
            lines.append(md_tta(items, rec) if name == "time_to_accuracy" else RENDER[name](items))
    return "\n".join(lines) + "\n"

