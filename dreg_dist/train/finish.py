"""The end of a finished run: export the best (epoch, output), score it on test, summarize.

Rank 0 writes the export (what it holds is the method's business: :meth:`Method.export`),
``summary.json`` and the TensorBoard hparams; every rank takes part in the test evaluation.
The test score is of the exported model, at the precision validation used, so the number
in the summary is the one a user of the export gets.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from dreg_dist.distributed import barrier
from dreg_dist.io import atomic_write_text
from dreg_dist.train import checkpoint as ckpt

if TYPE_CHECKING:
    from dreg_dist.train.trainer import Trainer


def finish_run(trainer: "Trainer", wall: float) -> dict[str, Any]:
    """Export the best checkpoint's best output, score it on test, write ``summary.json``."""
    cfg, env, layout, method = trainer.cfg, trainer.env, trainer.layout, trainer.method
    t = cfg.train
    final_values = method.summary_values(trainer.module)  # before best.pt replaces the final weights
    barrier()
    best_state = ckpt.load_checkpoint(layout.best, map_location=trainer.device)
    trainer.module.load_state_dict(best_state["model"])
    best = best_state["best"]
    val_acc = {output: r["acc"] for output, r in best["val"].items()}
    disagreement = next((r["disagreement"] for r in best["val"].values() if "disagreement" in r), None)
    meta = dict(arch=cfg.model.arch, num_classes=cfg.model.num_classes, mean=trainer.data.mean,
                std=trainer.data.std, input_shape=trainer.data.input_shape,
                extra_meta={"best_epoch": best["epoch"], "method": method.name, "run_dir": str(layout.root)})
    output = method.choose_output(val_acc)
    if env.is_main:
        method.export(trainer.module, layout.export, val_acc=val_acc, output=output, **meta)
    eval_model = method.exported_model(trainer.module, output)
    test = next(iter(trainer.evaluate("test", eval_model, single=True).values()))
    summary = {
        "status": "finished",
        "method": method.name,
        "arch": cfg.model.arch,
        "world_size": env.world_size,
        "global_batch_size": t.global_batch_size,
        "epochs": t.epochs,
        "global_steps": trainer.state.global_step,
        "best": {"epoch": best["epoch"], "path": output, "val_acc": val_acc,
                 **({"disagreement": disagreement} if disagreement is not None else {})},
        "test": test,
        "export_dir": str(layout.export),
        "images_per_sec": (sum(trainer.throughput) / len(trainer.throughput)) if trainer.throughput else None,
        "wall_time_s": wall,
        "skipped_steps": trainer.state.skipped_steps,
        "resumed_from": trainer.resumed_from,
    }
    if final_values:
        summary["final_values"] = final_values
        summary["final_values_of"] = "the final weights (not the best checkpoint's)"
    if env.is_main:
        atomic_write_text(layout.summary, json.dumps(summary, indent=2) + "\n")
        trainer.recorder.scalars("test", {"acc": test["acc"], "acc5": test["acc5"]},
                                 step=trainer.state.global_step, epoch=trainer.state.epoch)
        hparams = {"method": method.name, "arch": cfg.model.arch, "global_batch_size": t.global_batch_size,
                   "lr": cfg.optim.lr, "epochs": t.epochs, "world_size": env.world_size, **method.hparams()}
        trainer.recorder.hparams(hparams, {"best_val_acc": trainer.state.best.acc, "test_acc": test["acc"]})
        trainer._say(f"done: best val {trainer.state.best.acc * 100:.2f}% (epoch {best['epoch']}"
                     f"{f', path {output}' if output is not None else ''}); "
                     f"test {test['acc'] * 100:.2f}%; export in {layout.export}")
    return summary
