"""`irforge convert`: a GGUF or safetensors checkpoint to an irforge IRPA archive."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from irforge.cli._options import OutIrpaOpt, QuantizeOpt, QuietOpt


class DType(StrEnum):
    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"


def convert_cmd(
    source: Annotated[
        Path,
        typer.Argument(
            help="A .gguf file, a .safetensors file, a *.safetensors.index.json, or an HF model "
            "folder (config.json + weights + tokenizer files).",
            show_default=False,
        ),
    ],
    out: OutIrpaOpt,
    dtype: Annotated[
        DType | None,
        typer.Option(
            "--dtype",
            help="Cast float tensors to this dtype. Default: keep them as stored; quantized GGUF "
            "tensors are dequantized to f16.",
            case_sensitive=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="An HF config.json with the model's hyperparameters (for a lone safetensors "
            "file, or to override the source's).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    quantize: QuantizeOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Convert GGUF/safetensors weights to an IRPA archive with canonical tensor names.

    Untouched tensors are copied byte for byte, others one chunk at a time, so memory use
    does not grow with the model. The output is written under a temporary name and renamed
    at the end; tokenizer files next to the source are copied next to the output.
    """
    from irforge.cli._output import byte_progress, err, note
    from irforge.stages.convert import convert

    with byte_progress("convert", quiet=quiet) as (on_plan, on_bytes):
        result = convert(
            source,
            out=out,
            dtype=dtype.value if dtype else None,
            config=config,
            quantize=quantize,
            on_plan=on_plan,
            on_bytes=on_bytes,
        )
    for message in result.notes:
        note(message)
    if not quiet:
        err.print(
            f"{result.tensors} tensors ({result.copied} copied, {result.converted} cast, "
            f"{result.dequantized} dequantized"
            + (f", {result.quantized} quantized to {quantize}" if quantize else "")
            + f"), {result.bytes_written / 2**20:.1f} MiB",
            highlight=False,
        )
    typer.echo(result.out)
