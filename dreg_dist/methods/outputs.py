"""Which of a method's outputs the export keeps, and writing it: the same for every method.

A method says what it evaluates (``traits.outputs``, ``eval_outputs``) and which ordinary model
holds an output (``export_model``); :func:`choose_output` picks the output (the best by
validation accuracy, ties to the first listed) and :func:`export_output` writes the model with
:func:`dreg_dist.dreg.export.write_plain_export`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

from torch import nn

from dreg_dist.dreg.export import write_plain_export
from dreg_dist.methods.base import Method

EXPORT_META = "export_meta"
"""Attribute of the model ``export_model`` returns: a dict of values for the export's meta.json."""


def with_export_meta(model: nn.Module, **meta: Any) -> nn.Module:
    """``model`` carrying ``meta`` for the export's meta.json (a key meta.json has already, such as
    ``dreg_layer``, keeps its place; new keys follow the standard ones)."""
    setattr(model, EXPORT_META, dict(meta))
    return model


def _either(names: tuple[str, ...]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def choose_output(method: Method, val_acc: Mapping[str, float], requested: str = "auto") -> Optional[str]:
    """Which output the export keeps: ``requested`` (one of ``traits.outputs``), or for ``auto``
    the best by ``val_acc`` (output -> validation accuracy; ties go to the first listed). None for
    a method with a single output."""
    outputs = tuple(method.traits.outputs)
    if len(outputs) == 1:
        if requested not in ("auto", outputs[0]):
            raise ValueError(f"method {method.name} has one output ({outputs[0]!r}); got path {requested!r}")
        return None
    if requested in outputs:
        return requested
    if requested != "auto":
        raise ValueError(f"path must be {_either(('auto',) + outputs)}, got {requested!r}")
    missing = [o for o in outputs if o not in val_acc]
    if missing:
        which = "both paths" if len(outputs) == 2 else f"all {len(outputs)} paths"
        raise ValueError(f"path 'auto' needs the validation accuracy of {which} (missing {missing}); "
                         f"evaluate first or pass path={_either(outputs)}")
    return max(outputs, key=lambda o: (val_acc[o], -outputs.index(o)))


def export_output(
    method: Method,
    module: nn.Module,
    out_dir: Union[str, os.PathLike[str]],
    *,
    val_acc: Mapping[str, float],
    output: Optional[str],
    **meta: Any,
) -> dict[str, Any]:
    """Write the inference export of ``output`` (from :func:`choose_output`) and return its meta.
    ``meta`` holds arch, num_classes, normalization, input shape and extra_meta for
    :func:`~dreg_dist.dreg.export.write_plain_export`; the method's own values (the
    ``export_meta`` of its exported model) come before extra_meta's."""
    model = method.export_model(module, output)
    extra = {**(getattr(model, EXPORT_META, None) or {}), **(meta.pop("extra_meta", None) or {})}
    return write_plain_export(model, out_dir, val_acc=val_acc, path=output, dreg_layer=None, extra_meta=extra,
                              **meta)


__all__ = ["EXPORT_META", "choose_output", "export_output", "with_export_meta"]
