"""A live progress display for the search (rich), on stderr so stdout stays clean for --json."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from inferforge.search import Status

_FINAL = {s.value for s in Status}
_MARK = {"passed": "[green]✓", "rejected": "[yellow]✗", "failed": "[red]✗", "skipped": "[dim]-"}


class SearchProgress:
    """Callable as the search's progress hook: ``(candidate key, stage or final status)``."""

    def __init__(self, total: int, title: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True)
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), console=self.console, transient=True)
        self._task = self._progress.add_task(title, total=total)
        self._title = title

    def __enter__(self) -> SearchProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def __call__(self, key: str, stage: str) -> None:
        if stage in _FINAL:
            self._progress.advance(self._task)
            self.console.print(f"  {_MARK[stage]} {key}[/] {stage}")
            self._progress.update(self._task, description=self._title)
        else:
            self._progress.update(self._task, description=f"{self._title}: {key} {stage}")


def print_table(table: Any) -> None:
    """At the terminal's width (120 columns when stdout is not a terminal, as in a log file)."""
    import shutil

    from rich.console import Console

    Console(width=shutil.get_terminal_size((120, 24)).columns).print(table)
