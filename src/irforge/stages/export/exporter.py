"""export(): an irforge archive (or just a config) to model.mlir + shortfin's config.json."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from irforge import __version__
from irforge.artifacts.abi import HAS_PREFILL_POSITION
from irforge.artifacts.archive import ModelArchive, open_archive, rank_path
from irforge.artifacts.files import (
    ARCHIVE_NAME,
    MLIR_NAME,
    SHORTFIN_CONFIG_NAME,
    copy_tokenizer_files,
    tokenizer_files,
)
from irforge.artifacts.manifest import DEFAULTS, Compiled, ExportOptions, Manifest
from irforge.artifacts.sources import read_json_file
from irforge.errors import ConfigError, ManifestError, OutputError
from irforge.facts.config import ModelConfig
from irforge.facts.sharding import check_tp
from irforge.formats.atomic import AtomicFile, link_or_copy, sha256_file
from irforge.formats.locks import locked
from irforge.stages.export.service_config import shortfin_config


def _versions() -> dict[str, str]:
    out = {"irforge": __version__}
    for pkg in ("iree-base-compiler", "iree-base-runtime", "iree-turbine", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _link_into(src: Path, folder: Path, name: str) -> str:
    """Make `folder/name` hold `src`: a hard link, else (another file system) a copy.

    Not a symlink: a folder must hold its own files, since readers refuse any that resolves
    outside it (an untrusted folder could otherwise point them anywhere).
    """
    dst = folder / name
    if not (dst.exists() and not dst.is_symlink() and os.path.samefile(src, dst)):
        link_or_copy(src, dst)
    return name


def _still_compiled(folder: Path, mlir_sha256: str) -> tuple[Compiled, ...]:
    """The VMFBs of a previous export that compiled this very program (a re-export that
    changed nothing keeps them; any other change drops them, so none is stale)."""
    try:
        previous = Manifest.load(folder)
    except ManifestError:
        return ()
    return tuple(
        c for c in previous.compiled if c.mlir_sha256 == mlir_sha256 and (folder / c.vmfb).is_file()
    )


def _resolve_source(
    source: Path | None, preset: str | None, config: Path | None, model_config: ModelConfig | None
) -> tuple[ModelConfig, ModelArchive | None]:
    given = [x for x in (source, preset, config, model_config) if x is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of: an .irpa archive, --preset NAME, --config FILE")
    if model_config is not None:
        model_config.validate()
        return model_config, None
    if preset is not None:
        from irforge.facts.presets import get_preset

        return get_preset(preset), None
    if config is not None:
        return ModelConfig.from_hf_config(read_json_file(config), source=str(config)), None
    archive = open_archive(Path(source))  # type: ignore[arg-type]
    return archive.require_config(), archive


@locked("out_dir")
def export(
    source: Path | None = None,
    *,
    out_dir: Path,
    preset: str | None = None,
    config: Path | None = None,
    model_config: ModelConfig | None = None,
    options: ExportOptions = DEFAULTS,
    tp: int | None = None,
    on_step: Callable[[str], None] = lambda step: None,
) -> Manifest:
    """Export the paged model of an archive, a preset or an HF config.json to `out_dir`.

    Writes `model.mlir` (weights external, scope "model"), shortfin's `config.json`, and
    `manifest.json`; with an archive, also links it in as `model.irpa` and copies the
    tokenizer files beside it. Only the config is read, never the weights.

    Args:
        source: an irforge .irpa archive (or None with `preset` / `config` / `model_config`).
        model_config: a ModelConfig itself (benchmarks vary a preset's shape this way).
        options: batch sizes (one prefill_bs{N} / decode_bs{N} each), page size and count,
            dtypes (None: the model's; the activations' for cache and attention), attention
            formulation, top_k (None: full logits; 1: argmax in the program), max_seq_len.
        tp: devices the program spans; default: the archive's (`irforge shard`), else 1.

    Raises:
        ConfigError, InputError, OutputError.

    Example:
        >>> opts = ExportOptions(prefill_batch_sizes=(1, 4), decode_batch_sizes=(1, 4))
        >>> export(Path("llama8b.irpa"), out_dir=Path("out/llama8b"), options=opts)
    """
    from irforge.stages.export.program import check_parameters, trace

    cfg, archive = _resolve_source(source, preset, config, model_config)
    archive_tp = archive.metadata.tensor_parallelism_size if archive and archive.metadata else 1
    if archive is not None and tp not in (None, archive_tp):
        raise ConfigError(
            f"{archive.path} is sharded for {archive_tp} device(s), not {tp}; "
            f"run `irforge shard --tp {tp}` on the unsharded archive"
        )
    tp = tp or archive_tp
    check_tp(cfg, tp)
    options = options.resolve(cfg, tp)
    if archive is not None:
        check_parameters(cfg, options, archive.tensors, archive.path)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {out_dir}: {e.strerror}") from e
    mlir = AtomicFile(out_dir / MLIR_NAME)
    with mlir:
        trace(cfg, options, Path(mlir.tmp_path), on_step=on_step)
    with AtomicFile(out_dir / SHORTFIN_CONFIG_NAME) as f:
        f.write(
            json.dumps(
                shortfin_config(cfg, options, has_prefill_position=HAS_PREFILL_POSITION), indent=2
            ).encode()
            + b"\n"
        )
    parameters: list[str] = []
    tokenizer: list[str] = []
    if archive is not None:
        parameters.append(_link_into(archive.path, out_dir, ARCHIVE_NAME))
        for i, rank_file in enumerate(archive.rank_paths):
            parameters.append(_link_into(rank_file, out_dir, rank_path(Path(ARCHIVE_NAME), i).name))
        found = tokenizer_files(archive.path.parent)
        tokenizer = [f.name for f in copy_tokenizer_files(found, out_dir)]
    manifest = Manifest(
        config=cfg,
        options=options,
        parameters=tuple(parameters),
        tokenizer=tuple(tokenizer),
        compiled=_still_compiled(out_dir, sha256_file(out_dir / MLIR_NAME)),
        versions=_versions(),
        prefill_position=HAS_PREFILL_POSITION,
        source=str(archive.path if archive else preset or config or cfg.source),
    )
    manifest.save(out_dir)
    return manifest
