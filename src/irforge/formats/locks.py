"""One writer per output: two runs into the same OUT would mix their files (issue 14, item 4).

`output_lock(path)` takes an exclusive, non-blocking flock on `path/.irforge.lock` for a
folder output, or `.NAME.lock` beside a file output; a second writer is refused in one line
naming the holder's pid. The kernel drops the lock when the holder exits, even on SIGKILL, so
a stale lock file never blocks anyone; a finished run removes its lock file (a taker checks
that the file it locked is still the one at the path, so removal cannot let two in).
Re-entrant within a process: build locks OUT, then runs export and compile, which lock it too.

Not `filelock`: its Unix lock leaves the lock file in place after release (by design, against
this very race), and an output that failed must be left as empty as it was found.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from irforge.errors import OutputError

F = TypeVar("F", bound=Callable[..., Any])
FOLDER_LOCK = ".irforge.lock"
_held: dict[str, tuple[int, int]] = {}  # lock file -> (fd, depth), this process's
_guard = threading.Lock()


def lock_file(path: Path, *, folder: bool) -> Path:
    path = Path(path)
    return path / FOLDER_LOCK if folder else path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def output_lock(path: Path, *, folder: bool = True) -> Iterator[None]:
    """Hold the output lock of `path` (a folder, or a file with folder=False) for the block.

    Raises:
        OutputError: another process holds it.
    """
    target = lock_file(Path(path).absolute(), folder=folder)  # a later chdir cannot lose it
    key = str(target)
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
        else:
            _held[key] = (_acquire(target, path), 1)
    try:
        yield
    finally:
        with _guard:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                with contextlib.suppress(OSError):
                    target.unlink()  # while still locked: a waiter then retries on a new file
                os.close(fd)  # releases the flock


def _acquire(target: Path, path: Path) -> int:
    while True:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"cannot write in {target.parent}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(
                f"{path}: another irforge (pid {holder}) is writing it; wait for it to finish "
                "or choose another output"
            ) from None
        try:
            same = os.stat(target).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed it as we locked it: take the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def locked(argument: str, *, folder: bool = True, create: bool = True) -> Callable[[F], F]:
    """Decorate a stage so that it runs under the output lock of its `argument` path.

    With `create=False` (a folder the stage updates, which must exist) a missing path is not
    created for the lock: the stage runs unlocked and reports the missing folder itself.
    """

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            path = bound.arguments[argument]
            if path is None or (not create and not Path(path).is_dir()):
                return fn(*args, **kwargs)
            with output_lock(Path(path), folder=folder):
                return fn(*args, **kwargs)

        return cast(F, run)

    return wrap
