"""How much one request may ask of the server: the bounds every route enforces.

A server faces clients nobody vetted; each bound here stops one way a single request could
slow every other one (a huge body parsed on the event loop, a stop list scanned per token, a
prompt tokenized before anyone knew it could not fit).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from irforge.serve.errors import SHORTFIN_PATHS, error_body

MAX_BODY_BYTES = 32 * 2**20  # 413 above: several 131072-token prompts of text still fit
MAX_STOP = 16  # stop strings per request (OpenAI allows 4)
MAX_STOP_CHARS = 256
MAX_PROMPTS = 256  # prompts in one batched request
MAX_MESSAGES = 4096  # chat messages in one request
HEAD_SECONDS = 30.0  # to send a request's head; a half-sent one would hold its connection
BODY_SECONDS = 30.0  # between the pieces of a body

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# BaseException: FastAPI turns any Exception raised while reading a body into its own 400
# ("There was an error parsing the body"); these must reach BodyLimit to get their status.
class _TooLarge(BaseException):
    pass


class _TooSlow(BaseException):
    pass


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes gets a 413 before anything parses it."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._drain(receive)
            await self._refuse(scope, send)
            return
        seen, complete = 0, False

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen, complete
            if complete:  # the body is in; what comes now is the disconnect, whenever
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), BODY_SECONDS)
            except TimeoutError:
                raise _TooSlow from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.limit:  # a chunked body that never said its length
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._drain(receive)
            await self._refuse(scope, send)
        except _TooSlow:
            message = f"the request body did not arrive within {BODY_SECONDS:g} s"
            await self._refuse(scope, send, 408, message, "request_timeout")

    async def _drain(self, receive: Receive) -> None:
        """Read and drop what the client is still sending (up to a bound), so that it can read
        the 413 instead of seeing its connection reset mid-upload."""
        dropped = 0
        while dropped <= 4 * self.limit:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return
            dropped += len(message.get("body", b""))

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        status: int = 413,
        message: str = "",
        code: str = "request_too_large",
    ) -> None:
        message = message or f"the request body is over the limit of {self.limit} bytes"
        path = scope.get("path", "")
        # shortfin's codes are upper case, OpenAI's lower
        body = error_body(path, status, message, code.upper() if path in SHORTFIN_PATHS else code)
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        if status == 408:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


class GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol that closes a connection whose request head does not
    arrive within HEAD_SECONDS (uvicorn times out idle connections, not half-sent heads)."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._idle() and self._head_timer is None:  # the head of a next request begins
            self._arm()
        super().data_received(data)
        if not self._idle():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(HEAD_SECONDS, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._idle() and not self.transport.is_closing():
            self.transport.close()
