"""`irforge models`: the registry of seed models, with sizes and memory per device."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from irforge.cli._options import JsonOpt


def _size(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"


def _params(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def models_cmd(as_json: JsonOpt = False) -> None:
    """List the models irforge knows by name: HF id, parameters, bf16 size, TP sizes.

    Sizes come from each model's config preset, so a model can be planned before it is
    downloaded; per-device memory is given for every supported TP size. Piped, one plain
    tab-separated row per model.
    """
    from irforge.stages.hub import ENTRIES, plan

    rows: list[dict[str, Any]] = []
    for entry in ENTRIES:
        row: dict[str, Any] = {
            "alias": entry.alias,
            "repo_id": entry.repo_id,
            "gguf_repo": entry.gguf_repo,
            "preset": entry.preset,
            "tp": list(entry.tp),
            "description": entry.description,
            "plans": [plan(entry, tp).to_dict() for tp in entry.tp],
        }
        rows.append(row)
    from irforge.cli._output import out

    if as_json:
        out.print_json(json.dumps(rows))
        return
    headers = ("alias", "HF id", "params", "bf16", "per device: weights + KV cache per page, by TP")
    lines = [
        (
            row["alias"],
            row["repo_id"] or "(built in)",
            _params(row["plans"][0]["parameters"] if row["plans"] else None),
            _size(row["plans"][0]["weight_bytes"] if row["plans"] else None),
            ", ".join(
                f"tp{p['tp']} {_size(p['weight_bytes_per_device'])} + "
                f"{_size(p['kv_page_bytes_per_device'])}/page"
                for p in row["plans"]
            )
            or "–",
        )
        for row in rows
    ]
    if not out.is_terminal:  # pipes and files get one plain row per model: grep and cut work
        for line in lines:
            typer.echo("\t".join(line))
        return
    table = Table(show_edge=False)
    for i, header in enumerate(headers):
        table.add_column(header, justify="right" if i in (2, 3) else "left", no_wrap=i < 2)
    for line in lines:
        table.add_row(*line)
    out.print(table)
