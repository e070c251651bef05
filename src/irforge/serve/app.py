"""create_app(engine): the FastAPI layer over an Engine, with errors that say what is wrong."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from irforge import __version__
from irforge.engine.engine import Engine
from irforge.engine.errors import EngineError, Overloaded
from irforge.serve import openai_api, shortfin_api
from irforge.serve.errors import error_body, http_status
from irforge.serve.limits import BodyLimit

METRICS_PATH = "/metrics"
# Prometheus' text format, the version engine/metrics.py's generate_latest writes
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

log = logging.getLogger("irforge.serve")
_SCALARS = (str, int, float, bool, type(None))


def create_app(engine: Engine, *, model_name: str | None = None) -> FastAPI:
    """The FastAPI app: /health, /metrics, shortfin's /generate, OpenAI's /v1 routes."""

    app = FastAPI(title="irforge serve", version=__version__)
    app.add_middleware(BodyLimit)
    app.state.engine = engine
    app.state.model_name = model_name or engine.folder.name

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message, param = describe_validation(exc.errors())
        return error_response(request, status, message, "INVALID_REQUEST", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own 404/405/400 (an unparseable body) in this app's error shape too
        message = exc.detail if isinstance(exc.detail, str) else "bad request"
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "BAD_REQUEST")
        headers = dict(exc.headers) if exc.headers else None  # 405 keeps its Allow
        return error_response(request, exc.status_code, message, code, None, headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s: %s: %s", request.url.path, type(exc).__name__, exc)
        return error_response(request, 500, "internal server error", "INTERNAL_ERROR")

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
        param = getattr(exc, "param", None)
        return error_response(request, http_status(exc), str(exc), exc.code, param, headers)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}  # shortfin's clients look at the 200 alone

    @app.get(METRICS_PATH)
    async def metrics() -> Response:
        text = engine.metrics.render(engine.gauges(), app.state.model_name)
        return Response(text, media_type=METRICS_CONTENT_TYPE)

    app.include_router(shortfin_api.router)
    app.include_router(openai_api.router)
    return app


def error_response(
    request: Request,
    status: int,
    message: str,
    code: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error answer in the envelope of the route asked (serve/errors.py)."""
    body = error_body(request.url.path, status, message, code, param)
    return JSONResponse(body, status_code=status, headers=headers)


def describe_validation(errors: Sequence[Any]) -> tuple[int, str, str | None]:
    """(status, one readable message, first bad field) from pydantic's error list.

    Unparseable JSON is a 400; a body that parses but does not fit the schema is a 422.
    """
    first: dict[str, Any] = (
        dict(errors[0]) if errors else {"type": "", "loc": (), "msg": "invalid request"}
    )
    if first["type"] == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "decode error")
        where = first["loc"][-1] if first["loc"] else "?"
        return 400, f"the body is not valid JSON: {reason} (at character {where})", None
    by_field: dict[str, list[Any]] = {}
    for e in errors:
        by_field.setdefault(str(e["loc"][1]) if len(e["loc"]) > 1 else "body", []).append(e)
    parts = []
    for field, errs in by_field.items():
        # with a union, pydantic reports once per member; the deepest error is the telling one
        deepest = max(errs, key=lambda e: len(_path(e["loc"])))
        got = deepest.get("input")
        shown = f" (got {json.dumps(got)})" if isinstance(got, _SCALARS) else ""
        members = [str(e["loc"][2]) for e in errs if len(e["loc"]) > 2 and _is_type(e["loc"][2])]
        if len(errs) > 1 and len(members) == len(errs) and len(_path(deepest["loc"])) == 1:
            parts.append(f"{field}: must be one of {', '.join(members)}{shown}")
        else:
            parts.append(f"{'.'.join(_path(deepest['loc'])) or 'body'}: {deepest['msg']}{shown}")
    return 422, "; ".join(parts), next(iter(by_field))


def _is_type(part: object) -> bool:
    # union members appear in pydantic's locations as type names: str, list[int], SamplingParams
    return isinstance(part, str) and (
        "[" in part or part in ("str", "int", "float", "bool") or part[:1].isupper()
    )


def _path(loc: Sequence[Any]) -> list[str]:
    return [str(p) for p in loc[1:] if not _is_type(p)]
