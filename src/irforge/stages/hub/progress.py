"""Rich progress for huggingface_hub downloads: a tqdm class that draws into one rich display."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text
from tqdm.std import tqdm as std_tqdm


class _AmountColumn(ProgressColumn):
    """Bytes (with speed) for byte bars, "done/total" for the file-count bar."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes = DownloadColumn()
        self._speed = TransferSpeedColumn()
        self._count = MofNCompleteColumn()

    def render(self, task: Task) -> Text:
        if task.fields.get("bytes"):
            return Text.assemble(self._bytes.render(task), " ", self._speed.render(task))
        return self._count.render(task)  # type: ignore[return-value]


@contextmanager
def rich_tqdm(console: Console, *, enabled: bool = True) -> Iterator[type[std_tqdm]]:
    """A tqdm subclass for `snapshot_download(tqdm_class=...)` drawing on `console`.

    huggingface_hub creates several bars at once (files done, bytes received, bytes
    written); rich allows one live display, so every bar becomes a task of one Progress.
    Disabled (nothing drawn) when `enabled` is False.
    """
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        _AmountColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not enabled,
    )

    class RichTqdm(std_tqdm):  # type: ignore[misc]
        # No TMonitor thread: it only tunes miniters, and one would start per class (per call).
        monitor_interval = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            # gui=True: tqdm keeps counting (n, total, rate) but never writes to a stream.
            super().__init__(*args, **{**kwargs, "gui": True, "disable": False})
            is_bytes = self.unit == "B"
            # Over plain HTTP the network-bytes bar repeats the bytes-written bar.
            hidden = is_bytes and str(self.desc or "").startswith("Downloading bytes")
            self._task = progress.add_task(
                "download" if is_bytes else "files",
                total=self.total or None,
                completed=self.n,
                visible=not hidden,
                bytes=is_bytes,
            )

        def display(self, *args: Any, **kwargs: Any) -> bool:
            task = getattr(self, "_task", None)
            if task is not None:
                progress.update(task, completed=self.n, total=self.total or None)
            return True

        def clear(self, *args: Any, **kwargs: Any) -> None:
            pass

        def close(self) -> None:
            if not self.disable:
                self.display()
            super().close()

    try:
        with progress:
            yield RichTqdm
    finally:
        # snapshot_download leaves its byte bars to the garbage collector: close them here.
        for bar in list(RichTqdm._instances):
            bar.close()
