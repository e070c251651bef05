"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (with SSE)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from irforge.engine.engine import Engine, check_sampling
from irforge.engine.errors import BadRequest
from irforge.engine.guided import GuidedSpec
from irforge.engine.options import GenerationOptions
from irforge.engine.request import Request as EngineRequest
from irforge.engine.text import TextCodec
from irforge.serve.errors import ModelNotFound
from irforge.serve.handlers import (
    CLIENT_GONE,
    EventStream,
    check_finished,
    sse,
    submit_all,
    wait_all,
)
from irforge.serve.limits import MAX_PROMPTS
from irforge.serve.logprobs import (
    chat_logprobs,
    completion_logprobs,
    echo_logprobs,
    prompt_logprobs,
    text_end,
)
from irforge.serve.schemas import ChatMessage, ChatRequest, CompletionRequest, OpenAISampling
from irforge.serve.tools import Tool, forced, opens_call, parse_tools, tool_calls

router = APIRouter(prefix="/v1")


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


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    try:
        return tuple(sorted((int(k), float(v)) for k, v in (bias or {}).items()))
    except ValueError:
        raise BadRequest("logit_bias keys must be token ids", "logit_bias") from None


def _submit(
    http: Request,
    body: OpenAISampling,
    prompts: list[Any],
    max_tokens: int | None,
    logprobs: int | None = None,
    copies: int = 1,
    call: GuidedSpec | None = None,
    echo: bool = False,
) -> list[EngineRequest]:
    """`copies` requests per prompt (n, or best_of), prompt by prompt; copy j of a seeded
    request samples with seed + j, so the choices differ and still reproduce."""
    if body.stream and len(prompts) * copies != 1:
        raise BadRequest("stream: true takes one prompt and n = 1", "n" if copies > 1 else "prompt")
    if len(prompts) * copies > MAX_PROMPTS:
        raise BadRequest(
            f"{len(prompts)} prompts x {copies} choices is over {MAX_PROMPTS} sequences", "n"
        )
    guided = _guided(body)
    if call is not None:  # a forced tool call's grammar
        if guided is not None:
            raise BadRequest("a forced tool_choice takes no response_format", "tool_choice")
        guided = call
    jobs = []
    for p in prompts:
        for j in range(copies):
            sampling = check_sampling(
                body.temperature,
                body.top_k,
                body.top_p,
                None if body.seed is None else body.seed + j,
                presence_penalty=body.presence_penalty,
                frequency_penalty=body.frequency_penalty,
                repetition_penalty=body.repetition_penalty,
                logit_bias=_logit_bias(body.logit_bias),
            )
            options = GenerationOptions(
                sampling=sampling,
                max_tokens=max_tokens,
                stop=body.stops(),
                ignore_eos=body.ignore_eos,
                min_tokens=body.min_tokens,
                stop_token_ids=tuple(body.stop_token_ids or ()),
                logprobs=logprobs,
                guided=guided,
                echo=echo,
            )
            jobs.append((p, options))
    return submit_all(_engine(http), jobs)


def _guided(body: OpenAISampling) -> GuidedSpec | None:
    """The request's output constraint, if any; BadRequest for two at once or a bad one."""
    specs = []
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        specs.append(GuidedSpec.of("json_object"))
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise BadRequest(
                "response_format json_schema needs json_schema.schema", "response_format"
            )
        specs.append(GuidedSpec.of("json_schema", fmt.json_schema.schema_))
    if body.guided_json is not None:
        specs.append(GuidedSpec.of("json_schema", body.guided_json))
    if body.guided_regex is not None:
        specs.append(GuidedSpec.of("regex", body.guided_regex))
    if body.guided_choice is not None:
        specs.append(GuidedSpec.of("choice", body.guided_choice))
    if len(specs) > 1:
        raise BadRequest(
            "give one of response_format, guided_json, guided_regex, guided_choice",
            "response_format",
        )
    return specs[0] if specs else None


