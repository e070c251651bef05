"""How much one request may ask of the server: the bounds every route enforces.

A server faces clients nobody vetted; each bound here stops one way a single request could
slow every other one (a huge body parsed on the event loop, a stop list scanned per token, a
prompt tokenized before anyone knew it could not fit).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

MAX_BODY_BYTES = 32 * 2**20  # 413 above: several 131072-token prompts of text still fit
MAX_CHARS_PER_TOKEN = 64  # a prompt longer than context x this cannot fit: refused untokenized
MAX_STOP = 16  # stop strings per request (OpenAI allows 4)
MAX_STOP_CHARS = 256
MAX_PROMPTS = 256  # prompts in one batched request
MAX_MESSAGES = 4096  # chat messages in one request
MAX_N = 1  # completions per prompt: more are separate requests

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _TooLarge(Exception):
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
        seen = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # a chunked body that never said its length
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._drain(receive)
            await self._refuse(scope, send)

    async def _drain(self, receive: Receive) -> None:
        """Read and drop what the client is still sending (up to a bound), so that it can read
        the 413 instead of seeing its connection reset mid-upload."""
        dropped = 0
        while dropped <= 4 * self.limit:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return
            dropped += len(message.get("body", b""))

    async def _refuse(self, scope: Scope, send: Send) -> None:
        from .app import SHORTFIN_PATHS

        message = f"the request body is over the limit of {self.limit} bytes"
        body: dict[str, Any]
        if scope.get("path") in SHORTFIN_PATHS:
            body = {"error": message, "code": "REQUEST_TOO_LARGE"}
        else:
            error = {"message": message, "type": "invalid_request_error", "param": None}
            body = {"error": {**error, "code": "request_too_large"}}
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": data})
