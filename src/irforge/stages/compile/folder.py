"""Compile an exported artifact folder to a VMFB for CPU, AMD (gfx942 ...) or NVIDIA targets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from irforge.artifacts.files import folder_file, vmfb_name
from irforge.artifacts.manifest import Compiled, Manifest
from irforge.errors import ManifestError
from irforge.facts.config import storage_dtype
from irforge.facts.quantization import SCHEMES
from irforge.facts.targets import Target, check_fp8, compiler_version, get_target, version_text
from irforge.formats.atomic import sha256_file
from irforge.formats.locks import locked
from irforge.stages.compile.driver import CompileResult, find_iree_compile, run_iree_compile


@locked("folder", create=False)
def compile_folder(
    folder: Path,
    *,
    target: str,
    devices: int | None = None,
    out: Path | None = None,
    extra_flags: Sequence[str] = (),
    compiler: str | Path | None = None,
) -> CompileResult:
    """Compile `folder/model.mlir` (from `irforge export`) for one target.

    Args:
        folder: the export folder (its manifest says the MLIR file and device count).
        target: a preset name or alias: cpu, gfx942/mi300x, gfx90a, gfx1100, sm_80, sm_90.
        devices: devices the program spans; default: the export's tensor parallelism.
        out: where to write the VMFB; default `folder/model.<target>.vmfb`
            (`model.<target>.iree<version>.vmfb` from another release's `compiler`).
        extra_flags: passed through to iree-compile.
        compiler: another iree-compile than the installed one, e.g. IREE 3.9's for shortfin.

    Raises:
        ManifestError, ConfigError, ToolNotFoundError, CompileError.

    Example:
        >>> compile_folder(Path("out/llama8b"), target="gfx942")
    """
    folder = Path(folder)
    preset = get_target(target)  # a misspelt target fails before anything is read
    manifest = Manifest.load(folder)
    check_fp8(preset, _element_types(manifest))
    tp = manifest.options.tensor_parallelism_size
    devices = tp if devices is None else devices
    if devices != tp:
        raise ManifestError(
            f"{folder}: the program was exported for {tp} device(s), not {devices}; "
            "re-export with a matching --tp"
        )
    mlir = folder_file(folder, manifest.mlir)
    if not mlir.is_file():
        raise ManifestError(f"{folder}: {manifest.mlir} is missing; re-run `irforge export`")
    version = compiler_version(find_iree_compile(compiler) if compiler is not None else None)
    other_release = None if version == compiler_version() else version_text(version)
    out = Path(out) if out else folder / vmfb_name(preset.name, other_release)
    source_digest = sha256_file(mlir)
    result = run_iree_compile(
        mlir,
        out=out,
        target=preset,
        devices=devices,
        extra_flags=extra_flags,
        log=folder / f"compile.{preset.name}.log",
        compiler=compiler,
    )
    if out.parent.resolve() == folder.resolve():
        register_compiled(folder, preset, devices, out.name, source_digest, result.compiler_version)
    return result


def _element_types(manifest: Manifest) -> dict[str, str]:
    """The dtype-table names of the program's quantized weights and its KV cache."""
    uses = {}
    if manifest.config.quantization is not None:
        uses["weights"] = SCHEMES[manifest.config.quantization].storage
    kv = manifest.options.kv_cache_dtype or manifest.config.dtype
    uses["KV cache"] = storage_dtype(kv)
    return uses


def register_compiled(
    folder: Path,
    target: Target,
    devices: int,
    vmfb: str,
    mlir_sha256: str,
    version: tuple[int, int] | None = None,
) -> None:
    """Record a VMFB in the folder's manifest (run and serve look it up by device)."""
    manifest = Manifest.load(folder)
    version = version or compiler_version()
    flags = tuple(target.flags(devices, version))
    entry = Compiled(
        vmfb, target.name, target.driver, devices, flags, version_text(version), mlir_sha256
    )
    manifest.with_compiled(entry).save(folder)
