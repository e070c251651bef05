"""Running iree-compile: the exported MLIR to a VMFB, with errors as a message and a log file."""

from __future__ import annotations

import shlex
import shutil
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


def find_iree_compile() -> str:
    """iree-compile from this Python's environment first, then PATH."""
    beside = Path(sys.executable).parent / "iree-compile"
    if beside.exists():
        return str(beside)
    found = shutil.which("iree-compile")
    if found is None:
        raise ToolNotFoundError(
            "iree-compile not found; install it with `pip install iree-base-compiler==3.9.0`"
        )
    return found


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
) -> CompileResult:
    """Compile `mlir` for `target` into `out` (atomically); iree-compile's output goes to `log`.

    Raises:
        ToolNotFoundError: iree-compile is not installed.
        CompileError: with the first error lines, the command and the log path.
    """
    log = log or out.with_suffix(".compile.log")
    flags = target.flags(devices, compiler_version()) + list(extra_flags)
    started = time.perf_counter()
    target_file = AtomicFile(out)
    with target_file:
        cmd = [find_iree_compile(), str(mlir), *flags, "-o", target_file.tmp_path]
        shown = shlex.join([*cmd[:-1], str(out)])
        with open(log, "w") as log_file:
            log_file.write(f"$ {shown}\n")  # the log says how to reproduce the failure
            log_file.flush()
            done = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            first = _first_error(log.read_text(errors="replace"))
            raise CompileError(
                f"iree-compile failed for target {target.name} (exit {done.returncode}): "
                f"{first} (full log and command: {log})"
            )
    cmd[-1] = str(out)
    return CompileResult(out, target, devices, time.perf_counter() - started, cmd, log)
