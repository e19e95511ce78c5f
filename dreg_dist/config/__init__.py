"""Run configuration: schema (dataclasses), YAML loading, and single-section validation."""

from dreg_dist.config.load import (
    build_method,
    changes_results,
    config_from_dict,
    config_from_record,
    config_to_dict,
    describe_method,
    flatten,
    load_config,
    method_settings,
    parse_overrides,
    run_record,
    save_config,
)
from dreg_dist.config.schema import (
    NON_RESULT_KEYS,
    CheckpointConfig,
    Config,
    DataConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from dreg_dist.errors import ConfigError

__all__ = [
    "NON_RESULT_KEYS",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "LogConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "build_method",
    "changes_results",
    "config_from_dict",
    "config_from_record",
    "config_to_dict",
    "describe_method",
    "flatten",
    "load_config",
    "method_settings",
    "parse_overrides",
    "run_record",
    "save_config",
]
