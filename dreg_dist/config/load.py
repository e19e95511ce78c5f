"""YAML + ``dotted.key=value`` overrides -> a type-checked :class:`Config`.

Errors are :class:`ConfigError` with a single line that names the key and says
what to change; launchers print it and exit with status 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import types
import typing
from typing import Any, Callable, Iterable, Literal, Optional, Union

import yaml

from dreg_dist import methods
from dreg_dist.config.schema import NON_RESULT_KEYS, Config
from dreg_dist.dotted import flatten, parse_overrides
from dreg_dist.errors import ConfigError
from dreg_dist.io import atomic_write_text
from dreg_dist.records import compat
from dreg_dist.records.description import Description
from dreg_dist.records.record import make_record

METHOD_CONFIG_FIELD = "method_config"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool):
            # YAML 1.1 reads off/no as false and on/yes as true; give back the word.
            words = ("off", "no", "false") if value is False else ("on", "yes", "true")
            value = next((w for w in words if w in choices), value)
        if value in choices and not isinstance(value, bool):
            return value
        hint = _suggest(str(value), [str(a) for a in typing.get_args(tp)])
        raise ConfigError(
            f"config key '{key}' must be one of {_type_name(tp)}, got {value!r}{hint}"
        )
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        number: Optional[float] = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # PyYAML reads '1e-3' (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise bad
        if not math.isfinite(number):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"unsupported config field type {tp!r} for '{key}'")


def _build(cls: type, data: dict[str, Any], prefix: str, extra_names: Iterable[str] = ()) -> Any:
    if not isinstance(data, dict):
        where = f"section '{prefix.rstrip('.')}'" if prefix else "the config file"
        raise ConfigError(f"{where} must be a mapping of keys to values, got {data!r}")
    hints = {k: v for k, v in _hints(cls).items() if not (cls is Config and k == METHOD_CONFIG_FIELD)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in hints:
            close = difflib.get_close_matches(str(name), [*hints, *extra_names], n=1, cutoff=0.6)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{key}'{hint}")
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, f"{key}.")
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _warn(note: str) -> None:
    print(f"warning: {note}", file=sys.stderr)


def _pop_section(data: dict[str, Any], dotted: str) -> Any:
    """Remove and return ``data[a][b]`` for ``dotted`` = 'a.b' (None when absent)."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return None
    return node.pop(parts[-1], None) if isinstance(node, dict) else None


def config_from_dict(data: dict[str, Any], warn: Optional[Callable[[str], None]] = _warn) -> Config:
    """Build a Config from a nested dict, applying the same checks as YAML files.

    Method sections (``dreg:``, ``methods.<name>:``) are typed by their method's dataclass;
    every section given is checked, and the selected method's becomes ``method_config``.
    Keys of earlier releases are upgraded, with one line each to ``warn`` (None: silent).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"the config file must hold a mapping of sections, got {data!r}")
    data, notes = compat.upgrade_legacy(data)
    for note in notes if warn is not None else ():
        warn(note)
    owners = methods.sections()
    given = {section: _pop_section(data, section) for section in owners}
    leftover = data.get("methods")
    if isinstance(leftover, dict) and leftover:
        name = next(iter(leftover))
        choices = [s.split(".", 1)[1] for s in owners if s.startswith("methods.")]
        raise ConfigError(f"unknown config key 'methods.{name}': no method owns it{_suggest(str(name), choices)}")
    data.pop("methods", None)
    cfg = _build(Config, data, "", extra_names=[s.split(".")[0] for s in owners])
    if not isinstance(cfg.method, str):
        raise ConfigError(f"config key 'method' must be a method name, got {cfg.method!r}")
    selected = methods.method_class(cfg.method)
    built = {section: _build(owners[section].Config, raw if raw is not None else {}, f"{section}.")
             for section, raw in given.items() if raw is not None}
    cfg.method_config = built.get(methods.config_section(selected)) or selected.Config()
    return cfg


def config_from_record(data: dict[str, Any]) -> Config:
    """A saved config (run folder, checkpoint) as today's loader resolves it: keys of earlier
    releases upgraded and fields added since at the value the old run used
    (:func:`dreg_dist.records.compat.upgrade_config`), not at today's default. A config this
    release saved spells out every field, so nothing in it changes."""
    return config_from_dict(compat.upgrade_config(data), warn=None)


def method_settings(cfg: Config) -> "methods.RunSettings":
    """The run settings a method may read, from the run's config."""
    from dreg_dist.optim.schedule import peak_lr

    return methods.RunSettings(seed=cfg.train.seed, label_smoothing=cfg.train.label_smoothing,
                               peak_lr=peak_lr(cfg.optim, cfg.train.global_batch_size),
                               weight_decay=cfg.optim.weight_decay)


def build_method(cfg: Config) -> "methods.Method":
    """The configured method, its hyperparameters checked (ConfigError on a bad one)."""
    return methods.build_method(cfg.method, cfg.method_config, method_settings(cfg))


def changes_results(key: str) -> bool:
    """Whether dotted config ``key`` can change what a run computes (see NON_RESULT_KEYS)."""
    if key.startswith(NON_RESULT_KEYS):
        return False
    owner = methods.owner_of(key)
    return owner is None or key[len(methods.config_section(owner)) + 1:] not in methods.describe(owner).non_result_keys


def describe_method(cfg: Config) -> Description:
    """The description of the configured method (see :meth:`dreg_dist.methods.Method.describe`)."""
    return methods.describe(methods.method_class(cfg.method))


def run_record(cfg: Config) -> dict[str, Any]:
    """``record.json`` of a run of ``cfg`` (:func:`dreg_dist.records.make_record`)."""
    description = describe_method(cfg)
    dotted = tuple(f"{description.section}.{f}" for f in description.non_result_keys)
    return make_record(description, (*NON_RESULT_KEYS, *dotted))


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: Iterable[str] = (),
    warn: Optional[Callable[[str], None]] = _warn,
) -> Config:
    """Read ``path`` (YAML), apply overrides, and return the checked Config."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file '{path}' not found") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file '{path}' is not valid YAML{where}") from None
        data = loaded or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections")
    data = _merge(data, parse_overrides(overrides))
    return config_from_dict(data, warn=warn)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as nested plain data, the method's hyperparameters under its section."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name != METHOD_CONFIG_FIELD:
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
            continue
        hp = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else {}
        if hp:
            *parents, leaf = methods.config_section(methods.method_class(cfg.method)).split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = hp
    return out


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML (what the run actually used)."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
