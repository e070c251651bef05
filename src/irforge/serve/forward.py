"""An HTTP request carried to another process whole, and answered there by an ASGI app.

Ray Serve's front replica reads a request, wraps it in `Forwarded` and hands it to an engine
replica, which runs it through the same FastAPI app as the one-process server
(`answer`). The answer comes back as a stream: first `(status, headers)`, then body chunks,
so streamed completions stay streamed. `prefix` holds the keys of the prompt's leading blocks
(serve/affinity.py), made once by the front for the router, which runs in the front's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from irforge.serve.errors import error_body

Head = tuple[int, list[tuple[str, str]]]  # status, headers: what comes first in an answer


@dataclass(frozen=True)
class Forwarded:
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: tuple[str, int] | None = None
    prefix: tuple[int, ...] = field(default=())  # affinity.chain(prompt_text(body))
    replica: str | None = None  # the engine replica it must go to (a metrics scrape's)


def prompt_text(body: bytes) -> str:
    """The prompt a request body carries, as text to match prefixes on: a completion's
    prompt (token ids written out), a chat's messages' roles and contents in order, or
    shortfin's `text`/`input_ids`; "" when there is none (the body is not read further)."""
    try:
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(data, dict):
        return ""
    if "messages" in data and isinstance(data["messages"], list):
        return "".join(_message_text(m) for m in data["messages"])
    for key in ("prompt", "text", "input_ids"):
        if key in data:
            return _text(data[key])
    return ""


def _message_text(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    return f"<{message.get('role', '')}>{_text(message.get('content'))}"


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value} "  # token ids: one word each, so their prefixes are text prefixes
    if isinstance(value, list):
        if value and isinstance(value[0], list | str):
            return _text(value[0])  # a batch of prompts routes by its first
        return "".join(_text(v) for v in value)  # token ids, or a message's content parts
    if isinstance(value, dict):
        return _text(value.get("text"))
    return ""


async def answer(app: Any, request: Forwarded) -> AsyncIterator[Head | bytes]:
    """Run `request` through the ASGI `app`: yields the head, then each body chunk.

    Closing the iterator early (the client went away) tells the app the client
    disconnected, as a server would, and waits for it to stop.
    """
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "query_string": request.query,
        "root_path": "",
        "headers": request.headers,
        "client": request.client,
        "server": None,
    }
    messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    gone = asyncio.Event()
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await messages.put(message)

    task = asyncio.ensure_future(app(scope, receive, send))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    started = False
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                started = True
                headers = [
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]
                ]
                yield message["status"], headers
            elif message["type"] == "http.response.body":
                body, more = message.get("body", b""), message.get("more_body", False)
                # what else the app has sent by now goes as one chunk: when the hop to the
                # client is slower than the stream, chunks pile up and it carries them in bulk
                while more and not messages.empty():
                    following = messages.get_nowait()
                    if following is None or following["type"] != "http.response.body":
                        messages.put_nowait(following)  # (None is the last message)
                        break
                    body += following.get("body", b"")
                    more = following.get("more_body", False)
                if body:
                    yield body
                if not more:
                    break
        if not started:  # the app ended without answering: its own handlers failed
            body = error_body(request.path, 500, "internal server error", "INTERNAL_ERROR")
            yield 500, [("content-type", "application/json")]
            yield json.dumps(body).encode()
    finally:
        gone.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=30)
