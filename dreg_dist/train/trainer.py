"""The training loop: data-parallel steps, validation of both paths, checkpoints, export.

One :class:`Trainer` runs in every worker process. Per optimizer step each rank takes its
B/K slice of the global batch (split into accumulation micro-batches), the configured
method leaves the all-reduced gradient in ``.grad``, and the trainer applies gradient
unscaling, clipping, the optimizer and the per-iteration schedule. Rank 0 writes all
records; collectives happen at the same steps on every rank (logging steps, the
non-finite check, evaluation), so no rank ever waits on a collective another skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from dreg_dist.config.load import config_to_dict
from dreg_dist.config.schema import Config
from dreg_dist.config.validate import check_grad_compression
from dreg_dist.data import build_data
from dreg_dist.distributed import DistEnv, all_reduce_sum, any_rank, barrier
from dreg_dist.dreg import DualPathModel
from dreg_dist.dreg.export import choose_path, plain_model, write_export, write_plain_export
from dreg_dist.methods import StepContext, build_method, resolve_method_name
from dreg_dist.models import build_model
from dreg_dist.optim import build_optimizer, build_scheduler, peak_lr
from dreg_dist.train import checkpoint as ckpt
from dreg_dist.train.evaluate import evaluate
from dreg_dist.train.preemption import PreemptionFlag
from dreg_dist.train.records import RunRecorder


_COMPRESSION_HOOKS = {"fp16": default_hooks.fp16_compress_hook, "bf16": default_hooks.bf16_compress_hook}
"""train.grad_compression -> DDP communication hook (cast, all-reduce, cast back to fp32)."""


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN/Inf (``train.on_nonfinite=stop``), or the state to
    checkpoint is not finite (either mode)."""


@dataclass
class Best:
    """The best (epoch, path) so far by validation accuracy."""

    acc: float = -1.0
    epoch: int = -1
    path: Optional[str] = None
    val: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"acc": self.acc, "epoch": self.epoch, "path": self.path, "val": self.val}


