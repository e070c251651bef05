"""convert(): a GGUF or safetensors checkpoint to an irforge IRPA, streamed tensor by tensor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from irforge.artifacts.archive import ArchiveMetadata
from irforge.errors import ConfigError
from irforge.facts.config import ModelConfig
from irforge.formats.irpa import write_irpa
from irforge.formats.locks import locked
from irforge.stages.tensor_plan import copy_tokenizer, plan, source_record


@dataclass
class ConvertResult:
    out: Path
    config: ModelConfig | None
    tensors: int = 0
    bytes_written: int = 0
    copied: int = 0  # tensors copied byte for byte
    converted: int = 0  # tensors cast to another float dtype
    dequantized: int = 0
    quantized: int = 0  # linear weights stored quantized (`quantize`)
    tokenizer_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@locked("out", folder=False)
def convert(
    source: Path,
    *,
    out: Path,
    dtype: str | None = None,
    config: Path | None = None,
    quantize: str | None = None,
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
        quantize: a weight-only scheme for the linear layers ("int8": per-output-channel
            scales; see quantization.py); the archive's config records it.
        on_bytes / on_plan: progress callbacks (bytes written; total bytes planned).

    Returns:
        A ConvertResult with counts and notes for the user.

    Raises:
        InputError, ConfigError, UnsupportedModelError, OutputError.

    Example:
        >>> convert(Path("Llama-3.1-8B"), out=Path("llama8b.irpa"), dtype="f16")
    """
    out = Path(out)
    if out.suffix != ".irpa":
        raise ConfigError(f"output {out} must end in .irpa")
    p = plan(Path(source), dtype=dtype, config=config, quantize=quantize)
    src = p.source
    meta = ArchiveMetadata(config=p.config, source=source_record(src))
    entries = [t.entry() for t in p.tensors] + [meta.entry()]
    if on_plan:
        on_plan(sum(e.nbytes for e in entries))
    write_irpa(out, entries, on_bytes=on_bytes, inputs=src.inputs)
    return ConvertResult(
        out=out,
        config=p.config,
        tensors=len(p.tensors),
        bytes_written=out.stat().st_size,
        copied=sum(t.how == "copy" for t in p.tensors),
        converted=sum(t.how == "cast" for t in p.tensors),
        dequantized=sum(t.how == "dequantize" for t in p.tensors),
        quantized=sum(t.how == "quantize" for t in p.tensors),
        tokenizer_files=copy_tokenizer(src, out, p.notes),
        notes=p.notes,
    )
