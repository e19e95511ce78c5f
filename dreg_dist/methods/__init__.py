"""Training methods selected by the ``method`` config key (one module each)."""

from __future__ import annotations

import importlib

from dreg_dist.config.load import ConfigError
from dreg_dist.config.schema import Config
from dreg_dist.methods.base import Method, StepContext


# name -> "module:Class"; imported on use, so selecting one method never imports the others.
METHODS: dict[str, str] = {
    "vanilla": "dreg_dist.methods.vanilla:Vanilla",
    "dreg": "dreg_dist.dreg.method:DReg",
    "gradnorm": "dreg_dist.methods.gradnorm:GradNorm",
    "fisher": "dreg_dist.methods.fisher:Fisher",
    "sam": "dreg_dist.methods.sam:SAM",
    "extragradient": "dreg_dist.methods.extragradient:Extragradient",
    "gradientmix": "dreg_dist.methods.gradientmix:GradientMix",
}


def resolve_method_name(cfg: Config) -> str:
    """``auto`` means dreg when ``dreg.enabled``, vanilla otherwise."""
    if cfg.method == "auto":
        return "dreg" if cfg.dreg.enabled else "vanilla"
    return cfg.method


def build_method(cfg: Config) -> Method:
    name = resolve_method_name(cfg)
    if name not in METHODS:
        import difflib

        close = difflib.get_close_matches(name, METHODS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"config key 'method' must be one of auto, {', '.join(METHODS)}; got '{name}'{hint}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)(cfg)


__all__ = ["METHODS", "Method", "StepContext", "build_method", "resolve_method_name"]
