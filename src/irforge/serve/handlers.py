"""What the shortfin and OpenAI routes share: submitting a batch, waiting on it while watching
the client, and streaming server-sent events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from irforge.engine.engine import Engine
from irforge.engine.errors import BadRequest, EngineError, Overloaded
from irforge.engine.options import GenerationOptions
from irforge.engine.request import Request as EngineRequest


async def wait_all(requests: list[EngineRequest], http: Request) -> bool:
    """Wait until every request is done; False (after cancelling them) if the client left."""
    waiter: asyncio.Future[Any] = asyncio.ensure_future(
        asyncio.gather(*(r.await_done() for r in requests))
    )
    gone: asyncio.Future[Any] = asyncio.ensure_future(_disconnect(http))
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
        if waiter.done():
            waiter.result()
            return True
        return False
    finally:
        for task in (waiter, gone):
            task.cancel()
        if not waiter.done() or waiter.cancelled():
            for r in requests:
                r.cancel()


async def _disconnect(http: Request) -> None:
    # the body is already read: the server's next message is http.disconnect
    while (await http.receive())["type"] != "http.disconnect":
        pass


CLIENT_GONE = 499  # nginx's and shortfin's status for a request whose client left


def check_finished(requests: list[EngineRequest]) -> None:
    for r in requests:
        if r.finish_reason == "error":
            raise EngineError(f"request {r.id} failed: {r.error}")
        if r.finish_reason == "shutdown":
            raise Overloaded("the server stopped before this request finished", 5)


def submit_all(
    engine: Engine, jobs: Sequence[tuple[Any, GenerationOptions]]
) -> list[EngineRequest]:
    """Submit every (prompt, options) job, or none: an error cancels those already queued."""
    if not jobs:
        raise BadRequest("no prompt given", "prompt")
    submitted: list[EngineRequest] = []
    try:
        for prompt, options in jobs:
            submitted.append(engine.enqueue(prompt, options))
    except EngineError:
        for r in submitted:
            r.cancel()
        raise
    return submitted


class EventStream(StreamingResponse):
    """Server-sent events whose requests are cancelled however the response ends."""

    def __init__(self, events: AsyncIterator[str], requests: list[EngineRequest]) -> None:
        headers = {"Cache-Control": "no-cache"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._requests = requests

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:  # a client that went away mid-stream frees its pages now
            for r in self._requests:
                r.cancel()


def sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
