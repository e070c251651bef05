"""Running iree-compile: the exported MLIR to a VMFB, with errors as a message and a log file."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompileError, ToolNotFoundError
from ..formats.atomic import AtomicFile
from .targets import Target, compiler_version


@dataclass
class CompileResult:
    vmfb: Path
    target: Target
    devices: int
    seconds: float
    command: list[str]
    log: Path
    compiler_version: tuple[int, int]


def find_iree_compile(binary: str | Path | None = None) -> str:
    """`binary` when given, else iree-compile from this Python's environment first, then PATH."""
    if binary is not None:
        path = Path(binary).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ToolNotFoundError(f"--iree-compile {binary}: not an executable file")
        return str(path)
    beside = Path(sys.executable).parent / "iree-compile"
    if beside.exists():
        return str(beside)
    found = shutil.which("iree-compile")
    if found is None:
        raise ToolNotFoundError(
            "iree-compile not found; install it with `pip install iree-base-compiler`"
        )
    return found


def _die_with_parent() -> None:
    """In the child before exec: a killed irforge (SIGKILL included) takes iree-compile along,
    instead of leaving a compiler running for minutes with nobody to read its output."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _first_error(log: str) -> str:
    """The line that says what failed, not the IR dumped around it (line 1 is the command)."""
    lines = [ln for ln in log.splitlines() if "error:" in ln] or log.splitlines()[1:]
    return lines[0].strip()[:300] if lines else "(no output)"


def run_iree_compile(
    mlir: Path,
    *,
    out: Path,
    target: Target,
    devices: int = 1,
    extra_flags: Sequence[str] = (),
    log: Path | None = None,
    compiler: str | Path | None = None,
) -> CompileResult:
    """Compile `mlir` for `target` into `out` (atomically); iree-compile's output goes to `log`.

    `compiler` is another iree-compile than the installed one (flags are spelled for its version).

    Raises:
        ToolNotFoundError: iree-compile is not installed.
        CompileError: with the first error lines, the command and the log path.
    """
    log = log or out.with_suffix(".compile.log")
    binary = find_iree_compile(compiler)
    version = compiler_version(binary if compiler is not None else None)
    flags = target.flags(devices, version) + list(extra_flags)
    started = time.perf_counter()
    target_file = AtomicFile(out)
    with target_file:
        cmd = [binary, str(mlir), *flags, "-o", target_file.tmp_path]
        shown = shlex.join([*cmd[:-1], str(out)])
        with open(log, "w") as log_file:
            log_file.write(f"$ {shown}\n")  # the log says how to reproduce the failure
            log_file.flush()
            done = subprocess.run(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        if done.returncode != 0:
            first = _first_error(log.read_text(errors="replace"))
            raise CompileError(
                f"iree-compile failed for target {target.name} (exit {done.returncode}): "
                f"{first} (full log and command: {log})"
            )
    cmd[-1] = str(out)
    seconds = time.perf_counter() - started
    return CompileResult(out, target, devices, seconds, cmd, log, version)
