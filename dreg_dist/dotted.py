"""Dotted config keys (``train.epochs``) over nested dicts: overrides in, flat views out.

Torch-free and free of the config schema, so that the sweep and the report, which only read
records, use the same spelling of keys as the loader (:mod:`dreg_dist.config`).
"""

from __future__ import annotations

from typing import Any, Iterable

import yaml

from dreg_dist.errors import ConfigError


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["train.epochs=3", "dreg.layer=R2"]`` -> nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        set_dotted(tree, key, yaml.safe_load(raw) if raw.strip() else "")
    return tree


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {"section.key": value} (how overrides and diffs name keys)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


__all__ = ["flatten", "parse_overrides", "set_dotted"]
