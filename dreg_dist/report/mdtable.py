"""Markdown tables (GitHub-flavoured): the one writer the report and the benchmarks use."""

from __future__ import annotations

from typing import Any, Sequence


def esc(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


__all__ = ["esc", "table"]
