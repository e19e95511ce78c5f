"""The training loop: data-parallel steps, validation of the method's outputs, checkpoints.

One :class:`Trainer` runs in every worker process. Per optimizer step each rank takes its
B/K slice of the global batch (split into accumulation micro-batches), the configured
method leaves the all-reduced gradient in ``.grad``, and the trainer applies gradient
unscaling, clipping, the optimizer and the per-iteration schedule. Rank 0 writes all
records; collectives happen at the same steps on every rank (logging steps, the
non-finite check, evaluation), so no rank ever waits on a collective another skips.
The trainer never names a method: what to build, score, log and export it asks the
method (``dreg_dist/methods/base.py``). The end of a run (export, test score, summary)
is :mod:`dreg_dist.train.finish`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from dreg_dist.config import Config, build_method, config_to_dict
from dreg_dist.data import build_data
from dreg_dist.distributed import DistEnv, all_reduce_sum, any_rank
from dreg_dist.io import DiskFullError
from dreg_dist.methods import StepContext
from dreg_dist.models import ForwardKeys, build_model
from dreg_dist.optim import build_optimizer, build_scheduler, peak_lr
from dreg_dist.run_layout import RunLayout
from dreg_dist.train import any_k
from dreg_dist.train import checkpoint as ckpt
from dreg_dist.train.evaluate import evaluate
from dreg_dist.train.preemption import PreemptionFlag, write_requeue_marker
from dreg_dist.train.preflight import check_method_options
from dreg_dist.train.records import RunRecorder
from dreg_dist.train.state import TrainState
from dreg_dist.train.step_guard import StepGuard, UndoOnFlag, nonfinite_flag


_COMPRESSION_HOOKS = {"fp16": default_hooks.fp16_compress_hook, "bf16": default_hooks.bf16_compress_hook}
"""train.grad_compression -> DDP communication hook (cast, all-reduce, cast back to fp32)."""


STEP_FLAG_LAG = 2
"""Device mode: a step's flags are acted on this many steps later (see train/step_guard.py)."""


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN/Inf (``train.on_nonfinite=stop``), or the state to
    checkpoint is not finite (either mode)."""


class CheckpointWriteError(RuntimeError):
    """Rank 0 could not write a checkpoint (a full disk); raised on every rank, the previous
    checkpoint intact."""


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
    def __init__(self, cfg: Config, run_dir: Path, env: DistEnv, preempt: Optional[PreemptionFlag] = None) -> None:
        """``preempt``: a flag the caller installed (and removes); without one, the trainer
        installs its own for :meth:`fit` and removes it in :meth:`close`."""
        self.cfg = cfg
        self.layout = RunLayout(run_dir)
        self.run_dir = self.layout.root
        self.env = env
        self.device = env.device
        t = cfg.train
        torch.manual_seed(t.seed)

        self.data = build_data(cfg.data, seed=t.seed, device=self.device, num_classes=cfg.model.num_classes)
        self.steps_per_epoch = self.data.steps_per_epoch(t.global_batch_size)  # DataError if < 1
        self.method = build_method(cfg)
        self.console_keys = self.method.describe().console_keys
        model = build_model(cfg.model.arch, cfg.model.num_classes, zero_init_residual=cfg.model.zero_init_residual)
        model = self.method.prepare_model(model)
        # Random ops keyed by sample, ghost BN with train.bn_group_size: the same training on any K.
        self.forward_keys = ForwardKeys(t.seed)
        self.k_independent = any_k.prepare_model(model, t, self.forward_keys)
        if t.sync_bn and env.world_size > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        channels_last = t.channels_last if t.channels_last is not None else self.device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.module = model.to(self.device, memory_format=self.memory_format)
        self.data = any_k.KeyedTrainData(self.data, self.forward_keys, t, env.world_size, self.memory_format,
                                         step=lambda: self.state.global_step)

        self.lr = peak_lr(cfg.optim, t.global_batch_size)
        self.optimizer = build_optimizer(self.module, cfg.optim, self.lr)
        any_k.install_step_hooks(self.optimizer, self.module, self.forward_keys)
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
            check_method_options(cfg, self.method)  # as in pre-flight: one comm hook at most
            if t.grad_compression != "none":
                model_for_step.register_comm_hook(None, _COMPRESSION_HOOKS[t.grad_compression])
            self.method.configure_ddp(model_for_step)
        if t.compile:
            model_for_step = torch.compile(model_for_step)
        self.model = model_for_step

        self.recorder = RunRecorder(
            self.run_dir if env.is_main else None, tensorboard=cfg.log.tensorboard, progress=cfg.log.progress
        )
        if t.bn_group_size is not None and not self.k_independent["ghost"]:
            self._say(f"note: train.bn_group_size={t.bn_group_size} has no effect: {cfg.model.arch} has no BatchNorm")
        for note in self.method.startup_notes(self.module):
            self._say(note)
        self._own_flag = preempt is None
        self.preempt = preempt if preempt is not None else PreemptionFlag()
        self.guard = StepGuard(t.step_guard, self.device)
        self.undo = UndoOnFlag(self.optimizer, self.module)
        self._preempted = False
        self.state = TrainState(world_size=env.world_size)
        self.resumed_from: Optional[str] = None
        self._window: dict[str, Tensor] = {}
        self._window_steps: Any = 0
        self._window_start = time.perf_counter()
        self.throughput: list[float] = []
        self._resume()

    # ------------------------------------------------------------------ state
    def stateful(self) -> dict[str, Any]:
        """Everything with a ``state_dict`` that a checkpoint holds, by checkpoint key."""
        return {"model": self.module, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "scaler": self.scaler}

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: every stateful part plus :class:`TrainState` (collective: gathers RNG)."""
        finite = ckpt.all_finite(self.module.state_dict()) and ckpt.all_finite(list(self.optimizer.state.values()))
        if any_rank(not finite, self.device):  # never checkpoint a diverged state
            raise NonFiniteLossError(
                f"model or optimizer state is not finite at step {self.state.global_step} (epoch "
                f"{self.state.epoch + 1}); not checkpointed, the newest file in {self.layout.checkpoints} is the "
                "last finite state: lower optim.lr or set train.grad_clip_norm"
            )
        rng = ckpt.rng_state(self.device)
        if self.env.distributed:
            gathered: list[Any] = [None] * self.env.world_size
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        self.state.rng = gathered
        self.state.world_size = self.env.world_size
        out = {key: part.state_dict() for key, part in self.stateful().items()}
        out.update(self.state.state_dict())
        out["method"] = self.method.name
        out["config"] = config_to_dict(self.cfg)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, part in self.stateful().items():
            part.load_state_dict(state[key])
        self.state.load_state_dict(state)
        rngs = self.state.rng
        if len(rngs) == self.env.world_size:
            ckpt.set_rng_state(rngs[self.env.rank], self.device)
        elif rngs:
            self._say(any_k.different_world_warning(state, self.cfg, self.env.world_size, self.module))
        self.state.world_size = self.env.world_size

    def save(self, reason: str) -> None:
        """Checkpoint on every rank's call (gathers RNG states); rank 0 writes last.pt."""
        self._read_flags(wait=True)  # a skipped or diverged step is known before anything is written
        sync_buffers(self.module)
        state = self.state_dict()
        failed: Optional[DiskFullError] = None
        if self.env.is_main:
            last = self.layout.last
            try:
                ckpt.save_checkpoint(state, last)
                if reason == "step":
                    ckpt.link_or_copy(last, self.layout.checkpoints / f"step-{self.state.global_step}.pt")
                    ckpt.prune_step_checkpoints(self.layout.checkpoints, self.cfg.checkpoint.keep_last)
            except DiskFullError as err:
                failed = err
            else:
                self.recorder.event("checkpoint", reason=reason, step=self.state.global_step,
                                    epoch=self.state.epoch)
        self._all_written(failed)

    def _save_best(self) -> None:
        self._read_flags(wait=True)
        state = self.state_dict()
        failed: Optional[DiskFullError] = None
        if self.env.is_main:
            try:
                ckpt.save_checkpoint(state, self.layout.best)
            except DiskFullError as err:
                failed = err
        self._all_written(failed)

    def _leave_requeue_marker(self, reason: str) -> None:
        """Rank 0 records in the run folder that this attempt checkpointed for preemption, before
        any rank may exit: under Slurm the end of one node's workers ends that node's task, and
        the step's other processes, rank 0 included, may then be killed."""
        failed: Optional[DiskFullError] = None
        if self.env.is_main:
            try:
                write_requeue_marker(self.run_dir, {"reason": reason, "global_step": self.state.global_step})
            except DiskFullError as err:
                failed = err
        self._all_written(failed)

    def _all_written(self, failed: Optional[DiskFullError]) -> None:
        """Every rank learns whether rank 0's write failed (a collective, in place of a barrier),
        so that all of them stop with one message instead of the others failing in the next
        collective with a lost peer."""
        if any_rank(failed is not None, self.device):
            where = str(failed) if failed is not None else "rank 0 could not write a checkpoint"
            raise CheckpointWriteError(
                f"{where}; make room there (or move the run folder and pass --run-dir), then launch the same "
                "command: it resumes from the newest checkpoint"
            )

    def _resume(self) -> None:
        mode = self.cfg.train.resume
        if mode == "never":
            return
        if mode == "auto":
            state = ckpt.find_resumable(self.layout.checkpoints, log=self._say)
            if state is None:
                return
        else:
            state = ckpt.load_checkpoint(mode)
            state["_path"] = mode
        self.load_state_dict(state)
        self.resumed_from = state["_path"]
        s = self.state
        self._say(f"resumed from {state['_path']} at epoch {s.epoch + 1}, step {s.step_in_epoch} "
                  f"(global step {s.global_step})")
        if self.env.is_main:
            self.recorder.event("resume", path=state["_path"], step=s.global_step, epoch=s.epoch)

    def _say(self, text: str) -> None:
        if self.env.is_main:
            self.recorder.console.message(text)

    # ------------------------------------------------------------------ steps
    def _train_step(self, batches: list[tuple[Tensor, Tensor]]) -> None:
        if self.memory_format is torch.channels_last:
            batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
        t = self.cfg.train
        ctx = StepContext(self.model, self.module, self.autocast, self.scaler,
                          lr=self.optimizer.param_groups[0]["lr"], step=self.state.global_step)
        on_device = self.guard.on_device
        # A skipped step must leave the state as it was: the forward already moves BN statistics.
        if on_device:
            self.undo.take()
        saved_buffers = [b.detach().clone() for b in self.module.buffers()] \
            if t.on_nonfinite == "skip" and not on_device else []
        parts = self.method.compute_gradients(ctx, batches)
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        # With fp16 the scaler skips inf gradients itself; the loss is still checked.
        bad = nonfinite_flag(parts["loss"], grads, check_grads=not self.scaler.is_enabled())
        flags = self.guard.exchange(self.state.global_step, bad, self.preempt.is_set())
        if not on_device:
            read = self.guard.read_now(self.state.global_step, flags)
            self._preempted = read.preempted
            if read.nonfinite:
                self._nonfinite(read.step)  # raises for on_nonfinite=stop
                for buf, saved in zip(self.module.buffers(), saved_buffers):
                    buf.copy_(saved)
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                return
        self.scaler.unscale_(self.optimizer)
        if t.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(self.module.parameters(), t.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.method.after_step(self.module)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if on_device:
            skipped = flags[0] > 0
            self.undo.restore_if(flags[0])
            for key, value in parts.items():
                masked = torch.where(skipped, torch.zeros_like(value), value)
                self._window[key] = self._window.get(key, 0.0) + masked
            self._window_steps = self._window_steps + (1.0 - flags[0])
        else:
            for key, value in parts.items():
                self._window[key] = self._window.get(key, 0.0) + value
            self._window_steps += 1

    def _nonfinite(self, step: int) -> None:
        """A step the ranks agreed was not finite (its update was not applied): stop or count it."""
        where = f"step {step + 1} (epoch {step // self.steps_per_epoch + 1})"
        if self.cfg.train.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"loss or gradient is not finite at {where}: lower optim.lr, set train.grad_clip_norm, or "
                "set train.on_nonfinite=skip to skip such steps"
            )
        self.state.skipped_steps += 1
        self._say(f"warning: non-finite loss or gradient at {where}; step skipped")

    def _read_flags(self, wait: bool) -> None:
        """Device mode: act on the flags of steps at least ``STEP_FLAG_LAG`` old (all with ``wait``).

        The lag is a step count, not a time, so every rank acts on the same step's flags at the
        same point; waiting on a copy that old does not stall the GPU queue.
        """
        if not self.guard.on_device:
            return
        upto = None if wait else self.state.global_step - 1 - STEP_FLAG_LAG
        for flags in self.guard.landed(upto):
            if flags.nonfinite:
                self._nonfinite(flags.step)
            self._preempted = self._preempted or flags.preempted

    def _log_train(self) -> None:
        """Average the window's loss parts over steps and ranks (a collective), then log."""
        keys = sorted(self._window)
        if not keys:
            return
        steps = float(self._window_steps)  # in device mode, a tensor: this host read is the logging cadence's
        if steps == 0:
            return
        vec = torch.stack([torch.as_tensor(self._window[k], device=self.device).float() for k in keys])
        all_reduce_sum(vec)
        vec /= steps * self.env.world_size
        elapsed = time.perf_counter() - self._window_start
        ips = steps * self.cfg.train.global_batch_size / max(elapsed, 1e-9)
        self.throughput.append(ips)
        values = {k: v for k, v in zip(keys, vec.tolist())}
        values.update(self.method.log_values(self.module))
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        values["images_per_sec"] = ips
        if self.env.is_main:
            s = self.state
            self.recorder.scalars("train", values, step=s.global_step, epoch=s.global_step / self.steps_per_epoch)
            remaining = (self.cfg.train.epochs - s.epoch) * self.steps_per_epoch - s.step_in_epoch
            eta = remaining * self.cfg.train.global_batch_size / max(ips, 1e-9)
            shown = {**{k: values[k] for k in self.console_keys if k in values}, "img/s": ips}
            self.recorder.console.update(s.epoch, self.cfg.train.epochs, s.step_in_epoch, self.steps_per_epoch,
                                         shown, eta)
        self._window = {}
        self._window_steps = 0
        self._window_start = time.perf_counter()

    def evaluate(self, split: str, module: Optional[nn.Module] = None, single: bool = False
                 ) -> dict[str, dict[str, float]]:
        """Score ``split`` exactly over all ranks (collective), at the training precision.

        ``module`` defaults to the trained model with every output the method scores;
        ``single=True`` scores a plain model (an export) as one output.
        """
        t = self.cfg.train
        batches = self.data.eval_batches(split, self.env.rank, self.env.world_size, t.eval_batch_size)
        batches = ((x.contiguous(memory_format=self.memory_format), y) for x, y in batches)
        if single:
            return evaluate(module if module is not None else self.module, batches, self.device, self.autocast())
        return evaluate(module if module is not None else self.module, batches, self.device, self.autocast(),
                        outputs=self.method.eval_outputs, names=self.method.outputs)

    def _validate(self) -> None:
        sync_buffers(self.module)
        results = self.evaluate("val")
        improved = self.state.improve(results)
        best = self.state.best
        values: dict[str, float] = {}
        for p, r in results.items():
            suffix = "" if p == "model" else f"_{p}"
            values.update({f"acc{suffix}": r["acc"], f"acc5{suffix}": r["acc5"], f"loss{suffix}": r["loss"]})
        disagreement = [r["disagreement"] for r in results.values() if "disagreement" in r]
        if disagreement:
            values["disagreement"] = disagreement[0]  # of the first output with the others
        values["best_acc"] = best.acc
        if self.env.is_main:
            self.recorder.scalars("val", values, step=self.state.global_step, epoch=self.state.epoch)
            shown = ", ".join(f"{p} {r['acc'] * 100:.2f}%" for p, r in results.items())
            if disagreement:
                shown += f", disagreeing on {disagreement[0] * 100:.1f}%"
            self._say(f"epoch {self.state.epoch}/{self.cfg.train.epochs} val acc: {shown} (best {best.acc * 100:.2f}% "
                      f"path {best.path} epoch {best.epoch})")
        if improved:
            self._save_best()

    # ------------------------------------------------------------------ run
    def _stop_reason(self, more_to_do: bool, fresh: bool = False) -> Optional[str]:
        """Why to stop before the run's end (stop_after_steps or a signal on any rank), or None.

        After a step it uses the flags that step exchanged (no extra collective); ``fresh``
        exchanges the signal flag anew (after validation and checkpointing, which take a while).
        Every rank calls it at the same points and reaches the same answer.
        """
        if fresh:
            zero = torch.zeros((), device=self.device)
            flags = self.guard.exchange(self.state.global_step, zero, self.preempt.is_set())
            self._read_flags(wait=True)
            self._preempted = self._preempted or self.guard.read_now(self.state.global_step, flags).preempted
        else:
            self._read_flags(wait=False)
        if not more_to_do:
            return None
        limit = self.cfg.train.stop_after_steps
        if limit is not None and self.state.global_step >= limit:
            return "stop_after_steps"
        if self._preempted:
            return f"signal {self.preempt.signal_name or 'on another rank'}"
        return None

    def fit(self) -> dict[str, Any]:
        t = self.cfg.train
        s = self.state
        if self._own_flag:
            self.preempt.install()
        if self.env.is_main:
            self.recorder.event("start", world_size=self.env.world_size, device=str(self.device),
                                method=self.method.name, lr=self.lr, steps_per_epoch=self.steps_per_epoch)
            self._say(f"{self.method.name} | {self.cfg.model.arch} | world size {self.env.world_size} on "
                      f"{self.device.type} | global batch {t.global_batch_size} | peak lr {self.lr:.4g} | "
                      f"{self.steps_per_epoch} steps/epoch x {t.epochs} epochs")
        start = time.perf_counter()
        self._window_start = start
        stopped: Optional[str] = None
        while s.epoch < t.epochs and stopped is None:
            for batches in self.data.train_batches(
                s.epoch, t.global_batch_size, self.env.rank, self.env.world_size,
                t.accumulation_steps, start_step=s.step_in_epoch,
            ):
                self._train_step(batches)
                s.step_in_epoch += 1
                s.global_step += 1
                if s.global_step % self.cfg.log.every_steps == 0:
                    self._log_train()
                end_of_epoch = s.step_in_epoch == self.steps_per_epoch
                if self.cfg.checkpoint.every_steps and s.global_step % self.cfg.checkpoint.every_steps == 0 \
                        and not end_of_epoch:
                    self.save("step")
                stopped = self._stop_reason(more_to_do=not end_of_epoch)
                if stopped:
                    break
            if stopped:
                self.save("stop")
                break
            self._log_train()
            s.epoch += 1
            s.step_in_epoch = 0
            if s.epoch % t.eval_every_epochs == 0 or s.epoch == t.epochs:
                self._validate()
            self.save("epoch")
            stopped = self._stop_reason(more_to_do=s.epoch < t.epochs, fresh=True)
        wall = time.perf_counter() - start
        if stopped:
            preempted = stopped.startswith("signal")  # agreed by all ranks, whichever got the signal
            if preempted:
                self._leave_requeue_marker(stopped)
            self._say(f"stopped ({stopped}) at global step {s.global_step}; last.pt holds the state, "
                      "launch the same command to resume")
            return {"status": "stopped", "reason": stopped, "global_step": s.global_step, "preempted": preempted}
        from dreg_dist.train.finish import finish_run

        return finish_run(self, wall)

    def close(self) -> None:
        if self._own_flag:
            self.preempt.uninstall()
        self.recorder.close()
