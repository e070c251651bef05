"""`irforge inspect`: list the metadata and tensors of weight files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from irforge.cli._options import JsonOpt


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _flatten(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def inspect_cmd(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Files to inspect: .gguf, .safetensors, *.safetensors.index.json, an HF model "
            "folder, or .irpa (a sharded NAME.irpa shows its rank files too).",
            show_default=False,
        ),
    ],
    as_json: JsonOpt = False,
    metadata_only: Annotated[
        bool, typer.Option("--metadata", "-m", help="Show metadata only, no tensor table.")
    ] = False,
) -> None:
    """List metadata and tensors (name, dtype, shape, bytes, file offset) of weight files."""
    from irforge.cli._output import out
    from irforge.stages.inspection import inspect_path

    results = [inspect_path(p) for p in paths]
    if as_json:
        docs = [r.to_dict() for r in results]
        out.print_json(json.dumps(docs if len(docs) > 1 else docs[0], default=str))
        return
    for r in results:
        out.print(
            f"[bold]{r.path}[/] ({r.format}, {len(r.tensors)} tensors, {_human(r.total_bytes)})"
        )
        for f in r.files if len(r.files) > 1 else []:
            out.print(f"  file: {f}")
        meta = Table("key", "value", title="metadata", title_justify="left", show_edge=False)
        for k, v in _flatten(r.metadata):
            meta.add_row(k, v if isinstance(v, str) else json.dumps(v, default=str))
        if r.metadata:
            out.print(meta)
        if metadata_only:
            continue
        table = Table("name", "dtype", "shape", "bytes", "offset", show_edge=False)
        for col in ("bytes", "offset"):
            table.columns[[c.header for c in table.columns].index(col)].justify = "right"
        multi = len(r.files) > 1
        if multi:
            table.add_column("file")
        for t in r.tensors:
            row = [t.name, t.dtype, str(list(t.shape)), str(t.nbytes), str(t.offset)]
            table.add_row(*row, *([t.path.name] if multi else []))
        out.print(table)
