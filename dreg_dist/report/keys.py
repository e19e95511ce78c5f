"""The config keys a report gives roles to, and how keys and their values are labelled.

A run key's label is fixed here (:data:`LABELS`); a method's key is labelled as its
description says (:class:`dreg_dist.records.Catalog`, built from the run records).
"""

from __future__ import annotations

from typing import Any

from dreg_dist.records import Catalog
from dreg_dist.sweep.grid import key_alias, name_value

SEED_KEY = "train.seed"
BATCH_KEY = "train.global_batch_size"
LR_KEY = "optim.lr"
METHOD_KEY = "method"
WORKERS_KEY = "world_size"
"""Not a config key: the number of worker processes a run trained on (:attr:`Run.workers`)."""
LAYOUT_KEYS = ("train.accumulation_steps", "train.micro_batch_size", WORKERS_KEY)
"""How a global batch is split over workers and micro-steps: when one varies it is part of the
batch setup, never a separate setup (the smallest batch size stays every table's reference)."""
VARIANT_DEFAULTS: dict[str, Any] = {"optim.name": "sgd", "train.bn_group_size": None}
"""Run keys compared as variants of a method (LARS, LAMB or ghost batch norm is a way to train
vanilla), with the value that is not named in labels."""
EPOCHS_KEY = "train.epochs"
WARMUP_KEY = "optim.warmup_epochs"
BUDGET_KEYS = (EPOCHS_KEY, WARMUP_KEY)
"""How long a recipe trains and warms up: two setups that differ only in these are one recipe at
two budgets (a large batch given the reference's steps, and its warmup's steps)."""
RULE_KEYS = ("optim.lr_scaling", "optim.base_batch_size")
"""How ``optim.lr`` becomes the peak rate at a batch size: setups that differ only in these and
the budget are one recipe moved to a larger batch under different rules."""
LABELS = {
    "model.arch": "arch", "data.name": "data", "model.num_classes": "classes", "optim.momentum": "momentum",
    "optim.name": "optimizer", "train.epochs": "epochs", "optim.lr": "lr", "train.global_batch_size": "batch",
    "train.accumulation_steps": "accumulation", "train.micro_batch_size": "micro-batch", WORKERS_KEY: "workers",
    "optim.warmup_epochs": "warmup", "train.bn_group_size": "BN group", "optim.lr_scaling": "rule",
    "optim.base_batch_size": "rule's base batch",
}
"""Short names of the run's keys in tables; a method's keys use its description's ``labels``."""

Pairs = tuple[tuple[str, Any], ...]


def label_of(key: str, catalog: Catalog) -> str:
    if key in LABELS:
        return LABELS[key]
    owner = catalog.owner_of(key)
    if owner is not None:
        return key_alias(key, catalog) or owner.field_of(key)
    return key


def pairs_label(pairs: Pairs, catalog: Catalog) -> str:
    return ", ".join(f"{label_of(k, catalog)}={name_value(v)}" for k, v in pairs)


def same_but(a: Pairs, b: Pairs, keys: tuple[str, ...]) -> bool:
    """Whether two setups' keys agree on everything but ``keys``."""
    return ({k: v for k, v in a if k not in keys} == {k: v for k, v in b if k not in keys})