def _best(reqs: list[EngineRequest], copies: int, n: int) -> list[EngineRequest]:
    """Per prompt, the n of its `copies` completions with the highest cumulative logprob
    (best_of, as OpenAI and vLLM rank it); all of them, in order, when n == copies."""
    if n == copies:
        return reqs
    chosen = []
    for i in range(0, len(reqs), copies):
        group = reqs[i : i + copies]
        group.sort(key=lambda r: -sum(lp for lp, _ in r.token_logprobs))
        chosen += group[:n]
    return chosen


def _usage(reqs: list[EngineRequest]) -> dict[str, Any]:
    prompt, completion = sum(len(r.prompt) for r in reqs), sum(len(r.tokens) for r in reqs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        # OpenAI's: prompt tokens read from the prefix cache instead of computed
        "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in reqs)},
    }


def _reason(r: EngineRequest) -> str:
    return r.finish_reason if r.finish_reason in ("stop", "length") else "abort"


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, http: Request) -> Response | dict[str, Any]:
    _check_model(http, body.model)
    if body.suffix:
        raise BadRequest("suffix is not supported", "suffix")
    copies = body.best_of or body.n
    if copies < body.n:
        raise BadRequest(f"best_of ({copies}) must be at least n ({body.n})", "best_of")
    if copies > body.n and body.stream:
        raise BadRequest("best_of > n cannot be streamed", "best_of")
    # ranking best_of needs each token's logprob, shown only if asked
    logprobs = body.logprobs if body.logprobs is not None or copies == body.n else 0
    # tokenizing may take a while: off the event loop, so /health and streams keep going
    reqs = await run_in_threadpool(
        _submit, http, body, body.prompts(), body.max_tokens, logprobs, copies, None, body.echo
    )
    head = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": http.app.state.model_name,
    }
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        text = _engine(http).text
        events = _completion_events(head, reqs[0], include_usage, text, body.echo)
        return EventStream(events, reqs)
    if not await wait_all(reqs, http):
        return Response(status_code=CLIENT_GONE)
    check_finished(reqs)
    text = _engine(http).text
    shown = body.logprobs is not None
    choices = [
        {
            "index": i,
            "text": (_prompt_text(text, r) if body.echo else "") + r.text,
            "logprobs": (
                None
                if not shown
                else echo_logprobs(text, r.prompt, r.prompt_logprobs, r.tokens, r.token_logprobs)
                if body.echo
                else _completion_lp(text, r, 0, len(r.tokens))
            ),
            "finish_reason": _reason(r),
        }
        for i, r in enumerate(_best(reqs, copies, body.n))
    ]
    return {**head, "choices": choices, "usage": _usage(reqs)}  # usage counts every copy


def _prompt_text(text: TextCodec | None, r: EngineRequest) -> str:
    if r.prompt_text is not None:
        return r.prompt_text
    return text.decode(r.prompt) if text is not None else ""


def _completion_lp(
    text: TextCodec | None, r: EngineRequest, a: int, b: int, offset: int = 0
) -> Any:
    """Tokens a..b's logprobs (None unless asked); `offset`: where token a's text starts."""
    if r.logprobs is None:
        return None
    return completion_logprobs(text, r.tokens[a:b], r.token_logprobs[a:b], offset)


def _chat_lp(text: TextCodec | None, r: EngineRequest, a: int, b: int) -> Any:
    if r.logprobs is None:
        return None
    return chat_logprobs(text, r.tokens[a:b], r.token_logprobs[a:b])


