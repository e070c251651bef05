"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (with SSE)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .engine import Engine, check_sampling
from .errors import BadRequest, ModelNotFound
from .handlers import EventStream, check_finished, sse, submit_all, wait_all
from .request import Request as EngineRequest
from .schemas import ChatMessage, ChatRequest, CompletionRequest, OpenAISampling

router = APIRouter(prefix="/v1")
CLIENT_GONE = 499  # nginx's and shortfin's status for a request whose client left


def _engine(http: Request) -> Engine:
    return http.app.state.engine


@router.get("/models")
async def models(http: Request) -> dict[str, Any]:
    name = http.app.state.model_name
    entry = {"id": name, "object": "model", "created": 0, "owned_by": "irforge"}
    entry["max_model_len"] = _engine(http).max_seq_len
    return {"object": "list", "data": [entry]}


def _check_model(http: Request, model: str | None) -> None:
    """A request for another model is an error, not silently served by this one."""
    name = http.app.state.model_name
    if model is not None and model != name:
        raise ModelNotFound(f"the model {model!r} does not exist; this server serves {name!r}")


def _check(body: OpenAISampling) -> None:
    """Refuse what this server would otherwise silently ignore."""
    if body.n != 1:
        raise BadRequest("n > 1 is not supported; send several requests", "n")
    if getattr(body, "logprobs", None):
        raise BadRequest("logprobs are not supported", "logprobs")


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    try:
        return tuple(sorted((int(k), float(v)) for k, v in (bias or {}).items()))
    except ValueError:
        raise BadRequest("logit_bias keys must be token ids", "logit_bias") from None


def _submit(
    http: Request, body: OpenAISampling, prompts: list[Any], max_tokens: int | None
) -> list[EngineRequest]:
    _check(body)
    sampling = check_sampling(
        body.temperature,
        body.top_k,
        body.top_p,
        body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias=_logit_bias(body.logit_bias),
    )
    if body.stream and len(prompts) != 1:
        raise BadRequest("stream: true takes one prompt", "prompt")
    options = dict(
        sampling=sampling,
        max_tokens=max_tokens,
        stop=body.stops(),
        ignore_eos=body.ignore_eos,
        min_tokens=body.min_tokens,
        stop_token_ids=tuple(body.stop_token_ids or ()),
    )
    return submit_all(_engine(http), [(p, options) for p in prompts])


def _usage(reqs: list[EngineRequest]) -> dict[str, int]:
    prompt, completion = sum(len(r.prompt) for r in reqs), sum(len(r.tokens) for r in reqs)
    total = prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def _reason(r: EngineRequest) -> str:
    return r.finish_reason if r.finish_reason in ("stop", "length") else "abort"


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, http: Request) -> Response | dict[str, Any]:
    _check_model(http, body.model)
    if body.echo or body.suffix or (body.best_of or 1) > 1:
        raise BadRequest("echo, suffix and best_of are not supported", "echo")
    # tokenizing may take a while: off the event loop, so /health and streams keep going
    reqs = await run_in_threadpool(_submit, http, body, body.prompts(), body.max_tokens)
    head = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": http.app.state.model_name,
    }
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventStream(_completion_events(head, reqs[0], include_usage), reqs)
    if not await wait_all(reqs, http):
        return Response(status_code=CLIENT_GONE)
    check_finished(reqs)
    choices = [
        {"index": i, "text": r.text, "logprobs": None, "finish_reason": _reason(r)}
        for i, r in enumerate(reqs)
    ]
    return {**head, "choices": choices, "usage": _usage(reqs)}


async def _completion_events(
    head: dict[str, Any], req: EngineRequest, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(text: str, reason: str | None) -> str:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return sse({**head, "choices": [choice]})

    async for delta in req.astream():
        if delta.text:
            yield chunk(delta.text, None)
    async for event in _close(head, req, chunk("", _reason(req)), include_usage):
        yield event


async def _close(
    head: dict[str, Any], req: EngineRequest, last: str, include_usage: bool
) -> AsyncIterator[str]:
    if req.finish_reason == "error":
        yield sse({"error": {"message": f"request failed: {req.error}", "type": "server_error"}})
    elif req.finish_reason == "shutdown":  # the drain timeout ran out before this finished
        message = "the server shut down before this request finished"
        yield sse({"error": {"message": message, "type": "server_error", "code": "shutdown"}})
    else:
        yield last
        if include_usage:
            yield sse({**head, "choices": [], "usage": _usage([req])})
    yield "data: [DONE]\n\n"


def _message_dict(m: ChatMessage) -> dict[str, Any]:
    content = m.content
    if isinstance(content, list):
        kinds = {p.type for p in content} - {"text"}
        if kinds:
            raise BadRequest(f"content parts of type {sorted(kinds)} are not supported", "messages")
        content = "".join(p.text or "" for p in content)
    d: dict[str, Any] = {"role": m.role, "content": content or ""}
    if m.name:
        d["name"] = m.name
    return d


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, http: Request) -> Response | dict[str, Any]:
    _check_model(http, body.model)
    engine = _engine(http)
    if body.tools:
        raise BadRequest("tools are not supported", "tools")
    if engine.text is None:
        raise BadRequest(f"{engine.folder} has no tokenizer.json: chat needs one", "messages")
    ids = await run_in_threadpool(engine.text.chat_ids, [_message_dict(m) for m in body.messages])
    max_tokens = body.max_completion_tokens or body.max_tokens
    reqs = await run_in_threadpool(_submit, http, body, [ids], max_tokens)
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": http.app.state.model_name,
    }
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunk_head = {**head, "object": "chat.completion.chunk"}
        return EventStream(_chat_events(chunk_head, reqs[0], include_usage), reqs)
    if not await wait_all(reqs, http):
        return Response(status_code=CLIENT_GONE)
    check_finished(reqs)
    r = reqs[0]
    message = {"role": "assistant", "content": r.text}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _reason(r)}
    return JSONResponse({**head, "choices": [choice], "usage": _usage(reqs)})


async def _chat_events(
    head: dict[str, Any], req: EngineRequest, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(delta: dict[str, str], reason: str | None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return sse({**head, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""}, None)
    async for delta in req.astream():
        if delta.text:
            yield chunk({"content": delta.text}, None)
    async for event in _close(head, req, chunk({}, _reason(req)), include_usage):
        yield event
