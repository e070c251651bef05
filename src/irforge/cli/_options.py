"""Option aliases shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from irforge.facts.quantization import SCHEMES

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
OutIrpaOpt = Annotated[
    Path, typer.Option("--out", "-o", help="The .irpa archive to write.", dir_okay=False)
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="IREE driver that runs the program: local-task (cpu), cuda or hip. Uses the VMFB "
        "compiled for it (cpu for local-task, sm_80/sm_90 for cuda, gfx* for hip).",
    ),
]
DeviceIdsOpt = Annotated[
    str | None,
    typer.Option(
        "--device-ids",
        help="Which devices of that driver, comma separated (one per TP rank): 0,1. "
        "Default: the first ones.",
    ),
]
QuantizeOpt = Annotated[
    str | None,
    typer.Option(
        "--quantize",
        help="Store the linear layers' weights quantized; the program reads them as stored ("
        + "; ".join(f"{s.name}: {s.about}" for s in SCHEMES.values())
        + "). Embeddings and norms keep the float dtype (--dtype). Default: none.",
        show_default=False,
    ),
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


def parse_device_ids(text: str | None) -> list[int] | None:
    """'0,1' -> [0, 1]; None when not given; a usage error naming --device-ids otherwise."""
    if not text:
        return None
    try:
        ids = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise typer.BadParameter(
            f"expected device indices like 0,1, got {text!r}", param_hint="--device-ids"
        ) from None
    if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise typer.BadParameter(
            f"expected distinct indices >= 0, got {text!r}", param_hint="--device-ids"
        )
    return ids
