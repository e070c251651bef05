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
from typing import IO

from irforge.errors import CompileError, ToolNotFoundError
from irforge.facts.targets import Target, compiler_version
from irforge.formats.atomic import AtomicFile
from irforge.stages.compile.inplace import mark_consumed


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


def _run(cmd: list[str], out: Path, log_file: IO[str], log: Path, target: str) -> None:
    shown = shlex.join([*cmd[:-1], str(out)])
    log_file.write(f"$ {shown}\n")  # the log says how to reproduce the failure
    log_file.flush()
    done = subprocess.run(
        cmd, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
    )
    if done.returncode != 0:
        log_file.flush()
        first = _first_error(log.read_text(errors="replace"))
        raise CompileError(
            f"iree-compile failed for target {target} (exit {done.returncode}): "
            f"{first} (full log and command: {log})"
        )


def _input_phase(
    binary: str,
    mlir: Path,
    flags: list[str],
    staged: Path,
    log_file: IO[str],
    log: Path,
    target: str,
) -> None:
    """Run the input phase into `staged` and mark the cache argument's import consumed."""
    cmd = [binary, str(mlir), *flags, "--compile-to=input", "-o", str(staged)]
    _run(cmd, staged, log_file, log, target)
    text, marked = mark_consumed(staged.read_text())
    staged.write_text(text)
    log_file.write(
        f"# marked {marked} mutated argument import(s) consume (stages/compile/inplace.py)\n"
    )


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
    staged = not any(f.startswith(("--compile-to", "--compile-from")) for f in flags)
    with target_file, open(log, "w") as log_file:
        # named like the output's temporary, so a crashed compile's is cleaned up with it
        source = Path(target_file.tmp_path.removesuffix(".tmp") + ".input.tmp") if staged else mlir
        try:
            if staged:  # stop after the input phase so the cache updates in place (inplace.py)
                _input_phase(binary, mlir, flags, source, log_file, log, target.name)
            resume = ["--compile-from=input"] if staged else []
            _run(
                [binary, str(source), *flags, *resume, "-o", target_file.tmp_path],
                out,
                log_file,
                log,
                target.name,
            )
        finally:
            if staged:
                source.unlink(missing_ok=True)
    # what the manifest shows: one command that gives the same program, short of the rewrite
    cmd = [binary, str(mlir), *flags, "-o", str(out)]
    seconds = time.perf_counter() - started
    return CompileResult(out, target, devices, seconds, cmd, log, version)
