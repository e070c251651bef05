"""serve(): an Engine behind uvicorn, until SIGTERM or Ctrl-C, draining in-flight requests."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import uvicorn

from irforge.engine.engine import Engine
from irforge.engine.options import DRAIN_TIMEOUT_S, EngineOptions
from irforge.errors import InputError
from irforge.serve.app import create_app
from irforge.serve.limits import GuardedH11

log = logging.getLogger("irforge.serve")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    folder: Path,
    options: EngineOptions,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    drain_timeout: float = DRAIN_TIMEOUT_S,
) -> None:
    """Serve an artifact folder over HTTP; returns after SIGTERM/SIGINT once drained.

    On SIGTERM the engine stops admitting (new requests get 503), uvicorn stops accepting
    connections and waits up to `drain_timeout` s for in-flight responses, then it returns.
    """
    sock = _listen(host, port)  # first: clients that connect early wait in the backlog
    try:
        engine = Engine(folder, options)
    except BaseException:
        sock.close()
        raise
    app = create_app(engine, model_name=model_name)
    config = uvicorn.Config(
        app,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=int(drain_timeout),
        timeout_keep_alive=30,
        http=GuardedH11,  # half-sent request heads time out too
    )
    server = _Server(config, engine, drain_timeout)
    bound, sizes = sock.getsockname(), engine.scheduler
    print(
        f"irforge serve: http://{bound[0]}:{bound[1]} ({app.state.model_name}; "
        f"{engine.pages.page_count - 1} cache pages, prefill bs {sizes.prefill_sizes}, "
        f"decode bs {sizes.decode_sizes})",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn raises the signal it caught again after its own shutdown; with this handler
    # installed underneath, a drained SIGTERM ends the process with exit code 0
    previous = signal.signal(signal.SIGTERM, _drained)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        engine.shutdown(drain=True, timeout=drain_timeout)
        engine.close()
        sock.close()


def _drained(signum: int, frame: Any) -> None:
    log.info("stopped on signal %d", signum)


class _Server(uvicorn.Server):
    """uvicorn's server that also closes the engine's admission the moment a signal arrives."""

    def __init__(self, config: uvicorn.Config, engine: Engine, drain_timeout: float) -> None:
        super().__init__(config)
        self.engine, self.drain_timeout = engine, drain_timeout
        self._cutoff: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.engine.stop_admitting()
        if self._cutoff is None:
            # Just before uvicorn's own drain timeout cancels the responses (a traceback each,
            # and streams cut without a word), stop what is left: each stream then ends with
            # an error event and the server logs one line.
            self._cutoff = threading.Timer(max(0.0, self.drain_timeout - 1.0), self._cut)
            self._cutoff.daemon = True
            self._cutoff.start()
        super().handle_exit(sig, frame)

    def _cut(self) -> None:
        left = self.engine.gauges()
        busy = int(left["running_requests"] + left["queue_depth"])
        if busy:
            log.warning("drain timeout: stopping %d unfinished request(s)", busy)
        self.engine.shutdown(drain=False)
