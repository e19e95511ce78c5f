"""What a method tells people and tools about itself, as plain data (no torch, no method code).

A method's training class (:class:`dreg_dist.methods.Method`) says how it trains; its
*description* says how to name, read and report what it trained: short labels of its keys,
the keys a study plots, extra report columns and signals, notes, the values the console
shows. The description lives beside the method as data (``description.yaml`` in its folder),
and the trainer copies it, completed with what the class declares (config section, outputs,
every field's default), into each run folder (``record.json``). The sweep and the report
read it from there, so they never import a training class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Literal, Mapping, Optional

from dreg_dist.errors import ConfigError


@dataclass(frozen=True)
class Signal:
    """A value a method logs that shows whether it does what its source says it does (DReg: its
    branches' distance; extragradient: the loss at w against the extrapolated point). The report
    tabulates it for every run of the method, draws it vs epoch, and flags a run whose value says
    the method did not work, before any accuracy is compared."""

    tag: str
    """The logged name (``train/<tag>`` or ``val/<tag>``)."""
    title: str
    """Column and axis title."""
    source: Literal["train", "val"] = "train"
    minus: Optional[str] = None
    """Another tag of the same records: the signal is ``tag - minus``."""
    over: Optional[str] = None
    """Another tag of the same records: the signal is ``tag / over``."""
    reduce: Literal["last", "max", "min", "rise"] = "last"
    """What the table shows: the last, largest or smallest value, or (``rise``) the largest value
    after the learning-rate warmup over the first value logged."""
    flag_below: Optional[tuple[float, str]] = None
    """(threshold, label): the run is labelled when the reduced value is below the threshold."""
    flag_above: Optional[tuple[float, str]] = None
    """(threshold, label): ... above it."""
    log_scale: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "Signal":
        _known(data, cls, where)
        kw = dict(data)
        for name in ("flag_below", "flag_above"):
            if kw.get(name) is not None:
                threshold, label = kw[name]
                kw[name] = (float(threshold), str(label))
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()
                if v != _SIGNAL_DEFAULTS[k] or k in ("tag", "title")}


_SIGNAL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Signal)}


@dataclass(frozen=True)
class Description:
    """A method for people and tools. The first group of fields is written in the method's
    ``description.yaml``; ``section``, ``outputs`` and ``defaults`` come from its class when
    the trainer writes a run record (:meth:`dreg_dist.methods.Method.describe`)."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    """Field -> short label in sweep cell names and report tables ('' = the value alone)."""
    applies_when: Mapping[str, tuple[str, Any]] = field(default_factory=dict)
    """Field -> (other field, value): the field matters only when the other has that value
    (DReg's ``radius`` only for ``form=projected``); reports leave it out of a run's label otherwise."""
    study_keys: Mapping[str, str] = field(default_factory=dict)
    """Field -> axis title: fields the report plots best accuracy against when a sweep varies them."""
    non_result_keys: tuple[str, ...] = ()
    """Fields that do not change what the run computes (everything else does)."""
    console_keys: tuple[str, ...] = ("loss",)
    """Logged training values shown on the console progress line."""
    train_ce_keys: tuple[str, ...] = ("loss",)
    """Logged training values whose mean is the training cross-entropy (report's loss curves)."""
    report_columns: Mapping[str, str] = field(default_factory=dict)
    """``summary.json`` ``final_values`` key -> table column title: extra columns in the report."""
    report_notes: tuple[str, ...] = ()
    """Paragraphs (Markdown) the report adds to its definitions when this method is in it."""
    report_signals: tuple[Signal, ...] = ()
    """What shows this method doing what it claims, per run in the report."""
    # ---- from the class, in run records
    section: str = ""
    """Dotted config section of the method's hyperparameters (``dreg``, ``methods.sam``)."""
    outputs: tuple[str, ...] = ("model",)
    """What evaluation scores, in order of preference on ties."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Field -> its default (every hyperparameter the method has)."""

    WRITTEN: ClassVar[tuple[str, ...]] = ("labels", "applies_when", "study_keys", "non_result_keys", "console_keys",
                                "train_ce_keys", "report_columns", "report_notes", "report_signals")
    """The fields a ``description.yaml`` holds (the others come from the class)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: Optional[str] = None, where: str = "description") -> "Description":
        """From plain data (a ``description.yaml``, or a record's ``description``); ConfigError,
        one line, for an unknown key or a malformed value."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
        _known(data, cls, where)
        kw: dict[str, Any] = dict(data)
        if name is not None:
            kw["name"] = name
        if "name" not in kw:
            raise ConfigError(f"{where} needs a 'name'")
        try:
            for key in ("non_result_keys", "console_keys", "train_ce_keys", "report_notes", "outputs"):
                if key in kw:
                    kw[key] = tuple(str(x) for x in kw[key])
            if "applies_when" in kw:
                kw["applies_when"] = {str(k): (str(v[0]), v[1]) for k, v in kw["applies_when"].items()}
            if "report_signals" in kw:
                kw["report_signals"] = tuple(Signal.from_dict(s, f"{where}: report_signals[{i}]")
                                             for i, s in enumerate(kw["report_signals"]))
            for key in ("labels", "study_keys", "report_columns", "defaults"):
                if key in kw:
                    kw[key] = dict(kw[key])
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
            raise ConfigError(f"{where} is malformed: {err}") from None
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML) that :meth:`from_dict` reads back equal."""
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "name":
                continue
            if f.name == "report_signals":
                out[f.name] = [s.to_dict() for s in value]
            elif f.name == "applies_when":
                out[f.name] = {k: [o, v] for k, (o, v) in value.items()}
            elif isinstance(value, tuple):
                out[f.name] = list(value)
            else:
                out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out

    def owns(self, key: str) -> bool:
        return bool(self.section) and key.startswith(self.section + ".")

    def field_of(self, key: str) -> str:
        """``dreg.lam`` -> ``lam`` (a key of this method's section)."""
        return key[len(self.section) + 1:]


def _known(data: Mapping[str, Any], cls: type, where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            import difflib

            close = difflib.get_close_matches(str(key), sorted(names), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")


class Catalog:
    """The descriptions of the methods a sweep or a report deals with, by name; answers which
    method owns a dotted config key and how to label it."""

    def __init__(self, descriptions: Iterable[Description] = ()) -> None:
        self.by_name: dict[str, Description] = {}
        for d in descriptions:
            self.by_name.setdefault(d.name, d)

    def get(self, name: str) -> Optional[Description]:
        return self.by_name.get(name)

    def owner_of(self, key: str) -> Optional[Description]:
        """The method whose section holds ``key``; None for keys of the run."""
        return next((d for d in self.by_name.values() if d.owns(key)), None)

    def decides(self, key: str) -> bool:
        """Whether ``key`` decides if another key of its method applies (DReg's ``form``, which
        ``radius`` and ``tau`` depend on): the key that names a variant first."""
        owner = self.owner_of(key)
        return owner is not None and any(other == owner.field_of(key) for other, _ in owner.applies_when.values())

    def label(self, key: str) -> Optional[str]:
        """The method's short label of one of its keys (None: it gives none, or a run key)."""
        owner = self.owner_of(key)
        return owner.labels.get(owner.field_of(key)) if owner is not None else None


__all__ = ["Catalog", "Description", "Signal"]
