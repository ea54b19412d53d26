"""The progress bar every long command shows (rich), and the console it writes to (stderr)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def console() -> Console:
    """Where progress and notes go: standard error, so standard output stays a command's result."""
    return Console(stderr=True)


def bar(enabled: bool = True, eta: bool = False, info: bool = True) -> Progress:
    """A bar with the task's description, done/total, a free ``info`` field (``info=...`` in
    ``update``), the elapsed time and (``eta``) the time left; silent unless ``enabled``."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    columns.append(TimeElapsedColumn())
    if eta:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console(), disable=not enabled)
