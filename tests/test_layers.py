"""The layers of ARCHITECTURE.md hold: import-linter, as `make lint` runs it, keeps the tree and
refuses an import against the order."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}  # this tree's irforge, not the installed one
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_tree_keeps_its_layers() -> None:
    done = lint_imports(ROOT / "src", ROOT)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_an_import_against_the_layers_fails_lint(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "src" / "irforge", tmp_path / "src" / "irforge")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    facts = tmp_path / "src" / "irforge" / "facts" / "config.py"
    facts.write_text(facts.read_text() + "\nfrom irforge.engine import scheduler  # upward\n")
    done = lint_imports(tmp_path / "src", tmp_path)
    assert done.returncode != 0
    assert "irforge.facts is not allowed to import irforge.engine" in done.stdout
    assert "irforge.facts.config -> irforge.engine.scheduler" in done.stdout
