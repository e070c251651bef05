"""`irforge serve`: an HTTP server (shortfin's /generate, OpenAI's /v1) for an artifact folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _device_ids(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        ids = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise typer.BadParameter(
            f"expected device indices like 0,1, got {text!r}", param_hint="--device-ids"
        ) from None
    if any(i < 0 for i in ids):
        raise typer.BadParameter(f"device indices must be >= 0, got {text!r}")
    return ids


def serve_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder from `irforge export` + `compile`.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    device: Annotated[
        str, typer.Option(help="IREE driver: local-task (CPU) or hip.")
    ] = "local-task",
    device_ids: Annotated[
        str | None, typer.Option(help="Devices of that driver, comma separated: 0,1.")
    ] = None,
    max_queue: Annotated[
        int, typer.Option(help="Requests waiting for cache pages before 503.", min=1)
    ] = 256,
    model_name: Annotated[
        str | None, typer.Option(help="Model id for /v1/models (default: the folder name).")
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds to finish in-flight requests on SIGTERM.", min=0)
    ] = 120.0,
) -> None:
    """Serve a compiled model with continuous batching: /generate, /v1/*, /health, /metrics.

    SIGTERM (or Ctrl-C) stops admitting requests, finishes those in flight, then exits 0.
    """
    from irforge.serve.server import serve

    serve(
        folder,
        host=host,
        port=port,
        device=device,
        device_ids=_device_ids(device_ids),
        max_queue=max_queue,
        model_name=model_name,
        drain_timeout=drain_timeout,
    )
