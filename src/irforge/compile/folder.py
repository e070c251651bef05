"""Compile an exported artifact folder to a VMFB for CPU, AMD (gfx942 ...) or NVIDIA targets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..artifacts import vmfb_name
from ..errors import ManifestError
from ..formats.atomic import sha256_file
from ..manifest import Compiled, Manifest
from .driver import CompileResult, run_iree_compile
from .targets import Target, compiler_version, get_target


def compile_folder(
    folder: Path,
    *,
    target: str,
    devices: int | None = None,
    out: Path | None = None,
    extra_flags: Sequence[str] = (),
) -> CompileResult:
    """Compile `folder/model.mlir` (from `irforge export`) for one target.

    Args:
        folder: the export folder (its manifest says the MLIR file and device count).
        target: a preset name or alias: cpu, gfx942/mi300x, gfx90a, gfx1100, sm_80, sm_90.
        devices: devices the program spans; default: the export's tensor parallelism.
        out: where to write the VMFB; default `folder/model.<target>.vmfb`.
        extra_flags: passed through to iree-compile.

    Raises:
        ManifestError, ConfigError, ToolNotFoundError, CompileError.

    Example:
        >>> compile_folder(Path("out/llama8b"), target="gfx942")
    """
    folder = Path(folder)
    preset = get_target(target)  # a misspelt target fails before anything is read
    manifest = Manifest.load(folder)
    tp = manifest.options.tensor_parallelism_size
    devices = tp if devices is None else devices
    if devices != tp:
        raise ManifestError(
            f"{folder}: the program was exported for {tp} device(s), not {devices}; "
            "re-export with a matching --tp"
        )
    mlir = folder / manifest.mlir
    if not mlir.is_file():
        raise ManifestError(f"{folder}: {manifest.mlir} is missing; re-run `irforge export`")
    out = Path(out) if out else folder / vmfb_name(preset.name)
    source_digest = sha256_file(mlir)
    result = run_iree_compile(
        mlir,
        out=out,
        target=preset,
        devices=devices,
        extra_flags=extra_flags,
        log=folder / f"compile.{preset.name}.log",
    )
    if out.parent.resolve() == folder.resolve():
        register_compiled(folder, preset, devices, out.name, source_digest)
    return result


def register_compiled(
    folder: Path, target: Target, devices: int, vmfb: str, mlir_sha256: str
) -> None:
    """Record a VMFB in the folder's manifest (run and serve look it up by device)."""
    manifest = Manifest.load(folder)
    version = ".".join(map(str, compiler_version()))
    flags = tuple(target.flags(devices, compiler_version()))
    entry = Compiled(vmfb, target.name, target.driver, devices, flags, version, mlir_sha256)
    manifest.with_compiled(entry).save(folder)
