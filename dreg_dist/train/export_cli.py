"""Export any checkpoint: ``python launch/export.py CHECKPOINT [--path auto|R|L] [--out DIR]``.

``auto`` picks the output (a DReg path) with the higher validation accuracy. The
accuracies are those of the checkpoint's own weights: an epoch checkpoint's stored
validation is used as it is, while a mid-epoch checkpoint (``last.pt`` of a stopped run,
``step-N.pt``) is re-evaluated on the run's validation split, since its stored validation
belongs to the weights of the previous epoch. ``--evaluate`` always re-evaluates,
``--no-evaluate`` never does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from dreg_dist.config import ConfigError, build_method, config_from_record
from dreg_dist.methods import choose_output, export_output
from dreg_dist.models import build_model
from dreg_dist.train.checkpoint import CheckpointError, load_checkpoint


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write the inference export of a dreg-dist checkpoint.")
    parser.add_argument("checkpoint", help="a checkpoint file (RUN_DIR/checkpoints/best.pt or last.pt)")
    parser.add_argument("--path", choices=["auto", "R", "L"], default="auto", help="which path to export")
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/export-<checkpoint name>)")
    parser.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=None,
                        help="recompute the validation accuracy of every output (default: only for a "
                             "mid-epoch checkpoint, whose stored validation belongs to earlier weights)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        state = load_checkpoint(args.checkpoint)
        cfg = config_from_record(state["config"])
        method = build_method(cfg)
    except (CheckpointError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ckpt_path = Path(args.checkpoint)
    out = Path(args.out) if args.out else ckpt_path.parent.parent / f"export-{ckpt_path.stem}"
    model = method.prepare_model(build_model(cfg.model.arch, cfg.model.num_classes))
    model.load_state_dict(state["model"])
    model.eval()
    mid_epoch = int(state.get("step_in_epoch") or 0) > 0
    evaluate_now = args.evaluate if args.evaluate is not None else mid_epoch

    from dreg_dist.data import DataError, build_data
    from dreg_dist.train.evaluate import evaluate

    val = state.get("last_val") or {}
    try:
        data = build_data(cfg.data, seed=cfg.train.seed, device=torch.device("cpu"), num_classes=cfg.model.num_classes)
    except DataError as err:
        if evaluate_now:
            why = "" if args.evaluate else " (a mid-epoch checkpoint is re-evaluated; --no-evaluate uses its stale validation)"
            print(f"error: {err}{why}", file=sys.stderr)
            return 2
        data = None
    if evaluate_now and data is not None:
        val = evaluate(model, data.eval_batches("val", 0, 1, cfg.train.eval_batch_size), torch.device("cpu"),
                       outputs=method.eval_outputs, names=method.traits.outputs)
    val_acc = {p: r["acc"] for p, r in val.items()}
    norm = {"mean": data.mean, "std": data.std, "input_shape": data.input_shape} if data else {}
    extra = {"checkpoint": str(ckpt_path), "epoch": state["epoch"], "global_step": state["global_step"]}
    common = dict(arch=cfg.model.arch, num_classes=cfg.model.num_classes, extra_meta=extra, **norm)
    try:
        output = choose_output(method, val_acc, args.path)
        meta = export_output(method, model, out, val_acc=val_acc, output=output, **common)
    except ValueError as err:  # e.g. 'auto' without validation accuracies
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported path {meta['path']} (val acc {val_acc}) to {out}")
    return 0
