"""`irforge serve`: an HTTP server (shortfin's /generate, OpenAI's /v1) for an artifact folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from irforge.cli._options import DeviceIdsOpt, DeviceOpt, parse_device_ids
from irforge.engine.options import DRAIN_TIMEOUT_S, EngineOptions
from irforge.engine.replica_args import DEFAULT_ROUTING
from irforge.engine.speculative import DEFAULT_LOOKUP, SpeculativeConfig
from irforge.runtime.device_memory import CACHE_SHARE

DEFAULTS = EngineOptions()


def serve_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder from `irforge export` + `compile`.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    device: DeviceOpt = DEFAULTS.device,
    device_ids: DeviceIdsOpt = None,
    max_queue: Annotated[
        int, typer.Option(help="Requests waiting for cache pages before 503.", min=1)
    ] = DEFAULTS.max_queue,
    kv_cache_pages: Annotated[
        int | None,
        typer.Option(
            help=f"KV-cache pages per device (default: on cuda/hip, {CACHE_SHARE:.0%} of the "
            "memory the weights leave free; elsewhere the export's --device-block-count).",
            min=2,
        ),
    ] = None,
    kv_cache_gib: Annotated[
        float | None,
        typer.Option(help="Instead of --kv-cache-pages: as many pages as fit in G GiB.", min=0),
    ] = None,
    prefix_caching: Annotated[
        bool,
        typer.Option(
            help="Share the KV-cache pages of prompt prefixes between requests (whole pages "
            "of identical leading tokens are not prefilled again)."
        ),
    ] = DEFAULTS.prefix_caching,
    prefill_chunk: Annotated[
        int,
        typer.Option(
            help="Prompt tokens prefilled per engine step, all requests together, between "
            "decode steps, so a long prompt does not stall running streams (whole pages; "
            "0: whole prompts at once).",
            min=0,
        ),
    ] = DEFAULTS.prefill_chunk,
    speculative_config: Annotated[
        str | None,
        typer.Option(
            help="Speculative decoding, as vLLM's JSON: "
            '\'{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, '
            '"prompt_lookup_min": 2}\' (n-gram prompt lookup; every field optional: k defaults '
            f"to the program's, lookup to {DEFAULT_LOOKUP[0]} and {DEFAULT_LOOKUP[1]}), or with "
            '"model": a draft model\'s folder. '
            "A batch is verified only when measured step times and acceptance say it gains. "
            "Default: off.",
            show_default=False,
        ),
    ] = None,
    speculative_model: Annotated[
        Path | None,
        typer.Option(
            help="Speculative decoding with a draft model: its built folder (a smaller model "
            "with the same tokenizer, built with the same --bs-decode); the same as "
            "--speculative-config '{\"model\": DIR}'.",
            show_default=False,
        ),
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="Model id for /v1/models (default: the folder name).")
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds to finish in-flight requests on SIGTERM.", min=0)
    ] = DRAIN_TIMEOUT_S,
    replicas: Annotated[
        int,
        typer.Option(
            help="Engines of the folder behind one port, on Ray Serve (pip install "
            '"irforge[ray]"); 1 is the plain one-process server.',
            min=1,
        ),
    ] = 1,
    min_replicas: Annotated[
        int | None,
        typer.Option(
            help="With --max-replicas: as many replicas as the load needs, from this many "
            "(Ray Serve's autoscaler, on requests per replica against its largest decode batch).",
            min=1,
        ),
    ] = None,
    max_replicas: Annotated[
        int | None, typer.Option(help="The most replicas autoscaling starts.", min=1)
    ] = None,
    routing: Annotated[
        str,
        typer.Option(
            help="How replicas are picked: 'prefix' sends a prompt to the replica that holds "
            "its beginning (least-loaded when that one is far behind); 'load': always the "
            "least-loaded replica.",
        ),
    ] = DEFAULT_ROUTING,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Join this Ray cluster for the replicas instead of starting one."),
    ] = None,
) -> None:
    """Serve a compiled model with continuous batching: /generate, /v1/*, /health, /metrics.

    SIGTERM stops admitting requests, finishes those in flight (up to --drain-timeout), then
    exits 0; Ctrl-C does the same and exits 130, as interrupted commands do.
    """
    from irforge.serve.server import serve

    ids = parse_device_ids(device_ids)
    options = EngineOptions(
        device=device,
        device_ids=tuple(ids) if ids else None,
        max_queue=max_queue,
        page_count=kv_cache_pages,
        cache_gib=kv_cache_gib,
        prefix_caching=prefix_caching,
        prefill_chunk=prefill_chunk,
        speculative=SpeculativeConfig.parse(
            speculative_config, str(speculative_model.resolve()) if speculative_model else None
        ),
    )
    if replicas > 1 or ray_address or min_replicas or max_replicas:
        from irforge.artifacts.manifest import Manifest
        from irforge.engine.replica_args import replica_args
        from irforge.serve.replicas import serve_replicas

        args = replica_args(  # bad options fail here, before Ray starts
            folder.resolve(),
            Manifest.load(folder),
            options,
            model_name=model_name or folder.resolve().name,
            replicas=replicas,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            routing=routing,
            drain_timeout=drain_timeout,
        )
        serve_replicas(args, ray_address=ray_address, host=host, port=port)
        return
    serve(folder, options, host=host, port=port, model_name=model_name, drain_timeout=drain_timeout)
