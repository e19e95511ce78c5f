"""The training loop: data-parallel steps, validation of the method's outputs, checkpoints.

One :class:`Trainer` runs in every worker process. Per optimizer step each rank takes its
B/K slice of the global batch (split into accumulation micro-batches), the configured
method leaves the all-reduced gradient in ``.grad``, and the trainer applies gradient
unscaling, clipping, the optimizer and the per-iteration schedule. Rank 0 writes all
records; collectives happen at the same steps on every rank (logging steps, the
non-finite check, evaluation), so no rank ever waits on a collective another skips.
The trainer never names a method: what to build, score, log and export it asks the
method (``dreg_dist/methods/base.py``).

Its parts, each in its own module of ``dreg_dist/train/``: the step guard (the ranks'
per-step agreement on non-finite steps and signals, and the undo of a bad update:
``step_guard.py``), the run control (stop, preemption and non-finite state: ``control.py``),
the loss window between log lines (``window.py``), checkpoint writing (``writer.py``) and the
end of a run (export, test score, summary: ``finish.py``).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dreg_dist.config import Config, build_method, config_to_dict
from dreg_dist.data import build_data
from dreg_dist.distributed import DistEnv, any_rank
from dreg_dist.methods import StepContext, describe
from dreg_dist.models import ForwardKeys, as_batch, build_model
from dreg_dist.optim import build_optimizer, build_scheduler, peak_lr
from dreg_dist.provenance import code_version
from dreg_dist.run_layout import RunLayout
from dreg_dist.train import any_k
from dreg_dist.train import checkpoint as ckpt
from dreg_dist.train.control import NonFiniteLossError, RunControl
from dreg_dist.train.ddp import sync_buffers, wrap_ddp
from dreg_dist.train.evaluate import evaluate
from dreg_dist.train.finish import FinishedRun, finish_run
from dreg_dist.train.noise import NoiseScaleMeter
from dreg_dist.train.preemption import PreemptionFlag
from dreg_dist.train.records import RunRecorder
from dreg_dist.train.state import TrainState
from dreg_dist.train.step_guard import DeviceGuard, make_guard, nonfinite_flag, skipped
from dreg_dist.train.window import LossWindow
from dreg_dist.train.writer import CheckpointWriter

class Trainer:
    """Public interface: :meth:`fit` (the whole run), :meth:`train_step` and :meth:`settle`
    (one step, and acting on every step's pending flags: for tests and tools that drive the
    steps themselves), :meth:`save`, :meth:`evaluate`, :meth:`state_dict` /
    :meth:`load_state_dict`, :meth:`close`; the parts (``module``, ``data``, ``state``, ...)."""

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
        self.console_keys = describe(self.method).console_keys
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
        self.data = any_k.KeyedTrainData(self.data, self.forward_keys, t, env.world_size,
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
        self.noise = NoiseScaleMeter(self.module, self.device, t.global_batch_size, env.world_size,
                                     decay=cfg.log.noise_scale_ema, enabled=cfg.log.noise_scale,
                                     hookable=not self.method.traits.replaces_allreduce,
                                     scale=lambda: self.scaler._scale if self.scaler.is_enabled() else None)
        model_for_step: nn.Module = self.module
        if env.distributed:
            model_for_step = wrap_ddp(self.module, self.device, cfg, self.method, self.noise)
        if t.compile:
            model_for_step = torch.compile(model_for_step)
        self.model = model_for_step

        self.recorder = RunRecorder(
            self.run_dir if env.is_main else None, tensorboard=cfg.log.tensorboard, progress=cfg.log.progress
        )
        if t.bn_group_size is not None and not self.k_independent["ghost"]:
            self._say(f"note: train.bn_group_size={t.bn_group_size} has no effect: {cfg.model.arch} has no BatchNorm")
        for note in self.method.check(self.module):
            self._say(note)
        self.state = TrainState(world_size=env.world_size)
        self.control = RunControl(self.state, self.steps_per_epoch, t.on_nonfinite, t.stop_after_steps,
                                  self._say, preempt)
        self.guard = make_guard(t.step_guard, self.device, self.optimizer, self.module,
                                restore_buffers=t.on_nonfinite == "skip")
        if isinstance(self.guard, DeviceGuard) and self.method.traits.syncs_with_host:
            self._say(f"note: train.step_guard=device keeps the trainer's step free of host syncs, but "
                      f"method {self.method.name} reads device values on the host in every step, so each step "
                      "still waits for the device")
        self.window = LossWindow(self.device)
        self.writer = CheckpointWriter(self.layout, self.device, env.is_main, self.recorder, cfg.checkpoint.keep_last)
        self.resumed_from: Optional[str] = None
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
        out["noise_scale"] = self.noise.state_dict()
        out["config"] = config_to_dict(self.cfg)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, part in self.stateful().items():
            part.load_state_dict(state[key])
        self.state.load_state_dict(state)
        self.noise.load_state_dict(state.get("noise_scale", {}))
        rngs = self.state.rng
        if len(rngs) == self.env.world_size:
            ckpt.set_rng_state(rngs[self.env.rank], self.device)
        elif rngs:
            self._say(any_k.different_world_warning(state, self.cfg, self.env.world_size, self.module))
        self.state.world_size = self.env.world_size

    def save(self, reason: str) -> None:
        """Checkpoint on every rank's call (gathers RNG states); rank 0 writes last.pt."""
        self.settle()  # a skipped or diverged step is known before anything is written
        sync_buffers(self.module)
        self.writer.last(self.state_dict(), reason, self.state.global_step, self.state.epoch)

    def _save_best(self) -> None:
        self.settle()
        self.writer.best(self.state_dict())

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
    def train_step(self, batches: list[tuple[Tensor, Tensor]]) -> None:
        """One optimizer step on this rank's micro-batches of the global batch (collective:
        every rank calls it); the state's step counters advance by one.

        The ranks agree whether the step is finite and whether one got a signal; what the
        host can act on by now (in host mode this step's flags, in device mode those of
        steps ``STEP_FLAG_LAG`` back) goes to :attr:`control`, which raises
        :class:`NonFiniteLossError` for a non-finite step under ``train.on_nonfinite=stop``.
        """
        if self.memory_format is torch.channels_last:
            batches = [b.with_x(b.x.contiguous(memory_format=torch.channels_last)) for b in map(as_batch, batches)]
        step = self.state.global_step
        ctx = StepContext(self.model, self.module, self.autocast, self.scaler,
                          lr=self.optimizer.param_groups[0]["lr"], step=step, first_block=self.noise.first_block())
        self.guard.begin_step()  # a skipped step must leave the state as it was
        parts = self.method.compute_gradients(ctx, batches)
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        # With fp16 the scaler skips inf gradients itself; the loss is still checked.
        bad = nonfinite_flag(parts["loss"], grads, check_grads=not self.scaler.is_enabled())
        flags = self.guard.exchange(step, bad, self.control.signalled())
        self.noise.step(grads, skipped(flags))  # before the update unscales, clips and rescales .grad
        self.control.observe(self.guard.settled(step))
        self.guard.apply(flags, self._update)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.window.add(parts, skipped(flags))
        self.state.step_in_epoch += 1
        self.state.global_step += 1

    def _update(self) -> None:
        """The optimizer step on the all-reduced gradient in ``.grad``."""
        self.scaler.unscale_(self.optimizer)
        if self.cfg.train.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.train.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.method.after_step(self.module)
        self.scaler.update()

    def settle(self) -> None:
        """Act on every step's flags not yet acted on (device mode: waits for their copies):
        a skipped step is counted, a non-finite one raises under ``on_nonfinite=stop``."""
        self.control.observe(self.guard.settled(self.state.global_step, wait=True))

    def _log_train(self) -> None:
        """Average the window's loss parts over steps and ranks (a collective), then log."""
        means = self.window.means(self.env.world_size, self.cfg.train.global_batch_size,
                                  also=self.noise.rank_values())
        if means is None:
            return
        values, ips = means
        values.update(self.noise.logged(values))
        if (note := self.noise.why_off()) is not None:
            self._say(note)
        values.update(self.method.values(self.module, final=False))
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
        self.window.reset()

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
                        outputs=self.method.eval_outputs, names=self.method.traits.outputs)

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
            s = self.state
            epoch = s.epoch + s.step_in_epoch / self.steps_per_epoch if s.step_in_epoch else s.epoch
            self.recorder.scalars("val", values, step=s.global_step, epoch=epoch)
            shown = ", ".join(f"{p} {r['acc'] * 100:.2f}%" for p, r in results.items())
            if disagreement:
                shown += f", disagreeing on {disagreement[0] * 100:.1f}%"
            self._say(f"epoch {self.state.epoch}/{self.cfg.train.epochs} val acc: {shown} (best {best.acc * 100:.2f}% "
                      f"path {best.path} epoch {best.epoch})")
        line = self.noise.record(self.state.global_step, self.state.global_step / self.steps_per_epoch,
                                 self.optimizer.param_groups[0]["lr"])
        if line is not None:
            self._say(line)
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
            self.guard.exchange(self.state.global_step, zero, self.control.signalled())
        self.control.observe(self.guard.settled(self.state.global_step, wait=fresh))
        return self.control.stop_reason() if more_to_do else None

    def fit(self) -> dict[str, Any]:
        """Train to the configured end (or an early stop); a finished run's summary, or
        ``{"status": "stopped", ...}``."""
        t = self.cfg.train
        s = self.state
        self.control.install()
        if self.env.is_main:
            self.recorder.event("start", world_size=self.env.world_size, device=str(self.device),
                                method=self.method.name, lr=self.lr, steps_per_epoch=self.steps_per_epoch,
                                train_size=self.data.train_size,  # follow-up grids match step counts from it
                                code=code_version())
            self._say(f"{self.method.name} | {self.cfg.model.arch} | world size {self.env.world_size} on "
                      f"{self.device.type} | global batch {t.global_batch_size} | peak lr {self.lr:.4g} | "
                      f"{self.steps_per_epoch} steps/epoch x {t.epochs} epochs")
        start = time.perf_counter()
        self.window.reset()
        stopped: Optional[str] = None
        while s.epoch < t.epochs and stopped is None:
            for batches in self.data.train_batches(
                s.epoch, t.global_batch_size, self.env.rank, self.env.world_size,
                t.accumulation_steps, start_step=s.step_in_epoch,
            ):
                self.train_step(batches)
                if s.global_step % self.cfg.log.every_steps == 0:
                    self._log_train()
                end_of_epoch = s.step_in_epoch == self.steps_per_epoch
                if t.eval_every_steps and s.global_step % t.eval_every_steps == 0 and not end_of_epoch:
                    self._validate()
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
                self.writer.requeue_marker(stopped, s.global_step)
            self._say(f"stopped ({stopped}) at global step {s.global_step}; last.pt holds the state, "
                      "launch the same command to resume")
            return {"status": "stopped", "reason": stopped, "global_step": s.global_step, "preempted": preempted}
        return finish_run(FinishedRun(
            cfg=self.cfg, env=self.env, layout=self.layout, method=self.method, module=self.module,
            device=self.device, mean=self.data.mean, std=self.data.std, input_shape=self.data.input_shape,
            state=s, recorder=self.recorder, evaluate=self.evaluate, wall_time_s=wall,
            images_per_sec=self.window.mean_throughput(), resumed_from=self.resumed_from,
            noise_scale=self.noise.summary(),
        ))

    def close(self) -> None:
        self.control.uninstall()
        self.recorder.close()
