"""Run configuration: schema (dataclasses), YAML loading, and cross-field validation."""

from dreg_dist.config.load import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    flatten,
    load_config,
    parse_overrides,
    save_config,
)
from dreg_dist.config.schema import (
    MethodsConfig,
    CheckpointConfig,
    Config,
    DataConfig,
    DRegConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)

__all__ = [
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DRegConfig",
    "LogConfig",
    "MethodsConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "flatten",
    "load_config",
    "parse_overrides",
    "save_config",
]