async def _completion_events(
    head: dict[str, Any],
    req: EngineRequest,
    include_usage: bool,
    codec: TextCodec | None,
    echo: bool = False,
) -> AsyncIterator[str]:
    sent = offset = 0  # tokens whose logprobs went out (held-back ones ride with the next text)

    def event(text: str, lp: Any, reason: str | None) -> str:
        choice = {"index": 0, "text": text, "logprobs": lp, "finish_reason": reason}
        return sse({**head, "choices": [choice]})

    def chunk(text: str, reason: str | None, upto: int) -> str:
        nonlocal sent, offset
        lp, sent = _completion_lp(codec, req, sent, upto, offset), upto
        if lp and lp["tokens"]:
            offset = text_end(lp)
        return event(text, lp, reason)

    def prompt_chunk() -> str:
        # echo: the prompt (and its logprobs, scored by the prefill) before the first token
        nonlocal offset, echo
        echo, lp = False, None
        if req.logprobs is not None:
            lp = prompt_logprobs(codec, req.prompt, req.prompt_logprobs)
            offset = text_end(lp)
        return event(_prompt_text(codec, req), lp, None)

    seen = 0
    async for delta in req.astream():
        seen += 1
        if echo:
            yield prompt_chunk()
        if delta.text:
            yield chunk(delta.text, None, seen)
    if echo and req.finish_reason in ("stop", "length"):
        yield prompt_chunk()
    last = chunk("", _reason(req), len(req.tokens))
    async for out in _close(head, req, last, include_usage):
        yield out


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
    if m.tool_calls:  # an earlier assistant turn's calls, and the results answering them
        d["tool_calls"] = m.tool_calls
    if m.tool_call_id:
        d["tool_call_id"] = m.tool_call_id
    return d


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, http: Request) -> Response | dict[str, Any]:
    _check_model(http, body.model)
    engine = _engine(http)
    if engine.text is None:
        raise BadRequest(f"{engine.folder} has no tokenizer.json: chat needs one", "messages")
    offered, call = forced(parse_tools(body.tools), body.tool_choice)
    tools = [t for t in body.tools or [] if t["function"]["name"] in {o.name for o in offered}]
    messages = [_message_dict(m) for m in body.messages]
    ids = await run_in_threadpool(engine.text.chat_ids, messages, tools or None)
    max_tokens = body.max_completion_tokens or body.max_tokens
    if body.top_logprobs is not None and not body.logprobs:
        raise BadRequest("top_logprobs needs logprobs: true", "top_logprobs")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    reqs = await run_in_threadpool(_submit, http, body, [ids], max_tokens, logprobs, body.n, call)
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": http.app.state.model_name,
    }
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunk_head = {**head, "object": "chat.completion.chunk"}
        events = _chat_events(chunk_head, reqs[0], include_usage, engine.text, offered)
        return EventStream(events, reqs)
    if not await wait_all(reqs, http):
        return Response(status_code=CLIENT_GONE)
    check_finished(reqs)
    choices = []
    for i, r in enumerate(reqs):
        calls = tool_calls(r.text, offered) if offered else None
        message: dict[str, Any] = {"role": "assistant", "content": None if calls else r.text}
        if calls:
            message["tool_calls"] = calls
        choices.append(
            {
                "index": i,
                "message": message,
                "logprobs": _chat_lp(engine.text, r, 0, len(r.tokens)),
                "finish_reason": "tool_calls" if calls else _reason(r),
            }
        )
    return JSONResponse({**head, "choices": choices, "usage": _usage(reqs)})


async def _chat_events(
    head: dict[str, Any],
    req: EngineRequest,
    include_usage: bool,
    codec: TextCodec | None,
    offered: list[Tool] | None = None,
) -> AsyncIterator[str]:
    sent = 0

    def chunk(delta: dict[str, Any], reason: str | None, upto: int) -> str:
        nonlocal sent
        lp, sent = _chat_lp(codec, req, sent, upto), upto
        choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": reason}
        return sse({**head, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""}, None, 0)
    # With tools offered, text that may still become a call (it opens with "{" or the
    # python tag) is held back; the whole call goes out as one tool_calls delta at the end.
    held, holding, opened = "", bool(offered), None
    seen = 0
    async for delta in req.astream():
        seen += 1
        if holding:
            held += delta.text
            if opened is None:  # decided once: no rescan of the held text per token
                opened = opens_call(held)
            if opened is not False:
                continue
            holding, delta_text = False, held
        else:
            delta_text = delta.text
        if delta_text:
            yield chunk({"content": delta_text}, None, seen)
    calls = tool_calls(held, offered) if holding and offered else None
    if calls:
        delta_calls = [{"index": i, **c} for i, c in enumerate(calls)]
        last = chunk({"tool_calls": delta_calls}, "tool_calls", len(req.tokens))
    else:
        if holding and held:
            yield chunk({"content": held}, None, len(req.tokens))
        last = chunk({}, _reason(req), len(req.tokens))
    async for event in _close(head, req, last, include_usage):
        yield event
