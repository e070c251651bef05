"""convert(): a GGUF or safetensors checkpoint to an irforge IRPA, streamed tensor by tensor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..archive import ArchiveMetadata
from ..config import ModelConfig
from ..errors import ConfigError, InputError, UnsupportedModelError
from ..formats import atomic
from ..formats.dtypes import BY_NAME, CONVERTIBLE
from ..formats.gguf import dequantize, row_bytes
from ..formats.irpa import OutputEntry, tensor_metadata, write_irpa
from ..formats.sources import Source, open_source, read_json_file
from ..formats.tensor_ref import TensorRef, read_range
from .names import HF_IGNORED, check_tensors, hf_to_canonical

# Elements converted per step: bounds peak memory whatever the tensor size.
CHUNK_ELEMENTS = 8 * 1024 * 1024
DEFAULT_DEQUANT_DTYPE = "f16"
ROPE_FREQS = "rope_freqs.weight"


@dataclass
class ConvertResult:
    out: Path
    config: ModelConfig | None
    tensors: int = 0
    bytes_written: int = 0
    copied: int = 0  # tensors copied byte for byte
    converted: int = 0  # tensors cast to another float dtype
    dequantized: int = 0
    tokenizer_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _cast_chunks(ref: TensorRef, target: str) -> Callable[[], Iterator[bytes]]:
    src, dst = BY_NAME[ref.dtype], BY_NAME[target]

    def gen() -> Iterator[bytes]:
        step = CHUNK_ELEMENTS * src.itemsize
        for start in range(0, ref.nbytes, step):
            raw = read_range(ref, start, min(step, ref.nbytes - start))
            # Through float32, as torch does: exact from f16/bf16, one rounding to the target.
            yield raw.view(src.numpy).astype(np.float32).astype(dst.numpy).tobytes()

    return gen


def _dequant_chunks(ref: TensorRef, target: str) -> Callable[[], Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        step = row_bytes(ref) * max(1, CHUNK_ELEMENTS // ref.shape[-1])
        for start in range(0, ref.nbytes, step):
            part = dequantize(ref, read_range(ref, start, min(step, ref.nbytes - start)))
            yield part.astype(BY_NAME[target].numpy).tobytes()

    return gen


def _canonical_name(source: Source, name: str, notes: list[str]) -> str | None:
    if source.kind == "gguf":
        return name
    if HF_IGNORED.match(name):
        return None
    mapped = hf_to_canonical(name)
    if mapped is None:
        notes.append(f"tensor {name!r} is not a known Llama tensor; kept under its own name")
        return name
    return mapped


@dataclass
class _Planned:
    entry: OutputEntry
    how: str  # "copy" | "cast" | "dequantize"
    dtype: str
    shape: tuple[int, ...]


def _plan_entry(ref: TensorRef, out_name: str, dtype: str | None) -> _Planned:
    """The output entry for one tensor, and how it is produced: copy, cast or dequantize."""
    if ref.is_quantized:
        target = dtype or DEFAULT_DEQUANT_DTYPE
        how, source = "dequantize", _dequant_chunks(ref, target)
    elif dtype and BY_NAME[ref.dtype].is_float and ref.dtype != dtype:
        target, how, source = dtype, "cast", _cast_chunks(ref, dtype)
    else:
        target, how, source = ref.dtype, "copy", ref
    nbytes = ref.numel * BY_NAME[target].itemsize
    entry = OutputEntry(out_name, nbytes, source, tensor_metadata(target, ref.shape))
    return _Planned(entry, how, target, ref.shape)


def _model_config(
    source: Source, tensors: dict[str, TensorRef], out_dtype: str, config_path: Path | None
) -> ModelConfig | None:
    """The source's hyperparameters; errors name the file they come from."""
    folder = source.path if source.path.is_dir() else source.path.parent
    where = config_path or (source.path if source.gguf_metadata else folder / "config.json")
    try:
        return _read_model_config(source, tensors, out_dtype, config_path)
    except (ConfigError, UnsupportedModelError) as e:
        raise type(e)(f"{where}: {e}") from e


