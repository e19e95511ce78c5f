"""Checks of the config alone, run before any process group or worker state exists.

Everything that can be decided from the numbers fails here with one line: values out of
range, a global batch that does not split over the workers, options the device cannot run.
Checks that need components (data on disk, the model, the method's surgery) are in
``dreg_dist.train.preflight``, which calls this first.
"""

from __future__ import annotations

from dreg_dist.config.schema import Config, TrainConfig
from dreg_dist.errors import ConfigError


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0  # written so that NaN fails too
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config key '{key}' must be {bound}, got {value}")


def on_cpu(cfg: Config) -> bool:
    import torch

    return cfg.train.device == "cpu" or (cfg.train.device == "auto" and not torch.cuda.is_available())


def worker_batch_layout(t: TrainConfig, world_size: int) -> tuple[int, int]:
    """(accumulation steps, images per worker per forward) of ``world_size`` workers.

    With ``train.micro_batch_size`` the accumulation steps are derived as
    B / (K x micro_batch_size); otherwise the micro-batch is B / (K x accumulation_steps).
    Assumes a layout :func:`validate_config` accepted.
    """
    if t.micro_batch_size is not None:
        return max(t.global_batch_size // (world_size * t.micro_batch_size), 1), t.micro_batch_size
    return t.accumulation_steps, t.global_batch_size // (world_size * t.accumulation_steps)


def _divisors(n: int, limit: int = 12) -> str:
    found = [d for d in range(1, n + 1) if n % d == 0]
    shown = ", ".join(map(str, found[:limit]))
    return shown + (", ..." if len(found) > limit else "")


def _check_batch_layout(t: TrainConfig, world_size: int) -> None:
    """The global batch splits into equal micro-batches over the workers, and batch-norm groups
    into the micro-batches."""
    batch = t.global_batch_size
    if t.micro_batch_size is None:
        per_step = world_size * t.accumulation_steps
        if batch % per_step:
            raise ConfigError(
                f"train.global_batch_size {batch} is not divisible by world size {world_size} x "
                f"train.accumulation_steps {t.accumulation_steps}: use a multiple of {per_step}, or set "
                "train.micro_batch_size to derive the accumulation steps from the world size"
            )
    else:
        micro = t.micro_batch_size
        _positive(micro, "train.micro_batch_size")
        if t.accumulation_steps != 1:
            raise ConfigError(
                f"train.accumulation_steps={t.accumulation_steps} and train.micro_batch_size={micro} are both set: "
                "with train.micro_batch_size the accumulation steps are derived as global batch / (workers x "
                "micro-batch); set train.accumulation_steps=1 or train.micro_batch_size=null"
            )
        if batch % micro:
            raise ConfigError(
                f"train.global_batch_size {batch} is not divisible by train.micro_batch_size {micro}: use a "
                f"micro-batch size that divides it ({_divisors(batch)})"
            )
        parts = batch // micro
        if parts % world_size:
            raise ConfigError(
                f"train.global_batch_size {batch} / train.micro_batch_size {micro} = {parts} micro-batches per step "
                f"can't be shared equally by {world_size} workers: run on a number of workers that divides {parts} "
                f"({_divisors(parts)}), or change train.micro_batch_size"
            )
    group = t.bn_group_size
    if group is None:
        return
    _positive(group, "train.bn_group_size")
    if t.sync_bn:
        raise ConfigError(
            "train.bn_group_size and train.sync_bn can't be combined: ghost batch norm takes statistics over "
            "fixed groups of the global batch, SyncBatchNorm over each global micro-batch; set one of them"
        )
    accumulation, micro = worker_batch_layout(t, world_size)
    if micro % group:
        fits = max(d for d in range(1, min(group, micro) + 1) if micro % d == 0)
        per_worker = batch // world_size
        if t.micro_batch_size is not None:
            how, change = f"train.micro_batch_size {micro}", f"set train.micro_batch_size to a multiple of {group}"
        else:
            workers = f"{world_size} worker{'s' if world_size != 1 else ''}"
            steps = f"{accumulation} accumulation step{'s' if accumulation != 1 else ''}"
            how = f"train.global_batch_size {batch} / ({workers} x {steps})"
            if per_worker % group == 0:
                reset = "train.accumulation_steps=1 and " if t.accumulation_steps != 1 else ""
                change = f"set {reset}train.micro_batch_size to a multiple of {group} that divides {per_worker}"
            else:
                change = f"use a global batch that is a multiple of {world_size * group}"
        raise ConfigError(
            f"train.bn_group_size {group} does not divide each worker's micro-batch of {micro} images ({how}): "
            f"use a group size that divides {micro} (e.g. {fits}), or {change}"
        )


def validate_config(cfg: Config, world_size: int) -> None:
    """Raise :class:`ConfigError` for the first problem found."""
    t, o = cfg.train, cfg.optim
    _positive(t.epochs, "train.epochs")
    _positive(t.global_batch_size, "train.global_batch_size")
    _positive(t.accumulation_steps, "train.accumulation_steps")
    _positive(t.eval_every_epochs, "train.eval_every_epochs")
    _positive(t.eval_batch_size, "train.eval_batch_size")
    _positive(cfg.log.every_steps, "log.every_steps")
    _positive(cfg.checkpoint.keep_last, "checkpoint.keep_last")
    _positive(o.lr, "optim.lr")
    _positive(o.base_batch_size, "optim.base_batch_size")
    _positive(o.weight_decay, "optim.weight_decay", allow_zero=True)
    _positive(cfg.model.num_classes, "model.num_classes")
    if cfg.checkpoint.every_steps is not None:
        _positive(cfg.checkpoint.every_steps, "checkpoint.every_steps")
    if t.eval_every_steps is not None:
        _positive(t.eval_every_steps, "train.eval_every_steps")
    if t.stop_after_steps is not None:
        _positive(t.stop_after_steps, "train.stop_after_steps")
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"config key 'optim.momentum' must be in [0, 1), got {o.momentum}")
    if not 0 < cfg.log.noise_scale_ema < 1:
        raise ConfigError(f"config key 'log.noise_scale_ema' must be in (0, 1), got {cfg.log.noise_scale_ema}; "
                          "try 0.95 (closer to 1 = smoother)")
    if not 0 <= t.label_smoothing < 1:
        raise ConfigError(f"config key 'train.label_smoothing' must be in [0, 1), got {t.label_smoothing}")
    if len(o.betas) != 2:
        raise ConfigError(f"config key 'optim.betas' must hold two numbers, got {o.betas}")
    if cfg.data.val_size < 1:
        raise ConfigError(
            "config key 'data.val_size' must be > 0: the best epoch and path are chosen on the "
            "validation split (the test set is never used for selection)"
        )
    _check_batch_layout(t, world_size)
    cpu = on_cpu(cfg)
    if t.sync_bn and world_size > 1 and cpu:
        raise ConfigError(
            "train.sync_bn needs CUDA (PyTorch's SyncBatchNorm is GPU-only); on CPU set "
            "train.sync_bn=false or use a BN-free model such as cnn_small_gn"
        )
    if t.amp == "fp16" and cpu:
        raise ConfigError("train.amp=fp16 needs CUDA; use train.amp=bf16 or none on CPU")
