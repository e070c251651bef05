"""The pieces of Ray Serve routing that need no Ray: a request answered by an ASGI app in
process (serve/forward.py) and the prefix table a router keeps (serve/affinity.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from irforge.serve.affinity import BLOCK_CHARS, PrefixTable, chain
from irforge.serve.forward import Forwarded, answer, prompt_text


def forwarded(path: str, body: object, method: str = "POST") -> Forwarded:
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    return Forwarded(method, path, b"x=1", headers, raw, ("127.0.0.1", 5000))


def test_the_prompt_a_router_keys_on() -> None:
    def text(body: object) -> str:
        return prompt_text(json.dumps(body).encode())

    assert text({"prompt": "Once upon"}) == "Once upon"
    assert text({"prompt": [5, 6, 7]}) == "5 6 7 "
    assert text({"prompt": [[5, 6], [8]]}) == "5 6 "  # a batch routes by its first prompt
    assert text({"prompt": ["a", "b"]}) == "a"
    parts = [{"type": "text", "text": "Hi"}]
    chat = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]
    }
    assert text(chat) == "<system>Be brief.<user>Hi"
    assert text({"text": "shortfin"}) == "shortfin"
    assert text({"input_ids": [1, 2]}) == "1 2 "
    assert prompt_text(b"{not json") == prompt_text(b"") == text([1]) == text({"model": "m"}) == ""


def test_prefix_keys_chain_whole_blocks() -> None:
    system = "You are a helpful assistant who answers in one line. " * 3  # 159 characters
    one, two = "What is two plus two, in words, please?", "Name a colour you like, any one at all."
    a, b = chain(system + one), chain(system + two)
    assert len(a) == len(b) == (len(system) + len(one)) // BLOCK_CHARS == 3
    assert a[:2] == b[:2] and a[2] != b[2]  # the third block holds where they differ
    assert chain("short") == []
    assert chain("x" + system)[0] != a[0]  # a key stands for all the text before it


def test_the_longest_live_prefix_owns_a_prompt() -> None:
    table: PrefixTable[str] = PrefixTable(capacity=4)
    common = chain("p" * 128)
    table.record(common, "r1")
    table.record(chain("p" * 128 + "q" * 64), "r2")
    longer = chain("p" * 128 + "q" * 64 + "z" * 64)
    assert table.owner(longer, {"r1", "r2"}) == ("r2", 3)
    assert table.owner(longer, {"r1"}) == ("r1", 2)  # r2 is gone: r1 holds a shorter prefix
    table.forget("r2")
    assert table.owner(longer, {"r1", "r2"}) == ("r1", 2)
    assert table.owner(chain("o" * 64), {"r1"}) == (None, 0)
    table.record(chain("n" * 192), "r3")  # 3 keys more than a capacity of 4: the oldest goes
    assert len(table) == 4 and table.owner(chain("p" * 64), {"r1"}) == (None, 0)
    assert table.owner(common, {"r1"}) == ("r1", 2)  # its second key stands for the whole


app = FastAPI()
stopped = asyncio.Event()


@app.post("/echo")
async def echo(request: Request) -> dict[str, object]:
    return {"body": await request.json(), "query": request.url.query,
            "client": request.client.host if request.client else None}  # fmt: skip


@app.post("/stream")
async def stream(request: Request) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        try:
            for i in range(100_000):  # 100 s unless stopped
                yield f"data: {i}\n\n".encode()
                await asyncio.sleep(0.001)
        finally:  # Starlette cancels a stream whose client disconnected
            stopped.set()

    return StreamingResponse(events(), media_type="text/event-stream")


def test_an_app_answers_a_forwarded_request_in_process() -> None:
    async def run() -> list[object]:
        return [part async for part in answer(app, forwarded("/echo", {"a": 1}))]

    (status, headers), body = asyncio.run(run())
    assert status == 200 and ("content-type", "application/json") in headers
    assert json.loads(body) == {"body": {"a": 1}, "query": "x=1", "client": "127.0.0.1"}
    (status, _), body = asyncio.run((lambda: _collect(answer(app, forwarded("/missing", {}))))())
    assert status == 404


async def _collect(parts: AsyncIterator[object]) -> list[object]:
    return [part async for part in parts]


def test_a_stream_stops_when_its_reader_goes() -> None:
    async def run() -> list[object]:
        got: list[object] = []
        parts = answer(app, forwarded("/stream", {}))
        async for part in parts:
            got.append(part)
            if b"data: 2\n\n" in b"".join(p for p in got[1:] if isinstance(p, bytes)):
                break
        await parts.aclose()  # as Ray closes the replica's generator when the client goes
        return got

    stopped.clear()
    start = time.monotonic()
    got = asyncio.run(run())
    assert time.monotonic() - start < 10
    assert b"".join(got[1:]).startswith(b"data: 0\n\ndata: 1\n\ndata: 2\n\n")  # type: ignore[arg-type]
    assert stopped.is_set()  # the app saw the client leave and stopped its stream
