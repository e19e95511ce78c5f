"""A run folder's self-description (``record.json``) and reading any run folder's records.

The trainer writes ``record.json`` beside ``config.yaml`` (the resolved config, every default
spelled out): the schema version, the method's description as it was when the run started
(:class:`~dreg_dist.records.description.Description`, with its config section, outputs and
defaults), each output's accuracy key in the validation records, and the config keys that
change no result. Readers (the sweep, the report, the resume check) take all they need from
there; a folder without it was written by an earlier release and is read by
:mod:`dreg_dist.records.compat`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import yaml

from dreg_dist.errors import ConfigError
from dreg_dist.io import atomic_write_text
from dreg_dist.records import compat
from dreg_dist.records.description import Description
from dreg_dist.run_layout import RunLayout

SCHEMA_VERSION = 2
"""1: config.yaml, summary.json and metrics.jsonl only (every release before record.json)."""


def output_keys(outputs: Iterable[str]) -> dict[str, str]:
    """Output -> the key of its accuracy in validation records (``acc`` for a single model)."""
    outputs = list(outputs)
    return {o: "acc" if outputs == ["model"] else f"acc_{o}" for o in outputs}


def make_record(description: Description, non_result_keys: Iterable[str]) -> dict[str, Any]:
    """The content of ``record.json`` for a run of the described method."""
    return {"schema": SCHEMA_VERSION, "method": description.name, "description": description.to_dict(),
            "outputs": output_keys(description.outputs), "non_result_keys": list(non_result_keys)}


def write_record(run_dir: Union[str, Path], record: dict[str, Any]) -> None:
    atomic_write_text(RunLayout(run_dir).record, json.dumps(record, indent=1) + "\n")


@dataclass(frozen=True)
class RunRecord:
    """What a run folder says about its run, whatever release wrote it."""

    config: dict[str, Any]
    """The resolved config (nested), every key spelled out."""
    method: str
    description: Description
    non_result_keys: tuple[str, ...]
    schema: int

    def changes_results(self, key: str) -> bool:
        """Whether dotted config ``key`` can change what the run computes."""
        if key.startswith(self.non_result_keys):
            return False
        d = self.description
        return not (d.owns(key) and d.field_of(key) in d.non_result_keys)


def read_record(run_dir: Union[str, Path]) -> Optional[RunRecord]:
    """The run folder's record; None when it holds no readable config.yaml."""
    layout = RunLayout(run_dir)
    try:
        config = yaml.safe_load(layout.config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    try:
        data = json.loads(layout.record.read_text())
    except OSError:
        data = None
    except ValueError:
        raise ConfigError(f"run record '{layout.record}' is not valid JSON") from None
    if isinstance(data, dict) and isinstance(data.get("schema"), int) and data["schema"] >= 2:
        if data["schema"] > SCHEMA_VERSION:
            raise ConfigError(f"run record '{layout.record}' has schema {data['schema']}; this release reads up "
                              f"to {SCHEMA_VERSION}: update dreg-dist to read it")
        desc = Description.from_dict(data["description"], where=str(layout.record))
        return RunRecord(config=config, method=str(data.get("method", desc.name)), description=desc,
                         non_result_keys=tuple(data.get("non_result_keys", ())), schema=data["schema"])
    resolved = compat.resolve_config(config)
    try:
        summary = json.loads(layout.summary.read_text())
    except (OSError, ValueError):
        summary = None
    method = str((summary if isinstance(summary, dict) else {}).get("method") or resolved.get("method")
                 or compat.DEFAULT_METHOD)
    desc = compat.description(method) or Description(name=method)
    return RunRecord(config=resolved, method=method, description=desc, non_result_keys=compat.NON_RESULT_KEYS,
                     schema=1)


__all__ = ["SCHEMA_VERSION", "RunRecord", "make_record", "output_keys", "read_record", "write_record"]
