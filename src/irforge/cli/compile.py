"""`irforge compile`: an export folder to a VMFB for a target (cpu, gfx942, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from irforge.cli._options import QuietOpt


def compile_cmd(
    folder: Annotated[Path, typer.Argument(help="A folder written by `irforge export`.")],
    target: Annotated[
        str,
        typer.Option(
            "--target",
            "-t",
            help="cpu (host), gfx942 (mi300x, mi300), gfx90a (mi250), gfx1100, sm_80, sm_90.",
        ),
    ] = "cpu",
    devices: Annotated[
        int | None,
        typer.Option(help="Devices the program spans (default: the export's tensor parallelism)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="VMFB path (default FOLDER/model.TARGET.vmfb)."),
    ] = None,
    iree_flag: Annotated[
        list[str] | None,
        typer.Option(
            "--iree-flag",
            help="Extra iree-compile flag, repeatable; the last of a repeated flag wins, e.g. "
            "--iree-global-opt-data-tiling=false drops the CPU preset's packed weight copy.",
        ),
    ] = None,
    iree_compile: Annotated[
        Path | None,
        typer.Option(
            "--iree-compile",
            help="Another iree-compile binary to use instead of the installed one.",
        ),
    ] = None,
    for_shortfin: Annotated[
        bool,
        typer.Option(
            "--for-shortfin",
            help="Compile with IREE 3.9 (fetched from PyPI into ~/.cache/irforge once), the "
            "release AMD's shortfin server runs: writes model.TARGET.iree3.9.vmfb.",
        ),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Compile FOLDER/model.mlir with iree-compile; errors point at the full log."""
    from irforge.cli._output import err, steps
    from irforge.stages.compile import compile_folder

    if for_shortfin and iree_compile is not None:
        raise typer.BadParameter("give --for-shortfin or --iree-compile, not both")
    with steps("compile", quiet=quiet) as on_step:
        if for_shortfin:
            from irforge.stages.compile.shortfin import SHORTFIN_IREE_VERSION, shortfin_compiler

            on_step(f"fetching iree-base-compiler {SHORTFIN_IREE_VERSION} (once)")
            iree_compile = shortfin_compiler()
        on_step(f"iree-compile for {target}")
        result = compile_folder(
            folder,
            target=target,
            devices=devices,
            out=out,
            extra_flags=iree_flag or [],
            compiler=iree_compile,
        )
    if not quiet:
        size = result.vmfb.stat().st_size / 2**20
        err.print(
            f"{result.target.name}: {size:.1f} MiB in {result.seconds:.1f} s", highlight=False
        )
    typer.echo(result.vmfb)
