"""What the service derives from a method's class: config section and keys, description, hparams.

Functions, not members of :class:`~dreg_dist.methods.base.Method`: they are the same for every
method (a method declares ``name``, ``Config``, ``description`` and ``traits``; these read them).
Each takes a method class or an instance.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Union

import yaml

from dreg_dist.methods.base import DESCRIPTION_FILE, Method
from dreg_dist.records.description import Description

MethodOrClass = Union[Method, type[Method]]


def _cls(method: MethodOrClass) -> type[Method]:
    return method if isinstance(method, type) else type(method)


def config_section(method: MethodOrClass) -> str:
    """The dotted config section of the method's ``Config``: ``traits.section`` or ``methods.<name>``."""
    cls = _cls(method)
    return cls.traits.section or f"methods.{cls.name}"


def config_key(method: MethodOrClass, field: str) -> str:
    """The dotted config key of one of the method's fields (for error messages)."""
    return f"{config_section(method)}.{field}"


def describe(method: MethodOrClass) -> Description:
    """The description, completed with what the class declares (section, outputs, defaults)."""
    cls = _cls(method)
    data = cls.description
    where = f"description of method {cls.name}"
    if data is None:
        path = Path(inspect.getfile(cls)).parent / DESCRIPTION_FILE
        where = str(path)
        data = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    written = Description.from_dict(data, name=cls.name, where=where)
    return dataclasses.replace(written, section=config_section(cls), outputs=tuple(cls.traits.outputs),
                               defaults=dataclasses.asdict(cls.Config()))


def hparams(method: Method) -> dict[str, Any]:
    """The method's hyperparameters by dotted key (TensorBoard's hparams view)."""
    return {config_key(method, f.name): getattr(method.hp, f.name) for f in dataclasses.fields(method.hp)}


__all__ = ["config_key", "config_section", "describe", "hparams"]
