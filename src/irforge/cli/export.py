"""`irforge export`: a paged Llama to MLIR (prefill/decode per batch size) + shortfin config."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from irforge.artifacts.manifest import (
    ATTENTION_KINDS,
    DEFAULTS,
    MAX_SPECULATIVE_TOKENS,
    VERIFY_MAX_BATCH,
)
from irforge.cli._options import DTypeOpt, QuietOpt, batch_sizes

# Built from the one declaration of the attention kinds, so mypy cannot list its members.
Attention = StrEnum("Attention", {k: k for k in ATTENTION_KINDS})  # type: ignore[misc]
DEFAULT_ATTENTION = Attention(DEFAULTS.attention)


def export_cmd(
    source: Annotated[
        Path | None,
        typer.Argument(help="An irforge .irpa (from `irforge convert`).", show_default=False),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write into.")] = Path("."),
    preset: Annotated[
        str | None,
        typer.Option(help="Export a seed model's shape without weights (e.g. llama-3.1-8b)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Export from an HF config.json without weights.", dir_okay=False),
    ] = None,
    bs_prefill: Annotated[
        str, typer.Option("--bs-prefill", help="Comma list of prefill batch sizes.")
    ] = ",".join(map(str, DEFAULTS.prefill_batch_sizes)),
    bs_decode: Annotated[
        str, typer.Option("--bs-decode", help="Comma list of decode batch sizes.")
    ] = ",".join(map(str, DEFAULTS.decode_batch_sizes)),
    block_seq_stride: Annotated[
        int, typer.Option(help="Tokens per KV-cache page.", min=1)
    ] = DEFAULTS.block_seq_stride,
    device_block_count: Annotated[
        int, typer.Option(help="KV-cache pages a server allocates per device.", min=2)
    ] = DEFAULTS.device_block_count,
    activation_dtype: DTypeOpt = None,
    f32_rows: Annotated[
        bool,
        typer.Option(
            "--f32-rows",
            help="An unquantized f16 model computes in f32 and keeps its KV cache in f16, its "
            "weights widened inside each matmul: faster on the CPU (`irforge build` does it "
            "when every target is the CPU), slower on GPUs. --activation-dtype overrides it.",
        ),
    ] = DEFAULTS.f32_rows,
    kv_cache_dtype: Annotated[
        str | None,
        typer.Option(
            help="KV-cache dtype: f32, f16, bf16, fp8 (e4m3fn) or fp8-fnuz (e4m3fnuz, for MI300); "
            "default: the activations'."
        ),
    ] = None,
    attention_dtype: Annotated[
        str | None,
        typer.Option(
            help="Attention dtype: f32 (default; half precision does not compile for the "
            "CPU at long contexts), f16 or bf16."
        ),
    ] = None,
    attention: Annotated[
        Attention,
        typer.Option(
            help="Prefill's and decode's attention: decomposed (compiles for every target; "
            "reads each cached K/V once) or sdpa (one fused kernel with a mask; IREE 3.13 "
            "cannot compile it for gfx942 at 32/8 heads)."
        ),
    ] = DEFAULT_ATTENTION,
    top_k: Annotated[
        int | None, typer.Option(help="Sample in the program: 1 = argmax; default: full logits.")
    ] = None,
    max_seq_len: Annotated[
        int | None, typer.Option(help="Longest sequence served (default: the context length).")
    ] = None,
    tp: Annotated[
        int | None,
        typer.Option("--tp", help="Devices, for --preset/--config (an archive knows its own)."),
    ] = None,
    speculative_tokens: Annotated[
        int,
        typer.Option(
            help="k of speculative decoding: also export verify_bs{N} (a row's last token and k "
            f"proposed ones) at the decode batch sizes up to {VERIFY_MAX_BATCH}; 0: none.",
            min=0,
            max=MAX_SPECULATIVE_TOKENS,
        ),
    ] = DEFAULTS.speculative_tokens,
    quiet: QuietOpt = False,
) -> None:
    """Export prefill_bs{N}/decode_bs{N} to OUT/model.mlir, with config.json for shortfin.

    Weights stay outside the program (parameter scope `model`): only the model's config is
    read, so `--preset llama-3.1-405b` exports on a laptop. With an archive, OUT gets it as
    `model.irpa` (a hard link) and its tokenizer files.
    """
    from irforge.artifacts.manifest import ExportOptions
    from irforge.cli._output import err, steps
    from irforge.stages.export import export

    options = ExportOptions(
        prefill_batch_sizes=tuple(batch_sizes(bs_prefill, "--bs-prefill")),
        decode_batch_sizes=tuple(batch_sizes(bs_decode, "--bs-decode")),
        block_seq_stride=block_seq_stride,
        device_block_count=device_block_count,
        activation_dtype=activation_dtype,
        f32_rows=f32_rows,
        kv_cache_dtype=kv_cache_dtype,
        attention_dtype=attention_dtype,
        attention=attention.value,
        top_k=top_k,
        max_seq_len=max_seq_len or 0,
        speculative_tokens=speculative_tokens,
    )
    with steps("export", quiet=quiet) as on_step:
        manifest = export(
            source,
            out_dir=out,
            preset=preset,
            config=config,
            options=options,
            tp=tp,
            on_step=on_step,
        )
    if not quiet:
        o = manifest.options
        err.print(
            f"prefill bs {list(o.prefill_batch_sizes)}, decode bs {list(o.decode_batch_sizes)}, "
            f"{o.activation_dtype} activations, {o.kv_cache_dtype} cache, {o.attention} attention",
            highlight=False,
        )
    typer.echo(out / manifest.mlir)
