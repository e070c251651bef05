"""`irforge build`: every stage from SOURCE to a servable folder, skipping what is up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from irforge.artifacts.manifest import (
    BUILD_DECODE_BS,
    BUILD_PREFILL_BS,
    BUILD_SPECULATIVE_TOKENS,
    DEFAULTS,
    MAX_SPECULATIVE_TOKENS,
)
from irforge.cli._options import QuantizeOpt, QuietOpt, batch_sizes


def _text(sizes: tuple[int, ...]) -> str:
    return ",".join(map(str, sizes))


def build_cmd(
    source: Annotated[
        str,
        typer.Argument(
            help="tiny (built in), a registry alias (`irforge models`), an HF repo id, or a "
            "local GGUF / safetensors / HF folder.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The folder to build into.")],
    target: Annotated[
        list[str] | None,
        typer.Option("--target", "-t", help="Compile target, repeatable (cpu, gfx942, ...)."),
    ] = None,
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel devices.", min=1)] = 1,
    bs: Annotated[
        str | None,
        typer.Option(help="Batch sizes for both prefill and decode.", show_default=False),
    ] = None,
    bs_prefill: Annotated[
        str | None,
        typer.Option(
            "--bs-prefill",
            help=f"Prefill batch sizes, instead of --bs [default: {_text(BUILD_PREFILL_BS)}].",
            show_default=False,
        ),
    ] = None,
    bs_decode: Annotated[
        str | None,
        typer.Option(
            "--bs-decode",
            help="Decode batch sizes, instead of --bs; the largest is how many sequences one "
            f"step serves [default: {_text(BUILD_DECODE_BS)}].",
            show_default=False,
        ),
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="Cast weights to f32, f16 or bf16.")] = None,
    quantize: QuantizeOpt = None,
    block_seq_stride: Annotated[
        int, typer.Option(help="Tokens per KV-cache page.")
    ] = DEFAULTS.block_seq_stride,
    device_block_count: Annotated[
        int, typer.Option(help="KV-cache pages per device.")
    ] = DEFAULTS.device_block_count,
    speculative_tokens: Annotated[
        int,
        typer.Option(
            help="k of the verify entry points that `irforge serve --speculative-config` uses "
            "(0: none; each is a decode batch size's program again to compile).",
            min=0,
            max=MAX_SPECULATIVE_TOKENS,
        ),
    ] = BUILD_SPECULATIVE_TOKENS,
    f32_rows: Annotated[
        bool | None,
        typer.Option(
            "--f32-rows/--no-f32-rows",
            help="An unquantized f16 model computes in f32, its f16 weights widened inside each "
            "matmul (`irforge export --f32-rows`). Default: when every target is the CPU, "
            "where it is faster and closer to f32.",
            show_default=False,
        ),
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision to download.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run every step.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the plan and the equivalent commands; run nothing."),
    ] = False,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify",
            help="Skip the check that runs a short prompt through the compiled cpu program "
            "and the eager model in f32 (greedy agreement, mean KL divergence; a program "
            "over the limit fails the build).",
        ),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Download, convert (or shard), export and compile SOURCE into OUT.

    OUT is then what `irforge serve OUT` and shortfin run. Re-running skips the steps whose
    inputs and arguments are unchanged (OUT/manifest.json records them).
    """
    from rich.table import Table

    from irforge.cli._output import err, note, steps
    from irforge.cli._output import out as stdout
    from irforge.stages.build import build

    with steps("build", quiet=quiet or dry_run) as on_step:
        result = build(
            source,
            out_dir=out,
            targets=target or ["cpu"],
            tp=tp,
            bs_prefill=_sizes(bs_prefill, bs, "--bs-prefill"),
            bs_decode=_sizes(bs_decode, bs, "--bs-decode"),
            dtype=dtype,
            quantize=quantize,
            block_seq_stride=block_seq_stride,
            device_block_count=device_block_count,
            speculative_tokens=speculative_tokens,
            f32_rows=f32_rows,
            revision=revision,
            force=force,
            dry_run=dry_run,
            verify=not no_verify,
            on_step=lambda name, status: on_step(f"{name}: {status}"),
            on_note=note,
        )
    table = Table("step", "status", "time", "why", title=f"irforge build {source}", show_edge=False)
    for s in result.steps:
        table.add_row(s.name, s.status, f"{s.seconds:.1f} s" if s.seconds else "", s.reason)
    if dry_run:
        stdout.print(table)
        stdout.print("equivalent commands:")
        for command in result.commands:
            stdout.print(f"  {command}", highlight=False)
        return
    if not quiet:
        err.print(table)
        for f in sorted(out.glob("model*")):
            err.print(f"  {f.name:<24} {f.stat().st_size / 2**20:10.1f} MiB", highlight=False)
    typer.echo(out)


def _sizes(own: str | None, both: str | None, option: str) -> list[int] | None:
    """--bs-prefill / --bs-decode win over --bs; None leaves build()'s default."""
    if own is not None:
        return batch_sizes(own, option)
    return None if both is None else batch_sizes(both, "--bs")
