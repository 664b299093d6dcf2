"""The leaderboard in the terminal, as a rich table (rich is imported only when one is drawn)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inferforge.options import Objective
from inferforge.report.leaderboard import CONFIRMED, columns, leaderboard_rows, ms, rate
from inferforge.search import SearchResult


def rich_leaderboard(result: SearchResult, title: str, packaged: Mapping[str, int] | None = None,
                     wide: bool = True) -> Any:
    """``wide=False``: the compact columns (leaderboard.COMPACT), which fit 120 columns with rich folding the
    notes; ``packaged``: artifact key -> rank in the written package, marked in the notes."""
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in columns(result, wide):
        table.add_column(col, overflow="fold", max_width=60 if col == "note" else None,
                         no_wrap=col == "candidate")
    styles = {"passed": "green", "rejected": "yellow", "failed": "red", "skipped": "dim"}
    for row in leaderboard_rows(result, packaged, wide):
        table.add_row(*row, style=styles.get(row[2]))
    return table


def pick_lines(result: SearchResult, package: Path | None) -> list[str]:
    """After the leaderboard: the pick, its speed-up over the plain way (eager FP32) on the same device, why it
    won (a tie within the measured noise said as such), and the commands to run next."""
    pick = result.best
    if pick is None or pick.bench is None:
        return []
    lines = [f"pick: {pick.key}"]
    reference = result.reference()
    if reference is not None and reference is not pick and reference.bench is not None:
        if result.options.objective is Objective.LATENCY:
            mine, theirs = pick.bench.latency.p50_ms, reference.bench.latency.p50_ms
            lines[0] += (f", {ms(mine)} ms at batch {pick.bench.latency.batch_size}: {theirs / mine:.2f}x faster "
                         f"than {reference.key} ({ms(theirs)} ms)")
        else:
            mine, theirs = pick.bench.best_throughput, reference.bench.best_throughput
            lines[0] += f", {rate(mine)} samples/s: {mine / theirs:.2f}x {reference.key} ({rate(theirs)}/s)"
    lines.append(f"why: {result.pick_reason()}")
    tied = [c.key for c in result.passed if c is not pick and c.confirmation is not None and c.confirmation.tie]
    if tied:
        lines.append(f"tie within noise: {', '.join(tied)} measured alike in the re-measure (the intervals in "
                     f"'{CONFIRMED}'); the pick is the simpler artifact")
    if package is not None:
        lines.append(f"next: inferforge info {package}  |  inferforge serve {package}  |  inferforge bench {package}")
    return lines
