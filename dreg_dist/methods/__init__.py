"""Training methods selected by the ``method`` config key (one module each)."""

from __future__ import annotations

from typing import Callable

from dreg_dist.config.load import ConfigError
from dreg_dist.config.schema import Config
from dreg_dist.methods.base import Method, StepContext


def _dreg(cfg: Config) -> Method:
    from dreg_dist.dreg.method import DReg

    return DReg(cfg)


def _vanilla(cfg: Config) -> Method:
    from dreg_dist.methods.vanilla import Vanilla

    return Vanilla(cfg)


def _gradnorm(cfg: Config) -> Method:
    from dreg_dist.methods.gradnorm import GradNorm

    return GradNorm(cfg)


def _fisher(cfg: Config) -> Method:
    from dreg_dist.methods.fisher import Fisher

    return Fisher(cfg)


def _sam(cfg: Config) -> Method:
    from dreg_dist.methods.sam import SAM

    return SAM(cfg)


def _extragradient(cfg: Config) -> Method:
    from dreg_dist.methods.extragradient import Extragradient

    return Extragradient(cfg)


def _gradientmix(cfg: Config) -> Method:
    from dreg_dist.methods.gradientmix import GradientMix

    return GradientMix(cfg)


METHODS: dict[str, Callable[[Config], Method]] = {
    "vanilla": _vanilla,
    "dreg": _dreg,
    "gradnorm": _gradnorm,
    "fisher": _fisher,
    "sam": _sam,
    "extragradient": _extragradient,
    "gradientmix": _gradientmix,
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
    return METHODS[name](cfg)


__all__ = ["METHODS", "Method", "StepContext", "build_method", "resolve_method_name"]
