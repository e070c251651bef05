"""shortfin's POST /generate, request and response as shortfin 3.9 has them, so its clients work."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from irforge.engine.engine import Engine, check_sampling
from irforge.engine.errors import BadRequest
from irforge.engine.options import GenerationOptions
from irforge.engine.request import Request as EngineRequest
from irforge.runtime.sampling import Sampling
from irforge.serve.handlers import CLIENT_GONE, check_finished, submit_all, wait_all
from irforge.serve.logprobs import Row
from irforge.serve.schemas import GenerateRequest, SamplingParams

router = APIRouter()
# shortfin clamps these (components/io_struct.py); do the same so a request means the same here
TEMPERATURE_RANGE = (0.1, 2.0)
TOP_P_RANGE = (0.01, 0.99)


def sampling_of(params: SamplingParams) -> Sampling:
    """shortfin 3.9 with one beam takes the argmax whatever the temperature; it samples only
    with top_k / top_p (its native path). Follow that: greedy unless top_k > 1 or top_p < 1."""
    if params.n != 1 or params.num_beams != 1:
        raise BadRequest("n > 1 and beam search are not supported", "sampling_params.num_beams")
    top_k = params.top_k or 0
    top_p = params.top_p if params.top_p is not None else 1.0
    if top_k <= 1 and top_p >= 1:
        return check_sampling(0.0, 0, 1.0, params.seed)
    temperature = min(max(params.temperature, TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1])
    if top_p < 1:
        top_p = min(max(top_p, TOP_P_RANGE[0]), TOP_P_RANGE[1])
    return check_sampling(temperature, top_k, top_p, params.seed)


def _stops(params: SamplingParams) -> tuple[str, ...]:
    return (params.stop,) if isinstance(params.stop, str) else tuple(params.stop or ())


@router.api_route("/generate", methods=["POST", "PUT"], response_model=None)
async def generate(body: GenerateRequest, http: Request) -> Response:
    engine: Engine = http.app.state.engine
    prompts = body.prompts()
    params = body.sampling_params
    if isinstance(params, list):
        if len(params) != len(prompts):
            raise BadRequest(
                f"{len(params)} sampling_params for {len(prompts)} prompts", "sampling_params"
            )
    else:
        params = [params] * len(prompts)
    if body.return_logprob and body.return_input_ids:
        raise BadRequest(
            "return_input_ids answers with bare id lists, which have no room for logprobs; "
            "drop one of them",
            "return_logprob",
        )
    rids = body.rid if isinstance(body.rid, list) else [body.rid] * len(prompts)
    if len(rids) != len(prompts):
        raise BadRequest(f"{len(rids)} rids for {len(prompts)} prompts", "rid")
    jobs = [
        (
            prompt,
            GenerationOptions(
                sampling=sampling_of(p),
                max_tokens=p.max_completion_tokens,
                stop=_stops(p),
                ignore_eos=p.ignore_eos,
                request_id=rid,
                detokenize=not body.return_input_ids,
                logprobs=body.top_logprobs_num if body.return_logprob else None,
                echo=body.return_logprob and body.logprob_start_len >= 0,
            ),
        )
        for prompt, p, rid in zip(prompts, params, rids, strict=False)
    ]
    reqs = await run_in_threadpool(submit_all, engine, jobs)  # tokenizing: off the event loop
    if not await wait_all(reqs, http):
        return Response(status_code=CLIENT_GONE)
    check_finished(reqs)
    if body.return_input_ids:
        # shortfin: one list of ids per beam for each prompt; a lone prompt is not wrapped
        per_prompt: list[Any] = [[r.tokens] for r in reqs]
        return JSONResponse(per_prompt if body.batched else per_prompt[0])
    responses = [
        {
            "prompt": _prompt_text(engine, r),
            "responses": [
                {
                    "text": r.text,
                    **(
                        {"meta_info": _meta_info(engine, r, body)} if r.logprobs is not None else {}
                    ),
                }
            ],
        }
        for r in reqs
    ]
    return JSONResponse({"responses": responses})


def _meta_info(engine: Engine, r: EngineRequest, body: GenerateRequest) -> dict[str, Any]:
    """SGLang's logprob fields: [logprob, token id, text or None] per token, the prompt's
    from position logprob_start_len (its first token has no logprob: None)."""

    text = engine.text if body.return_text_in_logprobs else None

    def entry(lp: float | None, token: int) -> list[Any]:
        return [lp, token, text.piece(token) if text is not None else None]

    out: dict[str, Any] = {
        "prompt_tokens": len(r.prompt),
        "completion_tokens": len(r.tokens),
        "finish_reason": r.finish_reason,
        "output_token_logprobs": [
            entry(lp, t) for t, (lp, _) in zip(r.tokens, r.token_logprobs, strict=True)
        ],
    }
    if body.top_logprobs_num:
        out["output_top_logprobs"] = [[entry(v, i) for i, v in top] for _, top in r.token_logprobs]
    if body.logprob_start_len >= 0:
        start = min(body.logprob_start_len, len(r.prompt))
        rows: list[Row | None] = [None, *r.prompt_logprobs]  # rows[j]: about prompt[j]
        picked = [(r.prompt[j], rows[j]) for j in range(start, len(r.prompt))]
        out["input_token_logprobs"] = [
            entry(row[0] if row is not None else None, t) for t, row in picked
        ]
        if body.top_logprobs_num:
            out["input_top_logprobs"] = [
                [entry(v, i) for i, v in row[1]] if row is not None else None for _, row in picked
            ]
    return out


def _prompt_text(engine: Engine, r: EngineRequest) -> str | None:
    if r.prompt_text is not None:
        return r.prompt_text
    return engine.text.decode(r.prompt) if engine.text else None
