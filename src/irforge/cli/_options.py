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
