"""`irforge download`: fetch a model's weights, config and tokenizer from the Hugging Face Hub."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from irforge.cli._options import QuietOpt


class WeightFormat(StrEnum):
    safetensors = "safetensors"
    gguf = "gguf"


def download_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help="An HF repo id (owner/name) or a registry alias (see `irforge models`).",
            show_default=False,
        ),
    ],
    revision: Annotated[
        str | None,
        typer.Option("--revision", "-r", help="Branch, tag or commit (default: main)."),
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option("--include", help="Download only files matching this glob (repeatable)."),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="Skip files matching this glob (repeatable)."),
    ] = None,
    format: Annotated[
        WeightFormat,
        typer.Option("--format", "-f", help="Weights to fetch.", case_sensitive=False),
    ] = WeightFormat.safetensors,
    quant: Annotated[
        str | None,
        typer.Option("--quant", help="With --format gguf: the quantization (f16, q8_0, Q4_K_M…)."),
    ] = None,
    local_dir: Annotated[
        Path | None,
        typer.Option(
            "--local-dir", help="Download here instead of the shared HF cache.", file_okay=False
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="HF_TOKEN", show_envvar=True, help="Hugging Face access token."),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option("--allow-pickle", help="Allow .bin/.pth pickle files (they can run code)."),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Download safetensors weights (or one GGUF), config.json and tokenizer files.

    The revision is pinned to one commit, recorded with the file list in
    irforge-download.json beside the files. Files go to the shared HF cache unless
    --local-dir is given; HF_HUB_OFFLINE=1 serves the download from the cache. Prints the
    folder path.
    """
    if quant is not None and format is not WeightFormat.gguf:
        raise typer.BadParameter("needs --format gguf", param_hint="--quant")

    from irforge.cli._output import err, note
    from irforge.stages.hub import download
    from irforge.stages.hub.progress import rich_tqdm

    with rich_tqdm(err, enabled=not quiet and err.is_terminal) as bar:
        result = download(
            model,
            revision=revision,
            include=tuple(include or ()),
            exclude=tuple(exclude or ()),
            format=format.value,
            quant=quant,
            local_dir=local_dir,
            token=token,
            allow_pickle=allow_pickle,
            tqdm_class=bar,
        )
    for message in result.notes:
        note(message)
    if not quiet:
        source = "from the cache" if result.from_cache_only else f"commit {result.revision[:12]}"
        err.print(
            f"{result.repo_id}: {len(result.files)} files, "
            f"{result.total_bytes / 2**20:.1f} MiB ({source})",
            highlight=False,
        )
    typer.echo(result.path)
