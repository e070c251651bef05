"""Consoles and progress displays for the CLI (stderr for humans, stdout for results)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def note(message: str) -> None:
    err.print(f"[yellow]note:[/] {message}", highlight=False)


@contextmanager
def byte_progress(
    label: str, *, quiet: bool = False
) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """(on_plan, on_bytes) callbacks driving a rich bar; no-ops when quiet or not a terminal."""
    if quiet or not err.is_terminal:
        yield (lambda total: None), (lambda n: None)
        return
    from rich.progress import (  # 10 ms: only when a bar is shown
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(f"[bold]{label}", *columns, console=err, transient=True) as progress:
        task = progress.add_task(label, total=None)
        yield (
            lambda total: progress.update(task, total=total),
            lambda n: progress.advance(task, n),
        )


@contextmanager
def steps(label: str, *, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """An on_step(description) callback driving a spinner with elapsed time."""
    if quiet or not err.is_terminal:
        yield lambda step: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(label, total=None)
        yield lambda step: progress.update(task, description=f"{label}: {step}")
