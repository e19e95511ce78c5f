"""Run records and configs of earlier releases, read as the release that wrote them meant them.

The one place that knows the past. A run folder without ``record.json`` (schema 1, every
release before it) holds only ``config.yaml``, ``summary.json`` and ``metrics.jsonl``; this
module reads it with a frozen copy (``schema1.json``) of what those releases knew: each
built-in method's description and full default config, the keys earlier releases used
(``method: auto``, ``dreg.enabled``, flat ``methods.<name>_<key>``), and the value a field
added since means in an old record (SAM's ``micro_batch_size`` was the whole local batch).
It needs no torch and no method code, so a method renamed or removed since still reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from dreg_dist.records.description import Description

_FROZEN: dict[str, Any] = json.loads((Path(__file__).with_name("schema1.json")).read_text())

DEFAULT_METHOD: str = _FROZEN["default_method"]
"""The method of a config that names none (in every release so far)."""
LEGACY_KEYS: dict[str, list[str]] = _FROZEN["legacy_keys"]
"""Flat keys of earlier releases -> the dotted keys they became."""
NON_RESULT_KEYS: tuple[str, ...] = tuple(_FROZEN["non_result_keys"])
"""Keys (a trailing dot: sections) that changed no result, for records that do not list them."""


def _set_default(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node.setdefault(parts[-1], value)


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
        out["method"] = DEFAULT_METHOD
        notes.append(f"'method: auto' is deprecated: write 'method: {DEFAULT_METHOD}'")
    elif enabled is not None:
        notes.append(f"'dreg.enabled' is deprecated and ignored when 'method' is set (method: {method})")
    flat = out.get("methods")
    if isinstance(flat, dict):
        for old, news in LEGACY_KEYS.items():
            leaf = old.split(".", 1)[1]
            if leaf not in flat or isinstance(flat[leaf], dict):
                continue
            for new in news:
                _set_default(out, new, flat[leaf])
                notes.append(f"config key '{old}' is deprecated: write '{new}'")
            del flat[leaf]
    return out, notes


def upgrade_config(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config of an earlier release (a schema-1 run record or checkpoint) with legacy
    keys upgraded and every field its method added since at the value the old run used."""
    out, _ = upgrade_legacy(data)
    frozen = _FROZEN["methods"].get(str(out.get("method", DEFAULT_METHOD)))
    if frozen is not None:
        section = frozen["description"]["section"]
        for field, value in frozen["record_defaults"].items():
            _set_default(out, f"{section}.{field}", value)
    return out


def description(method: str) -> Optional[Description]:
    """A built-in method's description as the releases before run records had it."""
    frozen = _FROZEN["methods"].get(method)
    return Description.from_dict(frozen["description"], where=f"schema1.json: {method}") if frozen else None


def resolve_config(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 ``config.yaml`` resolved as the loader of its release did: keys upgraded,
    every key it lacks at that release's default, other methods' sections dropped. As saved
    (keys upgraded) when it holds a key that release did not know, or names an unknown method."""
    upgraded = upgrade_config(data)
    frozen = _FROZEN["methods"].get(str(upgraded.get("method", DEFAULT_METHOD)))
    if frozen is None:
        return upgraded
    given = {k: (dict(v) if isinstance(v, dict) else v) for k, v in upgraded.items()}
    for name, other in _FROZEN["methods"].items():  # a section of a method the run did not use
        if other is frozen:
            continue
        parts = other["description"]["section"].split(".")
        node = given
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    if given.get("methods") == {} and "methods" not in frozen["config"]:
        given.pop("methods")
    merged = _overlay(frozen["config"], given)
    return merged if merged is not None else upgraded


def _overlay(base: dict[str, Any], given: dict[str, Any]) -> Optional[dict[str, Any]]:
    """``base`` (in its key order) with ``given``'s values; None when ``given`` has a key ``base`` lacks."""
    if any(k not in base for k in given):
        return None
    out: dict[str, Any] = {}
    for key, default in base.items():
        if key not in given:
            out[key] = default
        elif isinstance(default, dict):
            value = given[key] if given[key] is not None else {}
            if not isinstance(value, dict):
                return None
            sub = _overlay(default, value)
            if sub is None:
                return None
            out[key] = sub
        else:
            out[key] = _like(given[key], default)
    return out


def _like(value: Any, default: Any) -> Any:
    """Numbers as the loader typed them: an int or a numeric string in a float field is a float."""
    if isinstance(default, float) and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
    return value


__all__ = ["DEFAULT_METHOD", "LEGACY_KEYS", "NON_RESULT_KEYS", "description", "resolve_config", "upgrade_config",
           "upgrade_legacy"]
