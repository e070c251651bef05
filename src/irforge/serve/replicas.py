"""serve_replicas(): N engines of one folder on Ray Serve, behind one HTTP port.

Each replica is a Ray actor running the same FastAPI app as `irforge serve` (serve/app.py)
over its own Engine; Ray Serve's proxy routes each request to a replica and streams the
response back. A replica that dies is restarted by Ray. Ray is optional (`pip install
"irforge[ray]"`); the one-process server needs none of it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from irforge.engine.options import EngineOptions
from irforge.errors import InputError
from irforge.runtime.devices import CPU_DRIVER, normalize_driver

APP_NAME = "irforge"
# Ray Serve's default (5) would queue a replica's requests in Ray instead of in its engine,
# which batches them: let the engine see all it can hold
MAX_ONGOING = 1024


def _builder(folder: str, options: EngineOptions, model_name: str | None) -> Callable[[], Any]:
    """A function Ray Serve calls in each replica to make its ASGI app (a closure, not a
    partial: Serve takes only plain functions as app builders)."""

    def build() -> Any:
        from irforge.engine.engine import Engine
        from irforge.serve.app import create_app

        return create_app(Engine(Path(folder), options), model_name=model_name)

    return build


def serve_replicas(
    folder: Path,
    options: EngineOptions,
    *,
    replicas: int,
    ray_address: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    drain_timeout: float = 120.0,
) -> None:
    """Run `replicas` engines of `folder` until SIGTERM or SIGINT, then shut Serve down
    and, if this call started Ray, Ray too.

    Each replica asks Ray for the devices its program spans: `tp` GPUs on a GPU driver,
    else one CPU.
    """
    # Ray's C++ failure handler turns the SIGTERM that asks this process to drain into an
    # abort (exit -6); the handlers below do the stopping
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    # no usage report to Ray's servers unless the user asks for it
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        from ray import serve
    except ImportError:
        raise InputError(
            'replicas run on Ray Serve, which is not installed: pip install "irforge[ray]"'
        ) from None
    from irforge.artifacts.manifest import Manifest

    manifest = Manifest.load(folder)  # a bad folder fails here, before Ray starts
    tp = manifest.options.tensor_parallelism_size
    name = model_name or Path(folder).resolve().name
    on_cpu = normalize_driver(options.device) == CPU_DRIVER
    actor = {"num_cpus": 1} if on_cpu else {"num_gpus": tp}
    started_ray = not ray.is_initialized()
    if started_ray:
        try:
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise InputError(f"cannot start or join Ray ({ray_address or 'local'}): {e}") from None
    stop = threading.Event()
    restore = _stop_on_signals(stop)  # after ray.init, which installs a SIGTERM handler of its own
    try:
        serve.start(http_options={"host": host, "port": port})
        deployment = serve.deployment(
            serve.ingress(_builder(str(Path(folder).resolve()), options, name))(),
            name=APP_NAME,
            num_replicas=replicas,
            ray_actor_options=actor,
            max_ongoing_requests=MAX_ONGOING,
            graceful_shutdown_timeout_s=drain_timeout,
        )
        serve.run(deployment.bind(), name=APP_NAME, route_prefix="/", blocking=False)  # type: ignore[attr-defined]
        print(
            f"irforge serve: http://{host}:{port} ({name}; {replicas} replicas on Ray Serve)",
            file=sys.stderr,
            flush=True,
        )
        stop.wait()
    finally:
        serve.shutdown()
        if started_ray:
            ray.shutdown()
        restore()


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM and SIGINT set `stop` (a signal during start-up too); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in handlers:
        signal.signal(s, lambda *_: stop.set())

    def restore() -> None:
        for s, handler in handlers.items():
            signal.signal(s, handler)

    return restore
