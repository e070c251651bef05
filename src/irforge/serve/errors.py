"""Errors of the serving engine, each mapped to an HTTP status by the app."""

from __future__ import annotations

from ..errors import ToolchainError


class ServeError(ToolchainError):
    """Base class; `status` is the HTTP status the app answers with, `code` a short name."""

    status = 500
    code = "INTERNAL"


class BadRequest(ServeError):
    """The request cannot be served as asked (empty or too long prompt, bad sampling...)."""

    status = 400
    code = "INVALID_REQUEST"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFound(ServeError):
    """The request names a model this server does not serve (OpenAI's and vLLM's 404)."""

    status = 404
    code = "model_not_found"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.param = "model"


class Overloaded(ServeError):
    """The admission queue is full (pages are busy): try again after `retry_after` seconds."""

    status = 503
    code = "QUEUE_FULL"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(Overloaded):
    """The engine drains in-flight requests and admits no new one."""

    code = "SHUTTING_DOWN"
