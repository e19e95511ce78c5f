"""Vanilla large-batch training: cross-entropy on the plain model (see README.md)."""

from __future__ import annotations

from dreg_dist.methods.base import Method


class Vanilla(Method):
    name = "vanilla"
