"""Cross-field checks run before any process group or worker state exists.

Everything that can be decided from the config alone fails here with one line:
numbers out of range, a global batch that does not split over the workers, missing
data, an unknown architecture or method, and a DReg layer the model does not have
(the model is built and traced on CPU for that, which takes well under a second for
the CIFAR presets).
"""

from __future__ import annotations

from dreg_dist.config.load import ConfigError
from dreg_dist.config.schema import Config


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config key '{key}' must be {bound}, got {value}")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_grad_compression(cfg: Config) -> None:
    """``train.grad_compression`` replaces DDP's all-reduce with a compress hook; a method that
    registers its own hook (gradientmix with strength > 0) cannot be combined with it."""
    if cfg.train.grad_compression == "none":
        return
    from dreg_dist.methods import resolve_method_name

    if resolve_method_name(cfg) == "gradientmix" and cfg.methods.gradientmix_strength > 0:
        raise ConfigError(
            f"train.grad_compression={cfg.train.grad_compression} and method gradientmix can't be combined: "
            "both replace DDP's gradient all-reduce with a communication hook; set "
            "train.grad_compression=none (or methods.gradientmix_strength=0)"
        )


def validate_config(cfg: Config, world_size: int) -> None:
    """Raise :class:`ConfigError` for the first problem found."""
    t, o, d = cfg.train, cfg.optim, cfg.dreg
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
    if d.lam < 0:
        raise ConfigError(f"config key 'dreg.lam' must be >= 0, got {d.lam} (the loss subtracts lambda * contrast)")
    if d.init_scale <= 0:
        raise ConfigError(f"config key 'dreg.init_scale' must be > 0, got {d.init_scale}; try 0.01")
    on_cpu = t.device == "cpu" or (t.device == "auto" and not _cuda_available())
    if t.sync_bn and world_size > 1 and on_cpu:
        raise ConfigError(
            "train.sync_bn needs CUDA (PyTorch's SyncBatchNorm is GPU-only); on CPU set "
            "train.sync_bn=false or use a BN-free model such as cnn_small_gn"
        )
    if t.amp == "fp16" and on_cpu:
        raise ConfigError("train.amp=fp16 needs CUDA; use train.amp=bf16 or none on CPU")

    from dreg_dist.data import DataError, check_data_available
    from dreg_dist.methods import build_method, resolve_method_name
    from dreg_dist.models import UnknownModelError, build_model

    try:
        check_data_available(cfg.data)
    except DataError as err:
        raise ConfigError(str(err)) from None
    method = build_method(cfg)
    check_grad_compression(cfg)
    try:
        model = build_model(cfg.model.arch, cfg.model.num_classes)
    except UnknownModelError as err:
        raise ConfigError(f"model.arch: {err}") from None
    if resolve_method_name(cfg) == "dreg":
        from dreg_dist.dreg import DRegLayerError, UnsupportedModelError

        try:
            method.prepare_model(model)
        except (DRegLayerError, UnsupportedModelError) as err:
            raise ConfigError(str(err)) from None
