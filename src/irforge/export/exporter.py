"""export(): an irforge archive (or just a config) to model.mlir + shortfin's config.json."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .. import __version__
from ..archive import ModelArchive, open_archive, rank_path
from ..artifacts import (
    ARCHIVE_NAME,
    MLIR_NAME,
    SHORTFIN_CONFIG_NAME,
    copy_tokenizer_files,
    tokenizer_files,
)
from ..config import ModelConfig
from ..errors import ConfigError, OutputError
from ..formats.atomic import AtomicFile
from ..formats.sources import read_json_file
from ..manifest import DEFAULTS, ExportOptions, Manifest
from ..sharding.spec import check_tp
from .service_config import shortfin_config


def _versions() -> dict[str, str]:
    out = {"irforge": __version__}
    for pkg in ("iree-base-compiler", "iree-base-runtime", "iree-turbine", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _link_into(src: Path, folder: Path, name: str) -> str:
    """Make `folder/name` refer to `src` without copying: a hard link, else a symlink."""
    dst = folder / name
    if dst.exists() and os.path.samefile(src, dst):
        return name
    tmp = folder / f".{name}.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        os.symlink(src.resolve(), tmp)
    os.replace(tmp, dst)
    return name


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
        from ..presets import get_preset

        return get_preset(preset), None
    if config is not None:
        return ModelConfig.from_hf_config(read_json_file(config), source=str(config)), None
    archive = open_archive(Path(source))  # type: ignore[arg-type]
    return archive.require_config(), archive


def _options(
    cfg: ModelConfig,
    *,
    bs_prefill: Sequence[int],
    bs_decode: Sequence[int],
    block_seq_stride: int,
    device_block_count: int,
    activation_dtype: str | None,
    kv_cache_dtype: str | None,
    attention_dtype: str | None,
    attention: str,
    top_k: int | None,
    max_seq_len: int | None,
) -> ExportOptions:
    """ExportOptions for `cfg`: dtypes default to the model's; ExportOptions checks each value,
    this the ones that depend on the model."""
    activation = activation_dtype or cfg.dtype
    kv = kv_cache_dtype or activation
    attn = attention_dtype or activation
    if top_k is not None and not 1 <= top_k <= cfg.vocab_size:
        raise ConfigError(f"--top-k must be between 1 and vocab size {cfg.vocab_size}")
    max_seq = max_seq_len or cfg.context_length
    if max_seq < block_seq_stride:
        raise ConfigError(
            f"max sequence length {max_seq} must be at least --block-seq-stride {block_seq_stride}"
        )
    return ExportOptions(
        prefill_batch_sizes=tuple(sorted(bs_prefill)),
        decode_batch_sizes=tuple(sorted(bs_decode)),
        block_seq_stride=block_seq_stride,
        device_block_count=device_block_count,
        activation_dtype=activation,
        kv_cache_dtype=kv,
        attention_dtype=attn,
        attention=attention,
        top_k=top_k,
        max_seq_len=max_seq,
    )


def export(
    source: Path | None = None,
    *,
    out_dir: Path,
    preset: str | None = None,
    config: Path | None = None,
    model_config: ModelConfig | None = None,
    bs_prefill: Sequence[int] = (4,),
    bs_decode: Sequence[int] = (4,),
    block_seq_stride: int = DEFAULTS.block_seq_stride,
    device_block_count: int = DEFAULTS.device_block_count,
    activation_dtype: str | None = None,
    kv_cache_dtype: str | None = None,
    attention_dtype: str | None = None,
    attention: str = DEFAULTS.attention,
    top_k: int | None = None,
    max_seq_len: int | None = None,
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
        bs_prefill / bs_decode: batch sizes; one prefill_bs{N} / decode_bs{N} each.
        activation_dtype / kv_cache_dtype / attention_dtype: "f32", "f16", "bf16"; default:
            the model's dtype (the activations' for the other two).
        attention: "decomposed" (compiles for gfx942) or "sdpa".
        top_k: None for full logits; 1 for argmax in the program; k for top-k.
        max_seq_len: default: the model's context length.
        tp: devices the program spans; default: the archive's (`irforge shard`), else 1.

    Raises:
        ConfigError, InputError, OutputError.

    Example:
        >>> export(Path("llama8b.irpa"), out_dir=Path("out/llama8b"), bs_prefill=(1, 4))
    """
    from .program import trace

    cfg, archive = _resolve_source(source, preset, config, model_config)
    archive_tp = archive.metadata.tensor_parallelism_size if archive and archive.metadata else 1
    if archive is not None and tp not in (None, archive_tp):
        raise ConfigError(
            f"{archive.path} is sharded for {archive_tp} device(s), not {tp}; "
            f"run `irforge shard --tp {tp}` on the unsharded archive"
        )
    tp = tp or archive_tp
    check_tp(cfg, tp)
    options = _options(
        cfg,
        bs_prefill=bs_prefill,
        bs_decode=bs_decode,
        block_seq_stride=block_seq_stride,
        device_block_count=device_block_count,
        activation_dtype=activation_dtype,
        kv_cache_dtype=kv_cache_dtype,
        attention_dtype=attention_dtype,
        attention=attention,
        top_k=top_k,
        max_seq_len=max_seq_len,
    ).replace(tensor_parallelism_size=tp)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {out_dir}: {e.strerror}") from e
    mlir = AtomicFile(out_dir / MLIR_NAME)
    with mlir:
        trace(cfg, options, Path(mlir.tmp_path), on_step=on_step)
    with AtomicFile(out_dir / SHORTFIN_CONFIG_NAME) as f:
        f.write(json.dumps(shortfin_config(cfg, options), indent=2).encode() + b"\n")
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
        versions=_versions(),
        source=str(archive.path if archive else preset or config or cfg.source),
    )
    manifest.save(out_dir)
    return manifest
