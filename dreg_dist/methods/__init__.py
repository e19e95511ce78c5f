"""Training methods, one folder each, selected by the ``method`` config key.

The registry is data: a method name -> ``"module:Class"`` of a :class:`Method` subclass.
Built-in methods are listed in :data:`BUILTIN`; a method from another package registers
through the ``dreg_dist.methods`` entry-point group (``toy = my_pkg.toy:Toy`` in its
``pyproject.toml``), or in-process with :func:`register_method`. Everything else the
service knows of a method comes from the class (its protocol, :class:`Method`, with its
:class:`Traits`) and its description (``description.yaml`` beside it: names, report), so adding a
method is one folder and one registry line. Configs and records of earlier releases are
upgraded by :mod:`dreg_dist.records.compat`, not here.
"""

from __future__ import annotations

import difflib
import importlib
from importlib import metadata
from typing import Any, Optional

from dreg_dist.errors import ConfigError
from dreg_dist.methods.base import DESCRIPTION_FILE, Method, NoConfig, RunSettings, Signal, StepContext, retired_member
from dreg_dist.methods.naming import config_key, config_section, describe, hparams
from dreg_dist.methods.outputs import choose_output, export_output, with_export_meta
from dreg_dist.methods.traits import Traits
from dreg_dist.records import BASELINE, Description

BUILTIN: dict[str, str] = {
    "vanilla": "dreg_dist.methods.vanilla:Vanilla",
    "dreg": "dreg_dist.methods.dreg:DReg",
    "gradnorm": "dreg_dist.methods.gradnorm:GradNorm",
    "fisher": "dreg_dist.methods.fisher:Fisher",
    "sam": "dreg_dist.methods.sam:SAM",
    "extragradient": "dreg_dist.methods.extragradient:Extragradient",
    "gradientmix": "dreg_dist.methods.gradientmix:GradientMix",
}

DEFAULT = "dreg"
"""The method of a config that names none."""
ENTRY_POINT_GROUP = "dreg_dist.methods"

_registered: dict[str, str] = {}
_classes: dict[str, type[Method]] = {}


def register_method(name: str, target: str) -> None:
    """Register ``name`` -> ``"module:Class"`` in this process (entry points reach subprocesses)."""
    _registered[name] = target
    _classes.pop(name, None)


def registry() -> dict[str, str]:
    """Every known method: built-ins, then entry points, then in-process registrations."""
    out = dict(BUILTIN)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        out.setdefault(ep.name, ep.value)
    out.update(_registered)
    return out


def method_class(name: str) -> type[Method]:
    """The Method subclass registered as ``name`` (ConfigError with a suggestion if unknown)."""
    if name in _classes:
        return _classes[name]
    known = registry()
    if name not in known:
        close = difflib.get_close_matches(str(name), list(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"config key 'method' must be one of {', '.join(known)}; got '{name}'{hint}")
    module, _, attr = known[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"method '{name}' ({known[name]}) is not a dreg_dist.methods.Method subclass")
    if cls.name != name:
        raise ConfigError(f"method registered as '{name}' ({known[name]}) calls itself '{cls.name}'")
    moved = [a for a in Description.WRITTEN if hasattr(cls, a)]
    if moved:  # a method written for the releases before descriptions: say so rather than drop its names
        raise ConfigError(f"method '{name}' ({known[name]}) sets '{moved[0]}' on its class: that is part of its "
                          f"description now, data in {DESCRIPTION_FILE} beside it (or the class attribute "
                          f"'description = {{\"{moved[0]}\": ...}}')")
    retired = retired_member(cls)
    if retired:  # a method written for the protocol before Traits: one line with what replaces the member
        raise ConfigError(retired)
    _classes[name] = cls
    return cls


def sections() -> dict[str, type[Method]]:
    """Config section (dotted) -> the method that owns it, for every registered method."""
    return {config_section(method_class(name)): method_class(name) for name in registry()}


def owner_of(key: str) -> Optional[type[Method]]:
    """The method whose section holds dotted config ``key``; None for keys of the run."""
    for section, cls in sections().items():
        if key.startswith(section + "."):
            return cls
    return None


def build_method(name: str, hp: Any = None, settings: RunSettings = RunSettings()) -> Method:
    return method_class(name)(hp, settings)


__all__ = [
    "BASELINE",
    "BUILTIN",
    "DEFAULT",
    "Method",
    "NoConfig",
    "RunSettings",
    "Signal",
    "StepContext",
    "Traits",
    "build_method",
    "choose_output",
    "config_key",
    "config_section",
    "describe",
    "export_output",
    "hparams",
    "method_class",
    "owner_of",
    "register_method",
    "registry",
    "sections",
    "with_export_meta",
]
