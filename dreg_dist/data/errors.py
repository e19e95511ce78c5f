"""The one exception type of the data package.

Launchers catch :class:`DataError` and print its message, so every message is a single
line that names the offending ``data.*`` key (or path) and says what to change.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data problem described in one line that says what to change."""
