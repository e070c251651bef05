"""Artifact folders are untrusted input (issue 14, item 1): no manifest entry may make irforge
open, load or compile a file outside the folder, by name or through a symlink."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from irforge.cli.main import app

pytestmark = pytest.mark.iree
runner = CliRunner()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _edit(folder: Path, change) -> None:  # noqa: ANN001
    path = folder / "manifest.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("change", "command"),
    [
        (lambda d: d.update(parameters=["../outside/model.irpa"]), "run"),
        (lambda d: d.update(parameters=["/tmp/model.irpa"]), "run"),
        (lambda d: d["compiled"][0].update(vmfb="/etc/passwd"), "run"),
        (lambda d: d["compiled"][0].update(vmfb="../../model.cpu.vmfb"), "run"),
        (lambda d: d.update(mlir="/etc/hostname"), "compile"),
        (lambda d: d.update(tokenizer=["../../tokenizer.json"]), "run"),
    ],
    ids=["dotdot-parameters", "absolute-parameters", "absolute-vmfb", "dotdot-vmfb", "mlir", "tok"],
)
def test_manifest_names_outside_the_folder_are_refused(
    llama_artifacts: Path,
    tmp_path: Path,
    change,
    command: str,  # noqa: ANN001
) -> None:
    art = _copy(llama_artifacts, tmp_path / "art")
    (art / "compile.cpu.log").unlink(missing_ok=True)
    _edit(art, change)
    args = [command, str(art)] + (["--prompt-ids", "1,2"] if command == "run" else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "not a file name inside the folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (art / "compile.cpu.log").exists()  # iree-compile never saw the outside file


@pytest.mark.parametrize("name", ["model.cpu.vmfb", "model.irpa", "model.mlir"])
def test_a_symlink_out_of_the_folder_is_refused(
    llama_artifacts: Path, tmp_path: Path, name: str
) -> None:
    art = _copy(llama_artifacts, tmp_path / "art")
    outside = tmp_path / f"outside-{name}"
    shutil.copyfile(art / name, outside)  # the same bytes: only where it lives is wrong
    (art / name).unlink()
    os.symlink(outside, art / name)
    command = "compile" if name.endswith(".mlir") else "run"
    args = [command, str(art)] + (["--prompt-ids", "1,2"] if command == "run" else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "outside the folder" in result.stderr and str(outside) in result.stderr


def test_export_across_file_systems_copies_instead_of_linking_out(
    llama_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a hard link fails (another file system), the archive is copied into the folder."""
    from irforge.stages.export import export, exporter

    def no_hard_links(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(exporter.os, "link", no_hard_links)
    archive = llama_artifacts.parent / "src" / "model.irpa"
    export(archive, out_dir=tmp_path / "art")
    copied = tmp_path / "art" / "model.irpa"
    assert copied.is_file() and not copied.is_symlink()
    assert copied.read_bytes() == archive.read_bytes()
