"""Every kind of broken artifact folder is one line naming the file, exit 2 (issue 14, item
14): never "internal error", never a page of IREE output."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from irforge.cli.main import app

pytestmark = pytest.mark.iree
runner = CliRunner()


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda art: (art / name).write_bytes(data)


def _truncate(name: str, size: int) -> Callable[[Path], None]:
    return lambda art: os.truncate(art / name, size)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda art: (art / name).unlink()


def _manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(art: Path) -> None:
        doc = json.loads((art / "manifest.json").read_text())
        change(doc)
        (art / "manifest.json").write_text(json.dumps(doc))

    return damage


NOISE = bytes(range(256)) * 20
CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "vmfb garbage": (_write("model.cpu.vmfb", NOISE), "model.cpu.vmfb"),
    "vmfb truncated": (_truncate("model.cpu.vmfb", 1000), "model.cpu.vmfb"),
    "vmfb empty": (_write("model.cpu.vmfb", b""), "model.cpu.vmfb"),
    "vmfb missing": (_remove("model.cpu.vmfb"), "model.cpu.vmfb"),
    "irpa garbage": (_write("model.irpa", NOISE), "model.irpa"),
    "irpa truncated": (_truncate("model.irpa", 10000), "model.irpa"),
    "irpa empty": (_write("model.irpa", b""), "model.irpa"),
    "irpa missing": (_remove("model.irpa"), "model.irpa"),
    "manifest a list": (_write("manifest.json", b"[1, 2]"), "manifest.json"),
    "manifest not JSON": (_write("manifest.json", b"{{{"), "manifest.json"),
    "manifest empty": (_write("manifest.json", b""), "manifest.json"),
    "manifest binary": (_write("manifest.json", NOISE[128:228]), "manifest.json"),
    "manifest missing": (_remove("manifest.json"), "manifest.json"),
    "options wrong type": (
        _manifest(lambda d: d["options"].update(block_seq_stride="x")),
        "manifest.json",
    ),
    "config out of range": (
        _manifest(lambda d: d["config"].update(vocab_size=-1)),
        "manifest.json",
    ),
    "compiled not objects": (_manifest(lambda d: d.update(compiled=[1])), "manifest.json"),
    "tokenizer not JSON": (_write("tokenizer.json", b"{{{"), "tokenizer.json"),
    "tokenizer_config not JSON": (_write("tokenizer_config.json", b"{{{"), "tokenizer_config"),
    "tokenizer_config a list": (_write("tokenizer_config.json", b"[1]"), "tokenizer_config"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_broken_folder_is_one_line(case: str, llama_artifacts: Path, tmp_path: Path) -> None:
    damage, names = CASES[case]
    art = tmp_path / "art"
    shutil.copytree(llama_artifacts, art)
    damage(art)
    result = runner.invoke(app, ["run", str(art), "--prompt", "hello", "--max-tokens", "2"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], lines
    assert "internal error" not in lines[0]
