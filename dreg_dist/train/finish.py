"""The end of a finished run: export the best (epoch, output), score it on test, summarize.

Rank 0 writes the export (what it holds is the method's business: :meth:`Method.export_model`),
``summary.json`` and the TensorBoard hparams; every rank takes part in the test evaluation.
The test score is of the exported model, at the precision validation used, so the number
in the summary is the one a user of the export gets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from dreg_dist.config import Config
from dreg_dist.distributed import DistEnv, barrier
from dreg_dist.io import atomic_write_text
from dreg_dist.methods import Method, choose_output, export_output
from dreg_dist.methods import hparams as method_hparams
from dreg_dist.noise_scale import STEADY_RULE, advice
from dreg_dist.run_layout import RunLayout
from dreg_dist.train import checkpoint as ckpt
from dreg_dist.train.records import RunRecorder
from dreg_dist.train.state import TrainState


@dataclass
class FinishedRun:
    """What the end of a run needs from the training that ran (the trainer gathers it)."""

    cfg: Config
    env: DistEnv
    layout: RunLayout
    method: Method
    module: nn.Module
    """The trained model; the best checkpoint's weights are loaded into it."""
    device: torch.device
    mean: Sequence[float]
    std: Sequence[float]
    input_shape: tuple[int, int, int]
    """The input normalization and shape, recorded with the export."""
    state: TrainState
    recorder: RunRecorder
    evaluate: Callable[..., dict[str, dict[str, float]]]
    """``evaluate(split, module, single=True)``: a plain model's score on ``split`` (collective)."""
    wall_time_s: float
    images_per_sec: Optional[float]
    """Mean over the logged windows."""
    resumed_from: Optional[str]
    noise_scale: dict[str, Any] = field(default_factory=dict)
    """The noise-scale meter's summary (:meth:`NoiseScaleMeter.summary`)."""


def _advice(noise: dict[str, Any], batch: int) -> str:
    """The end-of-run advice, on the noise scale near the peak rate where the run logged one (the
    final value of a decayed schedule is the annealed end's)."""
    if noise.get("steady") is not None:
        return advice(noise["steady"], batch, of=STEADY_RULE)
    return advice((noise.get("final") or {}).get("noise_scale"), batch)


def finish_run(run: FinishedRun) -> dict[str, Any]:
    """Export the best checkpoint's best output, score it on test, write ``summary.json``."""
    cfg, env, layout, method = run.cfg, run.env, run.layout, run.method
    t = cfg.train
    final_values = method.values(run.module, final=True)  # before best.pt replaces the final weights
    barrier()
    best_state = ckpt.load_checkpoint(layout.best, map_location=run.device)
    run.module.load_state_dict(best_state["model"])
    best = best_state["best"]
    val_acc = {output: r["acc"] for output, r in best["val"].items()}
    disagreement = next((r["disagreement"] for r in best["val"].values() if "disagreement" in r), None)
    meta = dict(arch=cfg.model.arch, num_classes=cfg.model.num_classes, mean=run.mean,
                std=run.std, input_shape=run.input_shape,
                extra_meta={"best_epoch": best["epoch"], "method": method.name, "run_dir": str(layout.root)})
    output = choose_output(method, val_acc)
    if env.is_main:
        export_output(method, run.module, layout.export, val_acc=val_acc, output=output, **meta)
    eval_model = method.export_model(run.module, output)
    test = next(iter(run.evaluate("test", eval_model, single=True).values()))
    summary = {
        "status": "finished",
        "method": method.name,
        "arch": cfg.model.arch,
        "world_size": env.world_size,
        "global_batch_size": t.global_batch_size,
        "epochs": t.epochs,
        "global_steps": run.state.global_step,
        "best": {"epoch": best["epoch"], "path": output, "val_acc": val_acc,
                 **({"disagreement": disagreement} if disagreement is not None else {})},
        "test": test,
        "export_dir": str(layout.export),
        "images_per_sec": run.images_per_sec,
        "wall_time_s": run.wall_time_s,
        "skipped_steps": run.state.skipped_steps,
        "resumed_from": run.resumed_from,
        "noise_scale": {**run.noise_scale, "advice": _advice(run.noise_scale, t.global_batch_size)},
    }
    if final_values:
        summary["final_values"] = final_values
        summary["final_values_of"] = "the final weights (not the best checkpoint's)"
    if env.is_main:
        atomic_write_text(layout.summary, json.dumps(summary, indent=2) + "\n")
        run.recorder.scalars("test", {"acc": test["acc"], "acc5": test["acc5"]},
                             step=run.state.global_step, epoch=run.state.epoch)
        hparams = {"method": method.name, "arch": cfg.model.arch, "global_batch_size": t.global_batch_size,
                   "lr": cfg.optim.lr, "epochs": t.epochs, "world_size": env.world_size, **method_hparams(method)}
        run.recorder.hparams(hparams, {"best_val_acc": run.state.best.acc, "test_acc": test["acc"]})
        run.recorder.console.message(f"done: best val {run.state.best.acc * 100:.2f}% (epoch {best['epoch']}"
                                     f"{f', path {output}' if output is not None else ''}); "
                                     f"test {test['acc'] * 100:.2f}%; export in {layout.export}")
        run.recorder.console.message(summary["noise_scale"]["advice"])
    return summary
