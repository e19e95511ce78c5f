"""Checks of the config alone, run before any process group or worker state exists.

Everything that can be decided from the numbers fails here with one line: values out of
range, a global batch that does not split over the workers, options the device cannot run.
Checks that need components (data on disk, the model, the method's surgery) are in
``dreg_dist.train.preflight``, which calls this first.
"""

from __future__ import annotations

from dreg_dist.config.schema import Config
from dreg_dist.errors import ConfigError


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0  # written so that NaN fails too
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config key '{key}' must be {bound}, got {value}")


def on_cpu(cfg: Config) -> bool:
    import torch

    return cfg.train.device == "cpu" or (cfg.train.device == "auto" and not torch.cuda.is_available())


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
    if t.stop_after_steps is not None:
        _positive(t.stop_after_steps, "train.stop_after_steps")
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"config key 'optim.momentum' must be in [0, 1), got {o.momentum}")
    if not 0 <= t.label_smoothing < 1:
        raise ConfigError(f"config key 'train.label_smoothing' must be in [0, 1), got {t.label_smoothing}")
    if len(o.betas) != 2:
        raise ConfigError(f"config key 'optim.betas' must hold two numbers, got {o.betas}")
    if cfg.data.val_size < 1:
        raise ConfigError(
            "config key 'data.val_size' must be > 0: the best epoch and path are chosen on the "
            "validation split (the test set is never used for selection)"
        )
    per_step = world_size * t.accumulation_steps
    if t.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size {t.global_batch_size} is not divisible by world size {world_size} x "
            f"train.accumulation_steps {t.accumulation_steps}: use a multiple of {per_step}"
        )
    cpu = on_cpu(cfg)
    if t.sync_bn and world_size > 1 and cpu:
        raise ConfigError(
            "train.sync_bn needs CUDA (PyTorch's SyncBatchNorm is GPU-only); on CPU set "
            "train.sync_bn=false or use a BN-free model such as cnn_small_gn"
        )
    if t.amp == "fp16" and cpu:
        raise ConfigError("train.amp=fp16 needs CUDA; use train.amp=bf16 or none on CPU")
