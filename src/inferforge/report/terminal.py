"""The leaderboard in the terminal, as a rich table (rich is imported only when one is drawn)."""

from __future__ import annotations

from typing import Any

from inferforge.report.leaderboard import columns, leaderboard_rows
from inferforge.search import SearchResult


def rich_leaderboard(result: SearchResult, title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in columns(result):
        table.add_column(col, overflow="fold", max_width=60 if col == "note" else None)
    styles = {"passed": "green", "rejected": "yellow", "failed": "red", "skipped": "dim"}
    for row in leaderboard_rows(result):
        table.add_row(*row, style=styles.get(row[2]))
    return table
