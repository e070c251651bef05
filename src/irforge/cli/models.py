"""`irforge models`: the registry of seed models, with sizes and memory per device."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from ._options import JsonOpt


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
    downloaded; per-device memory is for the weights at the largest supported TP size.
    """
    from irforge.hub import ENTRIES, plan

    rows: list[dict[str, Any]] = []
    for entry in ENTRIES:
        row: dict[str, Any] = {
            "alias": entry.alias,
            "repo_id": entry.repo_id,
            "gguf_repo": entry.gguf_repo,
            "preset": entry.preset,
            "tp": list(entry.tp),
            "description": entry.description,
            "plans": [],
        }
        if entry.has_config:
            row["plans"] = [plan(entry, tp).to_dict() for tp in entry.tp]
        rows.append(row)
    from ._output import out

    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(show_edge=False)
    for header in ("alias", "HF id"):
        table.add_column(header, overflow="fold")
    for header in ("params", "bf16"):
        table.add_column(header, justify="right")
    table.add_column("TP")
    table.add_column("per device, max TP", justify="right")
    for row in rows:
        last = row["plans"][-1] if row["plans"] else {}
        tps = row["tp"]
        table.add_row(
            row["alias"],
            row["repo_id"] or "(built in)",
            _params(last.get("parameters")),
            _size(last.get("weight_bytes")),
            f"tp{tps[0]}" + (f"–tp{tps[-1]}" if len(tps) > 1 else ""),
            _size(last.get("weight_bytes_per_device")),
        )
    out.print(table)
