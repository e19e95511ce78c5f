"""Errors every layer may raise; kept here so that no layer imports a higher one for them."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, described in one line that says what to change."""


__all__ = ["ConfigError"]
