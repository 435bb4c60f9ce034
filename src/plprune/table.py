"""Plain-text tables for the terminal and markdown reports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], digits: int = 2, markdown: bool = False
) -> str:
    """Render ``rows`` (dicts) as an aligned text table, or a GitHub markdown table."""
    cells = [[_cell(row.get(col, ""), digits) for col in columns] for row in rows]
    widths = [
        max(len(col), *(len(r[i]) for r in cells)) if cells else len(col) for i, col in enumerate(columns)
    ]

    def line(values: Sequence[str]) -> str:
        body = (" | " if markdown else "  ").join(v.rjust(w) for v, w in zip(values, widths, strict=True))
        return f"| {body} |" if markdown else body

    separator = (
        ("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        if markdown
        else "  ".join("-" * w for w in widths)
    )
    return "\n".join([line(list(columns)), separator, *(line(r) for r in cells)])


def markdown_section(heading: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> list[str]:
    """Report lines: ``heading``, a blank line, the markdown table of ``rows`` (columns: the first row's
    keys unless given), a blank line."""
    return [heading, "", format_table(rows, columns or list(rows[0]), markdown=True), ""]
