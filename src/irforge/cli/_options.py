"""Option aliases shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
OutIrpaOpt = Annotated[
    Path, typer.Option("--out", "-o", help="The .irpa archive to write.", dir_okay=False)
]
DTypeOpt = Annotated[
    str | None,
    typer.Option("--activation-dtype", help="f32, f16 or bf16 (default: the archive's dtype)."),
]


def batch_sizes(text: str, option: str) -> list[int]:
    """'1,4' -> [1, 4]; a usage error naming the option otherwise."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"expected a comma list of integers, got {text!r}", param_hint=option
        ) from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"batch sizes must be positive, got {text!r}", param_hint=option)
    return sizes
