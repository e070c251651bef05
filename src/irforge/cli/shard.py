"""`irforge shard`: split a model into tensor-parallel rank files (or join them back)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from irforge.cli._options import OutIrpaOpt, QuantizeOpt, QuietOpt


def shard_cmd(
    source: Annotated[
        Path,
        typer.Argument(
            help="An irforge .irpa, or a GGUF/safetensors/HF folder (converted in the same pass).",
            show_default=False,
        ),
    ],
    out: OutIrpaOpt,
    tp: Annotated[int, typer.Option("--tp", help="Number of tensor-parallel ranks (1-8).")] = 2,
    unshard: Annotated[
        bool, typer.Option("--unshard", help="Join a sharded SOURCE back into one archive.")
    ] = False,
    dtype: Annotated[
        str | None, typer.Option(help="Cast float tensors to f32, f16 or bf16 on the way.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="HF config.json for a source without one.", dir_okay=False)
    ] = None,
    quantize: QuantizeOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Write OUT.irpa (metadata, replicated weights) and OUT.rank{i}.irpa (shard i of each).

    Column-parallel weights (attn_q/k/v, ffn_gate/up) split their rows, row-parallel ones
    (attn_output, ffn_down, output) their columns; shard i is stored as `<name>.shard.{i}`.
    Memory stays at one chunk whatever the model size. A quantized archive's scales follow
    their weights' rows: split with column-parallel weights, replicated with row-parallel ones.
    """
    from irforge.cli._output import byte_progress, err, note
    from irforge.stages.sharding import shard
    from irforge.stages.sharding import unshard as unshard_archive

    if unshard:
        typer.echo(unshard_archive(source, out=out))
        return
    with byte_progress("shard", quiet=quiet) as (on_plan, on_bytes):
        result = shard(
            source,
            tp=tp,
            out=out,
            dtype=dtype,
            config=config,
            quantize=quantize,
            on_plan=on_plan,
            on_bytes=on_bytes,
        )
    for message in result.notes:
        note(message)
    if not quiet:
        err.print(
            f"TP={tp}: {result.split} tensors split, {result.replicated} replicated, "
            f"{len(result.rank_files)} rank files",
            highlight=False,
        )
    typer.echo(result.out)
