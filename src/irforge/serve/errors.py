"""The server's errors: HTTP statuses of the engine's refusals, and the one error envelope.

shortfin's routes answer `{"error": message, "code": CODE}`; every other route answers
OpenAI's `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Any

from irforge.engine.errors import BadRequest, EngineError, Overloaded

SHORTFIN_PATHS = ("/generate",)


class ModelNotFound(BadRequest):
    """The request names a model this server does not serve (OpenAI's and vLLM's 404)."""

    code = "model_not_found"

    def __init__(self, message: str) -> None:
        super().__init__(message, "model")


def http_status(error: EngineError) -> int:
    """The status an engine refusal is answered with."""
    if isinstance(error, ModelNotFound):
        return 404
    if isinstance(error, BadRequest):
        return 400
    if isinstance(error, Overloaded):
        return 503
    return 500


def error_body(
    path: str, status: int, message: str, code: str, param: str | None = None
) -> dict[str, Any]:
    """The JSON body of an error answer on `path`."""
    if path in SHORTFIN_PATHS:
        return {"error": message, "code": code}
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
