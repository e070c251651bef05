"""serve_replicas(): engines of one folder on Ray Serve, behind one HTTP port.

The application itself is serve/ray_app.py, built from engine/replica_args.py's args; this
module runs it on a local or joined Ray cluster until a signal (Ray is imported only then).
Ray is optional (`pip install "irforge[ray]"`); the one-process server needs none of it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from irforge.engine.replica_args import APP_NAME, RAY_ENV, ReplicaArgs
from irforge.errors import InputError


def serve_replicas(
    args: ReplicaArgs,
    *,
    ray_address: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> None:
    """Run the application `args` describes (engine/replica_args.py) until SIGTERM or SIGINT,
    then shut Serve down and, if this call started Ray, Ray too."""
    # Ray's C++ failure handler turns the SIGTERM that asks this process to drain into an
    # abort (exit -6); the handlers below do the stopping
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    for name, value in RAY_ENV.items():  # before Ray starts: its workers inherit them
        os.environ.setdefault(name, value)
    try:
        import ray
        from ray import serve
    except ImportError:
        raise InputError(
            'replicas run on Ray Serve, which is not installed: pip install "irforge[ray]"'
        ) from None
    from irforge.serve.ray_app import build_app

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
        serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
        count = (
            f"{args.min_replicas}-{args.max_replicas} replicas by load"
            if args.min_replicas is not None
            else f"{args.replicas} replicas"
        )
        print(
            f"irforge serve: http://{host}:{port} ({args.model_name}; {count} on Ray Serve, "
            f"{args.routing} routing)",
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
