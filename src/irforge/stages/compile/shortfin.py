"""The iree-compile that AMD's shortfin server can run the output of.

shortfin 3.9 (the newest on PyPI) embeds IREE 3.9's runtime, which refuses VMFBs of any other
release ("bytecode version mismatch", or "required module features [...] are not available"
for a 3.13 VMFB); irforge itself runs on the newest IREE, whose runtime in turn refuses 3.9's.
So a folder for shortfin gets a second program, compiled by IREE 3.9's compiler. That compiler
is fetched once from PyPI into irforge's cache (`pip install --target`, no second environment:
only its iree-compile binary is used) and reused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from irforge.errors import ToolNotFoundError

SHORTFIN_IREE_VERSION = "3.9.0"  # shortfin[apps]'s own release; the test extras pin the same
_PACKAGE = "iree-base-compiler"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "irforge"


def shortfin_compiler(*, install: bool = True) -> Path:
    """iree-compile of IREE SHORTFIN_IREE_VERSION, installed into the cache on first use.

    Raises:
        ToolNotFoundError: not installed and `install` is false, or pip could not install it.
    """
    folder = cache_root() / f"{_PACKAGE}-{SHORTFIN_IREE_VERSION}"
    binary = folder / "iree" / "compiler" / "_mlir_libs" / "iree-compile"
    if binary.is_file():
        return binary
    if not install:
        raise ToolNotFoundError(f"IREE {SHORTFIN_IREE_VERSION}'s iree-compile is not in {folder}")
    staging = folder.with_name(folder.name + ".partial")
    for leftover in (staging, folder):  # an interrupted install, or a folder without the binary
        shutil.rmtree(leftover, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target"]
    done = subprocess.run(
        [*cmd, str(staging), f"{_PACKAGE}=={SHORTFIN_IREE_VERSION}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ToolNotFoundError(
            f"could not install {_PACKAGE}=={SHORTFIN_IREE_VERSION} into {folder}: {last}"
        )
    staging.replace(folder)  # a half-installed compiler is never taken for a whole one
    return binary
