"""Pre-flight: every check that needs more than the config, before any worker starts.

``validate_config`` decides what the numbers alone can; this module adds what needs the
components: the data is on disk, the architecture exists, the method accepts its
hyperparameters and can modify this model (the model is built and traced on CPU for that,
well under a second for the CIFAR presets), and the method can run with the chosen
training options. Each problem is one :class:`ConfigError` line that says what to change.
"""

from __future__ import annotations

from dreg_dist.config import Config, ConfigError, build_method
from dreg_dist.config.validate import validate_config
from dreg_dist.data import DataError, check_data_available
from dreg_dist.methods import Method
from dreg_dist.models import UnknownModelError, build_model


def check_method_options(cfg: Config, method: Method) -> None:
    """Training options a method cannot be combined with."""
    if cfg.train.grad_compression != "none" and method.traits.replaces_allreduce:
        raise ConfigError(
            f"train.grad_compression={cfg.train.grad_compression} and method {method.name} can't be combined: "
            "both replace DDP's gradient all-reduce with a communication hook; set train.grad_compression=none "
            "or change the method's settings so that it keeps the plain all-reduce"
        )
    if cfg.train.compile and not method.traits.compiles:
        raise ConfigError(f"method={method.name} needs something torch.compile does not support (such as double "
                          "backprop): set train.compile=false")


def preflight(cfg: Config, world_size: int) -> None:
    """Raise :class:`ConfigError` for the first problem found."""
    validate_config(cfg, world_size)
    try:
        check_data_available(cfg.data)
    except DataError as err:
        raise ConfigError(str(err)) from None
    method = build_method(cfg)
    check_method_options(cfg, method)
    try:
        model = build_model(cfg.model.arch, cfg.model.num_classes)
    except UnknownModelError as err:
        raise ConfigError(f"model.arch: {err}") from None
    method.prepare_model(model)


__all__ = ["check_method_options", "preflight"]
