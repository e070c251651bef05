"""Atomic outputs: write beside the target, fsync, rename, fsync the folder.

An interrupted or failed run leaves the previous file (or nothing) at the target path,
never a half-written one.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from ..errors import OutputError

COPY_CHUNK = 64 * 1024 * 1024


def refuse_overwriting_inputs(out: Path, inputs: Iterable[Path]) -> None:
    """Writing onto a file that is still being read (maybe memory-mapped) would corrupt it."""
    target = Path(out).resolve()
    for p in inputs:
        if Path(p).resolve() == target:
            raise OutputError(f"output {out} is also an input; choose another output path")


def remove_stale_temporaries(path: Path) -> int:
    """Delete what killed writers of `path` left (`.NAME.XXXXXXXX[.stage].tmp`); returns how many.

    Only ours: the pattern is AtomicFile's own. Stages write under their output's lock
    (formats/locks.py), so a temporary of this name is never a live writer's.
    """
    removed = 0
    for stale in Path(path).parent.glob(f".{glob.escape(Path(path).name)}.????????*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed += 1
    return removed


class AtomicFile:
    """Context manager yielding a temporary binary file that replaces `path` on success."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: BinaryIO | None = None
        self.tmp_path = ""

    def __enter__(self) -> BinaryIO:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.path)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        except OSError as e:
            raise OutputError(f"cannot write in {folder}: {e.strerror}") from e
        self.tmp_path = tmp
        # mkstemp creates 0600; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        self._file = os.fdopen(fd, "w+b")
        return self._file

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._file is not None
        f, tmp = self._file, self.tmp_path
        try:
            if exc_type is None:
                f.flush()
                os.fsync(f.fileno())
            f.close()
            if exc_type is None:
                os.replace(tmp, self.path)
                fsync_dir(self.path.parent)
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {e.strerror}") from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if exc_type is not None and issubclass(exc_type, OSError):
            raise OutputError(f"cannot write {self.path}: {exc.strerror}") from exc  # type: ignore[union-attr]


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_range(
    src: Path,
    src_off: int,
    n: int,
    dst: BinaryIO,
    dst_off: int,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Copy n bytes between files in the kernel, falling back to read/write when unsupported."""
    dst.flush()
    done = 0
    with open(src, "rb") as s:
        use_kernel = hasattr(os, "copy_file_range")
        while done < n:
            step = min(COPY_CHUNK, n - done)
            if use_kernel:
                try:
                    got = os.copy_file_range(
                        s.fileno(), dst.fileno(), step, src_off + done, dst_off + done
                    )
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    use_kernel = False
                    continue
            else:
                s.seek(src_off + done)
                buf = s.read(step)
                dst.seek(dst_off + done)
                dst.write(buf)
                got = len(buf)
            if got == 0:
                raise OutputError(f"{src} ended early while copying (was it truncated?)")
            done += got
            if on_bytes:
                on_bytes(got)
    return done


def copy_file(src: Path, dst: Path) -> None:
    """Copy a small file atomically (tokenizer files beside an archive)."""
    with AtomicFile(dst) as f, open(src, "rb") as s:
        shutil.copyfileobj(s, f)


def sha256_file(path: Path, chunk: int = 16 * 1024 * 1024) -> str:
    """The file's sha256, read a chunk at a time (memory does not grow with the file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` hold `src`'s bytes, atomically: a hard link, else (another file system) a
    streamed copy. Never a symlink: readers refuse files that resolve outside their folder."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