def _read_model_config(
    source: Source, tensors: dict[str, TensorRef], out_dtype: str, config_path: Path | None
) -> ModelConfig | None:
    label = str(source.path)
    if config_path is not None:
        return ModelConfig.from_hf_config(
            read_json_file(config_path), dtype=out_dtype, source=label
        )
    if source.gguf_metadata is not None:
        factors = None
        if ROPE_FREQS in tensors:
            freqs = tensors[ROPE_FREQS]
            if freqs.dtype != "f32":
                raise InputError(f"{source.path}: {ROPE_FREQS} is {freqs.dtype}, expected f32")
            factors = tuple(read_range(freqs, 0, freqs.nbytes).view(np.float32).tolist())
        embd = tensors.get("token_embd.weight")
        return ModelConfig.from_gguf_metadata(
            source.gguf_metadata,
            vocab_size=embd.shape[0] if embd else None,
            tie_word_embeddings="output.weight" not in tensors,
            rope_freq_factors=factors,
            dtype=out_dtype,
            source=label,
        )
    if source.hf_config is not None:
        return ModelConfig.from_hf_config(source.hf_config, dtype=out_dtype, source=label)
    return None


def convert(
    source: Path,
    *,
    out: Path,
    dtype: str | None = None,
    config: Path | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> ConvertResult:
    """Convert a checkpoint to an irforge IRPA archive with canonical (GGUF-style) names.

    Args:
        source: a .gguf file, a .safetensors file, a *.safetensors.index.json, or an HF folder.
        out: the .irpa to write (atomically); tokenizer files are copied beside it.
        dtype: "f32", "f16" or "bf16" to cast float tensors; None keeps them as stored.
            Quantized GGUF tensors are dequantized to this dtype (default f16).
        config: an HF config.json to use instead of the source's (needed for lone files).
        on_bytes / on_plan: progress callbacks (bytes written; total bytes planned).

    Returns:
        A ConvertResult with counts and notes for the user.

    Raises:
        InputError, ConfigError, UnsupportedModelError, OutputError.

    Example:
        >>> convert(Path("Llama-3.1-8B"), out=Path("llama8b.irpa"), dtype="f16")
    """
    if dtype is not None and dtype not in CONVERTIBLE:
        raise ConfigError(f"--dtype must be one of {', '.join(CONVERTIBLE)}, got {dtype!r}")
    out = Path(out)
    if out.suffix != ".irpa":
        raise ConfigError(f"output {out} must end in .irpa")
    src = open_source(Path(source))
    result = ConvertResult(out=out, config=None)
    named: dict[str, TensorRef] = {}
    for ref in src.tensors:
        name = _canonical_name(src, ref.name, result.notes)
        if name is None:
            continue
        if name in named:
            raise InputError(
                f"{src.path}: tensors {named[name].name!r} and {ref.name!r} both map to {name!r}"
            )
        named[name] = ref
    # rope_freqs.weight travels in the config as rope_freq_factors, not as a weight.
    plan = [_plan_entry(ref, name, dtype) for name, ref in named.items() if name != ROPE_FREQS]
    cfg = _model_config(src, named, _dominant_float(plan), config)
    if cfg is not None:
        if cfg.tie_word_embeddings and "output.weight" in named:
            plan = [p for p in plan if p.entry.name != "output.weight"]
            result.notes.append("dropped output.weight: the config ties it to token_embd.weight")
        check_tensors(cfg, {p.entry.name: p.shape for p in plan}, str(src.path))
    else:
        result.notes.append(
            "no config.json beside the source: the archive has no hyperparameters; "
            "pass `--config config.json` so that export can use it"
        )
    meta = ArchiveMetadata(config=cfg, source={"path": str(src.path.resolve()), "kind": src.kind})
    entries = [p.entry for p in plan] + [meta.entry()]
    if on_plan:
        on_plan(sum(e.nbytes for e in entries))
    write_irpa(out, entries, on_bytes=on_bytes, inputs=src.inputs)
    result.config = cfg
    result.tensors = len(plan)
    result.bytes_written = out.stat().st_size
    result.copied = sum(p.how == "copy" for p in plan)
    result.converted = sum(p.how == "cast" for p in plan)
    result.dequantized = sum(p.how == "dequantize" for p in plan)
    result.tokenizer_files = _copy_tokenizer(src, out)
    return result


def _dominant_float(plan: list[_Planned]) -> str:
    """The float dtype most weight bytes are in: what the model 'is' (f32, f16 or bf16)."""
    totals: dict[str, int] = {}
    for p in plan:
        if p.dtype in CONVERTIBLE:
            totals[p.dtype] = totals.get(p.dtype, 0) + p.entry.nbytes
    return max(totals, key=totals.__getitem__) if totals else "f32"


def _copy_tokenizer(src: Source, out: Path) -> list[Path]:
    copied = []
    for f in src.tokenizer_files:
        dst = out.parent / f.name
        if dst.resolve() != f.resolve():
            atomic.copy_file(f, dst)
        copied.append(dst)
    return copied
