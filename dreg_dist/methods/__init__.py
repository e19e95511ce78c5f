"""Training methods, one folder each, selected by the ``method`` config key.

The registry is data: a method name -> ``"module:Class"`` of a :class:`Method` subclass.
Built-in methods are listed in :data:`BUILTIN`; a method from another package registers
through the ``dreg_dist.methods`` entry-point group (``toy = my_pkg.toy:Toy`` in its
``pyproject.toml``), or in-process with :func:`register_method`. Everything else the
service knows of a method (its config section and keys, its outputs, logging, export,
report) comes from the class, so adding a method is one folder and one registry line.
"""

from __future__ import annotations

import difflib
import importlib
from importlib import metadata
from typing import Any, Optional

from dreg_dist.errors import ConfigError
from dreg_dist.methods.base import Method, NoConfig, RunSettings, Signal, StepContext

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
BASELINE = "vanilla"
"""What the report compares every other method against."""
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
    _classes[name] = cls
    return cls


def sections() -> dict[str, type[Method]]:
    """Config section (dotted) -> the method that owns it, for every registered method."""
    return {method_class(name).config_section(): method_class(name) for name in registry()}


def owner_of(key: str) -> Optional[type[Method]]:
    """The method whose section holds dotted config ``key``; None for keys of the run."""
    for section, cls in sections().items():
        if key.startswith(section + "."):
            return cls
    return None


def build_method(name: str, hp: Any = None, settings: RunSettings = RunSettings()) -> Method:
    return method_class(name)(hp, settings)


def upgrade_legacy(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A nested config dict of an earlier release -> today's keys, plus one note per change.

    Earlier releases chose DReg with ``method: auto`` and ``dreg.enabled`` and kept every
    method's hyperparameters as flat ``methods.<name>_<key>`` keys; both still load.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    notes: list[str] = []
    dreg_section = out.get("dreg")
    enabled = dreg_section.pop("enabled", None) if isinstance(dreg_section, dict) else None
    method = out.get("method")
    if method in (None, "auto") and enabled is not None:
        out["method"] = "dreg" if enabled else "vanilla"
        notes.append(f"'dreg.enabled: {str(bool(enabled)).lower()}' is deprecated: write 'method: {out['method']}'")
    elif method == "auto":
        out["method"] = DEFAULT
        notes.append(f"'method: auto' is deprecated: write 'method: {DEFAULT}'")
    elif enabled is not None:
        notes.append(f"'dreg.enabled' is deprecated and ignored when 'method' is set (method: {method})")
    flat_methods = out.get("methods")
    if isinstance(flat_methods, dict):
        moved: set[str] = set()
        for name in registry():
            cls = method_class(name)
            for old, field in cls.legacy_keys.items():
                group, _, leaf = old.partition(".")
                if group != "methods" or leaf not in flat_methods or isinstance(flat_methods[leaf], dict):
                    continue
                _set_path(out, f"{cls.config_section()}.{field}", flat_methods[leaf])
                moved.add(leaf)
                notes.append(f"config key '{old}' is deprecated: write '{cls.config_section()}.{field}'")
        for leaf in moved:  # after the loop: one old key may feed several methods
            del flat_methods[leaf]
    return out, notes


def upgrade_record(data: dict[str, Any]) -> dict[str, Any]:
    """A run record's saved config (nested) with legacy keys upgraded and every field its method
    added since at the value the old run used (:attr:`Method.record_defaults`).

    A record of this release spells out every field, so only older records change.
    """
    out, _ = upgrade_legacy(data)
    try:
        cls = method_class(str(out.get("method", DEFAULT)))
    except ConfigError:
        return out
    for field, value in cls.record_defaults.items():
        _set_path(out, f"{cls.config_section()}.{field}", value)
    return out


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node.setdefault(parts[-1], value)


__all__ = [
    "BASELINE",
    "BUILTIN",
    "DEFAULT",
    "Method",
    "NoConfig",
    "RunSettings",
    "Signal",
    "StepContext",
    "build_method",
    "method_class",
    "owner_of",
    "register_method",
    "registry",
    "sections",
    "upgrade_legacy",
    "upgrade_record",
]