def sync_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BN running statistics).

    DDP broadcasts buffers at the *start* of each forward, so after the last step each
    rank's statistics include its own last batch; evaluation and export must all use
    the same ones.
    """
    if dist.is_available() and dist.is_initialized():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, env: DistEnv) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.env = env
        self.device = env.device
        self.ckpt_dir = run_dir / "checkpoints"
        t = cfg.train
        torch.manual_seed(t.seed)

        self.data = build_data(cfg.data, seed=t.seed, device=self.device, num_classes=cfg.model.num_classes)
        self.steps_per_epoch = self.data.steps_per_epoch(t.global_batch_size)  # DataError if < 1
        self.method = build_method(cfg)
        self.method_name = resolve_method_name(cfg)
        model = build_model(cfg.model.arch, cfg.model.num_classes, zero_init_residual=cfg.model.zero_init_residual)
        model = self.method.prepare_model(model)
        if t.sync_bn and env.world_size > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        channels_last = t.channels_last if t.channels_last is not None else self.device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.module = model.to(self.device, memory_format=self.memory_format)

        self.lr = peak_lr(cfg.optim, t.global_batch_size)
        self.optimizer = build_optimizer(self.module, cfg.optim, self.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch, t.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16")
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp)
        self.autocast: Callable[[], ContextManager[Any]] = (
            (lambda: torch.autocast(self.device.type, dtype=amp_dtype))
            if amp_dtype is not None
            else contextlib.nullcontext
        )
        model_for_step: nn.Module = self.module
        if env.distributed:
            model_for_step = DDP(
                self.module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )
            if t.grad_compression != "none":
                # A method with its own comm hook (gradientmix) is refused here as in validation.
                check_grad_compression(cfg)
                model_for_step.register_comm_hook(None, _COMPRESSION_HOOKS[t.grad_compression])
            self.method.configure_ddp(model_for_step)
        if t.compile:
            model_for_step = torch.compile(model_for_step)
        self.model = model_for_step

        self.recorder = RunRecorder(
            run_dir if env.is_main else None, tensorboard=cfg.log.tensorboard, progress=cfg.log.progress
        )
        self.preempt = PreemptionFlag()
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best = Best()
        self.last_val: dict[str, dict[str, float]] = {}
        self.resumed_from: Optional[str] = None
        self._window: dict[str, Tensor] = {}
        self._window_steps = 0
        self._window_start = time.perf_counter()
        self._throughput: list[float] = []
        self._skipped_steps = 0
        self._resume()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        finite = ckpt.all_finite(self.module.state_dict()) and ckpt.all_finite(list(self.optimizer.state.values()))
        if any_rank(not finite, self.device):  # never checkpoint a diverged state
            raise NonFiniteLossError(
                f"model or optimizer state is not finite at step {self.global_step} (epoch {self.epoch + 1}); "
                f"not checkpointed, the newest file in {self.ckpt_dir} is the last finite state: lower optim.lr "
                "or set train.grad_clip_norm"
            )
        rng = ckpt.rng_state(self.device)
        if self.env.distributed:
            gathered: list[Any] = [None] * self.env.world_size
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best": self.best.as_dict(),
            "last_val": self.last_val,
            "rng": gathered,
            "world_size": self.env.world_size,
            "method": self.method_name,
            "config": config_to_dict(self.cfg),
        }

    def save(self, reason: str) -> None:
        """Checkpoint on every rank's call (gathers RNG states); rank 0 writes last.pt."""
        sync_buffers(self.module)
        state = self.state_dict()
        if self.env.is_main:
            last = self.ckpt_dir / "last.pt"
            ckpt.save_checkpoint(state, last)
            if reason == "step":
                ckpt.link_or_copy(last, self.ckpt_dir / f"step-{self.global_step}.pt")
                ckpt.prune_step_checkpoints(self.ckpt_dir, self.cfg.checkpoint.keep_last)
            self.recorder.event("checkpoint", reason=reason, step=self.global_step, epoch=self.epoch)
        barrier()

    def _save_best(self) -> None:
        state = self.state_dict()
        if self.env.is_main:
            ckpt.save_checkpoint(state, self.ckpt_dir / "best.pt")

    def _resume(self) -> None:
        mode = self.cfg.train.resume
        if mode == "never":
            return
        if mode == "auto":
            state = ckpt.find_resumable(self.ckpt_dir, log=self._say)
            if state is None:
                return
        else:
            state = ckpt.load_checkpoint(mode)
            state["_path"] = mode
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        b = state.get("best", {})
        self.best = Best(b.get("acc", -1.0), b.get("epoch", -1), b.get("path"), b.get("val", {}))
        self.last_val = state.get("last_val", {})
        rngs = state.get("rng") or []
        if len(rngs) == self.env.world_size:
            ckpt.set_rng_state(rngs[self.env.rank], self.device)
        elif rngs:
            self._say(f"warning: checkpoint was written by {len(rngs)} workers, now {self.env.world_size}; "
                      "data order is unchanged, random streams restart")
        self.resumed_from = state["_path"]
        self._say(f"resumed from {state['_path']} at epoch {self.epoch + 1}, step {self.step_in_epoch} "
                  f"(global step {self.global_step})")
        if self.env.is_main:
            self.recorder.event("resume", path=state["_path"], step=self.global_step, epoch=self.epoch)

    def _say(self, text: str) -> None:
        if self.env.is_main:
            self.recorder.console.message(text)

    # ------------------------------------------------------------------ steps
    def _train_step(self, batches: list[tuple[Tensor, Tensor]]) -> None:
        if self.memory_format is torch.channels_last:
            batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
        ctx = StepContext(self.model, self.module, self.autocast, self.scaler,
                          lr=self.optimizer.param_groups[0]["lr"], step=self.global_step)
        # A skipped step must leave the state as it was: the forward already moved BN statistics.
        saved_buffers = [b.detach().clone() for b in self.module.buffers()] \
            if self.cfg.train.on_nonfinite == "skip" else []
        parts = self.method.compute_gradients(ctx, batches)
        loss = parts["loss"]
        finite = torch.isfinite(loss.detach()).all()
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if grads and not self.scaler.is_enabled():  # with fp16 the scaler skips inf gradients itself
            finite = finite & torch.isfinite(torch.stack(torch._foreach_norm(grads, float("inf")))).all()
        if any_rank(not bool(finite.item()), self.device):
            where = f"step {self.global_step + 1} (epoch {self.epoch + 1})"
            if self.cfg.train.on_nonfinite == "stop":
                raise NonFiniteLossError(
                    f"loss or gradient is not finite at {where}: lower optim.lr, set train.grad_clip_norm, or "
                    "set train.on_nonfinite=skip to skip such steps"
                )
            self._skipped_steps += 1
            self._say(f"warning: non-finite loss or gradient at {where}; step skipped")
            for buf, saved in zip(self.module.buffers(), saved_buffers):
                buf.copy_(saved)
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            return
        self.scaler.unscale_(self.optimizer)
        if self.cfg.train.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.train.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        for key, value in parts.items():
            self._window[key] = self._window.get(key, 0.0) + value
        self._window_steps += 1

    def _log_train(self) -> None:
        """Average the window's loss parts over steps and ranks (a collective), then log."""
        keys = sorted(self._window)
        if self._window_steps == 0 or not keys:
            return
        vec = torch.stack([torch.as_tensor(self._window[k], device=self.device).float() for k in keys])
        all_reduce_sum(vec)
        vec /= self._window_steps * self.env.world_size
        elapsed = time.perf_counter() - self._window_start
        ips = self._window_steps * self.cfg.train.global_batch_size / max(elapsed, 1e-9)
        self._throughput.append(ips)
        values = {k: v for k, v in zip(keys, vec.tolist())}
        values.update(self.method.log_values(self.module))
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        values["images_per_sec"] = ips
        if self.env.is_main:
            self.recorder.scalars("train", values, step=self.global_step,
                                  epoch=self.global_step / self.steps_per_epoch)
            remaining = (self.cfg.train.epochs - self.epoch) * self.steps_per_epoch - self.step_in_epoch
            eta = remaining * self.cfg.train.global_batch_size / max(ips, 1e-9)
            # DReg's total loss goes negative as the contrast grows: show its parts instead.
            parts = ("loss_R", "loss_L", "contrast") if "loss_R" in values else ("loss",)
            shown = {**{k: values[k] for k in parts}, "img/s": ips}
            self.recorder.console.update(
                self.epoch, self.cfg.train.epochs, self.step_in_epoch, self.steps_per_epoch, shown, eta
            )
        self._window = {}
        self._window_steps = 0
        self._window_start = time.perf_counter()

    def _validate(self) -> None:
        sync_buffers(self.module)
        t = self.cfg.train
        batches = self.data.eval_batches("val", self.env.rank, self.env.world_size, t.eval_batch_size)
        batches = ((x.contiguous(memory_format=self.memory_format), y) for x, y in batches)
        results = evaluate(self.module, batches, self.device, self.autocast())
        self.last_val = results
        path, acc = max(((p, r["acc"]) for p, r in results.items()), key=lambda pa: (pa[1], pa[0] == "R"))
        improved = acc > self.best.acc
        if improved:
            self.best = Best(acc, self.epoch, path, results)
        values: dict[str, float] = {}
        for p, r in results.items():
            suffix = "" if p == "model" else f"_{p}"
            values.update({f"acc{suffix}": r["acc"], f"acc5{suffix}": r["acc5"], f"loss{suffix}": r["loss"]})
        values["best_acc"] = self.best.acc
        if self.env.is_main:
            self.recorder.scalars("val", values, step=self.global_step, epoch=self.epoch)
            shown = ", ".join(f"{p} {r['acc'] * 100:.2f}%" for p, r in results.items())
            self._say(f"epoch {self.epoch}/{t.epochs} val acc: {shown} (best {self.best.acc * 100:.2f}% "
                      f"path {self.best.path} epoch {self.best.epoch})")
        if improved:
            self._save_best()

    # ------------------------------------------------------------------ run
    def fit(self) -> dict[str, Any]:
        t = self.cfg.train
        self.preempt.install()
        if self.env.is_main:
            self.recorder.event("start", world_size=self.env.world_size, device=str(self.device),
                                method=self.method_name, lr=self.lr, steps_per_epoch=self.steps_per_epoch)
            self._say(f"{self.method_name} | {self.cfg.model.arch} | world size {self.env.world_size} on "
                      f"{self.device.type} | global batch {t.global_batch_size} | peak lr {self.lr:.4g} | "
                      f"{self.steps_per_epoch} steps/epoch x {t.epochs} epochs")
        start = time.perf_counter()
        self._window_start = start
        stopped = None
        while self.epoch < t.epochs and stopped is None:
            for batches in self.data.train_batches(
                self.epoch, t.global_batch_size, self.env.rank, self.env.world_size,
                t.accumulation_steps, start_step=self.step_in_epoch,
            ):
                self._train_step(batches)
                self.step_in_epoch += 1
                self.global_step += 1
                if self.global_step % self.cfg.log.every_steps == 0:
                    self._log_train()
                end_of_epoch = self.step_in_epoch == self.steps_per_epoch
                if self.cfg.checkpoint.every_steps and self.global_step % self.cfg.checkpoint.every_steps == 0 \
                        and not end_of_epoch:
                    self.save("step")
                if t.stop_after_steps is not None and self.global_step >= t.stop_after_steps and not end_of_epoch:
                    stopped = "stop_after_steps"
                elif any_rank(self.preempt.is_set(), self.device) and not end_of_epoch:
                    stopped = f"signal {self.preempt.signal_name}"
                if stopped:
                    break
            if stopped:
                self.save("stop")
                break
            self._log_train()
            self.epoch += 1
            self.step_in_epoch = 0
            if self.epoch % t.eval_every_epochs == 0 or self.epoch == t.epochs:
                self._validate()
            self.save("epoch")
            if t.stop_after_steps is not None and self.global_step >= t.stop_after_steps and self.epoch < t.epochs:
                stopped = "stop_after_steps"
            elif any_rank(self.preempt.is_set(), self.device) and self.epoch < t.epochs:
                stopped = f"signal {self.preempt.signal_name}"
        wall = time.perf_counter() - start
        if stopped:
            self._say(f"stopped ({stopped}) at global step {self.global_step}; last.pt holds the state, "
                      "launch the same command to resume")
            return {"status": "stopped", "reason": stopped, "global_step": self.global_step,
                    "preempted": self.preempt.is_set()}
        summary = self._finish(wall)
        return summary

    def _finish(self, wall: float) -> dict[str, Any]:
        """Export the best (epoch, path) and report its test accuracy."""
        best_file = self.ckpt_dir / "best.pt"
        barrier()
        state = ckpt.load_checkpoint(best_file, map_location=self.device)
        self.module.load_state_dict(state["model"])
        best = state["best"]
        export_dir = self.run_dir / "export"
        eval_model: nn.Module
        t = self.cfg.train
        extra = {"best_epoch": best["epoch"], "method": self.method_name, "run_dir": str(self.run_dir)}
        if isinstance(self.module, DualPathModel):
            val_acc = {p: r["acc"] for p, r in best["val"].items()}
            path = choose_path(val_acc, "auto")
            if self.env.is_main:
                write_export(self.module, export_dir, arch=self.cfg.model.arch, num_classes=self.cfg.model.num_classes,
                             val_acc=val_acc, path=path, mean=self.data.mean, std=self.data.std,
                             input_shape=self.data.input_shape, extra_meta=extra)
            eval_model = plain_model(self.module, path)
        else:
            val_acc = {"model": best["val"]["model"]["acc"]}
            path = None
            if self.env.is_main:
                write_plain_export(self.module, export_dir, arch=self.cfg.model.arch,
                                   num_classes=self.cfg.model.num_classes, val_acc=val_acc, path=None,
                                   mean=self.data.mean, std=self.data.std, input_shape=self.data.input_shape,
                                   dreg_layer=None, extra_meta=extra)
            eval_model = self.module
        test_batches = self.data.eval_batches("test", self.env.rank, self.env.world_size, t.eval_batch_size)
        test = evaluate(eval_model, test_batches, self.device)
        test_result = next(iter(test.values()))
        summary = {
            "status": "finished",
            "method": self.method_name,
            "arch": self.cfg.model.arch,
            "world_size": self.env.world_size,
            "global_batch_size": t.global_batch_size,
            "epochs": t.epochs,
            "global_steps": self.global_step,
            "best": {"epoch": best["epoch"], "path": path, "val_acc": val_acc},
            "test": test_result,
            "export_dir": str(export_dir),
            "images_per_sec": (sum(self._throughput) / len(self._throughput)) if self._throughput else None,
            "wall_time_s": wall,
            "skipped_steps": self._skipped_steps,
            "resumed_from": self.resumed_from,
        }
        if isinstance(self.module, DualPathModel):
            summary["final_branch_stats"] = self.method.log_values(self.module)
        if self.env.is_main:
            tmp = self.run_dir / ".summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
            os.replace(tmp, self.run_dir / "summary.json")
            self.recorder.scalars("test", {"acc": test_result["acc"], "acc5": test_result["acc5"]},
                                  step=self.global_step, epoch=self.epoch)
            flat = {"method": self.method_name, "arch": self.cfg.model.arch, "global_batch_size": t.global_batch_size,
                    "lr": self.cfg.optim.lr, "dreg_lam": self.cfg.dreg.lam, "dreg_layer": self.cfg.dreg.layer,
                    "epochs": t.epochs, "world_size": self.env.world_size}
            self.recorder.hparams(flat, {"best_val_acc": self.best.acc, "test_acc": test_result["acc"]})
            self._say(f"done: best val {self.best.acc * 100:.2f}% (epoch {best['epoch']}, path {path}); "
                      f"test {test_result['acc'] * 100:.2f}%; export in {export_dir}")
        return summary

    def close(self) -> None:
        self.preempt.uninstall()
        self.recorder.close()
